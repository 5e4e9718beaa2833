"""The only place that makes raw syscalls (ctypes/os): mounts, dirfd-relative file operations, xattrs.

Imports: stdlib, berth.errors.
"""
