"""The berth command line, with Docker's grammar; talks to berthd only over HTTP.

Imports: client, oci, errors.
"""
