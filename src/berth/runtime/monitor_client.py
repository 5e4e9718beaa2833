"""berthd's side of the monitor: start it when it is not running, send it requests, follow its events.

The monitor runs in its own session so that it (and every container) outlives the daemon; a restarted daemon
finds it again through its socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from berth import errors
from berth.runtime.monitor import PIDFILE, SOCKET, monitor_dir

START_TIMEOUT_S = 10.0


class MonitorClient:
    def __init__(self, exec_root: Path, log_file: Path | None = None) -> None:
        self.exec_root = exec_root
        self.socket = monitor_dir(exec_root) / SOCKET
        self.log_file = log_file

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_unix_connection(str(self.socket), limit=1 << 20)

    async def ensure_running(self) -> int:
        """The monitor's PID, starting it first when nobody answers on its socket."""
        with contextlib.suppress(OSError, errors.BerthError):
            return int((await self.request("ping"))["pid"])
        monitor_dir(self.exec_root).mkdir(parents=True, exist_ok=True, mode=0o700)
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        try:
            subprocess.Popen([sys.executable, "-m", "berth.runtime.monitor", "--exec-root", str(self.exec_root)],
                             stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                             close_fds=True, cwd="/")
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, errors.BerthError):
                return int((await self.request("ping"))["pid"])
            await asyncio.sleep(0.02)
        raise errors.Unavailable("the berth container monitor did not start")

    async def request(self, op: str, **fields: Any) -> dict[str, Any]:
        reader, writer = await self._open()
        try:
            writer.write(json.dumps({"op": op, **fields}).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
        if not line:
            raise errors.Unavailable("the berth container monitor closed the connection")
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            kind = getattr(errors, str(reply.get("kind")), errors.InternalError)
            if not (isinstance(kind, type) and issubclass(kind, errors.BerthError)):
                kind = errors.InternalError
            raise kind(str(reply.get("error")))
        return reply

    async def attach(self, cid: str, *, stdin: bool, stdout: bool, stderr: bool,
                     tty: bool) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A raw stream: container output (stdcopy frames unless ``tty``) in, stdin bytes out."""
        reader, writer = await self._open()
        writer.write(json.dumps({"op": "attach", "id": cid, "stdin": stdin, "stdout": stdout, "stderr": stderr,
                                 "tty": tty}).encode() + b"\n")
        await writer.drain()
        line = await reader.readline()
        if not line or not json.loads(line).get("ok"):
            writer.close()
            raise errors.InternalError(f"the monitor refused to attach to {cid}")
        return reader, writer

    async def events(self, subscribed: asyncio.Event | None = None) -> AsyncIterator[dict[str, Any]]:
        """The monitor's events; ``subscribed`` is set once the monitor has registered us (nothing is missed)."""
        reader, writer = await self._open()
        try:
            writer.write(b'{"op": "events"}\n')
            await writer.drain()
            await reader.readline()
            if subscribed is not None:
                subscribed.set()
            while line := await reader.readline():
                yield json.loads(line)
        finally:
            writer.close()

    def pid(self) -> int | None:
        try:
            return int((monitor_dir(self.exec_root) / PIDFILE).read_text())
        except (OSError, ValueError):
            return None


def stop_monitor(exec_root: Path, kill_containers: bool = True, timeout: float = 10.0) -> None:
    """Ask the monitor to exit (after SIGKILLing its containers); for teardown. Blocking."""
    import socket as socket_mod
    path = monitor_dir(exec_root) / SOCKET
    pid_text = ""
    with contextlib.suppress(OSError):
        pid_text = (monitor_dir(exec_root) / PIDFILE).read_text().strip()
    with contextlib.suppress(OSError), socket_mod.socket(socket_mod.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(json.dumps({"op": "shutdown", "kill": kill_containers}).encode() + b"\n")
        s.recv(4096)
    if pid_text.isdigit():
        pid = int(pid_text)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 9)
