"""Healthchecks run by the daemon (moby's daemon/health.go), and berth's ``--health-on-failure`` action.

For each running container whose Config.Healthcheck has a test, one asyncio task probes it: the test runs in
the container as a monitor exec session that no API client sees (Docker's probes never appear in ExecIDs),
with the container's own process settings (user, env, cwd). Each result is appended to State.Health.Log (the
last five kept, output capped at 4096 bytes); the status moves starting → healthy/unhealthy by Docker's rules
(failures inside the start period do not count while starting; ``Retries`` consecutive failures make it
unhealthy) and each change is published as ``health_status: <status>``. When a container turns unhealthy, the
action from HostConfig ``HealthOnFailure`` or the label ``berth.health-on-failure`` (none|kill|restart|stop) is
applied. The checker is started by ContainerRunner at start and at daemon start-up, and stopped at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import signal
import struct
import time
from datetime import UTC, datetime
from typing import Any

from berth.engine.containers import HEALTH_ON_FAILURE_LABEL, ContainerService
from berth.engine.running import ContainerRunner
from berth.errors import BerthError, NotFound, NotModified
from berth.oci.runtime_spec import Process
from berth.runtime.linux import load_spec
from berth.units import go_duration

log = logging.getLogger("berth.engine")

SECOND = 1_000_000_000
DEFAULT_INTERVAL = 30 * SECOND
DEFAULT_TIMEOUT = 30 * SECOND
DEFAULT_START_INTERVAL = 5 * SECOND
DEFAULT_RETRIES = 3
MAX_LOG_ENTRIES = 5
MAX_OUTPUT = 4096
EXIT_WAIT_S = 2.0  # how long to wait for a probe's exit status once its output ended


@dataclasses.dataclass(frozen=True)
class Healthcheck:
    """A container's healthcheck with Docker's defaults applied (durations in seconds)."""

    test: tuple[str, ...]
    interval: float
    timeout: float
    start_period: float
    start_interval: float
    retries: int
    timeout_ns: int

    @classmethod
    def of(cls, config: dict[str, Any]) -> Healthcheck | None:
        """None when the container has no healthcheck (none set, ``NONE``, or ``--no-healthcheck``)."""
        hc = config.get("Healthcheck") or {}
        test = list(hc.get("Test") or [])
        if not test or test[0] == "NONE":
            return None
        if test[0] == "CMD-SHELL":
            shell = list(config.get("Shell") or ["/bin/sh", "-c"])
            args = (*shell, " ".join(test[1:]))
        elif test[0] == "CMD":
            args = tuple(test[1:])
        else:
            return None
        if not args:
            return None

        def dur(key: str, default: int) -> int:
            value = int(hc.get(key) or 0)
            return value if value > 0 else default

        timeout = dur("Timeout", DEFAULT_TIMEOUT)
        return cls(test=tuple(args), interval=dur("Interval", DEFAULT_INTERVAL) / SECOND, timeout=timeout / SECOND,
                   start_period=dur("StartPeriod", 0) / SECOND,
                   start_interval=dur("StartInterval", DEFAULT_START_INTERVAL) / SECOND,
                   retries=int(hc.get("Retries") or 0) or DEFAULT_RETRIES, timeout_ns=timeout)


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    start: float
    end: float
    exit_code: int
    output: str

    def entry(self) -> dict[str, Any]:
        return {"Start": _rfc3339nano(self.start), "End": _rfc3339nano(self.end), "ExitCode": self.exit_code,
                "Output": self.output}


def on_failure_action(doc: dict[str, Any]) -> str:
    """The ``--health-on-failure`` action: HostConfig's field first, then the container's label."""
    action = doc["HostConfig"].get("HealthOnFailure") or (doc["Config"].get("Labels") or {}).get(
        HEALTH_ON_FAILURE_LABEL)
    return str(action or "none")


class HealthChecker:
    """One probe loop per running container with a healthcheck; one of the runner's observers."""

    def __init__(self, containers: ContainerService, runner: ContainerRunner) -> None:
        self.containers = containers
        self.runner = runner
        self.monitor = runner.monitor
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._actions: set[asyncio.Task[None]] = set()
        runner.observers.append(self)

    # --- the runner's hooks ---------------------------------------------------------------------------

    def starting(self, doc: dict[str, Any]) -> None:
        """At start, before the record is written: a container with a healthcheck starts out "starting"."""
        if Healthcheck.of(doc["Config"]) is None:
            return
        old = doc["State"].get("Health") or {}
        doc["State"]["Health"] = {"Status": "starting", "FailingStreak": 0, "Log": list(old.get("Log") or [])}

    def started(self, cid: str, doc: dict[str, Any], pid: int, restored: bool) -> None:
        """The container runs (just started, or found running at daemon start-up): probe it."""
        hc = Healthcheck.of(doc["Config"])
        if hc is None:
            return
        self._cancel(cid)
        started_at = _unix(doc["State"].get("StartedAt") or "") or time.time()
        self._loops[cid] = asyncio.create_task(self._loop(cid, hc, started_at))

    def stopped(self, cid: str) -> None:
        """The container exited: stop probing; Docker leaves the last status as "unhealthy"."""
        if self._cancel(cid):
            task = asyncio.create_task(self._mark_stopped(cid))
            self._actions.add(task)
            task.add_done_callback(self._actions.discard)

    def close(self) -> None:
        for cid in list(self._loops):
            self._cancel(cid)
        for task in list(self._actions):
            task.cancel()

    def _cancel(self, cid: str) -> bool:
        task = self._loops.pop(cid, None)
        if task is None:
            return False
        task.cancel()
        return True

    # --- the probe loop ---------------------------------------------------------------------------------

    async def _loop(self, cid: str, hc: Healthcheck, started_at: float) -> None:
        status = "starting"
        while True:
            in_start = time.time() - started_at < hc.start_period
            await asyncio.sleep(hc.start_interval if in_start and status == "starting" else hc.interval)
            try:
                _, _, doc = await asyncio.to_thread(self.containers.resolve, cid)
            except NotFound:
                return
            state = doc["State"]["Status"]
            if state == "paused":
                continue
            if state != "running":
                return
            result = await self._probe(cid, doc, hc)
            new = await self._record(cid, hc, started_at, result)
            if new is None:
                return
            if new == "unhealthy" and status != "unhealthy":
                self._act(cid, on_failure_action(doc))
            status = new

    async def _probe(self, cid: str, doc: dict[str, Any], hc: Healthcheck) -> ProbeResult:
        start = time.time()
        sid = f"health-{cid[:12]}-{secrets.token_hex(8)}"
        writer: asyncio.StreamWriter | None = None
        try:
            process = await asyncio.to_thread(self._process, cid, hc)
            reader, writer = await self.monitor.attach(sid, stdin=False, stdout=True, stderr=True, tty=False)
            reply = await self.monitor.request("exec", id=sid, container=cid, process=process.to_dict(),
                                               stdin=False)
            pid = int(reply.get("pid") or 0)
            try:
                output = await asyncio.wait_for(_read_output(reader), hc.timeout)
            except TimeoutError:
                if pid:
                    await asyncio.to_thread(_kill_tree, pid)
                return ProbeResult(start, time.time(), -1,
                                   f"Health check exceeded timeout ({go_duration(hc.timeout_ns)})")
            code = await self._exit_code(sid)
            return ProbeResult(start, time.time(), code, output.decode(errors="replace"))
        except (BerthError, OSError) as e:
            return ProbeResult(start, time.time(), -1, str(e))
        finally:
            if writer is not None:
                writer.close()
            forget = asyncio.create_task(self._forget(sid))
            self._actions.add(forget)
            forget.add_done_callback(self._actions.discard)

    def _process(self, cid: str, hc: Healthcheck) -> Process:
        """The container's own process (user, env, cwd, capabilities) with the test as its command."""
        base = load_spec(self.runner.bundles / cid).process
        return dataclasses.replace(base, args=hc.test, terminal=False)

    async def _exit_code(self, sid: str) -> int:
        deadline = time.monotonic() + EXIT_WAIT_S
        while time.monotonic() < deadline:
            state = (await self.monitor.request("session", id=sid))["session"]
            if state["status"] == "exited":
                return -1 if state["exit_code"] is None else int(state["exit_code"])
            await asyncio.sleep(0.02)
        return -1

    async def _forget(self, sid: str) -> None:
        """Drop the monitor's session once it ended (a killed probe needs a moment to be reaped)."""
        for _ in range(50):
            try:
                await self.monitor.request("forget", id=sid)
                return
            except (BerthError, OSError):
                await asyncio.sleep(0.1)

    # --- results --------------------------------------------------------------------------------------

    async def _record(self, cid: str, hc: Healthcheck, started_at: float, result: ProbeResult) -> str | None:
        """moby's handleProbeResult, under the container's lock; the new status, None if it no longer runs."""
        async with self.runner.lock(cid):
            try:
                _, name, doc = await asyncio.to_thread(self.containers.resolve, cid)
            except NotFound:
                return None
            if doc["State"]["Status"] not in ("running", "paused"):
                return None
            health = dict(doc["State"].get("Health") or {"Status": "starting", "FailingStreak": 0, "Log": []})
            old = health.get("Status") or "starting"
            entries = [*list(health.get("Log") or []), result.entry()][-MAX_LOG_ENTRIES:]
            streak = int(health.get("FailingStreak") or 0)
            status = old
            if result.exit_code == 0:
                streak, status = 0, "healthy"
            elif not (old == "starting" and result.start - started_at < hc.start_period):
                streak += 1
                if streak >= hc.retries:
                    status = "unhealthy"
            doc["State"]["Health"] = {"Status": status, "FailingStreak": streak, "Log": entries}
            await asyncio.to_thread(self.containers.db.update, cid, doc)
        if status != old:
            self.containers.events.publish("container", f"health_status: {status}", cid,
                                           self.containers.attributes(name, doc))
        return status

    async def _mark_stopped(self, cid: str) -> None:
        async with self.runner.lock(cid):
            try:
                _, _, doc = await asyncio.to_thread(self.containers.resolve, cid)
            except NotFound:
                return
            health = doc["State"].get("Health")
            if not health or doc["State"]["Status"] in ("running", "paused"):
                return
            doc["State"]["Health"] = {**health, "Status": "unhealthy"}
            await asyncio.to_thread(self.containers.db.update, cid, doc)

    def _act(self, cid: str, action: str) -> None:
        if action not in ("kill", "restart", "stop"):
            return
        log.info("container %s is unhealthy: %s", cid[:12], action)
        task = asyncio.create_task(self._apply(cid, action))
        self._actions.add(task)
        task.add_done_callback(self._actions.discard)

    async def _apply(self, cid: str, action: str) -> None:
        try:
            if action == "kill":
                await self.runner.kill(cid, "SIGKILL")
            elif action == "stop":
                await self.runner.stop(cid)
            else:
                await self.runner.restart_unhealthy(cid)
        except (NotModified, NotFound):
            pass
        except BerthError as e:
            log.warning("health-on-failure %s of %s failed: %s", action, cid[:12], e)


def _kill_tree(pid: int) -> None:
    """SIGKILL a timed-out probe and everything it started (``sh -c 'sleep 100'`` leaves a child behind);
    the probe is stopped first so it cannot fork while its children are collected."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGSTOP)
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat_line = fh.read()
        except OSError:
            continue
        ppid = int(stat_line[stat_line.rindex(b")") + 2:].split()[1])  # after "(comm)": state, ppid
        parents.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += parents.get(current, [])
    for victim in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


async def _read_output(reader: asyncio.StreamReader) -> bytes:
    """stdout and stderr in order from the monitor's stdcopy stream, the first 4096 bytes kept."""
    out = bytearray()
    while True:
        try:
            header = await reader.readexactly(8)
        except asyncio.IncompleteReadError:
            return bytes(out)
        _stream, size = struct.unpack(">BxxxI", header)
        try:
            data = await reader.readexactly(size)
        except asyncio.IncompleteReadError as e:
            data = e.partial
        if len(out) < MAX_OUTPUT:
            out += data[:MAX_OUTPUT - len(out)]


def _rfc3339nano(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _unix(text: str) -> float:
    if not text or text.startswith("0001-"):
        return 0.0
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
