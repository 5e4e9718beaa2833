"""``docker exec``: create an exec instance, start it in the running container, inspect it, resize its tty.

An exec is a record kept in memory (like dockerd's exec store, it does not survive a daemon restart): the
command and its options at create, then its run. Starting it builds an OCI process from the container's own
spec (capabilities, seccomp, no_new_privs, rlimits, user), the exec's overrides (``-u`` resolved from the
container's /etc/passwd, ``-e``, ``-w``, ``-t``, ``--privileged``) and moby's environment rules, and asks the
monitor to run it (``berth.runtime.exec`` joins the container). The daemon attaches to the monitor's exec
session *before* it starts, so no output is lost; when that stream ends the process has exited, and the exit
code is read from the monitor and stored before the client's hijacked connection is closed (clients inspect
the exec for it right after the stream ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from berth.engine.containers import ContainerService
from berth.engine.running import DEFAULT_DETACH_KEYS, ContainerRunner, _scan_detach, parse_detach_keys
from berth.engine.spec import all_capabilities, environment, working_dir
from berth.errors import BerthError, Conflict, InternalError, InvalidArgument, NotFound
from berth.oci.runtime_spec import Capabilities, Process, User
from berth.runtime.linux import load_spec
from berth.runtime.monitor import frame
from berth.runtime.users import ExecUser, resolve_user

log = logging.getLogger("berth.engine")

EXITED_KEEP_S = 300.0      # dockerd's exec GC runs every 5 minutes; ended execs stay inspectable that long
RESIZE_WAIT_S = 10.0       # dockerd waits this long for the exec to start before resizing it
UNKNOWN_EXIT = 126         # dockerd stores 126 for any exec whose start failed (its deferred cleanup)
STDOUT = 1


class ExecStatus(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"

    def can_start(self) -> bool:
        return self is ExecStatus.CREATED


class Stream(Protocol):
    """The client's hijacked connection (``berth.api.http.HijackedStream``)."""

    async def read(self, n: int = 65536) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...


@dataclass
class Exec:
    """One exec instance: what to run (fixed at create) and how its run went."""

    id: str
    container_id: str
    cmd: tuple[str, ...]
    tty: bool = False
    privileged: bool = False
    user: str = ""
    working_dir: str = ""
    env: tuple[str, ...] = ()
    stdin: bool = False
    stdout: bool = False
    stderr: bool = False
    detach_keys: str = ""
    console_size: tuple[int, int] | None = None
    status: ExecStatus = ExecStatus.CREATED
    exit_code: int | None = None
    pid: int = 0
    finished_at: float = 0.0
    started: asyncio.Event = field(default_factory=asyncio.Event)   # set once a start succeeded or failed

    def action_suffix(self) -> str:
        """dockerd's event action text: entrypoint, a space, the arguments joined (``exec_start: ls /``)."""
        return f"{self.cmd[0]} {' '.join(self.cmd[1:])}"

    def inspect(self) -> dict[str, Any]:
        return {
            "ID": self.id,
            "Running": self.status is ExecStatus.RUNNING,
            "ExitCode": self.exit_code,
            "ProcessConfig": {"tty": self.tty, "entrypoint": self.cmd[0], "arguments": list(self.cmd[1:]),
                              "privileged": self.privileged, "user": self.user},
            "OpenStdin": self.stdin,
            "OpenStderr": self.stderr,
            "OpenStdout": self.stdout,
            "CanRemove": False,
            "ContainerID": self.container_id,
            "DetachKeys": self.detach_keys,
            "Pid": self.pid,
        }


@dataclass
class _Sink:
    """Where the exec's output goes: the client's stream until it detaches or leaves, then nowhere."""

    stream: Stream | None


class ExecService:
    def __init__(self, containers: ContainerService, runner: ContainerRunner) -> None:
        self.containers = containers
        self.runner = runner
        self.monitor = runner.monitor
        self.execs: dict[str, Exec] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # --- create, inspect ------------------------------------------------------------------------------

    async def create(self, ref: str, body: Any) -> dict[str, str]:
        """``POST /containers/{ref}/exec``: 201 ``{"Id"}``; 409 when the container is not running."""
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise InvalidArgument("invalid JSON: the exec configuration must be an object")
        cid, name, doc = await asyncio.to_thread(self.containers.resolve, ref)
        _check_running(ref, cid, doc)
        cmd = body.get("Cmd")
        if isinstance(cmd, str):
            cmd = [cmd]
        if not cmd or not isinstance(cmd, list) or not all(isinstance(c, str) for c in cmd):
            raise InvalidArgument("No exec command specified")
        keys = str(body.get("DetachKeys") or "")
        if keys:
            parse_detach_keys(keys)
        wd = str(body.get("WorkingDir") or "")
        if wd:
            wd = working_dir({"WorkingDir": wd})
        env = body.get("Env") or []
        if not isinstance(env, list) or not all(isinstance(e, str) for e in env):
            raise InvalidArgument("invalid environment: Env must be a list of strings")
        size = body.get("ConsoleSize")
        ex = Exec(id=secrets.token_hex(32), container_id=cid, cmd=tuple(cmd), tty=bool(body.get("Tty")),
                  privileged=bool(body.get("Privileged")), user=str(body.get("User") or ""), working_dir=wd,
                  env=tuple(env), stdin=bool(body.get("AttachStdin")), stdout=bool(body.get("AttachStdout")),
                  stderr=bool(body.get("AttachStderr")), detach_keys=keys, console_size=_size(size))
        self._collect()
        self.execs[ex.id] = ex
        self._publish(ex, name, doc, f"exec_create: {ex.action_suffix()}")
        return {"Id": ex.id}

    def inspect(self, eid: str) -> dict[str, Any]:
        """``GET /exec/{id}/json``."""
        ex = self._get(eid)
        try:
            self.containers.db.get(ex.container_id)
        except NotFound:  # the container was removed: so are its execs
            self.execs.pop(eid, None)
            raise NotFound(f"No such exec instance: {eid}") from None
        return ex.inspect()

    def ids(self, cid: str) -> list[str]:
        """The container's execs that have not ended (container inspect ``ExecIDs``)."""
        execs = list(self.execs.values())  # one C-level copy: callable from a worker thread
        return [e.id for e in execs if e.container_id == cid and e.status is not ExecStatus.EXITED]

    def _get(self, eid: str) -> Exec:
        ex = self.execs.get(eid)
        if ex is None:
            raise NotFound(f"No such exec instance: {eid}")
        return ex

    def _collect(self) -> None:
        """Forget execs that ended long ago (dockerd's exec GC)."""
        cutoff = time.time() - EXITED_KEEP_S
        for eid in [e.id for e in self.execs.values() if e.status is ExecStatus.EXITED and e.finished_at < cutoff]:
            del self.execs[eid]

    async def _container(self, ex: Exec) -> tuple[str, dict[str, Any]]:
        try:
            _cid, name, doc = await asyncio.to_thread(self.containers.resolve, ex.container_id)
        except NotFound:
            raise NotFound(f"No such container: {ex.id}") from None
        _check_running(ex.container_id, ex.container_id, doc)
        return name, doc

    # --- start -----------------------------------------------------------------------------------------

    async def start(self, eid: str, *, detach: bool,
                    console_size: Any = None) -> Callable[[Stream], Awaitable[None]] | None:
        """``POST /exec/{id}/start``. Checks now (errors before any hijack); detached, runs the process and
        returns None; attached, returns ``run(stream)`` that starts it and pumps the streams until it ends."""
        ex = self._get(eid)
        name, doc = await self._container(ex)
        size = _size(console_size) or ex.console_size
        if detach:
            await self._launch(ex, name, doc, size, _Sink(None))
            return None

        async def run(stream: Stream) -> None:
            sink = _Sink(stream)
            try:
                watch, m_writer = await self._launch(ex, name, doc, size, sink)
            except BerthError as e:
                msg = (str(e) + "\r\n").encode()
                stream.write(msg if ex.tty else frame(STDOUT, msg))
                with contextlib.suppress(ConnectionError, OSError):
                    await stream.drain()
                return
            up = asyncio.create_task(self._upstream(ex, stream, m_writer))
            try:
                await asyncio.wait({watch, up}, return_when=asyncio.FIRST_COMPLETED)
                if not watch.done() and up.result() == "detached":
                    sink.stream = None  # the process runs on; the watcher still records its exit
                    self._publish(ex, name, doc, "exec_detach")
                    return
                await asyncio.shield(watch)
            finally:
                up.cancel()
        return run

    async def _launch(self, ex: Exec, name: str, doc: dict[str, Any], size: tuple[int, int] | None,
                      sink: _Sink) -> tuple[asyncio.Task[None], Any]:
        if ex.status is ExecStatus.EXITED:
            raise Conflict(f"Error: Exec command {ex.id} has already run")
        if ex.status is ExecStatus.RUNNING:
            raise Conflict(f"Error: Exec command {ex.id} is already running")
        ex.status = ExecStatus.RUNNING
        self._publish(ex, name, doc, f"exec_start: {ex.action_suffix()}")
        attached = sink.stream is not None
        m_writer = None
        try:
            process = await asyncio.to_thread(self._process, ex, doc)
            m_reader, m_writer = await self.monitor.attach(
                ex.id, stdin=attached and ex.stdin, stdout=attached and ex.stdout, stderr=attached and ex.stderr,
                tty=ex.tty)
            try:
                reply = await self.monitor.request("exec", id=ex.id, container=ex.container_id,
                                                   process=process.to_dict(), stdin=ex.stdin,
                                                   console_size=list(size) if size else None)
            except BerthError as e:
                raise _start_error(str(e)) from None
        except BaseException:
            if m_writer is not None:
                m_writer.close()
            ex.status = ExecStatus.EXITED
            ex.exit_code = UNKNOWN_EXIT
            ex.finished_at = time.time()
            ex.started.set()
            raise
        ex.pid = int(reply.get("pid") or 0)
        ex.started.set()
        watch = asyncio.create_task(self._watch(ex, name, doc, m_reader, m_writer, sink))
        self._tasks.add(watch)
        watch.add_done_callback(self._tasks.discard)
        return watch, m_writer

    def _process(self, ex: Exec, doc: dict[str, Any]) -> Process:
        """The exec's OCI process: the container's, with the exec's command, env, cwd, tty, user, privileges."""
        bundle = self.runner.bundles / ex.container_id
        base = load_spec(bundle).process
        config, host = doc["Config"], doc["HostConfig"]
        rootfs = Path(bundle) / "rootfs"
        group_add = [str(g) for g in host.get("GroupAdd") or []]
        if ex.user:
            who = resolve_user(rootfs, ex.user, group_add)
            user = User(who.uid, who.gid, who.additional_gids, base.user.umask)
        else:
            user = base.user
            try:
                who = resolve_user(rootfs, str(config.get("User") or ""), group_add)
            except BerthError:
                who = ExecUser(user.uid, user.gid)
        env = environment({"Hostname": config.get("Hostname") or "", "Tty": ex.tty,
                           "Env": list(config.get("Env") or []) + list(ex.env)}, who)
        caps = base.capabilities
        if ex.privileged:
            every = tuple(all_capabilities())
            caps = Capabilities(bounding=every, effective=every, permitted=every)
        return Process(args=ex.cmd, env=env, cwd=ex.working_dir or working_dir(config), terminal=ex.tty,
                       user=user, capabilities=caps, rlimits=base.rlimits,
                       no_new_privileges=base.no_new_privileges, oom_score_adj=base.oom_score_adj)

    async def _upstream(self, ex: Exec, stream: Stream, m_writer: Any) -> str:
        """Client stdin to the process; ``eof`` at the client's half-close, ``detached`` on the detach keys."""
        keys = parse_detach_keys(ex.detach_keys) if ex.detach_keys else DEFAULT_DETACH_KEYS
        matched = 0
        try:
            while data := await stream.read(65536):
                if not ex.stdin:
                    continue
                if ex.tty and keys:
                    data, matched, detached = _scan_detach(data, keys, matched)
                    if data:
                        m_writer.write(data)
                    if detached:
                        return "detached"
                else:
                    m_writer.write(data)
                await m_writer.drain()
            if ex.stdin and m_writer.can_write_eof():
                m_writer.write_eof()  # the monitor closes the process's stdin; output keeps flowing
        except (ConnectionError, OSError):
            pass
        return "eof"

    async def _watch(self, ex: Exec, name: str, doc: dict[str, Any], reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter, sink: _Sink) -> None:
        """Pump the monitor's stream to the client while it is there; at its end, record the exit code."""
        try:
            while data := await reader.read(65536):
                if sink.stream is not None:
                    try:
                        sink.stream.write(data)
                        await sink.stream.drain()
                    except (ConnectionError, OSError):
                        sink.stream = None
        except (ConnectionError, OSError) as e:
            log.debug("exec %s: monitor stream: %s", ex.id[:12], e)
        finally:
            writer.close()
        await self._finish(ex, name, doc)

    async def _finish(self, ex: Exec, name: str, doc: dict[str, Any]) -> None:
        code: int | None = None
        while code is None:
            try:
                state = (await self.monitor.request("session", id=ex.id))["session"]
            except (BerthError, OSError) as e:
                log.warning("exec %s: its exit status is lost: %s", ex.id[:12], e)
                code = 255
                break
            if state["status"] == "exited":
                code = int(state["exit_code"]) if state["exit_code"] is not None else 255
            else:
                await asyncio.sleep(0.1)  # the stream ended early (monitor restart): wait for the exit itself
        ex.exit_code = code
        ex.status = ExecStatus.EXITED
        ex.finished_at = time.time()
        with contextlib.suppress(BerthError, OSError):
            await self.monitor.request("forget", id=ex.id)
        self._publish(ex, name, doc, "exec_die", exitCode=str(code))

    # --- resize ----------------------------------------------------------------------------------------

    async def resize(self, eid: str, h: int, w: int) -> None:
        """``POST /exec/{id}/resize``: waits for the start (the CLI may resize first); a no-op once it ended."""
        ex = self._get(eid)
        await self._container(ex)
        try:
            await asyncio.wait_for(ex.started.wait(), RESIZE_WAIT_S)
        except TimeoutError:
            raise InternalError("timeout waiting for exec session ready") from None
        if ex.pid == 0:
            raise InvalidArgument("exec process is not started")
        if not ex.tty or ex.status is not ExecStatus.RUNNING:
            return
        with contextlib.suppress(NotFound, InvalidArgument):  # it ended meanwhile
            await self.monitor.request("resize", id=eid, h=h, w=w)

    def _publish(self, ex: Exec, name: str, doc: dict[str, Any], action: str, **extra: str) -> None:
        attrs = {**self.containers.attributes(name, doc), "execID": ex.id, **extra}
        self.containers.events.publish("container", action, ex.container_id, attrs)


def _check_running(ref: str, cid: str, doc: dict[str, Any]) -> None:
    """dockerd's getActiveContainer: running, not paused, not restarting."""
    status = doc["State"]["Status"]
    if status == "paused":
        raise Conflict(f"Container {ref} is paused, unpause the container before exec")
    if status == "restarting":
        raise Conflict(f"Container {ref} is restarting, wait until the container is running")
    if status != "running":
        raise Conflict(f"container {cid} is not running")


def _size(value: Any) -> tuple[int, int] | None:
    ok = isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)
    return (int(value[0]), int(value[1])) if ok else None


def _start_error(message: str) -> BerthError:
    """containerd's wording around the runtime's error; dockerd's kind (400 for a bad command, else 500)."""
    text = f"OCI runtime exec failed: exec failed: {message}: unknown"
    lowered = message.lower()
    if any(s in lowered for s in ("executable file not found", "no such file or directory", "permission denied",
                                  "not a directory")):
        return InvalidArgument(text)
    if "cannot exec in a stopped container" in lowered:
        return Conflict(text)
    return InternalError(text)
