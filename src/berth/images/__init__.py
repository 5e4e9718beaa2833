"""Images: load/save/import, unpacking into snapshots, garbage collection, base-image bootstrap.

Imports: content, snapshots, layers, metadata, kernel, oci, errors.
"""
