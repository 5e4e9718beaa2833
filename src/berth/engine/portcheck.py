"""berth's published-port check: warn when a published port cannot work because of the app in the container.

After a container with published ports starts, its network namespace's listening sockets are polled for a few
seconds (berth.network.listeners). A port that only listens on 127.0.0.1 or ::1 inside the container (Flask's
and many dev servers' default) cannot be reached through the port mapping, and a port nobody listens on after
the grace period is probably a typo or a crashed app. Either way the user gets a warning: as a line on the
container's stderr (so an attached ``docker run`` shows it and ``docker logs`` keeps it), in ``docker inspect``
(a top-level ``Warnings`` list, berth's own field) and in berthd's log. No other engine does this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from berth.engine.containers import ContainerService
from berth.engine.running import ContainerRunner
from berth.errors import BerthError, NotFound
from berth.network.listeners import Listener, listeners, on_port

log = logging.getLogger("berth.engine")

GRACE_S = 5.0            # how long an app gets to open its port
LOOPBACK_SETTLE_S = 1.0  # a loopback-only listener this old is the app's choice, not a moment in its start-up
POLL_S = 0.1
WARNINGS_KEY = "Warnings"
_NO_PORT_MODES = ("host", "none")


@dataclass(frozen=True)
class PublishedPort:
    """A container-side port that is published on the host."""

    port: int
    proto: str

    def __str__(self) -> str:
        return f"{self.port}/{self.proto}"


def published_ports(doc: dict[str, Any]) -> list[PublishedPort]:
    """The container ports ``-p``/``-P`` publish; none for host, none and ``container:`` network modes, where
    Docker discards port mappings."""
    host = doc.get("HostConfig") or {}
    mode = str(host.get("NetworkMode") or "bridge")
    if mode in _NO_PORT_MODES or mode.startswith("container:"):
        return []
    keys = list((host.get("PortBindings") or {}).keys())
    if host.get("PublishAllPorts"):
        keys += list((doc.get("Config") or {}).get("ExposedPorts") or {})
    out: list[PublishedPort] = []
    for key in keys:
        port, _, proto = str(key).partition("/")
        with contextlib.suppress(ValueError):
            p = PublishedPort(int(port), proto or "tcp")
            if p not in out:
                out.append(p)
    return sorted(out, key=lambda p: (p.port, p.proto))


def _where(li: Listener) -> str:
    return f"[{li.address}]:{li.port}" if ":" in li.address else f"{li.address}:{li.port}"


def reachable(found: Sequence[Listener]) -> bool:
    return any(not li.loopback_only for li in found)


def loopback_warning(port: PublishedPort, found: Sequence[Listener]) -> str:
    where = " and ".join(sorted({_where(li) for li in found}))
    return (f"WARNING: published port {port}: the app in the container listens only on {where}, so connections "
            "from outside the container cannot reach it; make it listen on 0.0.0.0 "
            '(Flask: app.run(host="0.0.0.0"))')


def missing_warning(port: PublishedPort) -> str:
    return f"WARNING: published port {port}: nothing in the container listens on {port} yet"


def diagnose(ports: Sequence[PublishedPort], read: Callable[[], list[Listener]], *, grace: float = GRACE_S,
             settle: float = LOOPBACK_SETTLE_S, poll: float = POLL_S,
             alive: Callable[[], bool] = lambda: True,
             clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """Poll ``read()`` until every port is reachable, a port has listened only on loopback for ``settle`` seconds,
    or ``grace`` runs out; the warnings, in port order (empty when the container stopped meanwhile)."""
    start = clock()
    loopback_since: dict[PublishedPort, float] = {}
    decided: dict[PublishedPort, str | None] = {}
    while True:
        now = clock()
        found = read()
        for p in ports:
            if p in decided:
                continue
            mine = on_port(found, p.port, p.proto)
            if reachable(mine):
                decided[p] = None
            elif mine:
                first = loopback_since.setdefault(p, now)
                if now - first >= settle:
                    decided[p] = loopback_warning(p, mine)
            else:
                loopback_since.pop(p, None)
                if now - start >= grace:
                    decided[p] = missing_warning(p)
        if len(decided) == len(ports):
            break
        if not alive():
            return []
        sleep(poll)
    return [w for p in ports if (w := decided[p]) is not None]


class PortChecker:
    """One of the runner's observers: one short-lived check per container start."""

    def __init__(self, containers: ContainerService, runner: ContainerRunner, *, grace: float = GRACE_S) -> None:
        self.containers = containers
        self.runner = runner
        self.grace = grace
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancelled: dict[str, threading.Event] = {}
        runner.observers.append(self)

    def starting(self, doc: dict[str, Any]) -> None:
        pass

    def started(self, cid: str, doc: dict[str, Any], pid: int, restored: bool) -> None:
        if restored:  # it warned when the container started; the warning is in the log and the record already
            return
        self.stopped(cid)
        ports = published_ports(doc)
        if not ports or pid <= 0:
            if doc.get(WARNINGS_KEY):
                self._tasks[cid] = asyncio.create_task(self._record(cid, []))
            return
        cancelled = self._cancelled[cid] = threading.Event()
        self._tasks[cid] = asyncio.create_task(self._check(cid, ports, pid, cancelled))

    def stopped(self, cid: str) -> None:
        task = self._tasks.pop(cid, None)
        if task is not None:
            task.cancel()
        event = self._cancelled.pop(cid, None)
        if event is not None:
            event.set()  # the polling thread cannot be cancelled; it looks at this

    def close(self) -> None:
        for cid in list(self._tasks):
            self.stopped(cid)

    async def _check(self, cid: str, ports: list[PublishedPort], pid: int, cancelled: threading.Event) -> None:
        try:
            def alive() -> bool:
                return not cancelled.is_set() and os.path.exists(f"/proc/{pid}")

            warnings = await asyncio.to_thread(diagnose, ports, lambda: listeners(pid), grace=self.grace,
                                               alive=alive)
            if not alive():
                return
            await self._record(cid, warnings)
            for text in warnings:
                log.warning("container %s: %s", cid[:12], text)
                with contextlib.suppress(BerthError, OSError):
                    _, _, doc = await asyncio.to_thread(self.containers.resolve, cid)
                    eol = "\r\n" if doc["Config"].get("Tty") else "\n"
                    await self.runner.monitor.request("inject", id=cid, stream="stderr", data=text + eol)
        finally:
            if self._tasks.get(cid) is asyncio.current_task():
                del self._tasks[cid]
                self._cancelled.pop(cid, None)

    async def _record(self, cid: str, warnings: list[str]) -> None:
        """``Warnings`` in the container's record (the last start's only), under the container's lock."""
        async with self.runner.lock(cid):
            try:
                _, _, doc = await asyncio.to_thread(self.containers.resolve, cid)
            except NotFound:
                return
            if (doc.get(WARNINGS_KEY) or []) == warnings:
                return
            if warnings:
                doc[WARNINGS_KEY] = warnings
            else:
                doc.pop(WARNINGS_KEY, None)
            await asyncio.to_thread(self.containers.db.update, cid, doc)
