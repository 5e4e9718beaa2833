"""One more process in a running container (``runc exec``): its namespaces, cgroup, user and privileges.

``execute`` forks an intermediate process that joins the container's cgroup and, through a pidfd of the
container's init, all of its namespaces at once (``setns(pidfd, flags)``, so a reused PID can never be
joined); joining a PID namespace only affects children, so the intermediate forks the exec'd process, reports
its PID (host view) and exits. The process is reparented to the nearest subreaper (the monitor), which
reaps it. It then takes the steps of runc's ``setns_init_linux.go``: a new session, a pty allocated in the
container's own devpts when asked (the master goes back over the console socket), rlimits, umask, seccomp,
user and capabilities, working directory, no_new_privs, and ``execve`` with only fds 0-2 open.

The container may be berth-runtime's (its state directory) or an OCI binary's such as runc (``cli_state``: the
binary's ``state`` answer); only the init's PID, its cgroup and the bundle's spec are used either way.

Creator and process talk over a close-on-exec sync pipe: ``pid N`` from the intermediate, ``error TEXT`` from
either; end-of-file with no error means ``execve`` succeeded. Failures before ``execve`` (command not found,
bad working directory) therefore reach the caller as errors, with runc's wording, like ``runc exec`` does.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import select
import signal
import termios
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from berth.errors import Conflict, InternalError, InvalidArgument, NotImplementedYet
from berth.kernel import caps as kcaps
from berth.kernel import cgroups, ns
from berth.kernel import seccomp as kseccomp
from berth.oci.runtime_spec import Process
from berth.runtime import init, oci_cli
from berth.runtime.linux import connect_console, load_spec, seccomp_program
from berth.runtime.state import DEFAULT_ROOT, State, StateDir, Status, process_start_time

START_TIMEOUT_S = 10.0
_MAX_FD = 1 << 20


@dataclass(frozen=True)
class _Plan:
    """Everything the exec'd process needs, resolved on the host before the fork."""

    process: Process
    sync_fd: int
    chroot: str | None                 # the rootfs when the container has no mount namespace
    console_fd: int | None
    console_size: tuple[int, int] | None
    rlimits: tuple[tuple[int, int, int], ...]
    caps: kcaps.CapSets | None
    seccomp: dict[str, Any] | None
    seccomp_program: bytes | None      # ``seccomp`` compiled by the creator (cached: same as the init's)


def cli_state(rs: oci_cli.RuntimeState) -> State:
    """A container run by an OCI binary (``runc state``), as :func:`execute` takes it: the init's PID with its start
    time read now (the pidfd opened later is checked against it), the bundle, its rootfs and the cgroup."""
    status = {"created": Status.CREATED, "running": Status.RUNNING, "stopped": Status.STOPPED}.get(rs.status)
    if status is None:
        raise Conflict(f"cannot exec in a container that is {rs.status}")
    start = process_start_time(rs.pid) if rs.pid > 0 else None
    if start is None:
        status = Status.STOPPED
    rootfs = os.path.join(rs.bundle, load_spec(rs.bundle).root.path)
    return State(rs.id, rs.pid, rs.bundle, rootfs, "", cgroup_path=rs.cgroup_path, pid_start=start or 0,
                 status=status)


def execute(container_id: str, process: Process, root: str | os.PathLike[str] = DEFAULT_ROOT, *,
            stdio: Sequence[int] = (0, 1, 2), console_socket: str | None = None,
            console_size: tuple[int, int] | None = None, state: State | None = None) -> int:
    """Start ``process`` inside the running container ``container_id``; returns its PID (host view).

    The container is berth-runtime's under ``root`` unless ``state`` is given (another runtime's container,
    from :func:`cli_state`)."""
    st = state if state is not None else StateDir(root).load(container_id)
    if st.status is not Status.RUNNING:
        raise Conflict("cannot exec in a stopped container" if st.status is Status.STOPPED
                       else f"cannot exec in a container that is {st.status.value}")
    if process.terminal and console_socket is None:
        raise InvalidArgument("cannot allocate tty if berth-runtime will detach without setting console socket")
    if not process.terminal and console_socket is not None:
        raise InvalidArgument("cannot use console socket if berth-runtime will not detach or allocate tty")
    spec = load_spec(st.bundle)
    if spec.linux.namespace("user") is not None:
        raise NotImplementedYet("user namespaces are not supported by berth-runtime yet")
    flags = 0
    for n in spec.linux.namespaces:
        flags |= ns.NAMESPACE_FLAGS[n.type]
    caps = None if process.capabilities is None else kcaps.CapSets.from_oci(process.capabilities.to_dict())
    rlimits = _rlimits(process)
    seccomp = spec.linux.seccomp
    program = None
    if seccomp is not None and not seccomp.get("flags") and not seccomp.get("listenerPath"):
        program = seccomp_program(seccomp)

    opened: list[int] = []
    try:
        pidfd = os.pidfd_open(st.pid)
        opened.append(pidfd)
        if process_start_time(st.pid) != st.pid_start:  # the init is gone and its PID reused
            raise Conflict("cannot exec in a stopped container")
        console_fd = None
        if console_socket is not None:
            console_fd = connect_console(console_socket)
            opened.append(console_fd)
        cg = cgroups.open_cgroup(st.cgroup_path) if st.cgroup_path else None
        r, w = os.pipe2(os.O_CLOEXEC)
        opened.append(r)
        plan = _Plan(process=process, sync_fd=w, chroot=None if flags & ns.CLONE_NEWNS else st.rootfs,
                     console_fd=console_fd, console_size=console_size, rlimits=rlimits, caps=caps,
                     seccomp=seccomp, seccomp_program=program)
        ns.preload()
        child = os.fork()
        if child == 0:
            _intermediate(plan, pidfd, flags, cg, stdio)
        os.close(w)
        try:
            pid, error = _read_sync(r)
        finally:
            os.waitpid(child, 0)
        if error is not None:
            raise InternalError(f"unable to start container process: {error}")
        if not pid:
            raise InternalError("unable to start container process: the exec process did not report its pid")
        return pid
    except ProcessLookupError:
        raise Conflict("cannot exec in a stopped container") from None
    finally:
        for fd in opened:
            with contextlib.suppress(OSError):
                os.close(fd)


def _rlimits(process: Process) -> tuple[tuple[int, int, int], ...]:
    out = []
    for rl in process.rlimits:
        res = getattr(resource, rl.type, None)
        if not isinstance(res, int):
            raise InvalidArgument(f"invalid runtime spec: unknown rlimit type {rl.type!r}")
        inf = resource.RLIM_INFINITY
        out.append((res, inf if rl.soft >= 2**63 else rl.soft, inf if rl.hard >= 2**63 else rl.hard))
    return tuple(out)


def _read_sync(fd: int) -> tuple[int, str | None]:
    """Read until end-of-file (the process exec'd or died) or ``error``; returns (pid, error or None)."""
    buf = b""
    pid = 0
    deadline = time.monotonic() + START_TIMEOUT_S
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(int(left * 1000) + 1):
            if pid:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            return pid, "timeout waiting for the exec process to start"
        chunk = os.read(fd, 4096)
        if not chunk:
            return pid, None
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            text = line.decode(errors="replace")
            if text.startswith("pid "):
                pid = int(text[4:])
            elif text.startswith("error "):
                return pid, text[6:]


def _intermediate(plan: _Plan, pidfd: int, flags: int, cg: cgroups.Cgroup | None, stdio: Sequence[int]) -> NoReturn:
    """Joins the cgroup, then every namespace of the init at once; forks the process (it lands in the PID
    namespace), reports its pid and exits."""
    try:
        if cg is not None:
            cg.add(os.getpid())  # host cgroupfs paths: before the mount namespace changes
        if flags:
            ns.setns(pidfd, flags)
        os.close(pidfd)
        init.forbid_imports()  # from here on a lazy import would read the container's rootfs
        for target, fd in enumerate(stdio):
            if fd != target:
                os.dup2(fd, target)
        pid = os.fork()
        if pid == 0:
            _run(plan)
        init.report(plan.sync_fd, f"pid {pid}")
    except BaseException as e:  # the fork child must end here whatever happened
        init.report(plan.sync_fd, f"error {e}")
        os._exit(1)
    os._exit(0)


def _run(plan: _Plan) -> NoReturn:
    """The exec'd process from fork to execve; never returns."""
    process = plan.process
    try:
        init.reset_signals()
        os.setsid()
        if plan.chroot is not None:
            os.chroot(plan.chroot)
            os.chdir("/")
        if plan.console_fd is not None:
            _console(plan.console_fd, plan.console_size)
        init.set_rlimits(plan.rlimits)
        if process.oom_score_adj is not None:
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, str(process.oom_score_adj).encode())
            finally:
                os.close(fd)
        os.umask(process.user.umask if process.user.umask is not None else 0o022)
        nnp = process.no_new_privileges
        if plan.seccomp is not None and not nnp:
            _load_seccomp(plan)  # needs CAP_SYS_ADMIN without no_new_privs: before the caps go
        try:
            os.chdir(process.cwd)
            cwd_done = True
        except OSError:
            cwd_done = False  # maybe only the target user can enter it
        _set_user(process, plan.caps)
        if not cwd_done:
            try:
                os.chdir(process.cwd)
            except OSError as e:
                raise init.InitError(f"chdir to cwd ({process.cwd!r}) set in config.json failed: "
                                     f"{(e.strerror or '').lower()}") from None
        if nnp:
            kcaps.set_no_new_privs()
        if plan.seccomp is not None and nnp:
            _load_seccomp(plan)
        env = process.env_map()
        path = init.look_path(process.args[0], env)
        # nothing of the monitor's may reach the container (CVE-2024-21626); the close-on-exec sync pipe
        # stays open until execve so that its end-of-file means success
        os.closerange(3, plan.sync_fd)
        os.closerange(plan.sync_fd + 1, _MAX_FD)
        try:
            os.execve(path, list(process.args), env)
        except OSError as e:
            code = 126 if e.errno in (errno.EACCES, errno.EPERM, errno.ENOEXEC, errno.EISDIR) else 127
            raise init.InitError(f'exec: "{process.args[0]}": {(e.strerror or str(e)).lower()}', code) from None
    except BaseException as e:  # the process must end with a message and a status, whatever failed
        code = e.code if isinstance(e, init.InitError) else 1
        init.report(plan.sync_fd, "error " + (str(e) or type(e).__name__))
        os._exit(code)


def _load_seccomp(plan: _Plan) -> None:
    if plan.seccomp_program is not None:
        kseccomp.load_program(plan.seccomp_program)
    elif plan.seccomp is not None:
        kseccomp.load(plan.seccomp)


def _set_user(process: Process, caps: kcaps.CapSets | None) -> None:
    """Bounding set, groups/gid/uid (keeping caps across the switch), then the capability sets."""
    user = process.user
    if caps is not None:
        kcaps.drop_bounding(set(caps.bounding))
        kcaps.set_keepcaps(True)
    try:
        os.setgroups(list(user.additional_gids))
        os.setgid(user.gid)
        os.setuid(user.uid)
    except OSError as e:
        raise init.InitError(f"setup user: {e.strerror}") from None
    if caps is not None:
        kcaps.set_keepcaps(False)
        kcaps.apply(caps)


def _console(console_fd: int, size: tuple[int, int] | None) -> None:
    """A pty from the container's own devpts; the master goes over the console socket, the peer becomes stdio."""
    peer = init.open_pty(console_fd, size)
    try:
        for fd in (0, 1, 2):
            os.dup2(peer, fd)
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    finally:
        os.close(peer)
