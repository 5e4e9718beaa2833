"""berth's registry client: auth (challenges, tokens), transport (HTTP/1.1 keep-alive), pull and push.

Imports ``berth.oci``, ``berth.errors``, ``berth.registry.protocol``, ``berth.layers`` and ``berth.images``;
the engine (``berth.engine.registry``) drives it.
"""
