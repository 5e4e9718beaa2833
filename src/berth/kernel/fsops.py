"""Directory-fd file operations that never follow a symlink out of a root directory.

Everything that writes into an untrusted tree (image layers, ``docker cp`` targets, container roots) resolves
paths here: ``openat2(RESOLVE_IN_ROOT)`` when the kernel has it, otherwise a component-by-component walk with
``O_PATH|O_NOFOLLOW`` that resolves symlinks with chroot semantics (absolute targets restart at the root,
``..`` clamps at the root). Nothing here calls ``realpath()`` and then reopens a path string.

The other helpers act on ``(dir_fd, name)`` pairs and never follow a symlink in ``name``.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import stat
import struct
from collections import deque
from collections.abc import Iterator, Sequence

SYS_OPENAT2 = 437  # same number on every architecture (unified syscall table)

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

MAX_SYMLINKS = 40  # the kernel's limit (ELOOP) for one resolution

DIR_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = (("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_openat2_works: bool | None = None


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """Raw ``openat2(2)``; raises ``OSError`` (``ENOSYS`` on kernels before 5.6)."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    while True:
        fd = _libc.syscall(
            ctypes.c_long(SYS_OPENAT2), ctypes.c_int(dirfd), os.fsencode(path), ctypes.byref(how),
            ctypes.c_size_t(ctypes.sizeof(how)),
        )
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise OSError(err, os.strerror(err), path)


def have_openat2() -> bool:
    """Whether this kernel supports ``openat2`` (probed once)."""
    global _openat2_works
    if _openat2_works is None:
        try:
            os.close(openat2(-100, "/", DIR_PATH_FLAGS, 0, RESOLVE_IN_ROOT))  # AT_FDCWD
            _openat2_works = True
        except OSError:
            _openat2_works = False
    return _openat2_works


def split(path: str) -> list[str]:
    """Path components without empty and ``.`` parts (``..`` is kept for the resolver to clamp)."""
    return [p for p in path.split("/") if p and p != "."]


def open_real_dir(root_fd: int, parts: Sequence[str], *, readable: bool = False) -> int:
    """Open a chain of real directories below ``root_fd`` (no symlink followed: ``ELOOP``/``ENOTDIR`` if one is
    met); an ``O_PATH`` fd unless ``readable``."""
    flags = (os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if readable else DIR_PATH_FLAGS
    fd = os.dup(root_fd)
    try:
        for name in parts:
            nxt = os.open(name, flags | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


def walk_dir(root_fd: int, parts: Sequence[str], *, create: bool = False, mode: int = 0o755) -> int:
    """Resolve ``parts`` below ``root_fd`` to an ``O_PATH`` directory fd with chroot semantics.

    With ``create``, missing components that come from ``parts`` itself are made (``mkdirat``, ``mode``);
    components that come from a symlink target are never created. Holds at most two fds at a time, so
    depth is bounded only by the filesystem.
    """
    pending: deque[tuple[str, bool]] = deque((p, True) for p in parts)
    where: list[str] = []  # real directory names from the root to the current fd
    links = created = 0
    fd = os.dup(root_fd)
    try:
        while pending:
            name, literal = pending.popleft()
            if name in ("", "."):
                continue
            if name == "..":
                if where:
                    where.pop()
                    os.close(fd)
                    fd = -1
                    fd = open_real_dir(root_fd, where)
                continue
            try:
                nxt = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except FileNotFoundError:
                if not (create and literal):
                    raise
                created += 1
                if created > len(parts) + MAX_SYMLINKS:
                    raise OSError(errno.EAGAIN, "path keeps changing during resolution", name) from None
                with contextlib.suppress(FileExistsError):  # lost a race with another writer: look again
                    os.mkdir(name, mode, dir_fd=fd)
                pending.appendleft((name, literal))
                continue
            st = os.fstat(nxt)
            if stat.S_ISDIR(st.st_mode):
                os.close(fd)
                fd = nxt
                where.append(name)
            elif stat.S_ISLNK(st.st_mode):
                os.close(nxt)
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), name)
                target = os.readlink(name, dir_fd=fd)
                if target.startswith("/"):
                    os.close(fd)
                    fd = -1
                    fd = os.dup(root_fd)
                    where.clear()
                pending.extendleft(reversed([(p, False) for p in target.split("/")]))
            else:
                os.close(nxt)
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), name)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    return fd


def open_in_root(root_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """``open`` ``path`` as if ``root_fd`` were ``/`` (absolute symlinks restart there, ``..`` clamps).

    The last component is followed too unless ``flags`` has ``O_NOFOLLOW``. Uses ``openat2`` when
    available; otherwise walks to the parent and opens the last component relative to it.
    """
    if have_openat2():
        for _ in range(16):
            try:
                return openat2(root_fd, path, flags, mode, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
            except OSError as e:
                if e.errno != errno.EAGAIN:  # a concurrent rename: the kernel asks us to retry
                    raise
    parts = split(path)
    links = 0
    while True:
        if not parts:
            return os.open(".", flags, mode, dir_fd=root_fd)
        *head, last = parts
        if last == "..":
            head.append(last)
            last = "."
        pfd = walk_dir(root_fd, head)
        try:
            try:
                return os.open(last, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=pfd)
            except OSError as e:
                if flags & os.O_NOFOLLOW or e.errno not in (errno.ELOOP, errno.EMLINK):
                    raise
                if not stat.S_ISLNK(os.stat(last, dir_fd=pfd, follow_symlinks=False).st_mode):
                    raise
                links += 1
                if links > MAX_SYMLINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path) from e
                target = os.readlink(last, dir_fd=pfd)
                parts = split(target) if target.startswith("/") else [*head, *target.split("/")]
        finally:
            os.close(pfd)


def open_dir(root_fd: int, parts: Sequence[str], *, create: bool = False, mode: int = 0o755) -> int:
    """An ``O_PATH`` fd for the directory ``parts`` below ``root_fd`` (in-root resolution, optional mkdir -p)."""
    if not parts:
        return os.dup(root_fd)
    path = "/".join(parts)
    if have_openat2() and len(path) < 4000:
        try:
            return open_in_root(root_fd, path, DIR_PATH_FLAGS)
        except OSError as e:
            if not (create and e.errno == errno.ENOENT):
                raise
    return walk_dir(root_fd, parts, create=create, mode=mode)


def open_child_dir(dir_fd: int, name: str) -> int:
    """An ``O_PATH`` fd for the directory ``name`` directly in ``dir_fd``; a symlink there is an error."""
    return os.open(name, DIR_PATH_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """``fstatat(AT_SYMLINK_NOFOLLOW)``; ``None`` when nothing is there."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def listdir_at(dir_fd: int, name: str = ".") -> list[str]:
    """Names in the directory ``name`` (never a symlink) below ``dir_fd``."""
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def remove_at(dir_fd: int, name: str) -> None:
    """Remove ``name`` (recursively for directories) without following any symlink; absent is fine. Never goes
    into another filesystem mounted inside the tree (EXDEV instead: whatever is mounted there is not ours)."""
    st = lstat_at(dir_fd, name)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    # Iterative post-order walk: one fd per level, so depth is bounded by the fd limit, not the stack.
    stack: list[tuple[int, str, Iterator[os.DirEntry[str]]]] = []
    top = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    device = os.fstat(top).st_dev
    stack.append((top, name, os.scandir(top)))
    try:
        while stack:
            fd, dname, it = stack[-1]
            entry = next(it, None)
            if entry is None:
                stack.pop()
                it.close()  # type: ignore[attr-defined]
                os.close(fd)
                os.rmdir(dname, dir_fd=stack[-1][0] if stack else dir_fd)
            elif entry.is_dir(follow_symlinks=False):
                sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                if os.fstat(sub).st_dev != device:
                    os.close(sub)
                    raise OSError(errno.EXDEV, f"a filesystem is mounted at {entry.path}: not removing it")
                stack.append((sub, entry.name, os.scandir(sub)))
            else:
                os.unlink(entry.name, dir_fd=fd)
    finally:
        for fd, _, it in stack:
            it.close()  # type: ignore[attr-defined]
            os.close(fd)


def _proc_fd(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def set_xattr_at(dir_fd: int, name: str, key: str, value: bytes) -> None:
    """``setxattr`` on the node ``name`` itself (an ``O_PATH`` handle, so devices and fifos are not opened)."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise OSError(errno.EPERM, "xattrs on symlinks are not supported", name)
        os.setxattr(_proc_fd(fd), key, value)
    finally:
        os.close(fd)


def xattrs_at(dir_fd: int, name: str) -> dict[str, bytes]:
    """All extended attributes of the node ``name`` (none for symlinks); never follows a symlink."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            return {}
        path = _proc_fd(fd)
        try:
            keys = os.listxattr(path)
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
                return {}
            raise
        out: dict[str, bytes] = {}
        for key in keys:
            with contextlib.suppress(OSError):  # removed meanwhile, or not readable
                out[key] = os.getxattr(path, key)
        return out
    finally:
        os.close(fd)


def chmod_at(dir_fd: int, name: str, mode: int) -> None:
    """``fchmodat(AT_SYMLINK_NOFOLLOW)``: never changes the mode of a symlink's target."""
    os.chmod(name, mode, dir_fd=dir_fd, follow_symlinks=False)


def chown_at(dir_fd: int, name: str, uid: int, gid: int) -> None:
    """``fchownat(AT_SYMLINK_NOFOLLOW)``."""
    os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)


def utime_at(dir_fd: int, name: str, atime_ns: int, mtime_ns: int) -> None:
    """``utimensat(AT_SYMLINK_NOFOLLOW)``."""
    os.utime(name, ns=(atime_ns, mtime_ns), dir_fd=dir_fd, follow_symlinks=False)


def link_at(src_dir_fd: int, src: str, dst_dir_fd: int, dst: str) -> None:
    """``linkat`` without ``AT_SYMLINK_FOLLOW``: a symlink source is linked as the symlink node itself."""
    os.link(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)


def symlink_at(target: str, dir_fd: int, name: str) -> None:
    """``symlinkat``; the target is stored as data and never resolved here."""
    os.symlink(target, name, dir_fd=dir_fd)


def mknod_at(dir_fd: int, name: str, mode: int, device: int = 0) -> None:
    """``mknodat`` for device nodes and fifos (needs ``CAP_MKNOD`` for devices)."""
    os.mknod(name, mode, device, dir_fd=dir_fd)


def mkdir_at(dir_fd: int, name: str, mode: int) -> None:
    """``mkdirat``."""
    os.mkdir(name, mode, dir_fd=dir_fd)


_FS_IOC_GETFLAGS = 0x80086601  # _IOR('f', 1, long); the kernel reads and writes an int
_FS_IOC_SETFLAGS = 0x40086602  # _IOW('f', 2, long)
_FS_TOPDIR_FL = 0x00020000


def mark_top_dir(path: str | os.PathLike[str]) -> bool:
    """``chattr +T``: ext4's Orlov allocator then places each directory made in ``path`` in a block group of its own
    choosing (as for directories in the filesystem's root) instead of ``path``'s; False where the filesystem lacks
    the flag or refuses it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        flags = struct.unpack("i", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, bytes(4)))[0]
        if not flags & _FS_TOPDIR_FL:
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("i", flags | _FS_TOPDIR_FL))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def create_at(dir_fd: int, name: str, mode: int = 0o600) -> int:
    """A new regular file opened for writing; fails if anything (even a dangling symlink) is at ``name``."""
    return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
