"""The container's init: the ordered steps a forked process takes from "new namespaces" to ``execve``.

Runs in the process that becomes PID 1 of the container (forked by :mod:`berth.runtime.linux`). Everything
it needs is computed before the fork and handed over in :class:`InitConfig`; after ``pivot_root`` this
code imports nothing, resolves no user names and loads no library (the container's files must never run
on the host's behalf). Until "ready" is reported, failures go to the creator over the sync pipe; after
that they go to the container's stderr with runc's exit codes (127 not found, 126 not executable).

Order follows runc's ``standard_init_linux.go``: rootfs (propagation, self-bind, spec mounts, /dev),
pivot_root, console, sysctls, read-only and masked paths, read-only root, hostname, rlimits, "ready",
block on ``exec.fifo`` until ``start``, then seccomp (before dropping caps unless no_new_privs), bounding
set, uid/gid, capabilities, cwd, no_new_privs, close every fd but 0-2, execve.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # signal.signal minus its enum conversion
import contextlib
import errno
import fcntl
import os
import resource
import signal
import socket
import stat
import struct
import sys
import termios
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from berth.kernel import caps as kcaps
from berth.kernel import fsops, ns
from berth.kernel import mount as kmount
from berth.kernel import seccomp as kseccomp
from berth.oci.runtime_spec import Mount, Spec

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# (name, major, minor): the nodes runc creates in every container's /dev (its AllowedDevices with a path)
DEFAULT_DEVICES: tuple[tuple[str, int, int], ...] = (
    ("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0),
)
DEV_SYMLINKS: tuple[tuple[str, str], ...] = (
    ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
)

_TIOCGPTN = 0x80045430
_TIOCSPTLCK = 0x40045431
_TIOCGPTPEER = 0x5441
_TIOCSCTTY = 0x540E


@dataclass(frozen=True)
class CgroupMount:
    """One hierarchy to show under the container's /sys/fs/cgroup: ``name`` there, the host directory bound."""

    name: str
    host_dir: str


@dataclass(frozen=True)
class InitConfig:
    """Everything the init needs, resolved on the host before the fork."""

    spec: Spec
    rootfs: str
    sync_fd: int
    fifo_fd: int
    console_fd: int | None = None
    cgroup_mounts: tuple[CgroupMount, ...] = ()
    cgroup_links: tuple[tuple[str, str], ...] = ()  # (name, target) symlinks like cpu -> cpu,cpuacct
    rlimits: tuple[tuple[int, int, int], ...] = ()  # (resource, soft, hard), already clamped
    caps: kcaps.CapSets | None = None
    seccomp: dict[str, Any] | None = None
    seccomp_program: bytes | None = None  # ``seccomp`` compiled by the creator (no flags, no listener)


class InitError(Exception):
    """A failed init step; ``code`` is the exit status the init ends with."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def report(fd: int, message: str) -> None:
    """One line on the sync pipe (``pid N``, ``ready``, ``error TEXT``)."""
    data = (message.replace("\n", " ") + "\n").encode()
    with contextlib.suppress(OSError):
        os.write(fd, data)


class _NoImports:
    """A meta path finder that refuses every import: the container's files must never run as the runtime."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        raise ImportError(f"berth-runtime init: import of {name} after entering the container root")


def forbid_imports() -> None:
    sys.meta_path.insert(0, _NoImports)


# -- before pivot_root ---------------------------------------------------------------------------------------


def reset_signals() -> None:
    """Default dispositions (Python ignores SIGPIPE/SIGXFSZ, and ignored signals survive execve)."""
    for sig in range(1, signal.NSIG):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):
            # the C function: signal.signal turns the old handler into an enum, whose failed lookup formats the
            # monitor's handler objects (a measured 17% of the monitor's work per container start)
            _signal.signal(sig, _signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def prepare_root(spec: Spec, rootfs: str) -> None:
    """Make the new mount namespace stop propagating to the host and turn the rootfs into a mount point."""
    prop = kmount.parse_options([spec.linux.rootfs_propagation or "rslave"])[1]
    ns.set_propagation("/", prop or (kmount.MS_SLAVE | kmount.MS_REC))
    ns.bind(rootfs, rootfs, recursive=True)  # pivot_root needs new_root to be a mount point


def _open_target(root_fd: int, dest: str, *, directory: bool, no_symlink: bool) -> int:
    """An O_PATH fd for ``dest`` inside the root, created if missing; never resolves outside the root."""
    parts = fsops.split(dest)
    if not parts:
        return os.dup(root_fd)
    pfd = fsops.open_dir(root_fd, parts[:-1], create=True)
    try:
        name = parts[-1]
        st = fsops.lstat_at(pfd, name)
        if st is None:
            if directory:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=pfd)
            else:
                with contextlib.suppress(FileExistsError):
                    os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                     0o644, dir_fd=pfd))
        elif stat.S_ISLNK(st.st_mode) and no_symlink:
            raise InitError(f"mount destination {dest} is a symlink; refusing to mount over it")
        return fsops.open_in_root(root_fd, dest, os.O_PATH | os.O_CLOEXEC)
    finally:
        os.close(pfd)


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


def mount_spec(root_fd: int, m: Mount, cfg: InitConfig) -> None:
    """One entry of ``mounts``, its destination resolved inside the rootfs (runc securejoin semantics)."""
    if m.type == "cgroup":
        _mount_cgroup(root_fd, m, cfg)
        return
    directory = os.path.isdir(m.source) if m.is_bind else True
    no_symlink = m.type in ("proc", "sysfs")
    try:
        fd = _open_target(root_fd, m.destination, directory=directory, no_symlink=no_symlink)
    except OSError as e:  # runc's wording; typically a file mount point inside a read-only bind
        raise InitError(f'error mounting "{m.source}" to rootfs at "{m.destination}": create mountpoint for '
                        f"{m.destination} mount: {(e.strerror or str(e)).lower()}") from None
    flags, propagation, _data = kmount.parse_options(m.options)
    try:
        if m.type in ("proc", "sysfs") and not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise InitError(f"mount destination {m.destination} is not a directory")
        if m.is_bind:
            ns.bind(m.source, _fd_path(fd), recursive=bool(flags & kmount.MS_REC))
        else:
            fs_options = tuple(o for o in m.options if not kmount.parse_options([o])[1])
            kmount.mount(kmount.Mount(m.type, m.source or m.type, fs_options), _fd_path(fd))
    finally:
        os.close(fd)
    # the O_PATH fd still names the covered inode, not the new mount: reopen before changing the mount itself
    extra = flags & ~(kmount.MS_BIND | kmount.MS_REC | kmount.MS_REMOUNT)
    if (m.is_bind and extra) or propagation:
        fd = fsops.open_in_root(root_fd, m.destination, os.O_PATH | os.O_CLOEXEC)
        try:
            if m.is_bind and extra:
                ns.remount_bind(_fd_path(fd), extra)
            if propagation:
                ns.set_propagation(_fd_path(fd), propagation)
        finally:
            os.close(fd)


def _mount_cgroup(root_fd: int, m: Mount, cfg: InitConfig) -> None:
    """runc's v1 shape: a tmpfs with the container's own cgroup of every hierarchy bound in, read-only."""
    flags, _, _ = kmount.parse_options(m.options)
    per_mount = flags & (kmount.MS_NOSUID | kmount.MS_NODEV | kmount.MS_NOEXEC | kmount.MS_RDONLY)
    fd = _open_target(root_fd, m.destination, directory=True, no_symlink=True)
    try:
        target = _fd_path(fd)
        if len(cfg.cgroup_mounts) == 1 and not cfg.cgroup_mounts[0].name:  # a pure cgroup v2 host
            if cfg.spec.linux.namespace("cgroup") is not None:
                ns.mount_fs("cgroup2", "cgroup", target, per_mount, None)  # the namespace's root is ours
            else:
                ns.bind(cfg.cgroup_mounts[0].host_dir, target, recursive=False)
                ns.remount_bind(target, per_mount)
            return
        ns.mount_fs("tmpfs", "tmpfs", target, per_mount & ~kmount.MS_RDONLY, "mode=755")
    finally:
        os.close(fd)
    top = fsops.open_in_root(root_fd, m.destination, fsops.DIR_PATH_FLAGS)
    try:
        for cm in cfg.cgroup_mounts:
            os.mkdir(cm.name, 0o555, dir_fd=top)
            sub = os.open(cm.name, fsops.DIR_PATH_FLAGS | os.O_NOFOLLOW, dir_fd=top)
            try:
                ns.bind(cm.host_dir, _fd_path(sub), recursive=False)
            finally:
                os.close(sub)
            sub = os.open(cm.name, fsops.DIR_PATH_FLAGS | os.O_NOFOLLOW, dir_fd=top)
            try:
                ns.remount_bind(_fd_path(sub), per_mount)
            finally:
                os.close(sub)
        for name, link in cfg.cgroup_links:
            with contextlib.suppress(FileExistsError):
                os.symlink(link, name, dir_fd=top)
        if per_mount & kmount.MS_RDONLY:
            ns.remount(_fd_path(top), per_mount)
    finally:
        os.close(top)


def populate_dev(root_fd: int, spec: Spec) -> None:
    """Default device nodes, the spec's devices, and the /dev symlinks (only onto a /dev the spec mounted)."""
    dev = fsops.open_in_root(root_fd, "/dev", fsops.DIR_PATH_FLAGS | os.O_NOFOLLOW)
    try:
        nodes = [(name, stat.S_IFCHR | 0o666, os.makedev(major, minor), 0, 0) for name, major, minor in
                 DEFAULT_DEVICES] if any(m.destination == "/dev" for m in spec.mounts) else []
        for d in spec.linux.devices:
            kind = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[d.type]
            nodes.append((d.path[len("/dev/"):], kind | (d.file_mode if d.file_mode is not None else 0o666),
                          os.makedev(d.major, d.minor), d.uid or 0, d.gid or 0))
        for rel, mode, rdev, uid, gid in nodes:
            parts = fsops.split(rel)
            pfd = fsops.open_dir(dev, parts[:-1], create=True)
            try:
                name = parts[-1]
                if fsops.lstat_at(pfd, name) is None:
                    os.mknod(name, mode, rdev, dir_fd=pfd)
                    os.chmod(name, mode & 0o7777, dir_fd=pfd, follow_symlinks=False)  # mknod obeys the umask
                    os.chown(name, uid, gid, dir_fd=pfd, follow_symlinks=False)
            finally:
                os.close(pfd)
        if nodes:
            for name, target in DEV_SYMLINKS:
                with contextlib.suppress(FileExistsError):
                    os.symlink(target, name, dir_fd=dev)
            if fsops.lstat_at(root_fd, "proc") is not None:
                with contextlib.suppress(FileExistsError):
                    os.symlink("/proc/kcore", "core", dir_fd=dev)
            if any(m.destination == "/dev/pts" for m in spec.mounts):
                with contextlib.suppress(FileExistsError):
                    os.symlink("pts/ptmx", "ptmx", dir_fd=dev)
    finally:
        os.close(dev)


def pivot(rootfs: str) -> None:
    """runc's pivot_root(".", "."): the old root stacks under the new one and is detached right away."""
    old = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    new = os.open(rootfs, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fchdir(new)
        ns.pivot_root(".", ".")
        os.fchdir(old)
        # the old root must not propagate the detach back to the host
        ns.set_propagation(".", kmount.MS_SLAVE | kmount.MS_REC)
        ns.unmount_detach(".")
        os.chdir("/")
    finally:
        os.close(old)
        os.close(new)


# -- after pivot_root ----------------------------------------------------------------------------------------


DEVPTS_SUPER_MAGIC = 0x1CD1


def open_pty(console_fd: int, size: tuple[int, int] | None = None) -> int:
    """A pty from the container's own devpts: the master goes over the console socket (runc's protocol), the
    peer fd is returned. Used by the container's init and by exec."""
    try:
        master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise InitError(f"open /dev/ptmx: {e.strerror}") from None
    try:
        st = os.fstat(master)
        if ns.fstatfs_type(master) != DEVPTS_SUPER_MAGIC and not (
                stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(5, 2)):
            raise InitError("/dev/ptmx is neither on devpts nor the ptmx device")
        fcntl.ioctl(master, _TIOCSPTLCK, struct.pack("i", 0))
        number = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, b"\0\0\0\0"))[0]
        if size and size[0] > 0 and size[1] > 0:
            fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
        # open the peer through the master, never by /dev/pts/N path (CVE-2025-52565)
        peer: int = fcntl.ioctl(master, _TIOCGPTPEER, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
        sock = socket.socket(fileno=console_fd)
        try:
            socket.send_fds(sock, [f"/dev/pts/{number}".encode()], [master])
        finally:
            sock.detach()
            os.close(console_fd)
    finally:
        os.close(master)
    return peer


def setup_console(console_fd: int) -> None:
    """Open a pty in the container's devpts, send the master over the console socket, make the peer stdio."""
    peer = open_pty(console_fd)
    try:
        if not os.path.lexists("/dev/console"):
            os.close(os.open("/dev/console", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        target = os.open("/dev/console", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            ns.bind(_fd_path(peer), _fd_path(target), recursive=False)
        finally:
            os.close(target)
        for fd in (0, 1, 2):
            os.dup2(peer, fd)
        fcntl.ioctl(0, _TIOCSCTTY, 0)
    finally:
        os.close(peer)


def write_sysctls(sysctl: dict[str, str]) -> None:
    """Write through /proc/sys only after checking the handle really is procfs (CVE-2025-52881)."""
    for key, value in sysctl.items():
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise InitError(f"write sysctl key {key}: {e.strerror}") from None
        try:
            if ns.fstatfs_type(fd) != ns.PROC_SUPER_MAGIC:
                raise InitError(f"write sysctl key {key}: {path} is not on procfs")
            os.write(fd, value.encode())
        except OSError as e:
            raise InitError(f"write sysctl key {key}: {e.strerror}") from None
        finally:
            os.close(fd)


def readonly_paths(paths: Sequence[str]) -> None:
    """Recursive self-bind, then remount read-only keeping the mount's other flags."""
    for path in paths:
        try:
            fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            ns.bind(_fd_path(fd), path, recursive=True)
        finally:
            os.close(fd)
        fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            ns.remount_bind(_fd_path(fd), ns.mount_flags(fd) | kmount.MS_RDONLY)
        finally:
            os.close(fd)


def masked_paths(paths: Sequence[str]) -> None:
    """Files get the real /dev/null bound over them, directories a read-only empty tmpfs (runc maskPath)."""
    null = os.open("/dev/null", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(null)
        if not stat.S_ISCHR(st.st_mode) or st.st_rdev != os.makedev(1, 3):
            raise InitError("/dev/null is not the null device; refusing to mask paths with it")  # CVE-2025-31133
        for path in paths:
            try:
                fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            except (FileNotFoundError, NotADirectoryError):
                continue
            try:
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    ns.mount_fs("tmpfs", "tmpfs", _fd_path(fd), kmount.MS_RDONLY, None)
                else:
                    ns.bind(_fd_path(null), _fd_path(fd), recursive=False)
            finally:
                os.close(fd)
    finally:
        os.close(null)


def readonly_root() -> None:
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        ns.remount_bind("/", ns.mount_flags(fd) | kmount.MS_RDONLY)
    finally:
        os.close(fd)


def set_rlimits(limits: Sequence[tuple[int, int, int]]) -> None:
    for res, soft, hard in limits:
        try:
            resource.setrlimit(res, (soft, hard))
        except (OSError, ValueError) as e:
            raise InitError(f"error setting rlimit {res}: {e}") from None


def wait_for_start(fifo_fd: int) -> None:
    """Block until ``start`` opens exec.fifo for reading (runc's handshake), then say so through it."""
    try:
        fd = os.open(_fd_path(fifo_fd), os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise InitError(f"open exec fifo: {e.strerror}") from None
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)
        os.close(fifo_fd)


def set_user(spec: Spec, cfg: InitConfig) -> None:
    """Bounding set, groups/gid/uid (keeping caps across the switch), then the capability sets."""
    user = spec.process.user
    if cfg.caps is not None:
        kcaps.drop_bounding(set(cfg.caps.bounding))
        kcaps.set_keepcaps(True)
    try:
        os.setgroups(list(user.additional_gids))
        os.setgid(user.gid)
        os.setuid(user.uid)
    except OSError as e:
        raise InitError(f"setup user: {e.strerror}") from None
    if cfg.caps is not None:
        kcaps.set_keepcaps(False)
        kcaps.apply(cfg.caps)


def load_seccomp(cfg: InitConfig) -> None:
    """Install the filter, compiled before the fork when the creator could (compiling costs several ms)."""
    if cfg.seccomp_program is not None:
        kseccomp.load_program(cfg.seccomp_program)
    elif cfg.seccomp is not None:
        kseccomp.load(cfg.seccomp)


def look_path(name: str, env: dict[str, str]) -> str:
    """Go's exec.LookPath inside the container, with runc/Docker's wording for the two failures."""
    if "/" in name:
        if not os.path.exists(name):
            raise InitError(f'exec: "{name}": stat {name}: no such file or directory', 127)
        if os.path.isdir(name) or not os.access(name, os.X_OK):
            raise InitError(f'exec: "{name}": permission denied', 126)
        return name
    for d in (env.get("PATH", DEFAULT_PATH)).split(":"):
        candidate = os.path.join(d or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise InitError(f'exec: "{name}": executable file not found in $PATH', 127)


def exec_process(spec: Spec) -> NoReturn:
    env = spec.process.env_map()
    path = look_path(spec.process.args[0], env)
    os.closerange(3, 1 << 20)  # nothing of the runtime's may reach the container (CVE-2024-21626)
    try:
        os.execve(path, list(spec.process.args), env)
    except OSError as e:
        code = 126 if e.errno in (errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.EISDIR) else 127
        raise InitError(f'exec: "{spec.process.args[0]}": {e.strerror.lower() if e.strerror else e}', code) from None


# -- the whole sequence --------------------------------------------------------------------------------------


def run(cfg: InitConfig) -> NoReturn:
    """The container process from fork to execve; never returns."""
    spec = cfg.spec
    ready = False
    try:
        reset_signals()
        os.setsid()
        forbid_imports()  # from here on a lazy import would read the container's rootfs
        if spec.linux.namespace("mount") is not None:
            prepare_root(spec, cfg.rootfs)
            root_fd = os.open(cfg.rootfs, fsops.DIR_PATH_FLAGS)
            try:
                for m in spec.mounts:
                    mount_spec(root_fd, m, cfg)
                populate_dev(root_fd, spec)
            finally:
                os.close(root_fd)
            pivot(cfg.rootfs)
        else:
            os.chroot(cfg.rootfs)
            os.chdir("/")
        if cfg.console_fd is not None:
            setup_console(cfg.console_fd)
        write_sysctls(spec.linux.sysctl)
        readonly_paths(spec.linux.readonly_paths)
        masked_paths(spec.linux.masked_paths)
        if spec.root.readonly:
            readonly_root()
        if spec.hostname:
            ns.sethostname(spec.hostname)
        if spec.process.oom_score_adj is not None:
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, str(spec.process.oom_score_adj).encode())
            finally:
                os.close(fd)
        set_rlimits(cfg.rlimits)
        os.umask(spec.process.user.umask if spec.process.user.umask is not None else 0o022)
        report(cfg.sync_fd, "ready")
        os.close(cfg.sync_fd)
        ready = True
        wait_for_start(cfg.fifo_fd)
        nnp = spec.process.no_new_privileges
        if cfg.seccomp is not None and not nnp:
            load_seccomp(cfg)  # needs CAP_SYS_ADMIN without no_new_privs: before the caps go
        try:
            os.chdir(spec.process.cwd)
            cwd_done = True
        except OSError:
            cwd_done = False
        set_user(spec, cfg)
        if not cwd_done:
            try:
                os.chdir(spec.process.cwd)
            except OSError as e:
                raise InitError(f"chdir to cwd ({spec.process.cwd!r}) set in config.json failed: "
                                f"{(e.strerror or '').lower()}") from None
        if nnp:
            kcaps.set_no_new_privs()
        if cfg.seccomp is not None and nnp:
            load_seccomp(cfg)
        exec_process(spec)
    except BaseException as e:  # the init must end with a message and a status, whatever failed
        code = e.code if isinstance(e, InitError) else 1
        text = str(e) or type(e).__name__
        if not ready:
            report(cfg.sync_fd, "error " + text)
        else:
            with contextlib.suppress(OSError):
                os.write(2, f"berth-runtime: unable to start container process: {text}\n".encode())
        os._exit(code)
