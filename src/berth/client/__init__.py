"""A small HTTP client for the Engine API over a unix socket, used by the CLI.

Imports: stdlib, errors.
"""
