"""The container monitor: one long-lived, single-threaded process that starts containers and outlives berthd.

berthd asks it (over a unix socket, one JSON request per connection) to start a container; the monitor creates
and starts it through ``berth.runtime.linux`` (so no Python interpreter starts on the hot path: the monitor is
already running with everything imported), holds the container's stdio (pipes, or the pty master received on a
console socket), writes its json-file log, serves attach streams, and, as the child subreaper, reaps the init and
records its exit status. Because it runs in its own session, a daemon restart (even SIGKILL) never kills a
container; the new daemon reconnects and asks for the state of each one.

Layout owned here (under ``<exec-root>/monitor/``)::

    monitor.sock     the request socket (mode 0600)
    monitor.pid      its PID
    monitor.lock     held (flock) by the running monitor
    <id>/exit.json   the exit status of a container that ended (written atomically)
    <id>/console.sock  where a TTY container's init sends its pty master

Requests (one JSON line; the answer is one JSON line, except ``attach`` and ``events``, which then stream):
``ping``, ``start``, ``attach``, ``resize``, ``list``, ``events``, ``forget``, ``inject``, ``shutdown``, and for exec
sessions (a process started in a running container through ``berth.runtime.exec``: its own id, stdio and
attach clients, no log, no exit file) ``exec`` and ``session``; their exits are broadcast as ``exec_exit``.
``start`` takes a ``runtime``: ``berth`` (the default: ``berth.runtime.linux`` in-process) or an OCI runtime
binary's name or path (``berth.runtime.oci_cli``); the session keeps it for its state and delete.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import struct
import sys
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berth.errors import BerthError, Conflict, InternalError, InvalidArgument, NotFound
from berth.kernel import cgroups, ns
from berth.oci.runtime_spec import Process
from berth.runtime import exec as runtime_exec
from berth.runtime import jsonlog, linux, oci_cli
from berth.runtime.state import State as StateDoc
from berth.runtime.state import StateDir

log = logging.getLogger("berth.monitor")

SOCKET = "monitor.sock"
PIDFILE = "monitor.pid"
LOCKFILE = "monitor.lock"   # flock held for life: one monitor per exec root
EXIT_FILE = "exit.json"
DRAIN_S = 2.0             # how long to wait for output after the init exited (daemonized children may hold it)
READ_SIZE = 65536
EXEC_KEEP_S = 600.0       # how long an ended exec session stays answerable without a ``forget``
STDOUT, STDERR = 1, 2


def monitor_dir(exec_root: Path) -> Path:
    return exec_root / "monitor"


def runtime_root(exec_root: Path) -> Path:
    return exec_root / "runtime"


def frame(stream: int, data: bytes) -> bytes:
    """Docker's stdcopy frame: stream byte, three zero bytes, big-endian length, payload."""
    return struct.pack(">BxxxI", stream, len(data)) + data


@dataclass
class Attached:
    writer: asyncio.StreamWriter
    streams: set[int]


@dataclass
class Session:
    """One container as the monitor sees it: its stdio, its log, its attach clients, its exit status."""

    id: str
    tty: bool = False
    stdin_once: bool = False
    pid: int = 0
    status: str = "new"                # new | running | exited
    exit_code: int | None = None
    oom_killed: bool = False
    finished_at: float = 0.0
    started_at: float = 0.0
    cgroup_path: str = ""
    stdin_fd: int | None = None        # write end of the container's stdin (or the pty master for a TTY)
    out_fds: dict[int, int] = field(default_factory=dict)   # fd -> stream (1 stdout, 2 stderr)
    pty_fd: int | None = None
    log: jsonlog.JsonLogWriter | None = None
    clients: list[Attached] = field(default_factory=list)
    pending_stdin: bytearray = field(default_factory=bytearray)
    stdin_closed: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    exec_of: str = ""                  # for an exec session: the container it runs in
    runtime: oci_cli.Runtime | None = None   # what created it (kill/delete/state go there too)

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "pid": self.pid, "exit_code": self.exit_code,
                "oom_killed": self.oom_killed, "finished_at": self.finished_at, "started_at": self.started_at}


class Monitor:
    def __init__(self, exec_root: Path) -> None:
        self.dir = monitor_dir(exec_root)
        self.exec_root = exec_root
        self.runtime_root = runtime_root(exec_root)
        self.library = oci_cli.LibraryRuntime(self.runtime_root)
        self.sessions: dict[str, Session] = {}
        self.by_pid: dict[int, Session] = {}
        self.subscribers: list[asyncio.StreamWriter] = []
        self.loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()

    # --- requests ----------------------------------------------------------------------------------

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            if not line:
                return
            req = json.loads(line)
            op = req.get("op")
            if op == "attach":
                await self.attach(req, reader, writer)
                return
            if op == "events":
                await self.events(writer)
                return
            handler = getattr(self, f"op_{op}", None)
            if handler is None:
                reply: dict[str, Any] = {"ok": False, "error": f"unknown op {op!r}"}
            else:
                try:
                    reply = {"ok": True, **(handler(req) or {})}
                except BerthError as e:
                    reply = {"ok": False, "error": str(e), "kind": type(e).__name__}
                except Exception as e:  # a bug must not take the monitor (and every container's stdio) down
                    log.exception("op %s failed", op)
                    reply = {"ok": False, "error": str(e) or type(e).__name__, "kind": "InternalError"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, ValueError) as e:
            log.debug("request connection: %s", e)
        finally:
            if not writer.is_closing():
                writer.close()

    def op_ping(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid()}

    def op_list(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"containers": {sid: s.public() for sid, s in self.sessions.items()}}

    def op_forget(self, req: dict[str, Any]) -> None:
        sid = str(req["id"])
        s = self.sessions.get(sid)
        if s is not None and s.status == "running":
            raise Conflict(f"container {sid} is running")
        self.sessions.pop(sid, None)
        d = self.dir / sid
        for name in (EXIT_FILE, "console.sock"):
            with contextlib.suppress(OSError):
                (d / name).unlink()
        with contextlib.suppress(OSError):
            d.rmdir()

    def op_resize(self, req: dict[str, Any]) -> None:
        s = self._session(str(req["id"]))
        if s.pty_fd is None:
            raise InvalidArgument("cannot resize a container without a TTY")
        _set_winsize(s.pty_fd, int(req.get("h", 0)), int(req.get("w", 0)))

    def op_shutdown(self, req: dict[str, Any]) -> None:
        """Stop serving; with ``kill``, SIGKILL every container first (test teardown, uninstall)."""
        if req.get("kill"):
            for sid in StateDir(self.runtime_root).ids():
                with contextlib.suppress(Exception):
                    linux.delete(sid, self.runtime_root, force=True)
            for rt in oci_cli.cli_roots(self.exec_root):
                for sid in rt.ids():
                    with contextlib.suppress(Exception):
                        rt.delete(sid, force=True)
        self.loop.call_later(0.05, self.stopping.set)

    def _session(self, sid: str) -> Session:
        s = self.sessions.get(sid)
        if s is None:
            raise NotFound(f"no such container in the monitor: {sid}")
        return s

    def op_start(self, req: dict[str, Any]) -> dict[str, Any]:
        sid = str(req["id"])
        s = self.sessions.get(sid)
        if s is not None and s.status == "running":
            raise Conflict(f"container {sid} is already running")
        if s is None or s.status == "exited":
            old = s
            s = Session(sid)
            if old is not None:
                s.clients = old.clients
            self.sessions[sid] = s
        rt = self._runtime(str(req.get("runtime") or oci_cli.LIBRARY))
        s.runtime = rt
        s.tty = bool(req.get("tty"))
        s.stdin_once = bool(req.get("stdin_once"))
        (self.dir / sid).mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(OSError):
            (self.dir / sid / EXIT_FILE).unlink()
        if req.get("log"):
            max_size, max_file, compress = jsonlog.parse_log_opts(req.get("log_opts") or {})
            s.log = jsonlog.JsonLogWriter(Path(req["log"]), max_size, max_file, compress)
        with contextlib.suppress(NotFound):  # a stopped leftover from an earlier run of this container
            rt.delete(sid, force=True)
        child_fds: list[int] = []
        try:
            if s.tty:
                pid = self._create_tty(s, req, rt)
            else:
                stdio = self._pipes(s, bool(req.get("stdin")), child_fds)
                pid = rt.create(sid, req["bundle"], stdio=stdio)
        except BaseException:
            self._close_stdio(s)
            if s.log is not None:
                s.log.close()
            raise
        finally:
            for fd in child_fds:
                os.close(fd)
        s.pid = pid
        s.cgroup_path = rt.state(sid).cgroup_path
        self.by_pid[pid] = s
        for fd, stream in s.out_fds.items():
            self.loop.add_reader(fd, self._on_output, s, fd, stream)
        try:
            rt.start(sid)
        except BaseException:
            with contextlib.suppress(Exception):
                rt.delete(sid, force=True)
            raise
        s.status = "running"
        s.started_at = time.time()
        if s.pending_stdin:
            self._write_stdin(s, bytes(s.pending_stdin))
            s.pending_stdin.clear()
        if s.stdin_closed:
            self._close_stdin(s)
        self._broadcast({"event": "start", **s.public()})
        return {"pid": pid}

    def _runtime(self, name: str) -> oci_cli.Runtime:
        """``berth`` (the in-process library) or an OCI runtime binary, by name or path."""
        if name == oci_cli.LIBRARY:
            return self.library
        return oci_cli.runtime_for(name, self.exec_root, self.runtime_root)

    def _pipes(self, s: Session, with_stdin: bool, child_fds: list[int]) -> tuple[int, int, int]:
        if with_stdin:
            r, w = os.pipe2(os.O_CLOEXEC)
            s.stdin_fd = w
            os.set_blocking(w, False)
            child_fds.append(r)
            stdin = r
        else:
            stdin = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            child_fds.append(stdin)
        outs = []
        for stream in (STDOUT, STDERR):
            r, w = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(r, False)
            s.out_fds[r] = stream
            child_fds.append(w)
            outs.append(w)
        return stdin, outs[0], outs[1]

    def _create_tty(self, s: Session, req: dict[str, Any], rt: oci_cli.Runtime) -> int:
        pid = self._with_console(s, self.dir / s.id, lambda sock: rt.create(s.id, req["bundle"], console_socket=sock))
        h, w = (req.get("console_size") or [0, 0])[:2]
        if h and w:
            _set_winsize(s.pty_fd or 0, int(h), int(w))
        return pid

    def _with_console(self, s: Session, d: Path, spawn: Callable[[str], int]) -> int:
        """Run ``spawn(console_socket_path)``, receive the pty master the process sends there, make it the
        session's stdio (runc's --console-socket protocol)."""
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = d / "console.sock"
        with contextlib.suppress(OSError):
            path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(path))
            listener.listen(1)
            pid = spawn(str(path))
            listener.settimeout(5)
            conn, _ = listener.accept()
            with conn:
                master = _recv_fd(conn)
        finally:
            listener.close()
            with contextlib.suppress(OSError):
                path.unlink()
        os.set_blocking(master, False)
        s.pty_fd = master
        s.stdin_fd = master
        s.out_fds[master] = STDOUT
        return pid

    # --- exec sessions ----------------------------------------------------------------------------

    def op_exec(self, req: dict[str, Any]) -> dict[str, Any]:
        """Start an exec session: ``id`` (the exec's), ``container``, ``process`` (OCI), ``tty``, ``stdin``,
        ``console_size``. Attach to ``id`` first to miss no output; stdin written before this is delivered."""
        sid, cid = str(req["id"]), str(req["container"])
        s = self.sessions.get(sid)
        if s is not None and s.status != "new":
            raise Conflict(f"exec {sid} has already been started")
        if s is None:
            s = self.sessions[sid] = Session(sid)
        s.exec_of = cid
        s.stdin_once = True  # dockerd's exec always closes the process's stdin at the client's EOF
        h, w = (req.get("console_size") or [0, 0])[:2]
        child_fds: list[int] = []
        try:
            process = Process.from_dict(req["process"])
            target = self._exec_target(cid)
            s.tty = process.terminal
            if s.tty:
                pid = self._exec_tty(s, cid, process, (int(h), int(w)), target)
            else:
                stdio = self._pipes(s, bool(req.get("stdin")), child_fds)
                pid = runtime_exec.execute(cid, process, self.runtime_root, stdio=stdio, state=target)
        except BaseException:
            self._close_stdio(s)
            self.sessions.pop(sid, None)
            for c in s.clients:
                c.writer.close()
            raise
        finally:
            for fd in child_fds:
                os.close(fd)
        s.pid = pid
        s.status = "running"
        s.started_at = time.time()
        self.by_pid[pid] = s
        for fd, stream in s.out_fds.items():
            self.loop.add_reader(fd, self._on_output, s, fd, stream)
        if s.pending_stdin:
            self._write_stdin(s, bytes(s.pending_stdin))
            s.pending_stdin.clear()
        if s.stdin_closed:
            self._close_stdin(s)
        return {"pid": pid}

    def _exec_target(self, cid: str) -> StateDoc | None:
        """The container an exec joins: None for berth-runtime's (its state dir), else the OCI binary's ``state``
        (the runtime that started it, or, after a monitor restart, the one whose state root knows the id)."""
        c = self.sessions.get(cid)
        rt = c.runtime if c is not None and not c.exec_of else None
        if rt is None and not (self.runtime_root / cid).is_dir():
            rt = next((r for r in oci_cli.cli_roots(self.exec_root) if (r.root / cid).is_dir()), None)
        if rt is None or isinstance(rt, oci_cli.LibraryRuntime):
            return None
        return runtime_exec.cli_state(rt.state(cid))

    def _exec_tty(self, s: Session, cid: str, process: Process, size: tuple[int, int],
                  target: StateDoc | None = None) -> int:
        d = self.dir / s.id
        try:
            return self._with_console(s, d, lambda sock: runtime_exec.execute(
                cid, process, self.runtime_root, console_socket=sock, console_size=size, state=target))
        finally:
            with contextlib.suppress(OSError):
                d.rmdir()

    def op_session(self, req: dict[str, Any]) -> dict[str, Any]:
        """One session's state (an exec's exit code once its attach streams ended)."""
        return {"session": self._session(str(req["id"])).public()}

    async def _exec_exited(self, s: Session, code: int) -> None:
        s.finished_at = time.time()
        s.exit_code = code
        if s.out_fds:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(s.drained.wait(), DRAIN_S)
        self._close_stdio(s)
        s.status = "exited"  # before the clients see the end of their streams: they ask for the exit code next
        for c in list(s.clients):
            with contextlib.suppress(Exception):
                await c.writer.drain()
            c.writer.close()
        s.clients.clear()
        self._broadcast({"event": "exec_exit", "container": s.exec_of, **s.public()})
        # berthd forgets it once it read the exit code; a daemon restarted meanwhile never will
        self.loop.call_later(EXEC_KEEP_S, self._drop_exec, s)

    def _drop_exec(self, s: Session) -> None:
        if self.sessions.get(s.id) is s:
            del self.sessions[s.id]

    # --- output, input -----------------------------------------------------------------------------

    def _on_output(self, s: Session, fd: int, stream: int) -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:  # EIO on a pty master once the last slave fd closed
            data = b""
        if not data:
            self.loop.remove_reader(fd)
            s.out_fds.pop(fd, None)
            if fd != s.pty_fd:
                os.close(fd)
            if not s.out_fds:
                s.drained.set()
            return
        self._emit(s, stream, data)

    def _emit(self, s: Session, stream: int, data: bytes) -> None:
        """Output of the container: into its log and to every client attached to that stream."""
        if s.log is not None:
            s.log.write("stdout" if stream == STDOUT else "stderr", data)
        chunk = data if s.tty else frame(stream, data)
        for c in list(s.clients):
            if stream in c.streams and not c.writer.is_closing():
                c.writer.write(chunk)

    def op_inject(self, req: dict[str, Any]) -> None:
        """Add ``data`` to a running container's ``stream`` (stdout/stderr) as if the container wrote it: berthd's
        warnings about the container reach ``docker run`` and ``docker logs`` this way."""
        s = self._session(str(req["id"]))
        if s.status != "running" or s.exec_of:
            raise Conflict(f"container {s.id} is not running")
        self._emit(s, STDERR if req.get("stream", "stderr") == "stderr" else STDOUT, str(req["data"]).encode())

    def _write_stdin(self, s: Session, data: bytes) -> None:
        if s.stdin_fd is None:
            return
        view = memoryview(data)
        deadline = time.monotonic() + 5
        while view:
            try:
                n = os.write(s.stdin_fd, view)
                view = view[n:]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    log.warning("%s: stdin is full, dropping %d bytes", s.id, len(view))
                    return
                time.sleep(0.001)
            except OSError:
                return

    def _close_stdin(self, s: Session) -> None:
        if s.stdin_fd is not None and s.stdin_fd != s.pty_fd:
            with contextlib.suppress(OSError):
                os.close(s.stdin_fd)
            s.stdin_fd = None

    def _close_stdio(self, s: Session) -> None:
        for fd in list(s.out_fds):
            with contextlib.suppress(Exception):
                self.loop.remove_reader(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        s.out_fds.clear()
        self._close_stdin(s)
        if s.pty_fd is not None:
            with contextlib.suppress(OSError):
                os.close(s.pty_fd)
            s.pty_fd = s.stdin_fd = None

    async def attach(self, req: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sid = str(req["id"])
        s = self.sessions.get(sid)
        if s is None or s.status == "exited":
            s = Session(sid, tty=bool(req.get("tty")))
            self.sessions[sid] = s
        streams = {n for n, key in ((STDOUT, "stdout"), (STDERR, "stderr")) if req.get(key)}
        client = Attached(writer, streams)
        s.clients.append(client)
        writer.write(b'{"ok": true}\n')
        await writer.drain()
        try:
            if req.get("stdin"):
                while data := await reader.read(READ_SIZE):
                    current = self.sessions.get(sid, s)
                    if current.status == "running":
                        self._write_stdin(current, data)
                    else:
                        current.pending_stdin += data
                current = self.sessions.get(sid, s)
                if current.stdin_once or not current.tty:
                    if current.status == "running":
                        self._close_stdin(current)
                    else:
                        current.stdin_closed = True
            await self._closed(writer)
        except ConnectionError:
            pass
        finally:
            for sess in self.sessions.values():
                if client in sess.clients:
                    sess.clients.remove(client)
            if not writer.is_closing():
                writer.close()

    @staticmethod
    async def _closed(writer: asyncio.StreamWriter) -> None:
        while not writer.is_closing():
            await asyncio.sleep(0.05)

    async def events(self, writer: asyncio.StreamWriter) -> None:
        self.subscribers.append(writer)
        writer.write(b'{"ok": true}\n')
        try:
            await self._closed(writer)
        finally:
            if writer in self.subscribers:
                self.subscribers.remove(writer)

    def _broadcast(self, event: dict[str, Any]) -> None:
        line = json.dumps(event).encode() + b"\n"
        for w in list(self.subscribers):
            if w.is_closing():
                self.subscribers.remove(w)
            else:
                w.write(line)

    # --- exits -------------------------------------------------------------------------------------

    def on_sigchld(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            s = self.by_pid.pop(pid, None)
            if s is not None:
                ended = self._exec_exited if s.exec_of else self._exited
                self.loop.create_task(ended(s, linux.exit_code(status)))

    async def _exited(self, s: Session, code: int) -> None:
        s.finished_at = time.time()
        s.exit_code = code
        if s.cgroup_path:
            with contextlib.suppress(Exception):
                s.oom_killed = cgroups.open_cgroup(s.cgroup_path).oom_kill_count() > 0
        if s.out_fds:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(s.drained.wait(), DRAIN_S)
        self._close_stdio(s)
        if s.log is not None:
            s.log.flush()
            s.log.close()
            s.log = None
        s.status = "exited"
        _write_json(self.dir / s.id / EXIT_FILE, s.public())
        # the exit is told before the runtime state goes: deleting (cgroup removal) takes ms, and no request
        # can slip in between (single thread, no await until the delete is done)
        self._broadcast({"event": "exit", **s.public()})
        # attach streams end before the delete (ms of cgroup removal): `docker run` returns when its stream ends;
        # the FIN goes at once when nothing is buffered (close() alone waits for this callback to return)
        for c in list(s.clients):
            if not c.writer.transport.get_write_buffer_size():
                with contextlib.suppress(OSError):
                    c.writer.get_extra_info("socket").shutdown(socket.SHUT_WR)
            c.writer.close()
        s.clients.clear()
        with contextlib.suppress(Exception):
            (s.runtime or self.library).delete(s.id, force=True)

    def recover(self) -> None:
        """After a monitor restart: containers whose init still runs are not ours to reap, but known."""
        for sid in list_dirs(self.dir):
            exit_file = self.dir / sid / EXIT_FILE
            if exit_file.exists():
                with contextlib.suppress(ValueError, OSError):
                    doc = json.loads(exit_file.read_text())
                    s = Session(sid, pid=doc.get("pid", 0), status="exited", exit_code=doc.get("exit_code"),
                                oom_killed=bool(doc.get("oom_killed")), finished_at=doc.get("finished_at", 0.0),
                                started_at=doc.get("started_at", 0.0))
                    self.sessions[sid] = s


def list_dirs(path: Path) -> list[str]:
    try:
        return [p.name for p in path.iterdir() if p.is_dir()]
    except OSError:
        return []


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    # atomic, not durable: the exec root does not outlive a reboot, and neither do the containers it describes
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


def _recv_fd(conn: socket.socket) -> int:
    fds = array.array("i")
    _msg, anc, _flags, _addr = conn.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    if not fds:
        raise InternalError("the container did not send its console")
    return int(fds[0])


def _set_winsize(fd: int, h: int, w: int) -> None:
    if h > 0 and w > 0:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", h, w, 0, 0))


async def serve(exec_root: Path) -> None:
    mon = Monitor(exec_root)
    mon.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    lock = os.open(mon.dir / LOCKFILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.info("another monitor serves %s", mon.dir)
        return
    mon.recover()
    ns.set_child_subreaper(True)
    mon.loop.add_signal_handler(signal.SIGCHLD, mon.on_sigchld)
    mon.loop.add_signal_handler(signal.SIGTERM, mon.stopping.set)
    sock_path = mon.dir / SOCKET
    with contextlib.suppress(OSError):
        sock_path.unlink()
    server = await asyncio.start_unix_server(mon.serve, path=str(sock_path))
    os.chmod(sock_path, 0o600)
    (mon.dir / PIDFILE).write_text(str(os.getpid()))
    async with server:
        await mon.stopping.wait()
    with contextlib.suppress(OSError):
        sock_path.unlink()
    with contextlib.suppress(OSError):
        (mon.dir / PIDFILE).unlink()


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(prog="berth-monitor", description=__doc__.splitlines()[0])
    parser.add_argument("--exec-root", required=True)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s monitor %(levelname)s %(message)s")
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    asyncio.run(serve(Path(args.exec_root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
