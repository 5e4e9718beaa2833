"""Write layer tars from directories: an overlayfs upperdir, the difference of two full trees, or a whole tree.

The output is a POSIX tar (ustar headers, PAX records where a field does not fit) like the one Docker's Go
writer produces: names relative to the root without ``./``, directories with a trailing slash, whole-second
mtimes, numeric owners only, ``security.capability`` and ``user.*`` xattrs as ``SCHILY.xattr.*``, files
that share an inode written once and then as hardlinks. Entries come in sorted order so the same tree
always gives the same bytes (and so the same diff ID, which the build cache relies on).

The trees were written by container processes, so they are walked with directory fds and nothing is ever
followed through a symlink. Whiteouts use the image-spec (AUFS) names: ``.wh.<name>`` and
``<dir>/.wh..wh..opq``.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from berth.kernel import fsops
from berth.oci.digest import Digest

BLOCK = 512
CHUNK = 1 << 20
WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
_XWHITEOUT_XATTRS = ("trusted.overlay.whiteout", "user.overlay.whiteout")
_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

_TYPEFLAG = {stat.S_IFREG: b"0", stat.S_IFLNK: b"2", stat.S_IFCHR: b"3", stat.S_IFBLK: b"4",
             stat.S_IFDIR: b"5", stat.S_IFIFO: b"6"}
_MAX_OCTAL = {8: 0o7777777, 12: 0o77777777777}


def _keep_xattr(key: str) -> bool:
    return key == "security.capability" or (key.startswith("user.") and not key.startswith("user.overlay."))


def _field(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _bytes_field(value: bytes, width: int) -> bytes:
    return value[:width].ljust(width, b"\0")


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode() + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def _split_ustar(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) for a ustar header, or ``None`` when the name needs a PAX record."""
    if len(name) <= 100:
        return b"", name
    for i in range(min(len(name) - 1, 155), 0, -1):
        if name[i : i + 1] == b"/" and len(name) - i - 1 <= 100 and i <= 155 and name[i + 1 :]:
            return name[:i], name[i + 1 :]
    return None


@dataclass(frozen=True)
class _Entry:
    name: str  # archive path, with a trailing slash for directories
    typeflag: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()


class _TarWriter:
    """Streams headers and data to ``out`` while hashing them."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._hash = hashlib.sha256()
        self._inodes: dict[tuple[int, int], str] = {}
        self._buf = bytearray(CHUNK)

    def _write(self, data: bytes | memoryview) -> None:
        self._out.write(data)
        self._hash.update(data)

    def _block(self, e: _Entry, name: bytes, linkname: bytes, typeflag: bytes, size: int) -> bytes:
        split = _split_ustar(name) or (b"", name[:100])
        head = b"".join([
            _bytes_field(split[1], 100), _field(e.mode & 0o7777, 8), _field(min(e.uid, 0o7777777), 8),
            _field(min(e.gid, 0o7777777), 8), _field(min(size, 0o77777777777), 12),
            _field(min(max(e.mtime, 0), 0o77777777777), 12), b" " * 8, typeflag, _bytes_field(linkname, 100),
            b"ustar\x0000", bytes(64), _field(e.devmajor, 8), _field(e.devminor, 8), _bytes_field(split[0], 155),
            bytes(12),
        ])
        chksum = b"%06o\0 " % sum(head)
        return head[:148] + chksum + head[156:]

    def header(self, e: _Entry) -> None:
        name = os.fsencode(e.name)
        linkname = os.fsencode(e.linkname)
        pax: list[bytes] = []
        if _split_ustar(name) is None or not name.isascii():
            pax.append(_pax_record("path", name))
        if len(linkname) > 100 or not linkname.isascii():
            pax.append(_pax_record("linkpath", linkname))
        if e.uid > 0o7777777:
            pax.append(_pax_record("uid", str(e.uid).encode()))
        if e.gid > 0o7777777:
            pax.append(_pax_record("gid", str(e.gid).encode()))
        if e.size > 0o77777777777:
            pax.append(_pax_record("size", str(e.size).encode()))
        if not 0 <= e.mtime <= 0o77777777777:
            pax.append(_pax_record("mtime", str(e.mtime).encode()))
        pax.extend(_pax_record("SCHILY.xattr." + k, v) for k, v in e.xattrs)
        if pax:
            records = b"".join(pax)
            parent, _, base = e.name.rstrip("/").rpartition("/")
            pax_name = os.fsencode(f"{parent + '/' if parent else ''}PaxHeaders.0/{base}")[:100]
            meta = _Entry(name="", typeflag=b"x", mode=0o644, uid=0, gid=0, size=len(records), mtime=e.mtime)
            self._write(self._block(meta, pax_name, b"", b"x", len(records)))
            self._write(records + bytes(-len(records) % BLOCK))
        self._write(self._block(e, name, linkname, e.typeflag, e.size))

    def data_from(self, fd: int, size: int) -> None:
        """Exactly ``size`` bytes from ``fd`` (zero-filled if the file shrank meanwhile), then padding."""
        view = memoryview(self._buf)
        left = size
        while left > 0:
            n = os.readv(fd, [view[: min(left, CHUNK)]])
            if n <= 0:
                break
            self._write(view[:n])
            left -= n
        if left > 0:
            self._write(bytes(left))
        self._write(bytes(-size % BLOCK))

    def node(self, rel: str, dir_fd: int, name: str, st: os.stat_result, *,
             xattrs: dict[str, bytes] | None = None) -> None:
        """Write the node ``name`` in ``dir_fd`` (a fresh lstat ``st``) as archive path ``rel``."""
        fmt = stat.S_IFMT(st.st_mode)
        typeflag = _TYPEFLAG.get(fmt)
        if typeflag is None:
            return  # sockets and other kinds have no tar form
        if xattrs is None:
            xattrs = {} if fmt == stat.S_IFLNK else fsops.xattrs_at(dir_fd, name)
        kept = tuple(sorted((k, v) for k, v in xattrs.items() if _keep_xattr(k)))

        def entry(path: str, flag: bytes, size: int = 0, linkname: str = "") -> _Entry:
            return _Entry(name=path, typeflag=flag, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                          size=size, mtime=int(st.st_mtime), linkname=linkname, devmajor=os.major(st.st_rdev),
                          devminor=os.minor(st.st_rdev), xattrs=kept)

        if fmt == stat.S_IFDIR:
            self.header(entry(rel + "/", typeflag))
        elif fmt == stat.S_IFLNK:
            self.header(entry(rel, typeflag, linkname=os.readlink(name, dir_fd=dir_fd)))
        elif fmt != stat.S_IFREG:
            self.header(entry(rel, typeflag))
        else:
            key = (st.st_dev, st.st_ino)
            first = self._inodes.get(key) if st.st_nlink > 1 else None
            if first is not None:
                self.header(entry(rel, b"1", linkname=first))
                return
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                now = os.fstat(fd)
                if not stat.S_ISREG(now.st_mode):
                    return  # replaced meanwhile by something else
                self.header(entry(rel, typeflag, size=now.st_size))
                self.data_from(fd, now.st_size)
            finally:
                os.close(fd)
            if st.st_nlink > 1:
                self._inodes[key] = rel

    def whiteout(self, rel_dir: str, name: str, st: os.stat_result | None = None, mode: int = 0o600) -> None:
        """An empty regular file named like a whiteout (Docker keeps the owner and time of the node it stands for)."""
        path = f"{rel_dir}/{name}" if rel_dir else name
        uid, gid, mtime = (st.st_uid, st.st_gid, int(st.st_mtime)) if st is not None else (0, 0, 0)
        self.header(_Entry(name=path, typeflag=b"0", mode=mode, uid=uid, gid=gid, size=0, mtime=mtime))

    def finish(self) -> Digest:
        self._write(bytes(2 * BLOCK))
        return Digest("sha256", self._hash.hexdigest())


# (archive path, parent dir fd, name, lstat) -> leave this node out of a diff
Skip = Callable[[str, int, str, os.stat_result], bool]


def _open_root(path: str | os.PathLike[str]) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def walk_tree(root_fd: int) -> Iterator[tuple[str, int, str, os.stat_result]]:
    """Pre-order, sorted walk yielding (archive path, parent fd, name, lstat); never follows symlinks."""
    stack: list[tuple[int, str, Iterator[str]]] = [(os.dup(root_fd), "", iter(sorted(fsops.listdir_at(root_fd))))]
    try:
        while stack:
            fd, rel, names = stack[-1]
            name = next(names, None)
            if name is None:
                os.close(fd)
                stack.pop()
                continue
            st = fsops.lstat_at(fd, name)
            if st is None:
                continue
            path = _join(rel, name)
            yield path, fd, name, st
            if stat.S_ISDIR(st.st_mode):
                sub = os.open(name, _DIR_OPEN, dir_fd=fd)
                stack.append((sub, path, iter(sorted(os.listdir(sub)))))
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def write_tree(root: str | os.PathLike[str], out: BinaryIO) -> Digest:
    """The whole tree under ``root`` as a tar (``docker export``, the first layer of an import)."""
    w = _TarWriter(out)
    root_fd = _open_root(root)
    try:
        for path, fd, name, st in walk_tree(root_fd):
            w.node(path, fd, name, st)
    finally:
        os.close(root_fd)
    return w.finish()


def _is_whiteout(fd: int, name: str, st: os.stat_result, xattrs: dict[str, bytes] | None) -> bool:
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return True
    return bool(stat.S_ISREG(st.st_mode) and st.st_size == 0 and xattrs
                and any(k in xattrs for k in _XWHITEOUT_XATTRS))


def write_overlay_diff(upper: str | os.PathLike[str], out: BinaryIO, skip: Skip | None = None) -> Digest:
    """The layer tar of an overlayfs upperdir: char 0/0 nodes become ``.wh.<name>``, opaque dirs get
    ``<dir>/.wh..wh..opq``, overlay's own ``trusted.overlay.*`` xattrs are left out. Nodes ``skip`` picks are
    not written (their children are still visited)."""
    w = _TarWriter(out)
    root_fd = _open_root(upper)
    try:
        for path, fd, name, st in walk_tree(root_fd):
            if skip is not None and skip(path, fd, name, st):
                continue
            xattrs = None if stat.S_ISLNK(st.st_mode) else fsops.xattrs_at(fd, name)
            if _is_whiteout(fd, name, st, xattrs):
                w.whiteout(path.rpartition("/")[0], WHITEOUT_PREFIX + name, st)
                continue
            w.node(path, fd, name, st, xattrs=xattrs)
            if stat.S_ISDIR(st.st_mode) and xattrs and any(xattrs.get(k) == b"y" for k in _OPAQUE_XATTRS):
                w.whiteout(path, OPAQUE, st, stat.S_IMODE(st.st_mode))
    finally:
        os.close(root_fd)
    return w.finish()


def _same(a: os.stat_result, b: os.stat_result, ax: dict[str, bytes], bx: dict[str, bytes]) -> bool:
    """Whether a node is unchanged (Docker's rule: type, mode, owner, rdev, xattrs, mtime; size for non-dirs)."""
    if (a.st_mode, a.st_uid, a.st_gid, a.st_rdev) != (b.st_mode, b.st_uid, b.st_gid, b.st_rdev):
        return False
    if stat.S_ISREG(a.st_mode) and a.st_nlink != b.st_nlink:
        return False  # a new hardlink to it: write it so the new name can link to it in this tar
    if {k: v for k, v in ax.items() if _keep_xattr(k)} != {k: v for k, v in bx.items() if _keep_xattr(k)}:
        return False
    if a.st_mtime_ns != b.st_mtime_ns:
        return False
    return stat.S_ISDIR(a.st_mode) or a.st_size == b.st_size


def write_tree_diff(lower: str | os.PathLike[str] | None, upper: str | os.PathLike[str], out: BinaryIO,
                    skip: Skip | None = None) -> Digest:
    """The layer tar that turns the tree ``lower`` into the tree ``upper`` (copy snapshotter): added and
    changed entries, ``.wh.<name>`` for removed ones. With no ``lower``, the whole of ``upper``. Added nodes
    that ``skip`` picks are not written."""
    if lower is None:
        return write_tree(upper, out)
    w = _TarWriter(out)
    lower_fd = _open_root(lower)
    try:
        upper_fd = _open_root(upper)
    except BaseException:
        os.close(lower_fd)
        raise
    # Each level: (lower dir fd or -1, upper dir fd, archive path, names to visit in order); closed on pop.
    stack: list[tuple[int, int, str, Iterator[str]]] = [(lower_fd, upper_fd, "", iter(()))]
    try:
        stack[0] = (lower_fd, upper_fd, "", _merged_names(lower_fd, upper_fd))
        while stack:
            lfd, ufd, rel, names = stack[-1]
            name = next(names, None)
            if name is None:
                stack.pop()
                if lfd >= 0:
                    os.close(lfd)
                os.close(ufd)
                continue
            path = _join(rel, name)
            ust = fsops.lstat_at(ufd, name)
            lst = fsops.lstat_at(lfd, name) if lfd >= 0 else None
            if ust is None:
                if lst is not None:
                    w.whiteout(rel, WHITEOUT_PREFIX + name)
                continue
            ux = {} if stat.S_ISLNK(ust.st_mode) else fsops.xattrs_at(ufd, name)
            both_dirs = lst is not None and stat.S_ISDIR(lst.st_mode) and stat.S_ISDIR(ust.st_mode)
            if lst is None and skip is not None and skip(path, ufd, name, ust):
                if stat.S_ISDIR(ust.st_mode):
                    sub = os.open(name, _DIR_OPEN, dir_fd=ufd)
                    stack.append((-1, sub, path, iter(sorted(os.listdir(sub)))))
                continue
            if lst is None or not both_dirs:
                changed = lst is None or not _same(lst, ust, _lx(lfd, name, lst), ux)
                if changed or (stat.S_ISLNK(ust.st_mode)
                               and os.readlink(name, dir_fd=lfd) != os.readlink(name, dir_fd=ufd)):
                    w.node(path, ufd, name, ust, xattrs=ux)
                    if stat.S_ISDIR(ust.st_mode):
                        sub = os.open(name, _DIR_OPEN, dir_fd=ufd)
                        stack.append((-1, sub, path, iter(sorted(os.listdir(sub)))))
                continue
            assert lst is not None
            if not _same(lst, ust, _lx(lfd, name, lst), ux):
                w.node(path, ufd, name, ust, xattrs=ux)
            lsub = os.open(name, _DIR_OPEN, dir_fd=lfd)
            try:
                usub = os.open(name, _DIR_OPEN, dir_fd=ufd)
            except BaseException:
                os.close(lsub)
                raise
            stack.append((lsub, usub, path, _merged_names(lsub, usub)))
    finally:
        for lfd, ufd, _, _ in stack:
            if lfd >= 0:
                os.close(lfd)
            os.close(ufd)
    return w.finish()


def _lx(lfd: int, name: str, lst: os.stat_result) -> dict[str, bytes]:
    return {} if stat.S_ISLNK(lst.st_mode) else fsops.xattrs_at(lfd, name)


def _merged_names(lfd: int, ufd: int) -> Iterator[str]:
    names = set(os.listdir(ufd))
    if lfd >= 0:
        names.update(os.listdir(lfd))
    return iter(sorted(names))
