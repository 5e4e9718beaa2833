"""SQLite (WAL) metadata in ``berth.db``: images and tags, containers, networks with their attachments and
published ports, volumes; each store owns its tables, ``db.py`` the connection they share.

Imports: oci, errors, stdlib.
"""
