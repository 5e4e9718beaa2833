"""The Docker Engine API over HTTP/1.1 on a unix socket: server, router, routes, error table.

Imports: engine and below.
"""
