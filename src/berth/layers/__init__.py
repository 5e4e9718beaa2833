"""Layer tar streams: safe apply into a directory (whiteouts, opaque dirs) and diff back to a tar.

Imports: kernel, oci, errors.
"""
