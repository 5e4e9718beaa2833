"""``docker stats``, ``docker top`` and ``docker update``: a container's cgroup read, listed and changed.

The cgroup path comes from the state of the runtime the container runs with (berth-runtime or runc), the numbers from
``berth.kernel.cgroups``. Docker's shapes: a stats document per reading with the previous reading's CPU numbers in
``precpu_stats`` (the CLI's CPU % is the difference of the two); a stopped container reads as zeros. ``top`` runs
the host's ``ps`` and keeps the rows whose PID is in the container's cgroup, as dockerd does. ``update`` applies
Docker's update rules to the stored HostConfig and writes the result to the live cgroup.
"""

from __future__ import annotations

import copy
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from berth.engine.containers import RESTART_POLICIES, ContainerService
from berth.engine.spec import resources as spec_resources
from berth.errors import BerthError, Conflict, InternalError, InvalidArgument, NotFound
from berth.kernel import cgroups
from berth.runtime import oci_cli
from berth.units import now_rfc3339

ZERO_TIME = "0001-01-01T00:00:00Z"
STATS_INTERVAL_S = 1.0
PS_TIMEOUT_S = 10.0
_PS_ARG_PID = re.compile(r"\s+([^\s]*)=\s*(PID[^\s]*)")
_LIVE = ("running", "paused")
_LIVE_RUNTIME = ("running", "created", "paused")  # runtime statuses with a live init (runc reports paused)
UPDATE_NUMBERS = ("BlkioWeight", "CpuShares", "NanoCpus", "CpuPeriod", "CpuQuota", "CpuRealtimePeriod",
                  "CpuRealtimeRuntime", "Memory", "MemorySwap", "MemoryReservation", "KernelMemory")
_BLKIO_KEYS = ("io_service_bytes_recursive", "io_serviced_recursive", "io_queue_recursive",
               "io_service_time_recursive", "io_wait_time_recursive", "io_merged_recursive", "io_time_recursive",
               "sectors_recursive")


def zero_cpu() -> dict[str, Any]:
    """The CPU block of a container with no readings (Go's zero value, as dockerd encodes it)."""
    return {"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
            "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}


def zero_stats(cid: str, name: str) -> dict[str, Any]:
    """What dockerd answers for a container that is not running."""
    return {
        "name": "/" + name, "id": cid, "read": ZERO_TIME, "preread": ZERO_TIME, "pids_stats": {},
        "blkio_stats": dict.fromkeys(_BLKIO_KEYS), "num_procs": 0, "storage_stats": {},
        "cpu_stats": zero_cpu(), "precpu_stats": zero_cpu(), "memory_stats": {},
    }


def read_networks(pid: int) -> dict[str, dict[str, int]]:
    """Per-interface counters of the network namespace ``pid`` lives in (``/proc/PID/net/dev``), loopback left out."""
    try:
        with open(f"/proc/{pid}/net/dev", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return {}
    out: dict[str, dict[str, int]] = {}
    for line in lines:
        iface, sep, rest = line.partition(":")
        fields = rest.split()
        iface = iface.strip()
        if not sep or iface == "lo" or len(fields) < 12 or not all(x.isdigit() for x in fields[:12]):
            continue
        v = [int(x) for x in fields[:12]]
        out[iface] = {"rx_bytes": v[0], "rx_packets": v[1], "rx_errors": v[2], "rx_dropped": v[3],
                      "tx_bytes": v[8], "tx_packets": v[9], "tx_errors": v[10], "tx_dropped": v[11]}
    return out


def validate_ps_args(args: str) -> None:
    """dockerd refuses renaming another ``ps`` column to PID (it would find the wrong column)."""
    for key, value in _PS_ARG_PID.findall(args):
        if key != "pid":
            raise InvalidArgument(f'specifying "{key}={value}" is not allowed')


def parse_ps_output(output: str, pids: set[int]) -> dict[str, Any]:
    """dockerd's ``parsePSOutput``: the title row, then the rows of ``pids`` (and their ``-`` thread rows)."""
    lines = output.split("\n")
    titles = lines[0].split()
    if "PID" not in titles:
        raise InternalError("Couldn't find PID field in ps output")
    pid_index = titles.index("PID")
    processes: list[list[str]] = []
    kept = False
    for line in lines[1:]:
        fields = line.split()
        if not fields or len(fields) <= pid_index:
            continue
        if fields[pid_index] == "-":
            if kept:
                processes.append(_row(fields, len(titles)))
            continue
        try:
            pid = int(fields[pid_index])
        except ValueError:
            raise InternalError(f"Unexpected pid '{fields[pid_index]}'") from None
        kept = pid in pids
        if kept:
            processes.append(_row(fields, len(titles)))
    return {"Titles": titles, "Processes": processes}


def _row(fields: list[str], columns: int) -> list[str]:
    """The last column (the command) takes the rest of the line."""
    return [*fields[: columns - 1], " ".join(fields[columns - 1 :])]


def _int(value: Any, key: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"invalid value for {key}: {value!r}")
    return value


def merge_update(host: dict[str, Any], body: dict[str, Any]) -> None:
    """Docker's ``UpdateContainer``: non-zero fields replace the stored ones, after its conflict checks."""
    new = {k: _int(body.get(k), k) for k in UPDATE_NUMBERS}
    cur = {k: _int(host.get(k), k) for k in UPDATE_NUMBERS}
    # NanoCpus is a period and a quota in disguise: one way of limiting CPUs stays for the container's life
    if new["NanoCpus"] > 0 and cur["CpuPeriod"] > 0:
        raise Conflict("Conflicting options: Nano CPUs cannot be updated as CPU Period has already been set")
    if new["NanoCpus"] > 0 and cur["CpuQuota"] > 0:
        raise Conflict("Conflicting options: Nano CPUs cannot be updated as CPU Quota has already been set")
    if new["CpuPeriod"] > 0 and cur["NanoCpus"] > 0:
        raise Conflict("Conflicting options: CPU Period cannot be updated as NanoCPUs has already been set")
    if new["CpuQuota"] > 0 and cur["NanoCpus"] > 0:
        raise Conflict("Conflicting options: CPU Quota cannot be updated as NanoCPUs has already been set")
    if new["Memory"]:
        # dockerd stores memory+swap as twice the memory when none was given; berth stores 0 for that
        swap_now = cur["MemorySwap"] or (2 * cur["Memory"] if cur["Memory"] > 0 else 0)
        if new["Memory"] > swap_now and new["MemorySwap"] == 0:
            raise Conflict("Memory limit should be smaller than already set memoryswap limit, update the "
                           "memoryswap at the same time")
        if cur["MemorySwap"] == 0 and swap_now:
            host["MemorySwap"] = swap_now  # keep the swap limit the container runs with
    for key in UPDATE_NUMBERS:
        if new[key]:
            host[key] = new[key]
    for key in ("CpusetCpus", "CpusetMems"):
        value = body.get(key)
        if value:
            if not isinstance(value, str):
                raise InvalidArgument(f"invalid value for {key}: {value!r}")
            host[key] = value
    if body.get("PidsLimit") is not None:
        host["PidsLimit"] = _int(body["PidsLimit"], "PidsLimit")
    policy = body.get("RestartPolicy") or {}
    if not isinstance(policy, dict):
        raise InvalidArgument("invalid RestartPolicy: must be an object")
    name = policy.get("Name") or ""
    if name:
        retries = _int(policy.get("MaximumRetryCount"), "MaximumRetryCount")
        if name not in RESTART_POLICIES:
            raise InvalidArgument(f"invalid restart policy: unknown policy '{name}'; use one of 'no', 'always', "
                                  "'on-failure' or 'unless-stopped'")
        if retries and name != "on-failure":
            raise InvalidArgument("invalid restart policy: maximum retry count can only be used with 'on-failure'")
        if host.get("AutoRemove") and name != "no":
            raise Conflict("Restart policy cannot be updated because AutoRemove is enabled for the container")
        host["RestartPolicy"] = {"Name": name, "MaximumRetryCount": retries}


class StatsService:
    """stats, top and update (blocking; call from worker threads)."""

    def __init__(self, containers: ContainerService, runtime_root: Path,
                 runtime_of: Callable[[dict[str, Any]], oci_cli.Runtime] | None = None) -> None:
        self.containers = containers
        self.runtime_root = runtime_root
        # the runtime a container runs with (the runner's choice); berth's own when not told
        self.runtime_of = runtime_of or (lambda _doc: oci_cli.LibraryRuntime(runtime_root))

    def _live_state(self, cid: str, doc: dict[str, Any]) -> oci_cli.RuntimeState | None:
        """The runtime's state (init PID, cgroup) of a container whose init still runs, else ``None``."""
        try:
            st = self.runtime_of(doc).state(cid)
        except (NotFound, Conflict):
            return None
        return st if st.status in _LIVE_RUNTIME and st.cgroup_path else None

    # --- stats ----------------------------------------------------------------------------------------

    def sample(self, ref: str) -> dict[str, Any]:
        """One reading, without ``precpu_stats`` (zeros there); zeros throughout when the container is not running."""
        cid, name, doc = self.containers.resolve(ref)
        st = self._live_state(cid, doc) if doc["State"]["Status"] in _LIVE else None
        if st is None:
            return zero_stats(cid, name)
        try:
            raw = cgroups.open_cgroup(st.cgroup_path).stats()
        except (OSError, BerthError):
            return zero_stats(cid, name)  # the container went away while we read
        cpu = {**zero_cpu(), **raw.get("cpu_stats", {})}
        blkio = dict.fromkeys(_BLKIO_KEYS)
        blkio["io_service_bytes_recursive"] = raw.get("blkio_stats", {}).get("io_service_bytes_recursive") or None
        out: dict[str, Any] = {
            "name": "/" + name, "id": cid, "read": now_rfc3339(), "preread": ZERO_TIME,
            "pids_stats": raw.get("pids_stats", {}), "blkio_stats": blkio, "num_procs": 0, "storage_stats": {},
            "cpu_stats": cpu, "precpu_stats": zero_cpu(), "memory_stats": raw.get("memory_stats", {}),
        }
        networks = read_networks(st.pid)
        if networks:
            out["networks"] = networks
        return out

    @staticmethod
    def _follow(prev: dict[str, Any] | None, cur: dict[str, Any]) -> dict[str, Any]:
        if prev is not None and prev["read"] != ZERO_TIME and cur["read"] != ZERO_TIME:
            cur["precpu_stats"] = prev["cpu_stats"]
            cur["preread"] = prev["read"]
        return cur

    def stats(self, ref: str, one_shot: bool = False) -> dict[str, Any]:
        """``stream=0``: two readings a second apart so the CPU numbers have a base (one with ``one-shot``)."""
        first = self.sample(ref)
        if one_shot or first["read"] == ZERO_TIME:
            return first
        time.sleep(STATS_INTERVAL_S)
        return self._follow(first, self.sample(first["id"]))

    def stream(self, ref: str, emit: Callable[[dict[str, Any]], None]) -> None:
        """``stream=1``: a reading every second until the client leaves (``emit`` raises) or the container is gone."""
        cid, _name, _doc = self.containers.resolve(ref)
        prev: dict[str, Any] | None = None
        while True:
            try:
                cur = self._follow(prev, self.sample(cid))
            except NotFound:
                return
            emit(cur)
            prev = cur
            time.sleep(STATS_INTERVAL_S)

    # --- top ------------------------------------------------------------------------------------------

    def top(self, ref: str, ps_args: str | None = None) -> dict[str, Any]:
        """``GET /containers/{id}/top``: host ``ps`` rows of the container's processes."""
        args = ps_args or "-ef"
        validate_ps_args(args)
        cid, _name, doc = self.containers.resolve(ref)
        status = doc["State"]["Status"]
        if status == "restarting":
            raise Conflict(f"Container {cid} is restarting, wait until the container is running")
        st = self._live_state(cid, doc) if status in _LIVE else None
        if st is None:
            raise Conflict(f"container {cid} is not running")
        pids = set(cgroups.open_cgroup(st.cgroup_path).pids())
        argv = [a for a in args.split(" ") if a]
        res = self._ps([*argv, "-q" + ",".join(str(p) for p in sorted(pids))])
        if res.returncode != 0:
            res = self._ps(argv)  # some options (f) cannot be combined with -q
        if res.returncode != 0:
            raise InternalError(f"ps: exit status {res.returncode}: {res.stderr.strip()}")
        return parse_ps_output(res.stdout, pids)

    @staticmethod
    def _ps(argv: list[str]) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(["ps", *argv], capture_output=True, text=True, timeout=PS_TIMEOUT_S, check=False,
                                  env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, errors="replace")
        except (OSError, subprocess.TimeoutExpired) as e:
            raise InternalError(f"ps: {e}") from None

    # --- update ---------------------------------------------------------------------------------------

    def update(self, ref: str, body: Any) -> dict[str, Any]:
        """``POST /containers/{id}/update``: store the new limits and restart policy, apply them if it runs."""
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise InvalidArgument("invalid update config: must be an object")
        cid, name, doc = self.containers.resolve(ref)
        host = copy.deepcopy(doc["HostConfig"])
        try:
            merge_update(host, body)
            oci = spec_resources(host, [])
        except BerthError as e:
            raise type(e)(f"Cannot update container {cid}: {e}") from None
        warnings: list[str] = []
        st = self._live_state(cid, doc) if doc["State"]["Status"] in _LIVE else None
        if st is not None:
            try:
                warnings += cgroups.open_cgroup(st.cgroup_path).apply(cgroups.Resources.from_oci(oci))
            except BerthError as e:
                raise type(e)(f"Cannot update container {cid}: {e}") from None
        _, name, current = self.containers.resolve(cid)  # the freshest State; only HostConfig changes
        current["HostConfig"] = host
        self.containers.db.update(cid, current)
        self.containers.events.publish("container", "update", cid, self.containers.attributes(name, current))
        return {"Warnings": warnings}
