"""Running containers: start, stop, kill, restart, wait, pause, attach, resize, and what happens at exit.

The processes themselves belong to the monitor (``berth.runtime.monitor``), which outlives the daemon. This
module turns Docker's verbs into monitor requests and runtime calls, keeps each container's document in step
(State, events), and applies restart policies and ``--rm`` when the monitor reports an exit.

Bundles live under ``<exec-root>/bundles/<id>/`` (owned here): ``config.json`` and ``rootfs/``, on which the
container's snapshot is mounted while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from berth.engine.containers import ContainerService, State, parse_signal
from berth.engine.spec import container_spec
from berth.errors import BerthError, Conflict, InvalidArgument, NotFound, NotModified
from berth.kernel import cgroups
from berth.kernel.mount import is_mountpoint, mount_all, unmount_under
from berth.runtime import oci_cli
from berth.runtime.monitor import runtime_root
from berth.runtime.monitor_client import MonitorClient
from berth.units import now_rfc3339

log = logging.getLogger("berth.engine")

DEFAULT_STOP_TIMEOUT = 10
WAIT_CONDITIONS = {"not-running", "next-exit", "removed"}
DEFAULT_DETACH_KEYS = b"\x10\x11"  # ctrl-p ctrl-q
RESTART_MAX_BACKOFF = 60.0


@dataclass
class _Waiters:
    exit: list[asyncio.Future[dict[str, Any]]] = field(default_factory=list)
    removed: list[asyncio.Future[dict[str, Any]]] = field(default_factory=list)


@dataclass
class _RestartState:
    backoff: float = 0.1
    manually_stopped: bool = False
    task: asyncio.Task[None] | None = None


class RunObserver(Protocol):
    """A service that follows running containers: health checks (berth.engine.health), single-file binds
    (berth.engine.filebinds), the published-port check (berth.engine.portcheck), the embedded DNS server
    (berth.engine.dns). Told before a start is recorded (``starting``, may edit ``doc``), when the init runs
    (``restored``: found running at daemon start-up), when it exits, and at daemon shutdown."""

    def starting(self, doc: dict[str, Any]) -> None: ...
    def started(self, cid: str, doc: dict[str, Any], pid: int, restored: bool) -> None: ...
    def stopped(self, cid: str) -> None: ...
    def close(self) -> None: ...


class VolumeMountHooks(Protocol):
    """The volume service (berth.engine.volumes): mounts and fills a container's volumes at start, unmounts after."""

    def prepare(self, cid: str, doc: dict[str, Any], rootfs: Path) -> None: ...
    def release(self, cid: str) -> None: ...


class NetworkHooks(Protocol):
    """The network service (berth.engine.networks): builds a container's network namespace before its spec is
    written (the path to join; None for the host's) and tears it down when the container stops."""

    def setup(self, cid: str, name: str, doc: dict[str, Any]) -> str | None: ...
    def release(self, cid: str) -> None: ...


class DnsHooks(Protocol):
    """Name resolution (berth.engine.dns), in step with the network namespace: rewrites hosts and resolv.conf once
    the addresses are known and binds the embedded DNS server inside the new namespace (``prepare``, worker
    thread); closes it when the namespace goes (``release``, any thread). It is also a :class:`RunObserver`."""

    def prepare(self, cid: str, doc: dict[str, Any], netns: str | None) -> None: ...
    def release(self, cid: str) -> None: ...


class ContainerRunner:
    def __init__(self, containers: ContainerService, exec_root: Path, *, init_path: str | None = None,
                 monitor_log: Path | None = None) -> None:
        self.containers = containers
        self.exec_root = exec_root
        self.runtime_root = runtime_root(exec_root)
        self.bundles = exec_root / "bundles"
        self.monitor = MonitorClient(exec_root, monitor_log)
        self.init_path = init_path
        self._waiters: dict[str, _Waiters] = {}
        self._restart: dict[str, _RestartState] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._events_task: asyncio.Task[None] | None = None
        self._connect_lock = asyncio.Lock()
        self.containers.on_destroy = self._destroyed
        self.observers: list[RunObserver] = []
        self.volumes: VolumeMountHooks | None = None
        self.networks: NetworkHooks | None = None
        self.dns: DnsHooks | None = None

    # --- daemon lifecycle --------------------------------------------------------------------------

    async def startup(self) -> None:
        """Reconcile with the monitor when containers were running (the monitor itself starts on first use)."""
        active = [cid for cid, _name, doc in await asyncio.to_thread(self.containers.db.all)
                  if State(doc["State"]["Status"]).is_active()]
        await asyncio.to_thread(self._reap_orphans)
        if not active and self.monitor.pid() is None:
            return
        await self._connect()
        known = (await self.monitor.request("list"))["containers"]
        for cid in active:
            seen = known.get(cid)
            if seen and seen["status"] == "running":
                if self.observers:
                    _, _, doc = await asyncio.to_thread(self.containers.resolve, cid)
                    pid = int(seen.get("pid") or doc["State"].get("Pid") or 0)
                    for observer in self.observers:
                        observer.started(cid, doc, pid, True)
                continue
            if seen and seen["status"] == "exited":
                await self._apply_exit(cid, seen)
            else:
                await self._apply_exit(cid, {"exit_code": 255, "finished_at": time.time(), "oom_killed": False})

    async def _connect(self) -> None:
        """Make sure the monitor runs and its exit events reach us (idempotent)."""
        async with self._connect_lock:
            if self._events_task is not None and not self._events_task.done():
                return
            await self.monitor.ensure_running()
            ready = asyncio.Event()
            self._events_task = asyncio.create_task(self._follow_events(ready))
            await ready.wait()

    async def shutdown(self) -> None:
        if self._events_task is not None:
            self._events_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._events_task
        for st in self._restart.values():
            if st.task is not None:
                st.task.cancel()
        for observer in self.observers:
            observer.close()

    async def _follow_events(self, ready: asyncio.Event) -> None:
        while True:
            try:
                async for ev in self.monitor.events(ready):
                    if ev.get("event") == "exit":
                        await self._apply_exit(ev["id"], ev)
            except (OSError, BerthError) as e:
                log.warning("monitor events: %s; reconnecting", e)
            finally:
                ready.set()
            await asyncio.sleep(0.2)
            with contextlib.suppress(Exception):
                await self.monitor.ensure_running()

    def _lock(self, cid: str) -> asyncio.Lock:
        return self._locks.setdefault(cid, asyncio.Lock())

    def lock(self, cid: str) -> asyncio.Lock:
        """The container's lock, for services that rewrite its record (the healthchecker)."""
        return self._lock(cid)

    # --- start -------------------------------------------------------------------------------------

    async def start(self, ref: str) -> None:
        cid, name, doc = await asyncio.to_thread(self.containers.resolve, ref)
        async with self._lock(cid):
            cid, name, doc = await asyncio.to_thread(self.containers.resolve, cid)
            state = State(doc["State"]["Status"])
            if state in (State.RUNNING, State.PAUSED):
                raise NotModified("container is already running")
            if state in (State.REMOVING, State.DEAD):
                raise Conflict(f"cannot start container {cid[:12]}: container is marked for removal")
            self._restart_state(cid).manually_stopped = False
            await self._start_locked(cid, name, doc)

    async def _start_locked(self, cid: str, name: str, doc: dict[str, Any]) -> None:
        await self._connect()
        host = doc["HostConfig"]
        log_type = host["LogConfig"]["Type"]
        doc["State"].update({"Status": "running", "Running": True, "Paused": False, "Restarting": False,
                             "OOMKilled": False, "Dead": False, "Pid": 0, "ExitCode": 0, "Error": "",
                             "StartedAt": now_rfc3339(), "FinishedAt": doc["State"].get("FinishedAt")})
        for observer in self.observers:
            observer.starting(doc)
        # one worker hop for the bundle and the record: each hop costs a thread wake-up on the hot path
        try:
            bundle = await asyncio.to_thread(self._prepare_and_record, cid, doc, name)
        except BerthError as e:  # e.g. a published port already taken: nothing was started, nothing is left
            never_ran = (doc["State"].get("FinishedAt") or "").startswith("0001-")
            doc["State"].update({"Status": "created" if never_ran else "exited", "Running": False, "Pid": 0,
                                 "Error": str(e)})
            await asyncio.to_thread(self.containers.db.update, cid, doc)
            if host.get("AutoRemove"):
                with contextlib.suppress(BerthError):
                    await asyncio.to_thread(self.containers.remove, cid, True, True)
            raise
        try:
            reply = await self.monitor.request(
                "start", id=cid, bundle=str(bundle), tty=bool(doc["Config"].get("Tty")),
                stdin=bool(doc["Config"].get("OpenStdin")), stdin_once=bool(doc["Config"].get("StdinOnce")),
                runtime=self._runtime_binary(doc),
                log=str(self.containers.paths.log(cid)) if log_type in ("json-file", "local") else None,
                log_opts=host["LogConfig"].get("Config") or {}, console_size=host.get("ConsoleSize") or [0, 0])
        except BerthError as e:
            message = _start_error(str(e))
            doc["State"].update({"Status": "exited" if doc["State"].get("StartedAt") else "created",
                                 "Running": False, "Pid": 0, "ExitCode": _exit_for(message), "Error": message,
                                 "FinishedAt": now_rfc3339()})
            await asyncio.to_thread(self.containers.db.update, cid, doc)
            await asyncio.to_thread(self._release_bundle, cid)
            if host.get("AutoRemove"):  # dockerd removes it too: `docker run --rm` waits for the removal
                with contextlib.suppress(BerthError):
                    await asyncio.to_thread(self.containers.remove, cid, True, True)
            raise InvalidArgument(message) if _exit_for(message) in (126, 127) else type(e)(message) from None
        await asyncio.to_thread(self._record_pid, cid, int(reply["pid"]))
        for observer in self.observers:
            observer.started(cid, doc, int(reply["pid"]), False)
        self.containers.events.publish("container", "start", cid, self.containers.attributes(name, doc))

    def _runtime_binary(self, doc: dict[str, Any]) -> str:
        """What the monitor runs the container with: ``berth`` (the library) or an OCI binary's name or path."""
        name = doc["HostConfig"].get("Runtime") or oci_cli.LIBRARY
        return oci_cli.LIBRARY if name == oci_cli.LIBRARY else self.containers.runtimes.get(name, name)

    def _runtime(self, doc: dict[str, Any]) -> oci_cli.Runtime:
        return oci_cli.runtime_for(self._runtime_binary(doc), self.exec_root, self.runtime_root)

    def runtime_of(self, doc: dict[str, Any]) -> oci_cli.Runtime:
        """The runtime container ``doc`` runs with (its ``state``: init PID, cgroup), for stats, top and update."""
        return self._runtime(doc)

    def _prepare_and_record(self, cid: str, doc: dict[str, Any], name: str = "") -> Path:
        try:
            # the network namespace first: the spec names its path (a port already taken fails here, cheaply)
            netns = self.networks.setup(cid, name, doc) if self.networks is not None else None
            if self.dns is not None:  # the addresses are known now: hosts, resolv.conf, the DNS socket
                self.dns.prepare(cid, doc, netns)
            bundle = self._prepare_bundle(cid, doc, netns=netns)
        except BaseException:
            self._release_bundle(cid)
            raise
        self.containers.db.update(cid, doc)
        return bundle

    def _record_pid(self, cid: str, pid: int) -> None:
        """The init's PID, unless the container already exited (its exit event may come before the reply)."""
        with contextlib.suppress(NotFound):
            _, _, current = self.containers.resolve(cid)
            if current["State"]["Status"] == "running" and not current["State"]["Pid"]:
                current["State"]["Pid"] = pid
                self.containers.db.update(cid, current)

    def _prepare_bundle(self, cid: str, doc: dict[str, Any], *, netns: str | None = None) -> Path:
        bundle = self.bundles / cid
        rootfs = bundle / "rootfs"
        rootfs.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not is_mountpoint(rootfs):
            mount_all(self.containers.snapshotter.mounts(cid), rootfs)
        if self.volumes is not None:  # before the spec: an empty volume is filled from the mounted image
            self.volumes.prepare(cid, doc, rootfs)
        spec = container_spec(cid, doc, rootfs, self.containers.paths, init_path=self.init_path, netns=netns)
        if self._runtime_binary(doc) != oci_cli.LIBRARY and not spec.linux.cgroups_path.startswith("/"):
            # runc reads a relative cgroupsPath under its own cgroup; berth's (and pause's) is the hierarchy root
            spec = dataclasses.replace(spec, linux=dataclasses.replace(
                spec.linux, cgroups_path="/" + spec.linux.cgroups_path))
        tmp = bundle / "config.json.tmp"
        tmp.write_text(spec.to_json(indent=None))  # compact: json's C encoder; indenting runs the Python one
        os.replace(tmp, bundle / "config.json")
        return bundle

    def _release_bundle(self, cid: str) -> None:
        bundle = self.bundles / cid
        unmount_under(bundle / "rootfs")
        if self.dns is not None:
            self.dns.release(cid)
        if self.networks is not None:
            with contextlib.suppress(BerthError, OSError):
                self.networks.release(cid)
        if self.volumes is not None:
            with contextlib.suppress(BerthError, OSError):
                self.volumes.release(cid)
        with contextlib.suppress(OSError):
            (bundle / "config.json").unlink()
        with contextlib.suppress(OSError):
            (bundle / "rootfs").rmdir()
        with contextlib.suppress(OSError):
            bundle.rmdir()

    # --- exit, restart, auto-remove -------------------------------------------------------------------

    async def _apply_exit(self, cid: str, ev: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        # under the container's lock: a start still recording its PID must not overwrite the exit (nor make
        # --rm's removal see "running")
        async with self._lock(cid):
            found = await asyncio.to_thread(self._record_exit, cid, ev, loop)
        for observer in self.observers:
            observer.stopped(cid)
        if found is None:
            return
        doc, code, started = found
        if not doc["HostConfig"].get("AutoRemove") and self._should_restart(cid, doc, code, started):
            self._schedule_restart(cid)

    def _record_exit(self, cid: str, ev: dict[str, Any],
                     loop: asyncio.AbstractEventLoop) -> tuple[dict[str, Any], int, str] | None:
        """Worker side of an exit, in one hop: the record, the bundle, the events, the waiters, ``--rm``."""
        try:
            _, name, doc = self.containers.resolve(cid)
        except NotFound:
            return None
        raw_code = ev.get("exit_code")
        code = 255 if raw_code is None else int(raw_code)
        oom = bool(ev.get("oom_killed"))
        started = doc["State"].get("StartedAt") or ""
        finished = ev.get("finished_at") or time.time()
        doc["State"].update({"Status": "exited", "Running": False, "Paused": False, "Restarting": False,
                             "OOMKilled": oom, "Pid": 0, "ExitCode": code,
                             "FinishedAt": _rfc3339(float(finished))})
        self.containers.db.update(cid, doc)
        auto_remove = bool(doc["HostConfig"].get("AutoRemove"))
        if not auto_remove:  # with --rm the removal unmounts it, after the waiters have their answer
            self._release_bundle(cid)
        elif self.networks is not None:  # dockerd releases the endpoint at the exit, before `run --rm` returns
            with contextlib.suppress(BerthError, OSError):
                self.networks.release(cid)
        attrs = self.containers.attributes(name, doc)
        if oom:
            self.containers.events.publish("container", "oom", cid, attrs)
        self.containers.events.publish("container", "die", cid, {**attrs, "exitCode": str(code)})
        waiters = self._waiters.get(cid)
        if waiters:
            # taken here, before --rm's removal hands the remaining waiters a 0; an append racing the swap
            # lands in the taken list, which is resolved with this exit too
            exit_futs, waiters.exit = waiters.exit, []
            # scheduled before the removal resolves the "removed" waiters (FIFO), which read the exit code
            loop.call_soon_threadsafe(_resolve_all, exit_futs, {"StatusCode": code, "Error": None})
        if auto_remove:
            with contextlib.suppress(BerthError):
                self.containers.remove(cid, True, True)  # --rm takes the anonymous volumes too
        return doc, code, started

    def _restart_state(self, cid: str) -> _RestartState:
        return self._restart.setdefault(cid, _RestartState())

    def _should_restart(self, cid: str, doc: dict[str, Any], code: int, started: str) -> bool:
        policy = doc["HostConfig"]["RestartPolicy"]
        st = self._restart_state(cid)
        if st.manually_stopped:
            return False
        name = policy.get("Name") or "no"
        if name in ("always", "unless-stopped"):
            return True
        if name == "on-failure" and code != 0:
            limit = int(policy.get("MaximumRetryCount") or 0)
            return limit == 0 or int(doc.get("RestartCount", 0)) < limit
        return False

    def _schedule_restart(self, cid: str) -> None:
        st = self._restart_state(cid)
        delay = st.backoff
        st.backoff = min(st.backoff * 2, RESTART_MAX_BACKOFF)

        async def later() -> None:
            await asyncio.sleep(delay)
            async with self._lock(cid):
                try:
                    _, name, doc = await asyncio.to_thread(self.containers.resolve, cid)
                except NotFound:
                    return
                if doc["State"]["Status"] != "exited" or st.manually_stopped:
                    return
                doc["RestartCount"] = int(doc.get("RestartCount", 0)) + 1
                try:
                    await self._start_locked(cid, name, doc)
                    self.containers.events.publish("container", "restart", cid,
                                                   self.containers.attributes(name, doc))
                except BerthError as e:
                    log.warning("restart of %s failed: %s", cid[:12], e)
        st.task = asyncio.create_task(later())

    def _reap_orphans(self) -> None:
        """After a crash between a record's removal and its cleanup: unmount bundles, drop their leftovers."""
        known = {cid for cid, _name, _doc in self.containers.db.all()}
        if self.bundles.is_dir():
            for bundle in self.bundles.iterdir():
                if bundle.name not in known:
                    self._release_bundle(bundle.name)
        self.containers.reap_orphans(known)

    def _destroyed(self, cid: str) -> None:
        """Called (from a worker thread) when a container record is removed."""
        st = self._restart.pop(cid, None)
        if st is not None and st.task is not None:
            st.task.get_loop().call_soon_threadsafe(st.task.cancel)
        waiters = self._waiters.pop(cid, None)
        if waiters:
            for fut in waiters.exit + waiters.removed:
                loop = fut.get_loop()
                loop.call_soon_threadsafe(_resolve, fut, {"StatusCode": 0, "Error": None})
        with contextlib.suppress(Exception):
            self._release_bundle(cid)

    # --- stop, kill, restart, wait ----------------------------------------------------------------------

    async def kill(self, ref: str, sig_text: str | None = None) -> None:
        sig = parse_signal(sig_text) if sig_text else int(signal.SIGKILL)
        cid, name, doc = await asyncio.to_thread(self.containers.resolve, ref)
        if not State(doc["State"]["Status"]).is_active():
            raise Conflict(f"Cannot kill container: {ref}: container {cid} is not running")
        if sig == signal.SIGKILL:
            self._restart_state(cid)  # a kill is not a manual stop: restart policies still apply
        await asyncio.to_thread(self._signal, cid, sig, doc)
        self.containers.events.publish("container", "kill", cid,
                                       {**self.containers.attributes(name, doc), "signal": str(sig)})

    def _signal(self, cid: str, sig: int, doc: dict[str, Any]) -> None:
        try:
            self._runtime(doc).kill(cid, sig)
        except NotFound:
            pid = int(doc["State"].get("Pid") or 0)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        if doc["State"]["Status"] == "paused" and sig == signal.SIGKILL:
            with contextlib.suppress(Exception):
                self._cgroup(cid, doc).thaw()

    async def stop(self, ref: str, timeout: int | None = None, sig_text: str | None = None) -> None:
        cid, name, doc = await asyncio.to_thread(self.containers.resolve, ref)
        if not State(doc["State"]["Status"]).is_active():
            raise NotModified("container is already stopped")
        st = self._restart_state(cid)
        st.manually_stopped = True
        if st.task is not None:
            st.task.cancel()
        sig = parse_signal(sig_text or doc["Config"].get("StopSignal") or "SIGTERM")
        if timeout is None:
            timeout = doc["Config"].get("StopTimeout")
            timeout = DEFAULT_STOP_TIMEOUT if timeout is None else int(timeout)
        exited = self._exit_future(cid)
        if doc["State"]["Status"] == "paused":
            await asyncio.to_thread(self._cgroup(cid, doc).thaw)
        await asyncio.to_thread(self._signal, cid, sig, doc)
        self.containers.events.publish("container", "kill", cid,
                                       {**self.containers.attributes(name, doc), "signal": str(sig)})
        try:
            await asyncio.wait_for(asyncio.shield(exited), None if timeout < 0 else timeout)
        except TimeoutError:
            await asyncio.to_thread(self._signal, cid, int(signal.SIGKILL), doc)
            await asyncio.wait_for(exited, 30)
        self.containers.events.publish("container", "stop", cid, self.containers.attributes(name, doc))

    async def remove(self, ref: str, force: bool = False, volumes: bool = False) -> None:
        """``docker rm``: a running container needs ``force``, which kills it first (Docker's ``rm -f``)."""
        cid, name, doc = await asyncio.to_thread(self.containers.resolve, ref)
        if State(doc["State"]["Status"]).is_active():
            if not force:
                raise Conflict(f"cannot remove container \"/{name}\": container is running: stop the container "
                               "before removing or force remove")
            self._restart_state(cid).manually_stopped = True
            exited = self._exit_future(cid)
            await asyncio.to_thread(self._signal, cid, int(signal.SIGKILL), doc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(exited, 30)
        with contextlib.suppress(NotFound):  # --rm may have removed it already
            await asyncio.to_thread(self.containers.remove, cid, True, volumes)

    async def restart(self, ref: str, timeout: int | None = None, sig_text: str | None = None) -> None:
        with contextlib.suppress(NotModified):
            await self.stop(ref, timeout, sig_text)
        with contextlib.suppress(NotModified):
            await self.start(ref)

    async def restart_unhealthy(self, cid: str) -> None:
        """berth's ``--health-on-failure=restart``: docker stop, then a start after the restart backoff that
        counts in RestartCount like a restart policy's."""
        with contextlib.suppress(NotModified):
            await self.stop(cid)
        # after the exit's own restart decision (taken under the lock), which saw the manual stop
        async with self._lock(cid):
            pass
        self._restart_state(cid).manually_stopped = False
        self._schedule_restart(cid)

    def _exit_future(self, cid: str) -> asyncio.Future[dict[str, Any]]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(cid, _Waiters()).exit.append(fut)
        return fut

    async def wait(self, ref: str, condition: str = "not-running") -> Callable[[], Awaitable[dict[str, Any]]]:
        """Validates now (so errors are plain HTTP errors); the returned coroutine waits for the condition."""
        condition = condition or "not-running"
        if condition not in WAIT_CONDITIONS:
            raise InvalidArgument(f"invalid condition: \"{condition}\"")
        cid, _name, doc = await asyncio.to_thread(self.containers.resolve, ref)
        if condition == "removed":
            fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(cid, _Waiters()).removed.append(fut)
            exit_fut = self._exit_future(cid)

            async def removed() -> dict[str, Any]:
                result = await fut
                code = exit_fut.result() if exit_fut.done() else result
                return {"StatusCode": code.get("StatusCode", 0), "Error": None}
            return removed
        if condition == "not-running" and not State(doc["State"]["Status"]).is_active():
            result = {"StatusCode": int(doc["State"].get("ExitCode", 0)), "Error": None}

            async def now() -> dict[str, Any]:
                return result
            return now
        exit_fut = self._exit_future(cid)

        async def exited() -> dict[str, Any]:
            return await exit_fut
        return exited

    # --- pause, resize, attach ------------------------------------------------------------------------

    def _cgroup(self, cid: str, doc: dict[str, Any]) -> cgroups.Cgroup:
        return cgroups.open_cgroup(self._runtime(doc).state(cid).cgroup_path)

    async def pause(self, ref: str) -> None:
        cid, name, doc = await asyncio.to_thread(self.containers.resolve, ref)
        status = doc["State"]["Status"]
        if status == "paused":
            raise Conflict(f"container {cid} is already paused")
        if status != "running":
            raise Conflict(f"container {cid} is not running")
        await asyncio.to_thread(self._cgroup(cid, doc).freeze)
        doc["State"].update({"Status": "paused", "Paused": True})
        await asyncio.to_thread(self.containers.db.update, cid, doc)
        self.containers.events.publish("container", "pause", cid, self.containers.attributes(name, doc))

    async def unpause(self, ref: str) -> None:
        cid, name, doc = await asyncio.to_thread(self.containers.resolve, ref)
        if doc["State"]["Status"] != "paused":
            raise Conflict(f"container {cid} is not paused")
        await asyncio.to_thread(self._cgroup(cid, doc).thaw)
        doc["State"].update({"Status": "running", "Paused": False})
        await asyncio.to_thread(self.containers.db.update, cid, doc)
        self.containers.events.publish("container", "unpause", cid, self.containers.attributes(name, doc))

    async def resize(self, ref: str, h: int, w: int) -> None:
        cid, _name, doc = await asyncio.to_thread(self.containers.resolve, ref)
        if not State(doc["State"]["Status"]).is_active():
            raise Conflict(f"cannot resize container {cid[:12]}: container is not running")
        await self.monitor.request("resize", id=cid, h=h, w=w)

    async def attach(self, ref: str, *, stdin: bool, stdout: bool, stderr: bool,
                     detach_keys: str | None) -> tuple[str, bool, Callable[[Any], Awaitable[None]]]:
        """Validates now; returns (id, tty, run) where ``run(hijacked_stream)`` pumps bytes until the end."""
        cid, _name, doc = await asyncio.to_thread(self.containers.resolve, ref)
        tty = bool(doc["Config"].get("Tty"))
        keys = parse_detach_keys(detach_keys) if detach_keys else DEFAULT_DETACH_KEYS
        if doc["State"]["Status"] == "exited" and not stdin:
            pass  # Docker attaches and returns at once for a stopped container; the stream simply ends

        # register with the monitor before the 101 goes out: the client sends `start` only after it, so no output
        # (and no exit) can happen before this stream is listening
        await self._connect()
        m_reader, m_writer = await self.monitor.attach(cid, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)

        async def run(stream: Any) -> None:

            async def upstream() -> None:
                matched = 0
                try:
                    while data := await stream.read(65536):
                        if stdin and tty and keys:
                            data, matched, detached = _scan_detach(data, keys, matched)
                            if data:
                                m_writer.write(data)
                            if detached:
                                return
                        elif stdin:
                            m_writer.write(data)
                        await m_writer.drain()
                    if stdin and m_writer.can_write_eof():
                        m_writer.write_eof()
                    await asyncio.Event().wait()  # keep the monitor stream open until output ends
                except (ConnectionError, OSError):
                    return

            async def downstream() -> None:
                with contextlib.suppress(ConnectionError, OSError):
                    while data := await m_reader.read(65536):
                        stream.write(data)
                        await stream.drain()

            up = asyncio.create_task(upstream())
            down = asyncio.create_task(downstream())
            try:
                await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                up.cancel()
                if not down.done():
                    down.cancel()
                m_writer.close()
                with contextlib.suppress(Exception):
                    stream.close_write()
        return cid, tty, run


def _resolve(fut: asyncio.Future[dict[str, Any]], value: dict[str, Any]) -> None:
    if not fut.done():
        fut.set_result(value)


def _resolve_all(futs: list[asyncio.Future[dict[str, Any]]], value: dict[str, Any]) -> None:
    for fut in futs:
        _resolve(fut, value)


def _rfc3339(ts: float) -> str:
    import datetime
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _start_error(message: str) -> str:
    return f"failed to create task for container: OCI runtime create failed: {message}: unknown"


def _exit_for(message: str) -> int:
    """Docker's CLI maps these start errors to exit codes; the container's ExitCode says the same."""
    if "executable file not found" in message or "no such file or directory" in message:
        return 127
    if "permission denied" in message:
        return 126
    return 128


def parse_detach_keys(text: str) -> bytes:
    """Docker's detach-key grammar: comma-separated ``ctrl-<x>`` or single characters."""
    out = bytearray()
    for part in text.split(","):
        part = part.strip()
        if part.startswith("ctrl-") and len(part) == 6:
            c = part[5]
            if c.isalpha():
                out.append(ord(c.lower()) - ord("a") + 1)
            elif c in "@[\\]^_":
                out.append({"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}[c])
            else:
                raise InvalidArgument(f"Invalid escape keys ({text}) provided")
        elif len(part) == 1:
            out.append(ord(part))
        else:
            raise InvalidArgument(f"Invalid escape keys ({text}) provided")
    return bytes(out)


def _scan_detach(data: bytes, keys: bytes, matched: int) -> tuple[bytes, int, bool]:
    """Pass ``data`` through, holding back a partial detach sequence; True when the whole sequence was typed."""
    out = bytearray()
    for b in data:
        if b == keys[matched]:
            matched += 1
            if matched == len(keys):
                return bytes(out), 0, True
            continue
        if matched:
            out += keys[:matched]
            matched = 0
            if b == keys[0]:
                matched = 1
                continue
        out.append(b)
    return bytes(out), matched, False
