"""Pure value types of the OCI and Docker image formats: digests, references, descriptors, media types.

The bottom layer: imports only the standard library and ``berth.errors``.
"""
