"""SQLite (WAL) metadata: images and tags.

Imports: oci, errors, stdlib.
"""
