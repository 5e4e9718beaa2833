"""inotify(7) through ctypes: an instance fd, watches on directories, and the event records read from it.

The fd is non-blocking and close-on-exec, meant for an event loop's reader: :func:`read_events` drains what
is there and returns the parsed records (an empty list when nothing is pending).
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass

IN_ACCESS = 0x00000001
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_MASK_ADD = 0x20000000

IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (struct inotify_event, then len bytes of name)
_READ_SIZE = 64 * 1024

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Event:
    """One inotify record: the watch it came from, what happened, and the entry's name ("" for the dir itself)."""

    wd: int
    mask: int
    cookie: int
    name: str


def _check(rc: int, what: str, path: str | None = None) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return rc


def init(flags: int = IN_NONBLOCK | IN_CLOEXEC) -> int:
    """A new inotify instance (``inotify_init1``); the caller closes the fd."""
    return _check(int(_libc.inotify_init1(ctypes.c_int(flags))), "inotify_init1")


def add_watch(fd: int, path: str | os.PathLike[str], mask: int) -> int:
    """Watch ``path`` for ``mask``; the same inode gives the same watch descriptor (masks replace, or add
    with ``IN_MASK_ADD``)."""
    p = os.fspath(path)
    return _check(int(_libc.inotify_add_watch(ctypes.c_int(fd), os.fsencode(p), ctypes.c_uint32(mask))),
                  "inotify_add_watch", p)


def rm_watch(fd: int, wd: int) -> None:
    """Drop a watch (the kernel then queues ``IN_IGNORED`` for it)."""
    _check(int(_libc.inotify_rm_watch(ctypes.c_int(fd), ctypes.c_int(wd))), "inotify_rm_watch")


def parse(buf: bytes) -> list[Event]:
    """The records in one ``read`` of an inotify fd (the kernel never splits a record across reads)."""
    out: list[Event] = []
    offset = 0
    while offset + _HEADER.size <= len(buf):
        wd, mask, cookie, length = _HEADER.unpack_from(buf, offset)
        offset += _HEADER.size
        raw = buf[offset:offset + length].split(b"\0", 1)[0]
        offset += length
        out.append(Event(wd, mask, cookie, os.fsdecode(raw)))
    return out


def read_events(fd: int) -> list[Event]:
    """Every record pending on a non-blocking inotify fd."""
    out: list[Event] = []
    while True:
        try:
            buf = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return out
        if not buf:
            return out
        out += parse(buf)
