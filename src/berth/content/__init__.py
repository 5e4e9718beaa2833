"""Content-addressed blob store (blobs by digest, verified and renamed into place).

Imports: oci, errors, stdlib.
"""
