"""berth's registry side: the distribution wire protocol (shared with the client), the server, its storage and GC.

Layer 2: imports ``oci``, ``errors``, ``content`` and ``metadata`` (for the read-only image store view) only.
"""
