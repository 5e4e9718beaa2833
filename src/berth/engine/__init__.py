"""Docker semantics behind the API: image service, system info, events.

Imports: images and everything below.
"""
