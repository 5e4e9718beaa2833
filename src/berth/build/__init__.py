"""Dockerfile builds: the Dockerfile parser, the build context and .dockerignore, COPY/ADD planning.

Layer 4 (beside ``registry``): may import ``oci``, ``errors``, ``units``, ``kernel``, ``layers`` and ``images``.
The engine (``engine/build.py``) runs the steps: RUN in containers, commits, the layer cache.
"""
