"""Namespace and process-attribute syscalls through ctypes: unshare, setns, pivot_root, sethostname, prctl.

Also the mount(2) calls that have no filesystem type (propagation changes, remounts) and ``fstatfs`` for
verifying that a handle really is on procfs before the runtime writes through it (CVE-2025-52881).
Python 3.11 has no ``os.unshare``/``os.setns``; every wrapper here raises ``OSError`` with the kernel's errno.
Call :func:`preload` before forking a container process so no library is looked up after ``pivot_root``.
"""

from __future__ import annotations

import ctypes
import os

from berth.kernel import mount as kmount

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

NAMESPACE_FLAGS: dict[str, int] = {
    "mount": CLONE_NEWNS,
    "cgroup": CLONE_NEWCGROUP,
    "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC,
    "user": CLONE_NEWUSER,
    "pid": CLONE_NEWPID,
    "network": CLONE_NEWNET,
    "time": CLONE_NEWTIME,
}
"""OCI namespace type -> CLONE_NEW* flag."""

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36

PROC_SUPER_MAGIC = 0x9FA0
TMPFS_MAGIC = 0x01021994
CGROUP2_SUPER_MAGIC = 0x63677270

_SYS_PIVOT_ROOT = 155  # x86_64
_SYS_PIVOT_ROOT_BY_MACHINE = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "s390x": 217, "ppc64le": 203}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _check(rc: int, what: str, path: str | None = None) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)


def preload() -> None:
    """Resolve every library symbol used here and in ``berth.kernel.mount`` now, before a fork into a rootfs."""
    for name in ("unshare", "setns", "sethostname", "prctl", "mount", "umount2", "fstatfs", "syscall"):
        getattr(_libc, name)
    kmount._libc()  # find_library runs ldconfig: never after pivot_root


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (``CLONE_NEWPID`` affects its children only)."""
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace behind ``fd`` (an nsfs handle, e.g. ``/proc/PID/ns/net``)."""
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def pivot_root(new_root: str, put_old: str) -> None:
    """``pivot_root(2)``; with both ``"."`` the old root stacks under the new one (runc's trick)."""
    nr = _SYS_PIVOT_ROOT_BY_MACHINE.get(os.uname().machine, _SYS_PIVOT_ROOT)
    rc = _libc.syscall(ctypes.c_long(nr), os.fsencode(new_root), os.fsencode(put_old))
    _check(int(rc), "pivot_root", new_root)


def sethostname(name: str) -> None:
    """Set the UTS namespace's hostname."""
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


def _prctl(option: int, arg: int) -> None:
    _check(
        _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)),
        "prctl",
    )


def set_pdeathsig(sig: int) -> None:
    """Have the kernel send ``sig`` to this process when its parent thread dies (0 clears it)."""
    _prctl(PR_SET_PDEATHSIG, sig)


def set_child_subreaper(on: bool = True) -> None:
    """Orphaned descendants are reparented to this process instead of PID 1 (so it can reap them)."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0)


def set_name(name: str) -> None:
    """The thread name shown in ``/proc/PID/comm`` (15 bytes)."""
    buf = ctypes.create_string_buffer(name.encode()[:15])
    _check(
        _libc.prctl(ctypes.c_int(PR_SET_NAME), buf, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)), "prctl"
    )


def _raw_mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    rc = _libc.mount(
        None if source is None else os.fsencode(source),
        os.fsencode(target),
        None if fstype is None else fstype.encode(),
        ctypes.c_ulong(flags),
        None if data is None else data.encode(),
    )
    _check(rc, f"mount {target}", target)


def set_propagation(target: str, flags: int) -> None:
    """Change mount propagation of ``target`` (``MS_PRIVATE``/``MS_SLAVE``/``MS_SHARED`` [| ``MS_REC``])."""
    _raw_mount(None, target, None, flags, None)


def bind(source: str, target: str, *, recursive: bool = True) -> None:
    """Bind ``source`` onto ``target`` (recursive by default, like ``rbind``)."""
    _raw_mount(source, target, None, kmount.MS_BIND | (kmount.MS_REC if recursive else 0), None)


def remount_bind(target: str, flags: int) -> None:
    """Change per-mount flags (``MS_RDONLY``, ``MS_NOSUID``, ...) of the bind mount at ``target``."""
    _raw_mount(None, target, None, kmount.MS_REMOUNT | kmount.MS_BIND | flags, None)


def remount(target: str, flags: int, data: str | None = None) -> None:
    """Remount the superblock at ``target`` with ``flags`` (e.g. a tmpfs read-only)."""
    _raw_mount(None, target, None, kmount.MS_REMOUNT | flags, data)


def mount_fs(fstype: str, source: str, target: str, flags: int, data: str | None) -> None:
    """Mount a filesystem of ``fstype`` with already-parsed flags and data."""
    _raw_mount(source, target, fstype, flags, data)


def unmount_detach(target: str) -> None:
    """``umount2(target, MNT_DETACH)``."""
    _check(_libc.umount2(os.fsencode(target), ctypes.c_int(kmount.MNT_DETACH)), "umount2", target)


def fstatfs_type(fd: int) -> int:
    """``f_type`` of the filesystem behind ``fd`` (compare with ``PROC_SUPER_MAGIC`` and friends)."""
    buf = (ctypes.c_long * 16)()  # struct statfs: f_type is the first word
    _check(_libc.fstatfs(ctypes.c_int(fd), ctypes.byref(buf)), "fstatfs")
    return int(buf[0]) & 0xFFFFFFFF


def mount_flags(fd: int) -> int:
    """Per-mount ``MS_*`` flags of the mount behind ``fd`` (``f_flags`` of statvfs), to keep them on remount."""
    st = os.fstatvfs(fd)
    # ST_RDONLY..ST_NOEXEC, ST_NOATIME and ST_NODIRATIME equal their MS_* bits; ST_RELATIME (0x1000) does not
    same = kmount.MS_RDONLY | kmount.MS_NOSUID | kmount.MS_NODEV | kmount.MS_NOEXEC | kmount.MS_NOATIME
    same |= kmount.MS_NODIRATIME
    flags = st.f_flag & same
    if st.f_flag & 0x1000:
        flags |= kmount.MS_RELATIME
    return flags
