"""Snapshotters (overlayfs and a copy fallback) that return mounts for layered filesystems.

Imports: kernel, oci, errors.
"""
