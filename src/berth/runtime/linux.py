"""The OCI lifecycle on Linux with runc's semantics: create, start, state, kill, delete (and run = all of them).

``create`` forks an intermediate process that joins the cgroup and the namespaces, and which forks the
container init (PID 1 of a new PID namespace) and exits: the init survives its creator (no pdeathsig) and is
reparented to the nearest subreaper. Creator and init talk over a sync pipe (``pid N``, ``ready``,
``error TEXT``); the init then blocks on ``exec.fifo`` until ``start`` opens it. Signals go through a
pidfd whose process start time matches the one recorded at create, so a reused PID is never signalled.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import resource
import select
import signal
import socket
import stat
import struct
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from berth.errors import Conflict, InternalError, InvalidArgument, NotFound, NotImplementedYet
from berth.kernel import caps as kcaps
from berth.kernel import cgroups, ns
from berth.kernel import seccomp as kseccomp
from berth.oci.runtime_spec import Spec
from berth.runtime import init
from berth.runtime.state import DEFAULT_ROOT, EXEC_FIFO, State, StateDir, Status, process_start_time
from berth.units import now_rfc3339

CGROUP_ROOT = "/sys/fs/cgroup"
DEFAULT_CGROUP_PARENT = "berth-runtime"
KILL_WAIT_S = 10.0
SECCOMP_CACHE_SIZE = 32
_seccomp_programs: dict[tuple[str, str], bytes] = {}

# runc's AllowedDevices (libcontainer/specconv), appended after the spec's own rules like runc does
RUNC_ALLOWED_DEVICES: tuple[dict[str, Any], ...] = (
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 7, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
    {"allow": True, "type": "c", "major": 136, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
    {"allow": True, "type": "c", "major": 10, "minor": 200, "access": "rwm"},
)


def _warn(message: str) -> None:
    with contextlib.suppress(OSError):
        sys.stderr.write(f"berth-runtime: warning: {message}\n")
        sys.stderr.flush()


def load_spec(bundle: str | os.PathLike[str]) -> Spec:
    path = Path(bundle) / "config.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise NotFound(f"config.json not found in bundle {os.fspath(bundle)}") from None
    return Spec.from_json(text)


def _rlimits(spec: Spec) -> tuple[tuple[int, int, int], ...]:
    """Resolve names and clamp to the current hard limit (raising it needs CAP_SYS_RESOURCE: warn instead)."""
    out = []
    for r in spec.process.rlimits:
        res = getattr(resource, r.type, None)
        if not isinstance(res, int):
            raise InvalidArgument(f"invalid runtime spec: unknown rlimit type {r.type!r}")
        inf = resource.RLIM_INFINITY
        soft = inf if r.soft >= 2**63 else r.soft
        hard = inf if r.hard >= 2**63 else r.hard
        _, cur_hard = resource.getrlimit(res)
        if cur_hard != inf and (hard == inf or hard > cur_hard):
            _warn(f"{r.type} hard limit {r.hard} is above the current hard limit {cur_hard}; clamped")
            hard = cur_hard
        if hard != inf and (soft == inf or soft > hard):
            soft = hard
        out.append((res, soft, hard))
    return tuple(out)


def seccomp_program(section: dict[str, Any], machine: str | None = None) -> bytes:
    """The compiled filter for an OCI seccomp section, cached per (section, machine) for a long-lived creator.

    Compiling Docker's profile takes several ms; a monitor starting many containers compiles each profile
    once (profiles differ only by the capabilities granted).
    """
    machine = machine or os.uname().machine
    key = (json.dumps(section, sort_keys=True), machine)
    program = _seccomp_programs.get(key)
    if program is None:
        program = kseccomp.compile_filter(section, machine)
        if len(_seccomp_programs) >= SECCOMP_CACHE_SIZE:
            _seccomp_programs.clear()
        _seccomp_programs[key] = program
    return program


def _cgroup_mounts(cgroup_path: str) -> tuple[tuple[init.CgroupMount, ...], tuple[tuple[str, str], ...]]:
    mounts = []
    for h in cgroups.iter_hierarchies():
        point = os.fspath(h.mountpoint)
        if point == CGROUP_ROOT:
            return (init.CgroupMount("", os.path.join(point, cgroup_path)),), ()
        if point.startswith(CGROUP_ROOT + "/") and os.path.isdir(os.path.join(point, cgroup_path)):
            mounts.append(init.CgroupMount(point[len(CGROUP_ROOT) + 1:], os.path.join(point, cgroup_path)))
    links = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(CGROUP_ROOT):
            if entry.is_symlink():
                links.append((entry.name, os.readlink(entry.path)))
    return tuple(mounts), tuple(links)


def connect_console(path: str) -> int:
    """A connected fd on the caller's console socket (runc's --console-socket), to send the pty master over."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        raise InvalidArgument(f"connect to console socket {path}: {e.strerror}") from None
    return sock.detach()


def _intermediate(cfg: init.InitConfig, cg: cgroups.Cgroup | None, join: Sequence[tuple[int, int]],
                  new_flags: int, stdio: Sequence[int], born_in_unified: bool) -> NoReturn:
    """Joins the cgroup and namespaces, forks the init (PID 1 of a new PID namespace), reports its pid, exits."""
    try:
        late: cgroups.Cgroup | None = None
        if cg is not None:
            late = _join_cgroup(cg, born_in_unified=born_in_unified,
                                defer_unified=not new_flags & ns.NAMESPACE_FLAGS["cgroup"])
        for fd, flag in join:
            ns.setns(fd, flag)
            os.close(fd)
        ns.unshare(new_flags)
        for target, fd in enumerate(stdio):
            if fd != target:
                os.dup2(fd, target)
        pid = os.fork()
        if pid == 0:
            init.run(cfg)
        if late is not None:
            # the init sets itself up meanwhile; `create` returns only after both the pid and "ready" came
            try:
                late.add(pid)
            except BaseException:
                os.kill(pid, signal.SIGKILL)
                raise
        init.report(cfg.sync_fd, f"pid {pid}")
    except BaseException as e:  # the fork child must end here whatever happened
        init.report(cfg.sync_fd, f"error {e}")
        os._exit(1)
    os._exit(0)


def _join_cgroup(cg: cgroups.Cgroup, *, born_in_unified: bool, defer_unified: bool) -> cgroups.Cgroup | None:
    """Move the calling (single-threaded) process into ``cg``; returns the part left for the init, if any.

    Each ``cgroup.procs`` write takes the global threadgroup lock, whose write side waits for an RCU grace period
    (10-20 ms here). On v1 hierarchies writing ``0`` to ``tasks`` moves only the calling thread and skips that
    lock; with one thread that is the whole process, and the init forked next inherits it. The hybrid host's
    unified hierarchy has no such way: the process is cloned into it (``born_in_unified``, see :func:`_fork_into`)
    or, with ``defer_unified``, its move is left to the caller, to do on the init while that sets itself up (not
    with a new cgroup namespace, whose root is taken at unshare).
    """
    if not isinstance(cg, cgroups.CgroupV1):
        if not born_in_unified:
            cg.add(os.getpid())
        return None
    for directory in cg.all_dirs:
        fd = os.open(directory / "tasks", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
    if cg.unified is None or born_in_unified:
        return None
    if defer_unified:
        return cg.unified
    cg.unified.add(os.getpid())
    return None


_CLONE_INTO_CGROUP = 0x200000000
_SYS_CLONE3 = 435  # same number on every architecture
_pyapi = ctypes.PyDLL(None, use_errno=True)  # PyDLL: the GIL stays held across the call, as in os.fork


def _fork_into(cgroup_dir: Path) -> int | None:
    """``os.fork`` that puts the child straight into the cgroup2 ``cgroup_dir`` (clone3 CLONE_INTO_CGROUP).

    Joining at fork takes only the read side of the threadgroup lock: no RCU grace period, unlike a
    ``cgroup.procs`` write. None when the kernel (or the architecture's syscall table) refuses; then fork.
    """
    try:
        dir_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        args = ctypes.create_string_buffer(struct.pack(
            "=11Q", _CLONE_INTO_CGROUP, 0, 0, 0, signal.SIGCHLD, 0, 0, 0, 0, 0, dir_fd), 88)
        _pyapi.PyOS_BeforeFork()
        pid = _pyapi.syscall(ctypes.c_long(_SYS_CLONE3), args, ctypes.c_size_t(88))
        if pid == 0:
            _pyapi.PyOS_AfterFork_Child()
            return 0
        _pyapi.PyOS_AfterFork_Parent()
        return None if pid < 0 else int(pid)
    finally:
        os.close(dir_fd)


def _read_sync(fd: int) -> tuple[int, str | None]:
    """Read the sync pipe until both ``pid`` and ``ready`` came, or ``error``; returns (init pid, error or None)."""
    buf = b""
    pid = 0
    ready = False
    while not (ready and pid):
        chunk = os.read(fd, 4096)
        if not chunk:
            return pid, "container init exited before it was ready"
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            text = line.decode(errors="replace")
            if text.startswith("pid "):
                pid = int(text[4:])  # the intermediate and the init write concurrently: any order
            elif text == "ready":
                ready = True
            elif text.startswith("error "):
                return pid, text[6:]
    return pid, None


def create(container_id: str, bundle: str | os.PathLike[str], root: str | os.PathLike[str] = DEFAULT_ROOT, *,
           console_socket: str | None = None, pid_file: str | None = None,
           stdio: Sequence[int] = (0, 1, 2)) -> int:
    """Create the container ``container_id`` from ``bundle``; returns the init's PID (host view)."""
    states = StateDir(root)
    bundle_path = os.path.abspath(os.fspath(bundle))
    spec = load_spec(bundle_path)
    if spec.process.terminal and console_socket is None:
        raise InvalidArgument("cannot allocate tty if berth-runtime will detach without setting console socket")
    if not spec.process.terminal and console_socket is not None:
        raise InvalidArgument("cannot use console socket if berth-runtime will not detach or allocate tty")
    if spec.linux.namespace("user") is not None:
        raise NotImplementedYet("user namespaces are not supported by berth-runtime yet")
    rootfs = os.path.join(bundle_path, spec.root.path)
    if not os.path.isdir(rootfs):
        raise NotFound(f"rootfs ({rootfs}) does not exist")
    rlimits = _rlimits(spec)
    cap_sets = None if spec.process.capabilities is None else kcaps.CapSets.from_oci(
        spec.process.capabilities.to_dict())
    program = None
    if spec.linux.seccomp is not None:
        program = seccomp_program(spec.linux.seccomp)  # fail at create, not in the init
        if spec.linux.seccomp.get("flags") or spec.linux.seccomp.get("listenerPath"):
            program = None  # the init compiles and checks these itself (kseccomp.load)
    cgroup_path = spec.linux.cgroups_path.strip("/") or f"{DEFAULT_CGROUP_PARENT}/{container_id}"

    state_dir = states.reserve(container_id)
    opened: list[int] = []
    cg: cgroups.Cgroup | None = None
    pid = 0
    try:
        cg = cgroups.open_cgroup(cgroup_path)
        cg.create()
        for warning in cg.apply(cgroups.Resources.from_oci(spec.linux.resources)):
            _warn(warning)
        rules = list((spec.linux.resources or {}).get("devices") or [])
        if rules:
            for warning in cg.apply_devices(rules + list(RUNC_ALLOWED_DEVICES)):
                _warn(warning)
        cg_mounts, cg_links = _cgroup_mounts(cgroup_path)

        fifo = state_dir / EXEC_FIFO
        os.mkfifo(fifo, 0o622)
        fifo_fd = os.open(fifo, os.O_PATH | os.O_CLOEXEC)
        opened.append(fifo_fd)
        console_fd = None
        if console_socket is not None:
            console_fd = connect_console(console_socket)
            opened.append(console_fd)
        join: list[tuple[int, int]] = []
        new_flags = 0
        for n in spec.linux.namespaces:
            flag = ns.NAMESPACE_FLAGS[n.type]
            if n.path:
                try:
                    fd = os.open(n.path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as e:
                    raise InvalidArgument(f"namespace {n.type} path {n.path}: {e.strerror}") from None
                opened.append(fd)
                join.append((fd, flag))
            else:
                new_flags |= flag
        r, w = os.pipe()
        opened.append(r)
        cfg = init.InitConfig(spec=spec, rootfs=rootfs, sync_fd=w, fifo_fd=fifo_fd, console_fd=console_fd,
                              cgroup_mounts=cg_mounts, cgroup_links=cg_links, rlimits=rlimits, caps=cap_sets,
                              seccomp=spec.linux.seccomp, seccomp_program=program)
        ns.preload()
        unified = cg.unified if isinstance(cg, cgroups.CgroupV1) else cg if isinstance(cg, cgroups.CgroupV2) else None
        born = None if unified is None else _fork_into(unified.dir)
        child = os.fork() if born is None else born
        if child == 0:
            _intermediate(cfg, cg, join, new_flags, stdio, born is not None)
        os.close(w)
        try:
            pid, error = _read_sync(r)
        finally:
            os.waitpid(child, 0)
        if error is not None:
            raise InternalError(f"unable to start container process: {error}")
        states.save(State(id=container_id, pid=pid, bundle=bundle_path, rootfs=rootfs, created=now_rfc3339(),
                          cgroup_path=cgroup_path, pid_start=process_start_time(pid) or 0,
                          status=Status.CREATED, annotations=dict(spec.annotations)))
        if pid_file:
            tmp = f"{pid_file}.tmp"
            Path(tmp).write_text(str(pid))
            os.replace(tmp, pid_file)
        return pid
    except BaseException:
        if pid > 0:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if cg is not None:
            with contextlib.suppress(Exception):
                cg.kill_all(signal.SIGKILL)
            _destroy_cgroup(cg)
        states.remove(container_id)
        raise
    finally:
        for fd in opened:
            with contextlib.suppress(OSError):
                os.close(fd)


def _destroy_cgroup(cg: cgroups.Cgroup) -> None:
    deadline = time.monotonic() + 2.0
    while True:
        try:
            cg.destroy()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def state(container_id: str, root: str | os.PathLike[str] = DEFAULT_ROOT) -> State:
    """The container's state with a live status."""
    return StateDir(root).load(container_id)


def _pidfd(st: State) -> int | None:
    """A pidfd for the init, or None when that process (this exact one) is gone."""
    try:
        fd = os.pidfd_open(st.pid)
    except ProcessLookupError:
        return None
    if process_start_time(st.pid) != st.pid_start:  # the PID was reused after the init exited
        os.close(fd)
        return None
    return fd


def start(container_id: str, root: str | os.PathLike[str] = DEFAULT_ROOT) -> None:
    """Let a created container exec its process (opens exec.fifo; the init is blocked opening the other end)."""
    states = StateDir(root)
    st = states.load(container_id)
    if st.status is Status.RUNNING:
        raise Conflict("cannot start an already running container")
    if st.status is Status.STOPPED:
        raise Conflict("cannot start a container that has stopped")
    fifo = states.fifo(container_id)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            raise InternalError(f"{fifo} is not a fifo")
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while True:
            if poller.poll(100):
                data = os.read(fd, 1)
                if data:
                    break
            if process_start_time(st.pid) != st.pid_start:
                raise InternalError("container init exited before start")
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        fifo.unlink()


def kill(container_id: str, sig: int = signal.SIGTERM, root: str | os.PathLike[str] = DEFAULT_ROOT) -> None:
    """Send ``sig`` to the container's init."""
    st = state(container_id, root)
    if not st.status.can_kill():
        raise Conflict("container not running")
    fd = _pidfd(st)
    if fd is None:
        raise Conflict("container not running")
    try:
        signal.pidfd_send_signal(fd, sig)
    finally:
        os.close(fd)


def _wait_gone(fd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(int(timeout * 1000)))


def delete(container_id: str, root: str | os.PathLike[str] = DEFAULT_ROOT, *, force: bool = False) -> None:
    """Remove a stopped (or created) container: kill what is left, remove its cgroup and state."""
    states = StateDir(root)
    try:
        st = states.load(container_id)
    except Conflict:
        if not force:
            raise
        states.remove(container_id)  # a creator that died before writing state.json left only its directory
        return
    if st.status is Status.RUNNING and not force:
        raise Conflict(f"cannot delete container {container_id} that is not stopped: {st.status.value}")
    fd = _pidfd(st) if st.status is not Status.STOPPED else None
    if fd is not None:
        try:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            _wait_gone(fd, KILL_WAIT_S)
        finally:
            os.close(fd)
    if st.cgroup_path:
        cg = cgroups.open_cgroup(st.cgroup_path)
        with contextlib.suppress(Exception):
            cg.kill_all(signal.SIGKILL)
        with contextlib.suppress(Exception):
            _destroy_cgroup(cg)
    states.remove(container_id)


def exit_code(wait_status: int) -> int:
    """A shell's view of a wait status: the exit code, or 128+n for a signal."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


FORWARDED_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2,
                     signal.SIGWINCH)


def run(container_id: str, bundle: str | os.PathLike[str], root: str | os.PathLike[str] = DEFAULT_ROOT, *,
        detach: bool = False, console_socket: str | None = None, pid_file: str | None = None) -> int:
    """create + start; in the foreground wait for the init, forward signals, delete it, return its status."""
    if not detach:
        ns.set_child_subreaper(True)  # the init is reparented to us when the intermediate exits
    pid = create(container_id, bundle, root, console_socket=console_socket, pid_file=pid_file)
    try:
        start(container_id, root)
    except BaseException:
        with contextlib.suppress(Exception):
            delete(container_id, root, force=True)
        raise
    if detach:
        return 0
    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, lambda n, _f: _forward(pid, n))
    try:
        while True:
            try:
                got, status = os.waitpid(pid, 0)
            except ChildProcessError:
                return 255
            if got == pid:
                return exit_code(status)
    finally:
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        with contextlib.suppress(Exception):
            delete(container_id, root, force=True)


def _forward(pid: int, sig: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, sig)
