"""berth's HTTP/1.1 server core (asyncio + h11), shared by the Engine API and the registry server.

Layer 1: imports only the standard library and h11. Routing and what a response means stay with each server.
"""
