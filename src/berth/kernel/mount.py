"""mount(2)/umount2(2) through ctypes: mount descriptions in, kernel mounts out (no subprocess).

A :class:`Mount` is a value (type, source, options) as snapshotters return it; :func:`mount` turns the
options into mount flags plus a data string the way ``mount(8)`` does. Overlay data is limited to one
page (4096 bytes including the NUL); :func:`mount` falls back to the new mount API (fsopen/fsconfig
with one ``lowerdir+`` per layer, Linux >= 6.8) when a longer ``lowerdir=`` list does not fit.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno as errno_mod
import functools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from berth.errors import InternalError, InvalidArgument

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

MNT_FORCE = 0x1
MNT_DETACH = 0x2

PAGE_LIMIT = 4096
"""The kernel copies at most one page of mount data, NUL included."""

# option -> (clear?, flag), as mount(8) and containerd's parseMountOptions read them
_FLAGS: dict[str, tuple[bool, int]] = {
    "async": (True, MS_SYNCHRONOUS),
    "atime": (True, MS_NOATIME),
    "bind": (False, MS_BIND),
    "defaults": (False, 0),
    "dev": (True, MS_NODEV),
    "diratime": (True, MS_NODIRATIME),
    "dirsync": (False, MS_DIRSYNC),
    "exec": (True, MS_NOEXEC),
    "mand": (False, MS_MANDLOCK),
    "noatime": (False, MS_NOATIME),
    "nodev": (False, MS_NODEV),
    "nodiratime": (False, MS_NODIRATIME),
    "noexec": (False, MS_NOEXEC),
    "nomand": (True, MS_MANDLOCK),
    "norelatime": (True, MS_RELATIME),
    "nostrictatime": (True, MS_STRICTATIME),
    "nosuid": (False, MS_NOSUID),
    "nosymfollow": (False, MS_NOSYMFOLLOW),
    "rbind": (False, MS_BIND | MS_REC),
    "relatime": (False, MS_RELATIME),
    "remount": (False, MS_REMOUNT),
    "ro": (False, MS_RDONLY),
    "rw": (True, MS_RDONLY),
    "strictatime": (False, MS_STRICTATIME),
    "suid": (True, MS_NOSUID),
    "sync": (False, MS_SYNCHRONOUS),
}

_PROPAGATION: dict[str, int] = {
    "private": MS_PRIVATE,
    "rprivate": MS_PRIVATE | MS_REC,
    "shared": MS_SHARED,
    "rshared": MS_SHARED | MS_REC,
    "slave": MS_SLAVE,
    "rslave": MS_SLAVE | MS_REC,
    "unbindable": MS_UNBINDABLE,
    "runbindable": MS_UNBINDABLE | MS_REC,
}

# new mount API; these syscall numbers are shared by every architecture but alpha
_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
_FSOPEN_CLOEXEC = 0x1
_FSCONFIG_SET_FLAG = 0
_FSCONFIG_SET_STRING = 1
_FSCONFIG_CMD_CREATE = 6
_FSMOUNT_CLOEXEC = 0x1
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_AT_FDCWD = -100


@dataclass(frozen=True)
class Mount:
    """A mount to make: ``type`` ("overlay", "bind", "tmpfs", ...), ``source`` and mount(8)-style options."""

    type: str
    source: str
    options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.type:
            raise InvalidArgument("mount type must not be empty")
        if isinstance(self.options, (str, list)):
            raise InvalidArgument("mount options must be a tuple of strings")

    @property
    def is_bind(self) -> bool:
        return self.type == "bind" or any(o in ("bind", "rbind") for o in self.options)

    @property
    def readonly(self) -> bool:
        ro = False
        for o in self.options:
            if o == "ro":
                ro = True
            elif o == "rw":
                ro = False
        return ro


class MountError(InternalError):
    """A mount(2)/umount2(2) call failed; ``errno`` is the kernel's reason, for callers to branch on."""

    def __init__(self, message: str, errno: int) -> None:
        super().__init__(message)
        self.errno = errno


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _fail(what: str, target: str | os.PathLike[str] | None = None) -> MountError:
    err = ctypes.get_errno()
    where = f" on {os.fspath(target)}" if target is not None else ""
    return MountError(f"{what}{where}: {os.strerror(err)}", err)


def _sys_mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    rc = _libc().mount(
        None if source is None else os.fsencode(source),
        os.fsencode(target),
        None if fstype is None else fstype.encode(),
        ctypes.c_ulong(flags),
        None if data is None else data.encode(),
    )
    if rc != 0:
        raise _fail(f"mount {fstype or 'bind'} {source or ''}".rstrip(), target)


def parse_options(options: Sequence[str]) -> tuple[int, int, list[str]]:
    """Split mount(8) options into (flags, propagation flags, data options kept for the filesystem)."""
    flags = 0
    propagation = 0
    data: list[str] = []
    for opt in options:
        if opt in _FLAGS:
            clear, flag = _FLAGS[opt]
            flags = flags & ~flag if clear else flags | flag
        elif opt in _PROPAGATION:
            propagation |= _PROPAGATION[opt]
        else:
            data.append(opt)
    return flags, propagation, data


def mount(m: Mount, target: str | os.PathLike[str]) -> None:
    """Make mount ``m`` on ``target`` (an existing directory or file)."""
    target_s = os.fspath(target)
    flags, propagation, data = parse_options(m.options)
    if m.type == "bind":
        flags |= MS_BIND
    if flags & MS_BIND:
        # a bind ignores every flag but MS_REC on the first call; ro/nosuid/... need a remount
        _sys_mount(m.source, target_s, None, flags & (MS_BIND | MS_REC), None)
        extra = flags & ~(MS_BIND | MS_REC | MS_REMOUNT)
        if extra:
            _sys_mount(None, target_s, None, MS_REMOUNT | MS_BIND | extra, None)
    else:
        text = ",".join(data)
        if len(text.encode()) >= PAGE_LIMIT:
            if m.type != "overlay":
                raise InvalidArgument(f"mount options for {m.type} exceed {PAGE_LIMIT - 1} bytes")
            _mount_overlay_fsconfig(data, flags, target_s)
        else:
            _sys_mount(m.source, target_s, m.type, flags, text or None)
    if propagation:
        _sys_mount(None, target_s, None, propagation, None)


def _mount_overlay_fsconfig(data: list[str], flags: int, target: str) -> None:
    """Mount an overlay whose lowerdir list is too long for one page: one ``lowerdir+`` per layer."""
    libc = _libc()
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    fsfd = syscall(ctypes.c_long(_SYS_FSOPEN), b"overlay", ctypes.c_uint(_FSOPEN_CLOEXEC))
    if fsfd < 0:
        raise _fail("fsopen overlay", target)
    mfd = -1
    try:

        def config(key: str, value: str | None) -> None:
            if value is None:
                rc = syscall(
                    ctypes.c_long(_SYS_FSCONFIG), ctypes.c_int(fsfd), ctypes.c_uint(_FSCONFIG_SET_FLAG),
                    key.encode(), None, ctypes.c_int(0),
                )
            else:
                rc = syscall(
                    ctypes.c_long(_SYS_FSCONFIG), ctypes.c_int(fsfd), ctypes.c_uint(_FSCONFIG_SET_STRING),
                    key.encode(), os.fsencode(value), ctypes.c_int(0),
                )
            if rc < 0:
                raise _fail(f"fsconfig overlay {key}", target)

        for opt in data:
            key, sep, value = opt.partition("=")
            if key == "lowerdir":
                for layer in value.split(":"):
                    config("lowerdir+", layer)
            else:
                config(key, value if sep else None)
        config("source", "overlay")
        rc = syscall(
            ctypes.c_long(_SYS_FSCONFIG), ctypes.c_int(fsfd), ctypes.c_uint(_FSCONFIG_CMD_CREATE),
            None, None, ctypes.c_int(0),
        )
        if rc < 0:
            raise _fail("fsconfig overlay create", target)
        # MOUNT_ATTR_RDONLY (0x1) matches MS_RDONLY; other per-mount flags are not needed for overlays
        mfd = syscall(
            ctypes.c_long(_SYS_FSMOUNT), ctypes.c_int(fsfd), ctypes.c_uint(_FSMOUNT_CLOEXEC),
            ctypes.c_uint(0x1 if flags & MS_RDONLY else 0),
        )
        if mfd < 0:
            raise _fail("fsmount overlay", target)
        rc = syscall(
            ctypes.c_long(_SYS_MOVE_MOUNT), ctypes.c_int(mfd), b"", ctypes.c_int(_AT_FDCWD),
            os.fsencode(target), ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH),
        )
        if rc < 0:
            raise _fail("move_mount overlay", target)
    finally:
        if mfd >= 0:
            os.close(mfd)
        os.close(fsfd)


# open_tree(2), mount_setattr(2) (same numbers on every architecture but alpha)
_SYS_OPEN_TREE = 428
_SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 0x1
_OPEN_TREE_CLOEXEC = os.O_CLOEXEC
_AT_EMPTY_PATH = 0x1000
_AT_RECURSIVE = 0x8000
_MOVE_MOUNT_BENEATH = 0x200
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def _syscall() -> Callable[..., int]:
    fn = _libc().syscall
    fn.restype = ctypes.c_long
    return fn


def open_tree(path: str | os.PathLike[str], *, recursive: bool = False) -> int:
    """A detached copy of the mount at ``path`` (``OPEN_TREE_CLONE``): a bind not yet attached anywhere, as an
    fd that :func:`move_mount` attaches (in whatever mount namespace the caller is in by then)."""
    p = os.fspath(path)
    flags = OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC | (_AT_RECURSIVE if recursive else 0)
    fd = int(_syscall()(ctypes.c_long(_SYS_OPEN_TREE), ctypes.c_int(_AT_FDCWD), os.fsencode(p), ctypes.c_uint(flags)))
    if fd < 0:
        raise _fail("open_tree", p)
    return fd


def mount_setattr(fd: int, attr_set: int, attr_clr: int = 0, *, propagation: int = 0,
                  recursive: bool = False) -> None:
    """Change per-mount attributes (``MOUNT_ATTR_RDONLY``, ...) and, when given, the propagation (``MS_PRIVATE``,
    ...) of the mount behind ``fd`` (e.g. from :func:`open_tree`)."""
    attr = _MountAttr(attr_set, attr_clr, propagation, 0)
    flags = _AT_EMPTY_PATH | (_AT_RECURSIVE if recursive else 0)
    rc = int(_syscall()(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_int(fd), b"", ctypes.c_uint(flags),
                        ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))))
    if rc < 0:
        raise _fail("mount_setattr")


def move_mount(fd: int, target: str | os.PathLike[str], *, beneath: bool = False) -> None:
    """Attach the mount behind ``fd`` on ``target``; ``beneath`` slides it under the mount on top of ``target``
    (``MOVE_MOUNT_BENEATH``, Linux >= 6.5), so unmounting that one swaps them with no moment in between."""
    t = os.fspath(target)
    flags = _MOVE_MOUNT_F_EMPTY_PATH | (_MOVE_MOUNT_BENEATH if beneath else 0)
    rc = int(_syscall()(ctypes.c_long(_SYS_MOVE_MOUNT), ctypes.c_int(fd), b"", ctypes.c_int(_AT_FDCWD),
                        os.fsencode(t), ctypes.c_uint(flags)))
    if rc < 0:
        raise _fail("move_mount", t)


def unmount(target: str | os.PathLike[str], detach: bool = False) -> None:
    """Unmount ``target``; ``detach`` makes it lazy (MNT_DETACH) so busy mounts still go away."""
    rc = _libc().umount2(os.fsencode(os.fspath(target)), ctypes.c_int(MNT_DETACH if detach else 0))
    if rc != 0:
        raise _fail("unmount", target)


def mount_all(mounts: Sequence[Mount], target: str | os.PathLike[str]) -> None:
    """Make every mount on ``target`` in order (later ones stack on earlier ones); all-or-nothing."""
    done = 0
    try:
        for m in mounts:
            mount(m, target)
            done += 1
    except BaseException:
        for _ in range(done):
            with contextlib.suppress(MountError):
                unmount(target, detach=True)
        raise


def unmount_all(target: str | os.PathLike[str], detach: bool = False) -> None:
    """Unmount every mount stacked on ``target`` until it is no longer a mount point."""
    while True:
        try:
            unmount(target, detach=detach)
        except MountError as err:
            if err.errno == errno_mod.EINVAL:
                return
            raise


@contextlib.contextmanager
def mounted(mounts: Sequence[Mount], target: str | os.PathLike[str]) -> Iterator[Path]:
    """Mount ``mounts`` on ``target`` for the duration of the block; always unmounts them again."""
    mount_all(mounts, target)
    try:
        yield Path(target)
    finally:
        for _ in mounts:
            try:
                unmount(target)
            except MountError as err:
                if err.errno != errno_mod.EBUSY:
                    raise
                unmount(target, detach=True)


@functools.cache
def _overlay_supported_in(base: str | None) -> bool:
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/filesystems", encoding="ascii") as f:
            if not any(line.split()[-1:] == ["overlay"] for line in f):
                return False
    except OSError:
        return False
    try:
        trial = tempfile.mkdtemp(prefix=".overlay-check-", dir=base)
    except OSError:
        return False
    try:
        for name in ("lower1", "lower2", "upper", "work", "merged"):
            os.mkdir(os.path.join(trial, name))
        opts = (
            f"lowerdir={trial}/lower2:{trial}/lower1",
            f"upperdir={trial}/upper",
            f"workdir={trial}/work",
        )
        try:
            mount(Mount("overlay", "overlay", opts), f"{trial}/merged")
        except (MountError, InvalidArgument):
            return False
        unmount(f"{trial}/merged", detach=True)
        return True
    finally:
        shutil.rmtree(trial, ignore_errors=True)


def overlay_supported(base: str | os.PathLike[str] | None = None) -> bool:
    """Whether overlayfs works here (cached): listed by the kernel and a trial mount in ``base`` works."""
    return _overlay_supported_in(None if base is None else os.fspath(base))


def is_mountpoint(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a mount point (any mount, including a bind of a directory onto itself)."""
    p = os.path.abspath(os.fspath(path))
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split(" ")
                if len(fields) > 4 and _unescape(fields[4]) == p:
                    return True
    except OSError:
        return os.path.ismount(p)
    return False


def mounts_under(root: str | os.PathLike[str]) -> list[Path]:
    """Mount points at or below ``root``, deepest first."""
    base = os.path.realpath(root)
    found: list[Path] = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                point = _unescape(line.split(" ")[4])
                if point == base or point.startswith(base + "/"):
                    found.append(Path(point))
    except OSError:
        return []
    return sorted(found, key=lambda p: (len(p.parts), str(p)), reverse=True)


def unmount_under(root: str | os.PathLike[str]) -> None:
    """Lazily detach everything mounted at or under ``root`` (mounts can be stacked: repeat until none is left)."""
    for _ in range(64):
        points = mounts_under(root)
        if not points:
            return
        for point in points:
            with contextlib.suppress(MountError):
                unmount(point, detach=True)


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal ``\\ooo``."""
    if "\\" not in field:
        return field
    out = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)
