"""``docker cp``, ``docker diff`` and ``docker export``: a container's files read and written from the host.

Where the files are: a running container's bundle rootfs (``<exec-root>/bundles/<id>/rootfs``, which
``berth.engine.running`` mounts while it runs), otherwise the container's snapshot, mounted for the length of one
call in a fresh directory under the scratch directory. Either way the work happens below one directory fd, and
every path a client names is resolved there with chroot semantics (``berth.kernel.fsops``): a container's
``/test -> /tmp`` symlink means the container's ``/tmp``, never the host's, and nothing is ever followed out.

* ``stat_path``, ``get_archive``, ``put_archive``: the archive endpoints. Docker's ``ResolvePath`` rule holds:
  the parent of the requested path is resolved (symlinks followed in the root), its last component is not.
* ``changes``: ``docker diff``, from the snapshot's upper dir (overlay) or a compare with the parent's tree (copy).
* ``export`` and ``write_layer``: the whole tree as a tar, and the container's diff as a layer tar (commit).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import posixpath
import stat
import tarfile
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, BinaryIO

from berth.engine.containers import ContainerService, State
from berth.errors import BerthError, Forbidden, InternalError, InvalidArgument, NotFound, NotImplementedYet
from berth.kernel import fsops
from berth.kernel.mount import mounted
from berth.layers.diff import walk_tree, write_overlay_diff, write_tree, write_tree_diff
from berth.oci.digest import Digest
from berth.runtime.users import resolve_user

STAT_HEADER = "X-Docker-Container-Path-Stat"
CHUNK = 1 << 20

# Go's os.FileMode type bits, which the path-stat header carries instead of POSIX S_IF* (engine-api §0.25)
GO_DIR = 1 << 31
GO_SYMLINK = 1 << 27
GO_DEVICE = 1 << 26
GO_PIPE = 1 << 25
GO_SOCKET = 1 << 24
GO_SETUID = 1 << 23
GO_SETGID = 1 << 22
GO_CHARDEV = 1 << 21
GO_STICKY = 1 << 20

CHANGE_MODIFY = 0
CHANGE_ADD = 1
CHANGE_DELETE = 2

MAX_SYMLINKS = 40
# Mount points the runtime makes in a container's own snapshot; dockerd keeps them in a separate init layer, so
# they never show in ``docker diff``.
INIT_PATHS = frozenset({"/dev", "/dev/pts", "/dev/shm", "/dev/console", "/proc", "/sys", "/.dockerenv",
                        "/etc/resolv.conf", "/etc/hosts", "/etc/hostname", "/etc/mtab"})
_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
_HOST_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EMFILE, errno.ENFILE, errno.ENOMEM)
_OPAQUE_XATTR = "trusted.overlay.opaque"
_GO_TYPE = {stat.S_IFDIR: GO_DIR, stat.S_IFLNK: GO_SYMLINK, stat.S_IFBLK: GO_DEVICE,
            stat.S_IFCHR: GO_DEVICE | GO_CHARDEV, stat.S_IFIFO: GO_PIPE, stat.S_IFSOCK: GO_SOCKET}
_TAR_KIND = {stat.S_IFCHR: tarfile.CHRTYPE, stat.S_IFBLK: tarfile.BLKTYPE, stat.S_IFIFO: tarfile.FIFOTYPE}


def go_file_mode(st_mode: int) -> int:
    """A POSIX ``st_mode`` as Go's ``os.FileMode``: permission bits plus Go's own type and special bits."""
    mode = (st_mode & 0o777) | _GO_TYPE.get(stat.S_IFMT(st_mode), 0)
    for bit, go in ((stat.S_ISUID, GO_SETUID), (stat.S_ISGID, GO_SETGID), (stat.S_ISVTX, GO_STICKY)):
        if st_mode & bit:
            mode |= go
    return mode


def rfc3339_nano(ns: int) -> str:
    """Go's RFC3339Nano in UTC: fractional seconds without trailing zeros."""
    secs, frac = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{frac:09d}".rstrip("0") if frac else "") + "Z"


@dataclass(frozen=True)
class PathStat:
    """What ``HEAD /containers/{id}/archive`` reports about one path."""

    name: str
    size: int
    mode: int  # Go FileMode
    mtime: str
    link_target: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "mode": self.mode, "mtime": self.mtime,
                "linkTarget": self.link_target}

    def header_value(self) -> str:
        """Standard base64 of the JSON, the ``X-Docker-Container-Path-Stat`` header."""
        return base64.b64encode(json.dumps(self.to_json(), separators=(",", ":")).encode()).decode()

    @property
    def is_dir(self) -> bool:
        return bool(self.mode & GO_DIR)


@dataclass(frozen=True)
class _Request:
    """A client path split the way Docker's ``ResolvePath`` does: resolve ``parent``, do not follow ``base``."""

    shown: str  # the absolute, cleaned path (trailing "/" or "/." kept)
    parent: tuple[str, ...]
    base: str  # "" when the path names a directory itself (trailing "/", "/." or the root)

    @classmethod
    def parse(cls, path: str) -> _Request:
        if not path:
            raise InvalidArgument("Path cannot be empty")
        if "\0" in path:
            raise InvalidArgument(f"invalid path {path!r}")
        shown = posixpath.normpath("/" + path.lstrip("/"))
        if shown != "/" and (path.endswith("/.") or path == "."):
            shown += "/."
        elif shown != "/" and path.endswith("/"):
            shown += "/"
        head, _, base = shown.rpartition("/")
        return cls(shown, tuple(fsops.split(head)), "" if base == "." else base)

    @property
    def go_base(self) -> str:
        """Go's ``filepath.Base`` of the path: the name entries are rebased to."""
        trimmed = self.shown.rstrip("/")
        return trimmed.rpartition("/")[2] if trimmed else "/"


@dataclass(frozen=True)
class _Layout:
    """Where a container's changes are: an overlay upper dir over ``lowers``, or a full tree over its parent's."""

    upper: Path
    lowers: tuple[Path, ...]  # overlay: lower dirs, nearest first; tree: the parent's tree, or nothing
    overlay: bool


def _not_found(path: str, ref: str) -> NotFound:
    return NotFound(f"Could not find the file {path} in container {ref}")


def _fs_error(err: OSError, what: str) -> BerthError:
    """A host error while touching a container's files, as the kind Docker answers with."""
    msg = f"{what}: {err.strerror or err}"
    if err.errno == errno.EROFS:
        return Forbidden(f"{what}: container rootfs is marked read-only")
    if err.errno in _HOST_ERRNOS:
        return InternalError(msg)
    return InvalidArgument(msg)


def _open_mounted(path: Path) -> int | None:
    """A directory fd for ``path`` if something is mounted there now (the check is made on the fd we keep)."""
    try:
        fd = os.open(path, _DIR_OPEN)
    except OSError:
        return None
    try:
        if os.fstat(fd).st_dev != os.stat(path.parent).st_dev:
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def canonical(root_fd: int, parts: list[str]) -> list[str]:
    """Resolve ``parts`` below ``root_fd`` like Docker's ``FollowSymlinkInScope``: every symlink followed with
    chroot semantics, the real names returned; from the first missing component on, the rest is kept lexically."""
    pending: deque[str] = deque(parts)
    where: list[str] = []
    links = 0
    fd = os.dup(root_fd)
    try:
        while pending:
            name = pending.popleft()
            if name in ("", "."):
                continue
            if name == "..":
                if where:
                    where.pop()
                    os.close(fd)
                    fd = -1
                    fd = fsops.walk_dir(root_fd, where)
                continue
            st = fsops.lstat_at(fd, name)
            if st is None:
                rest = [name, *pending]
                for p in rest:
                    if p == "..":
                        if where:
                            where.pop()
                    elif p not in ("", "."):
                        where.append(p)
                return where
            if stat.S_ISLNK(st.st_mode):
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), name)
                target = os.readlink(name, dir_fd=fd)
                if target.startswith("/"):
                    os.close(fd)
                    fd = -1
                    fd = os.dup(root_fd)
                    where.clear()
                pending.extendleft(reversed(target.split("/")))
            elif stat.S_ISDIR(st.st_mode):
                nxt = fsops.open_child_dir(fd, name)
                os.close(fd)
                fd = nxt
                where.append(name)
            elif pending and any(p not in ("", ".") for p in pending):
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), name)
            else:
                where.append(name)
        return where
    finally:
        if fd >= 0:
            os.close(fd)


class _FdReader:
    """Exactly ``size`` bytes of a file for ``tarfile`` (zeros if it shrank meanwhile: the header is already out)."""

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._left = size

    def read(self, n: int = -1) -> bytes:
        want = self._left if n < 0 else min(n, self._left)
        if want <= 0:
            return b""
        data = os.read(self._fd, want) or bytes(want)
        self._left -= len(data)
        return data


class _TarOut:
    """Nodes of a container's tree written as tar entries (numeric owners, hardlinks kept, sockets skipped)."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self._inodes: dict[tuple[int, int], str] = {}

    def node(self, arcname: str, dir_fd: int, name: str, st: os.stat_result) -> None:
        fmt = stat.S_IFMT(st.st_mode)
        ti = tarfile.TarInfo(arcname)
        ti.mode = stat.S_IMODE(st.st_mode)
        ti.uid, ti.gid = st.st_uid, st.st_gid
        ti.uname = ti.gname = ""
        ti.mtime = int(st.st_mtime)
        if fmt == stat.S_IFDIR:
            ti.type = tarfile.DIRTYPE
            self.tar.addfile(ti)
        elif fmt == stat.S_IFLNK:
            ti.type = tarfile.SYMTYPE
            ti.linkname = os.readlink(name, dir_fd=dir_fd)
            self.tar.addfile(ti)
        elif fmt in _TAR_KIND:
            ti.type = _TAR_KIND[fmt]
            ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            self.tar.addfile(ti)
        elif fmt == stat.S_IFREG:
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in self._inodes:
                ti.type = tarfile.LNKTYPE
                ti.linkname = self._inodes[key]
                self.tar.addfile(ti)
                return
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                now = os.fstat(fd)
                if not stat.S_ISREG(now.st_mode):
                    return  # replaced meanwhile by something else
                ti.size = now.st_size
                self.tar.addfile(ti, _FdReader(fd, now.st_size))
            finally:
                os.close(fd)
            if st.st_nlink > 1:
                self._inodes[key] = arcname


class _Extractor:
    """Unpack a ``docker cp`` tar into the directory ``dest`` (real names below ``root_fd``).

    Docker's ``archive.Unpack`` rules, not a layer apply: no whiteouts, missing parents are made 0755, an
    existing node is replaced unless both are directories, ``noOverwriteDirNonDir`` refuses replacing a directory
    by a non-directory and the reverse. Every parent is resolved from the container's root (so a symlink inside
    the tree resolves as it would in the container) and the last component is never followed.
    """

    def __init__(self, root_fd: int, dest: list[str], *, no_overwrite_dir_non_dir: bool,
                 owner: tuple[int, int] | None) -> None:
        self.root_fd = root_fd
        self.dest = dest
        self.no_overwrite = no_overwrite_dir_non_dir
        self.owner = owner
        self._dirs: dict[str, int] = {}
        self._dir_times: list[tuple[tuple[str, ...], int]] = []

    def close(self) -> None:
        self.invalidate()

    def invalidate(self) -> None:
        for fd in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def parent(self, parts: list[str]) -> int:
        key = "/".join(parts)
        fd = self._dirs.get(key)
        if fd is None:
            if len(self._dirs) >= 64:
                self.invalidate()
            fd = fsops.open_dir(self.root_fd, [*self.dest, *parts], create=True)
            self._dirs[key] = fd
        return fd

    def shown(self, parts: list[str]) -> str:
        return "/" + "/".join([*self.dest, *parts])

    def entry(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = _entry_parts(member.name)
        if not parts:
            return  # "." is the destination itself, which exists
        *parent, base = parts
        pfd = self.parent(parent)
        existing = fsops.lstat_at(pfd, base)
        if existing is not None:
            is_dir = stat.S_ISDIR(existing.st_mode)
            if self.no_overwrite and is_dir and not member.isdir():
                raise InvalidArgument(f'cannot overwrite directory "{self.shown(parts)}" with non-directory '
                                      f'"{self.shown([])}"')
            if self.no_overwrite and not is_dir and member.isdir():
                raise InvalidArgument(f'cannot overwrite non-directory "{self.shown(parts)}" with directory '
                                      f'"{self.shown([])}"')
            if not (is_dir and member.isdir()):
                fsops.remove_at(pfd, base)
                if is_dir or stat.S_ISLNK(existing.st_mode):
                    self.invalidate()  # cached parents may have been reached through it
                    pfd = self.parent(parent)
                existing = None
        uid, gid = self.owner if self.owner is not None else (member.uid, member.gid)
        mtime_ns = int(member.mtime) * 1_000_000_000
        if member.isdir():
            if existing is None:
                fsops.mkdir_at(pfd, base, 0o700)
            self._attrs(pfd, base, member, uid, gid)
            self._dir_times.append((tuple(parts), mtime_ns))
        elif member.isreg():
            src = tar.extractfile(member)
            assert src is not None
            fd = fsops.create_at(pfd, base)
            try:
                while chunk := src.read(CHUNK):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
                os.fchown(fd, uid, gid)
                _set_xattrs(member, lambda k, v: os.setxattr(fd, k, v))
                os.fchmod(fd, member.mode & 0o7777)  # after chown, which clears setuid/setgid
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)
        elif member.issym():
            fsops.symlink_at(member.linkname, pfd, base)
            fsops.chown_at(pfd, base, uid, gid)
            fsops.utime_at(pfd, base, mtime_ns, mtime_ns)
        elif member.islnk():
            target = _entry_parts(member.linkname)
            if not target:
                raise InvalidArgument(f"invalid hardlink target {member.linkname!r}")
            *tparent, tbase = target
            tfd = fsops.open_dir(self.root_fd, [*self.dest, *tparent])
            try:
                fsops.link_at(tfd, tbase, pfd, base)
            finally:
                os.close(tfd)
        elif member.ischr() or member.isblk() or member.isfifo():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
            fsops.mknod_at(pfd, base, kind | 0o600, os.makedev(member.devmajor, member.devminor))
            self._attrs(pfd, base, member, uid, gid)
            fsops.utime_at(pfd, base, mtime_ns, mtime_ns)
        # other kinds (GNU volume headers and the like) are skipped, as Docker does

    def _attrs(self, pfd: int, base: str, member: tarfile.TarInfo, uid: int, gid: int) -> None:
        fsops.chown_at(pfd, base, uid, gid)
        _set_xattrs(member, lambda k, v: fsops.set_xattr_at(pfd, base, k, v))
        fsops.chmod_at(pfd, base, member.mode & 0o7777)

    def finish(self) -> None:
        """Directory times last: creating their children changed them."""
        self.invalidate()
        for parts, mtime_ns in reversed(self._dir_times):
            with contextlib.suppress(OSError):
                pfd = fsops.open_dir(self.root_fd, [*self.dest, *parts[:-1]])
                try:
                    if stat.S_ISDIR(os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False).st_mode):
                        fsops.utime_at(pfd, parts[-1], mtime_ns, mtime_ns)
                finally:
                    os.close(pfd)


def _entry_parts(name: str) -> list[str]:
    """An archive path as components below the destination; refuses names that climb out of it."""
    if "\0" in name:
        raise InvalidArgument(f"invalid tar entry name {name!r}")
    cleaned = posixpath.normpath("/" + name).lstrip("/")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    depth = 0
    for p in parts:
        depth += -1 if p == ".." else 1
        if depth < 0:
            raise InvalidArgument(f"invalid tar entry {name!r}: it is outside of the destination")
    return [p for p in cleaned.split("/") if p]


def _set_xattrs(member: tarfile.TarInfo, setter: Callable[[str, bytes], None]) -> None:
    """PAX ``SCHILY.xattr.*`` records, best effort like Docker; ``trusted.*`` (overlay metadata) never."""
    for key, value in member.pax_headers.items():
        if not key.startswith("SCHILY.xattr.") or key.startswith("SCHILY.xattr.trusted."):
            continue
        with contextlib.suppress(OSError, ValueError):
            setter(key[len("SCHILY.xattr."):], value.encode("utf-8", "surrogateescape"))


def _lstat_below(root_fd: int, parts: list[str]) -> os.stat_result | None:
    """lstat of ``parts`` below ``root_fd`` through real directories only (a lower layer, no symlinks followed)."""
    fd = os.dup(root_fd)
    try:
        for name in parts[:-1]:
            nxt = fsops.open_child_dir(fd, name)
            os.close(fd)
            fd = nxt
        return fsops.lstat_at(fd, parts[-1])
    except OSError as e:
        if e.errno in _MISSING:
            return None
        raise
    finally:
        os.close(fd)


def _same_time(a: os.stat_result, b: os.stat_result) -> bool:
    """Docker's ``sameFsTime``: equal, or equal seconds when either side has no sub-second part."""
    if a.st_mtime_ns == b.st_mtime_ns:
        return True
    (sa, na), (sb, nb) = divmod(a.st_mtime_ns, 10**9), divmod(b.st_mtime_ns, 10**9)
    return sa == sb and (na == 0 or nb == 0)


def _capability(fd: int, name: str) -> bytes | None:
    return fsops.xattrs_at(fd, name).get("security.capability")


def _modified(old: os.stat_result, new: os.stat_result, ofd: int, nfd: int, name: str) -> bool:
    """Docker's tree-compare rule: type/mode, owner, rdev, capability; size and mtime for non-directories only."""
    if (old.st_mode, old.st_uid, old.st_gid, old.st_rdev) != (new.st_mode, new.st_uid, new.st_gid, new.st_rdev):
        return True
    if not stat.S_ISDIR(old.st_mode) and (old.st_size != new.st_size or not _same_time(old, new)):
        return True
    if stat.S_ISLNK(new.st_mode):
        return False
    return _capability(ofd, name) != _capability(nfd, name)


def _init_placeholder(path: str, st: os.stat_result) -> bool:
    """An init-layer mount point as the runtime leaves it: a directory, an empty file or a symlink."""
    return path in INIT_PATHS and (stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)
                                   or (stat.S_ISREG(st.st_mode) and st.st_size == 0))


def _only_placeholders(dir_fd: int, name: str, path: str) -> bool:
    """Whether the directory ``name`` holds nothing but init-layer mount points (what made it differ)."""
    sub = os.open(name, _DIR_OPEN, dir_fd=dir_fd)
    try:
        children = os.listdir(sub)
        if not children:
            return False
        for child in children:
            st = fsops.lstat_at(sub, child)
            if st is not None and not _init_placeholder(f"{path}/{child}", st):
                return False
        return True
    finally:
        os.close(sub)


def _change(path: str, kind: int) -> dict[str, Any]:
    return {"Path": path, "Kind": kind}


def overlay_changes(upper: Path, lowers: tuple[Path, ...]) -> list[dict[str, Any]]:
    """``docker diff`` of an overlay upper dir: Docker's ``OverlayChanges`` (whiteouts and opaque dirs are
    deletions; a parent of an added or deleted path counts as modified)."""
    changes: list[dict[str, Any]] = []
    changed_dirs: set[str] = set()
    lower_fds: list[int] = []
    upper_fd = os.open(upper, _DIR_OPEN)
    try:
        for lower in lowers:
            lower_fds.append(os.open(lower, _DIR_OPEN))
        for rel, fd, name, st in walk_tree(upper_fd):
            path = "/" + rel
            is_dir = stat.S_ISDIR(st.st_mode)
            deleted = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
            if is_dir and fsops.xattrs_at(fd, name).get(_OPAQUE_XATTR) == b"y":
                deleted = True
            kind = CHANGE_DELETE if deleted else CHANGE_ADD
            if not deleted and _init_placeholder(path, st) and not any(
                    _lstat_below(lfd, rel.split("/")) for lfd in lower_fds):
                continue
            if not deleted:
                parts = rel.split("/")
                same_dir = False
                for lfd in lower_fds:
                    lst = _lstat_below(lfd, parts)
                    if lst is None:
                        continue
                    if stat.S_ISDIR(lst.st_mode) and is_dir and lst.st_size == st.st_size \
                            and lst.st_mode == st.st_mode and _same_time(lst, st):
                        same_dir = True  # only the parent of something that changed
                    kind = CHANGE_MODIFY
                    break
                if same_dir or (is_dir and kind == CHANGE_MODIFY and _only_placeholders(fd, name, path)):
                    continue
            if is_dir:
                changed_dirs.add(path)
            if kind in (CHANGE_ADD, CHANGE_DELETE):
                parent = posixpath.dirname(path)
                if parent != "/" and parent not in changed_dirs:
                    changes.append(_change(parent, CHANGE_MODIFY))
                    changed_dirs.add(parent)
            changes.append(_change(path, kind))
    finally:
        for lfd in lower_fds:
            os.close(lfd)
        os.close(upper_fd)
    return changes


def tree_changes(old: Path | None, new: Path) -> list[dict[str, Any]]:
    """``docker diff`` of a full tree against its parent's tree: Docker's ``ChangesDirs``, in name order."""
    changes: list[dict[str, Any]] = []

    def names(ofd: int, nfd: int) -> Iterator[str]:
        found = set(os.listdir(nfd))
        if ofd >= 0:
            found.update(os.listdir(ofd))
        return iter(sorted(found))

    nfd = os.open(new, _DIR_OPEN)
    try:
        ofd = os.open(old, _DIR_OPEN) if old is not None else -1
    except BaseException:
        os.close(nfd)
        raise
    # one frame per open directory: (old fd or -1, new fd, path, names, changes before it, itself recorded)
    stack: list[tuple[int, int, str, Iterator[str], int, bool]] = [(ofd, nfd, "", iter(()), 0, True)]
    try:
        stack[0] = (ofd, nfd, "", names(ofd, nfd), 0, True)
        while stack:
            ofd, nfd, rel, it, at, recorded = stack[-1]
            name = next(it, None)
            if name is None:
                stack.pop()
                if ofd >= 0:
                    os.close(ofd)
                os.close(nfd)
                if len(changes) > at and not recorded:
                    changes.insert(at, _change("/" + rel, CHANGE_MODIFY))  # keeps the dir's modes on apply
                continue
            path = f"{rel}/{name}" if rel else name
            nst = fsops.lstat_at(nfd, name)
            ost = fsops.lstat_at(ofd, name) if ofd >= 0 else None
            if nst is None:
                if ost is not None:
                    changes.append(_change("/" + path, CHANGE_DELETE))
                continue
            own = True
            if ost is None and _init_placeholder("/" + path, nst):
                continue
            if ost is None:
                changes.append(_change("/" + path, CHANGE_ADD))
            elif _modified(ost, nst, ofd, nfd, name):
                changes.append(_change("/" + path, CHANGE_MODIFY))
            else:
                own = False
            if stat.S_ISDIR(nst.st_mode):
                sub_new = os.open(name, _DIR_OPEN, dir_fd=nfd)
                sub_old = -1
                if ost is not None and stat.S_ISDIR(ost.st_mode):
                    try:
                        sub_old = os.open(name, _DIR_OPEN, dir_fd=ofd)
                    except BaseException:
                        os.close(sub_new)
                        raise
                stack.append((sub_old, sub_new, path, names(sub_old, sub_new), len(changes), own))
    finally:
        for ofd, nfd, _, _, _, _ in stack:
            if ofd >= 0:
                os.close(ofd)
            os.close(nfd)
    return changes


class ArchiveService:
    """The filesystem verbs on containers (blocking; call from worker threads)."""

    def __init__(self, containers: ContainerService, bundles: Path, scratch: Path) -> None:
        self.containers = containers
        self.bundles = bundles  # berth.engine.running's <exec-root>/bundles
        self.scratch = scratch

    # --- where the files are -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _root(self, cid: str, doc: dict[str, Any]) -> Iterator[int]:
        """A directory fd for the container's root filesystem, for the duration of the block."""
        if State(doc["State"]["Status"]).is_active():
            fd = _open_mounted(self.bundles / cid / "rootfs")
            if fd is not None:
                try:
                    yield fd
                finally:
                    os.close(fd)
                return
        self.scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self.scratch / f"fs-{uuid.uuid4().hex}"
        target.mkdir(mode=0o700)
        try:
            with mounted(self.containers.snapshotter.mounts(cid), target):
                fd = os.open(target, _DIR_OPEN)
                try:
                    yield fd
                finally:
                    os.close(fd)
        finally:
            with contextlib.suppress(OSError):
                target.rmdir()

    @contextlib.contextmanager
    def root(self, ref: str) -> Iterator[int]:
        """A directory fd for a container's root filesystem (mounted for the block when it is not running)."""
        cid, _name, doc = self.containers.resolve(ref)
        with self._root(cid, doc) as fd:
            yield fd

    def ensure_dir(self, ref: str, path: str, uid: int = 0, gid: int = 0) -> bool:
        """``mkdir -p`` in a container's tree, symlinks resolved in-root (a build's COPY destination). The
        directories it makes get ``uid:gid`` and 0755; True when ``path`` is now a directory that existed."""
        cid, _name, doc = self.containers.resolve(ref)
        with self._root(cid, doc) as root_fd:
            parts = canonical(root_fd, fsops.split(path))
            existed = True
            fd = os.dup(root_fd)
            try:
                for part in parts:
                    st = fsops.lstat_at(fd, part)
                    if st is None:
                        existed = False
                        fsops.mkdir_at(fd, part, 0o755)
                        fsops.chmod_at(fd, part, 0o755)
                        if (uid, gid) != (0, 0):
                            fsops.chown_at(fd, part, uid, gid)
                    elif not stat.S_ISDIR(st.st_mode):
                        raise InvalidArgument(f"failed to copy files: mkdir {path}: not a directory")
                    nfd = fsops.open_child_dir(fd, part)
                    os.close(fd)
                    fd = nfd
            finally:
                os.close(fd)
            return existed

    def layout(self, cid: str) -> _Layout:
        """The directories that hold what the container changed, from its snapshot's mounts."""
        snapshotter = self.containers.snapshotter
        mounts = snapshotter.mounts(cid)
        if len(mounts) == 1 and mounts[0].type == "overlay":
            opts = dict(o.split("=", 1) for o in mounts[0].options if "=" in o)
            if "upperdir" in opts and "lowerdir" in opts:
                return _Layout(Path(opts["upperdir"]), tuple(Path(p) for p in opts["lowerdir"].split(":")), True)
        elif len(mounts) == 1 and mounts[0].is_bind:
            parent = snapshotter.stat(cid).parent
            if parent is None:
                return _Layout(Path(mounts[0].source), (), False)
            below = snapshotter.mounts(parent)
            if len(below) == 1 and below[0].is_bind:
                return _Layout(Path(mounts[0].source), (Path(below[0].source),), False)
        raise NotImplementedYet(f"the {snapshotter.name} snapshotter's layout is not supported for container diffs")

    # --- docker cp -----------------------------------------------------------------------------------

    def _stat(self, root_fd: int, req: _Request, ref: str) -> PathStat:
        try:
            pfd = fsops.open_dir(root_fd, list(req.parent))
        except OSError as e:
            if e.errno in _MISSING:
                raise _not_found(req.shown, ref) from None
            raise _fs_error(e, req.shown) from e
        try:
            st = os.fstat(pfd) if not req.base else fsops.lstat_at(pfd, req.base)
        finally:
            os.close(pfd)
        if st is None:
            raise _not_found(req.shown, ref)
        link = ""
        if stat.S_ISLNK(st.st_mode):
            try:
                link = "/" + "/".join(canonical(root_fd, [*req.parent, req.base]))
            except OSError:
                link = os.path.normpath("/" + "/".join([*req.parent, req.base]))
        return PathStat(req.go_base, st.st_size, go_file_mode(st.st_mode), rfc3339_nano(st.st_mtime_ns), link)

    def stat_path(self, ref: str, path: str) -> PathStat:
        """``HEAD /containers/{id}/archive``: the path's own stat (a final symlink is not followed)."""
        req = _Request.parse(path)
        cid, _name, doc = self.containers.resolve(ref)
        with self._root(cid, doc) as root_fd:
            return self._stat(root_fd, req, ref)

    def get_archive(self, ref: str, path: str, out: IO[bytes]) -> None:
        """``GET /containers/{id}/archive``: a tar of the path, entries named after its last component."""
        req = _Request.parse(path)
        cid, name, doc = self.containers.resolve(ref)
        with self._root(cid, doc) as root_fd:
            st = self._stat(root_fd, req, ref)
            pfd = fsops.open_dir(root_fd, list(req.parent))
            try:
                with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                    tar = _TarOut(tf)
                    if not st.is_dir:
                        node = fsops.lstat_at(pfd, req.base)
                        if node is None:
                            raise _not_found(req.shown, ref)
                        tar.node(req.go_base, pfd, req.base, node)
                    else:
                        dfd = pfd if not req.base else fsops.open_child_dir(pfd, req.base)
                        try:
                            prefix = "" if req.go_base == "/" else req.go_base
                            if prefix:
                                tar.node(prefix, dfd, ".", os.stat(".", dir_fd=dfd, follow_symlinks=False))
                            for rel, fd, entry, est in walk_tree(dfd):
                                tar.node(f"{prefix}/{rel}" if prefix else rel, fd, entry, est)
                        finally:
                            if dfd != pfd:
                                os.close(dfd)
            finally:
                os.close(pfd)
        self.containers.events.publish("container", "archive-path", cid,
                                       {**self.containers.attributes(name, doc), "path": req.shown})

    def put_archive(self, ref: str, path: str, stream: BinaryIO, *, no_overwrite_dir_non_dir: bool = False,
                    copy_uid_gid: bool = False) -> None:
        """``PUT /containers/{id}/archive``: extract a tar (maybe compressed) into the existing directory ``path``."""
        req = _Request.parse(path)
        cid, name, doc = self.containers.resolve(ref)
        with self._root(cid, doc) as root_fd:
            try:
                pfd = fsops.open_dir(root_fd, list(req.parent))
            except OSError as e:
                if e.errno in _MISSING:
                    raise _not_found(req.shown, ref) from None
                raise _fs_error(e, req.shown) from e
            try:
                if req.base:
                    st = fsops.lstat_at(pfd, req.base)
                    if st is None:
                        raise _not_found(req.shown, ref)
                    if not stat.S_ISDIR(st.st_mode) and not stat.S_ISLNK(st.st_mode):
                        raise InvalidArgument("extraction point is not a directory")
            finally:
                os.close(pfd)
            dest = canonical(root_fd, [*req.parent, *([req.base] if req.base else [])])
            try:  # a final symlink is followed inside the root, as dockerd's FollowSymlinkInScope does
                os.close(fsops.open_dir(root_fd, dest))
            except OSError as e:
                if e.errno == errno.ENOTDIR:
                    raise InvalidArgument("extraction point is not a directory") from None
                if e.errno in _MISSING:
                    raise _not_found(req.shown, ref) from None
                raise _fs_error(e, req.shown) from e
            self._check_writable(doc, "/" + "/".join(dest))
            owner = None
            if copy_uid_gid:
                user = resolve_user(f"/proc/self/fd/{root_fd}", str(doc["Config"].get("User") or ""))
                owner = (user.uid, user.gid)
            ex = _Extractor(root_fd, dest, no_overwrite_dir_non_dir=no_overwrite_dir_non_dir, owner=owner)
            member_name = ""
            try:
                with tarfile.open(fileobj=stream, mode="r|*") as tar:
                    for member in tar:
                        member_name = member.name
                        ex.entry(tar, member)
                member_name = ""
                ex.finish()
            except tarfile.TarError as e:
                raise InvalidArgument(f"Error processing tar file: {e}") from None
            except EOFError as e:
                raise InvalidArgument(f"Error processing tar file: unexpected EOF: {e}") from None
            except OSError as e:
                raise _fs_error(e, f"failed to extract {member_name or req.shown}") from e
            finally:
                ex.close()
        self.containers.events.publish("container", "extract-to-dir", cid,
                                       {**self.containers.attributes(name, doc), "path": req.shown})

    @staticmethod
    def _check_writable(doc: dict[str, Any], target: str) -> None:
        """Docker's rule: a read-only rootfs refuses cp unless the target is inside a writable mount."""
        if not doc["HostConfig"].get("ReadonlyRootfs"):
            return
        for m in doc.get("Mounts") or []:
            dest = str((m or {}).get("Destination") or "").rstrip("/")
            if dest and (target == dest or target.startswith(dest + "/")):
                if m.get("RW", True):
                    return
                raise Forbidden("mounted volume is marked read-only")
        raise Forbidden("container rootfs is marked read-only")

    # --- docker diff, export, commit's layer ------------------------------------------------------------

    def changes(self, ref: str) -> list[dict[str, Any]]:
        """``GET /containers/{id}/changes``: [{Path, Kind}] with Kind 0 modified, 1 added, 2 deleted."""
        cid, _name, _doc = self.containers.resolve(ref)
        lay = self.layout(cid)
        if lay.overlay:
            return overlay_changes(lay.upper, lay.lowers)
        return tree_changes(lay.lowers[0] if lay.lowers else None, lay.upper)

    def export(self, ref: str, out: IO[bytes]) -> None:
        """``GET /containers/{id}/export``: the container's whole root filesystem as a tar."""
        cid, name, doc = self.containers.resolve(ref)
        with self._root(cid, doc) as root_fd:
            write_tree(f"/proc/self/fd/{root_fd}", out)  # type: ignore[arg-type]
        self.containers.events.publish("container", "export", cid, self.containers.attributes(name, doc))

    def write_layer(self, cid: str, out: BinaryIO) -> Digest:
        """The container's changes as an uncompressed layer tar, without the runtime's mount points (Docker's
        init layer); returns its diff ID."""
        lay = self.layout(cid)
        lowers = [os.open(lower, _DIR_OPEN) for lower in lay.lowers]
        try:
            def placeholder(rel: str, fd: int, name: str, st: os.stat_result) -> bool:
                path = "/" + rel
                if any(_lstat_below(lfd, rel.split("/")) for lfd in lowers):
                    return stat.S_ISDIR(st.st_mode) and _only_placeholders(fd, name, path)
                return _init_placeholder(path, st)

            if lay.overlay:
                return write_overlay_diff(lay.upper, out, skip=placeholder)
            return write_tree_diff(lay.lowers[0] if lay.lowers else None, lay.upper, out, skip=placeholder)
        finally:
            for lfd in lowers:
                os.close(lfd)
