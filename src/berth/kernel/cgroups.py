"""Control groups for containers: cgroup v1, v2 and the hybrid of both, through cgroupfs files only.

Layout, like Docker's cgroupfs driver: a container's cgroup sits at ``<hierarchy root>/<path>`` in every
hierarchy, never under the daemon's own cgroup. On v1 that is one directory per mounted hierarchy
(``/sys/fs/cgroup/memory/berth/<id>``, ``/sys/fs/cgroup/cpu/berth/<id>``, ...); on v2 one directory under the
cgroup2 mount; on a hybrid host the v1 directories plus one under the cgroup2 mount at
``/sys/fs/cgroup/unified`` (which has no controllers there, but gives ``cgroup.kill`` and membership).

:func:`open_cgroup` picks the implementation for the host (or for a fake root directory in tests);
:func:`detect` says which layout the host has. Values the kernel refuses become ``InvalidArgument`` with
the kernel's reason; a controller that is not there becomes a warning, not a failure.

Device rules: v1 writes ``devices.deny``/``devices.allow``; v2 loads a ``BPF_PROG_TYPE_CGROUP_DEVICE``
program built from the rules (see :func:`device_filter_program`) and attaches it to the cgroup.

Imports: stdlib, berth.errors.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import signal
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from berth.errors import Conflict, InternalError, InvalidArgument

CGROUP_ROOT = Path("/sys/fs/cgroup")
SWAP_WARNING = (
    "Your kernel does not support swap limit capabilities or the cgroup is not mounted. Memory limited without swap."
)
DEVICES_V2_WARNING = "cgroup v2: the device allow-list needs an eBPF program, which could not be loaded: {reason}"
FREEZE_TIMEOUT_S = 5.0
DESTROY_RETRY_S = 2.0
DEFAULT_CFS_PERIOD = 100_000
V2_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "pids")


# -- values ------------------------------------------------------------------------------------------------------


def _opt_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"invalid value for {name}: {value!r} (want an integer)")
    return value


def _opt_str(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"invalid value for {name}: {value!r} (want a string)")
    return value


@dataclass(frozen=True)
class Resources:
    """The resource limits berth sets on a container's cgroup; ``None`` leaves the kernel's value alone."""

    memory: int | None = None  # bytes; -1 = unlimited
    memory_swap: int | None = None  # total memory+swap like Docker; -1 = unlimited swap
    cpu_quota: int | None = None  # microseconds per period; -1 = unlimited
    cpu_period: int | None = None
    cpu_shares: int | None = None
    cpuset_cpus: str | None = None
    cpuset_mems: str | None = None
    pids_limit: int | None = None  # <= 0 = unlimited

    def __post_init__(self) -> None:
        for name in ("memory", "memory_swap", "cpu_quota", "cpu_period", "cpu_shares", "pids_limit"):
            _opt_int(getattr(self, name), name)
        for name in ("cpuset_cpus", "cpuset_mems"):
            _opt_str(getattr(self, name), name)
        if self.memory is not None and self.memory < -1:
            raise InvalidArgument(f"invalid memory limit: {self.memory}")
        if self.memory_swap is not None and self.memory_swap < -1:
            raise InvalidArgument(f"invalid memory swap limit: {self.memory_swap}")
        if (
            self.memory is not None
            and self.memory > 0
            and self.memory_swap is not None
            and self.memory_swap > 0
            and self.memory_swap < self.memory
        ):
            raise InvalidArgument("Minimum memoryswap limit should be larger than memory limit, see usage")
        if self.cpu_period is not None and self.cpu_period != 0 and not 1000 <= self.cpu_period <= 1_000_000:
            raise InvalidArgument(
                "CPU cfs period can not be less than 1ms (i.e. 1000) or larger than 1s (i.e. 1000000)"
            )
        if self.cpu_quota is not None and 0 <= self.cpu_quota < 1000 and self.cpu_quota != 0:
            raise InvalidArgument("CPU cfs quota can not be less than 1ms (i.e. 1000)")
        if self.cpu_shares is not None and self.cpu_shares < 0:
            raise InvalidArgument(f"invalid cpu shares: {self.cpu_shares}")

    @classmethod
    def from_oci(cls, linux_resources: dict[str, Any] | None) -> Resources:
        """Read the OCI runtime spec's ``linux.resources`` object (unknown keys are ignored)."""
        res = linux_resources or {}
        memory = res.get("memory") or {}
        cpu = res.get("cpu") or {}
        pids = res.get("pids") or {}
        if not all(isinstance(x, dict) for x in (memory, cpu, pids)):
            raise InvalidArgument("linux.resources: memory, cpu and pids must be objects")
        return cls(
            memory=_opt_int(memory.get("limit"), "memory.limit"),
            memory_swap=_opt_int(memory.get("swap"), "memory.swap"),
            cpu_quota=_opt_int(cpu.get("quota"), "cpu.quota"),
            cpu_period=_opt_int(cpu.get("period"), "cpu.period"),
            cpu_shares=_opt_int(cpu.get("shares"), "cpu.shares"),
            cpuset_cpus=_opt_str(cpu.get("cpus"), "cpu.cpus"),
            cpuset_mems=_opt_str(cpu.get("mems"), "cpu.mems"),
            pids_limit=_opt_int(pids.get("limit"), "pids.limit"),
        )


def shares_to_weight(shares: int) -> int:
    """v1 cpu.shares [2..262144] to v2 cpu.weight [1..10000], the same formula as runc."""
    if shares == 0:
        return 0
    return 1 + ((shares - 2) * 9999) // 262142


@dataclass(frozen=True)
class DeviceRule:
    """One OCI ``linux.resources.devices`` entry; ``None`` major/minor mean any (``*``)."""

    allow: bool
    type: str = "a"  # a (all), c (char), b (block)
    major: int | None = None
    minor: int | None = None
    access: str = "rwm"

    def __post_init__(self) -> None:
        if self.type not in ("a", "c", "b"):
            raise InvalidArgument(f"invalid device type {self.type!r}: want a, b or c")
        if not self.access or any(ch not in "rwm" for ch in self.access):
            raise InvalidArgument(f"invalid device access {self.access!r}: want a combination of r, w, m")
        for value in (self.major, self.minor):
            if value is not None and value < 0:
                raise InvalidArgument(f"invalid device number {value}")

    @classmethod
    def from_oci(cls, rule: dict[str, Any]) -> DeviceRule:
        major = rule.get("major")
        minor = rule.get("minor")
        return cls(
            allow=bool(rule.get("allow", False)),
            type=str(rule.get("type") or "a"),
            major=None if major is None or major == -1 else _opt_int(major, "major"),
            minor=None if minor is None or minor == -1 else _opt_int(minor, "minor"),
            access=str(rule.get("access") or "rwm"),
        )

    def v1_line(self) -> str:
        """The line ``devices.allow``/``devices.deny`` take, e.g. ``c 1:3 rwm``."""
        major = "*" if self.major is None else str(self.major)
        minor = "*" if self.minor is None else str(self.minor)
        return f"{self.type} {major}:{minor} {''.join(sorted(set(self.access), key='rwm'.index))}"


# -- host layout -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy: its mount point, version and controllers (``name=x`` for named v1 ones)."""

    mountpoint: Path
    version: int
    controllers: frozenset[str]


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[Hierarchy]:
    """The cgroup hierarchies in a ``/proc/<pid>/mountinfo`` text, first mount of each kept."""
    found: list[Hierarchy] = []
    seen: set[tuple[int, frozenset[str]]] = set()
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        version = 2 if tail[0] == "cgroup2" else 1
        if version == 1:
            known = {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "net_cls", "blkio", "perf_event"}
            known |= {"net_prio", "hugetlb", "pids", "rdma", "misc"}
            opts = tail[2].split(",")
            controllers = frozenset(o for o in opts if o in known or o.startswith("name="))
        else:
            controllers = frozenset()
        key = (version, controllers)
        if key in seen:
            continue
        seen.add(key)
        found.append(Hierarchy(Path(_unescape(fields[4])), version, controllers))
    return found


_hierarchies: list[Hierarchy] = []


def _host_hierarchies() -> list[Hierarchy]:
    """The host's cgroup mounts, parsed once per process (mountinfo grows with every container's mounts, and the
    monitor asks at each create and exit); parsed again if a known mount point went away."""
    global _hierarchies
    if not _hierarchies or not all(h.mountpoint.is_dir() for h in _hierarchies):
        _hierarchies = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    return _hierarchies


def _fake_hierarchies(root: Path) -> list[Hierarchy]:
    """Hierarchies under a test root: ``cgroup.controllers`` at the top = v2; else one dir per v1 hierarchy."""
    if (root / "cgroup.controllers").exists():
        return [Hierarchy(root, 2, frozenset())]
    found: list[Hierarchy] = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            continue
        if (entry / "cgroup.controllers").exists():
            found.append(Hierarchy(entry, 2, frozenset()))
        else:
            found.append(Hierarchy(entry, 1, frozenset(entry.name.split(","))))
    return found


def _layout(hierarchies: list[Hierarchy]) -> str:
    has_v1 = any(h.version == 1 and any(not c.startswith("name=") for c in h.controllers) for h in hierarchies)
    has_v2 = any(h.version == 2 for h in hierarchies)
    if has_v1 and has_v2:
        return "hybrid"
    if has_v1:
        return "v1"
    if has_v2:
        return "v2"
    raise InternalError("no cgroup hierarchy is mounted")


def detect(mountinfo: str | None = None) -> str:
    """``"v1"``, ``"v2"`` or ``"hybrid"`` (v1 controllers plus a cgroup2 mount) from ``/proc/self/mountinfo``."""
    return _layout(_host_hierarchies() if mountinfo is None else parse_mountinfo(mountinfo))


def cgroup_ns_supported() -> bool:
    """Whether the kernel has cgroup namespaces (``CLONE_NEWCGROUP``)."""
    return os.path.exists("/proc/self/ns/cgroup")


# -- file access -------------------------------------------------------------------------------------------------


def _read(path: Path) -> str:
    return path.read_text().strip()


def _read_int(path: Path) -> int | None:
    try:
        text = _read(path)
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _read_keyed(path: Path) -> dict[str, int]:
    """A ``key value`` per line file (memory.stat, cpu.stat, memory.events) as a dict; bad lines skipped."""
    out: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            with contextlib.suppress(ValueError):
                out[parts[0]] = int(parts[1])
    return out


def _write(path: Path, value: str) -> None:
    """Write one value to a cgroup file; a refusal becomes InvalidArgument carrying the kernel's reason."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as err:
        raise InvalidArgument(f"failed to write {value!r} to {path}: {os.strerror(err.errno or 0)}") from err


def _procs(directory: Path) -> list[int]:
    """PIDs in ``directory`` and every cgroup below it (a container may make its own sub-cgroups)."""
    pids: list[int] = []
    for dirpath, _dirs, _files in os.walk(directory):
        try:
            text = (Path(dirpath) / "cgroup.procs").read_text()
        except OSError:
            continue
        pids.extend(int(x) for x in text.split())
    return pids


def _rmtree_cgroup(directory: Path) -> None:
    """rmdir a cgroup and its sub-cgroups deepest first, retrying EBUSY briefly (exiting tasks linger)."""
    if not directory.exists():
        return
    deadline = time.monotonic() + DESTROY_RETRY_S
    for dirpath, _dirs, _files in sorted(os.walk(directory), key=lambda w: -len(Path(w[0]).parts)):
        while True:
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError as err:
                if err.errno in (errno.EBUSY, errno.ENOTEMPTY) and time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                if err.errno in (errno.EBUSY, errno.ENOTEMPTY):
                    raise Conflict(f"cannot remove cgroup {dirpath}: it still has processes or children") from err
                raise InternalError(f"cannot remove cgroup {dirpath}: {os.strerror(err.errno or 0)}") from err


def _clean_path(path: str) -> str:
    parts = [p for p in path.strip("/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise InvalidArgument(f"invalid cgroup path {path!r}")
    return "/".join(parts)


def _host_memory() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _system_cpu_ns() -> int:
    """Host CPU time in ns as Docker computes ``system_cpu_usage`` (first line of /proc/stat)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    ticks = sum(int(x) for x in fields[1:8])
    return ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


# -- the interface -----------------------------------------------------------------------------------------------


class Cgroup(Protocol):
    """A container's cgroup on every hierarchy of the host."""

    path: str

    def create(self) -> None: ...
    def apply(self, res: Resources) -> list[str]: ...
    def apply_devices(self, rules: list[dict[str, Any]]) -> list[str]: ...
    def add(self, pid: int) -> None: ...
    def pids(self) -> list[int]: ...
    def stats(self) -> dict[str, Any]: ...
    def freeze(self) -> None: ...
    def thaw(self) -> None: ...
    def frozen(self) -> bool: ...
    def oom_kill_count(self) -> int: ...
    def kill_all(self, sig: int) -> None: ...
    def destroy(self) -> None: ...


def _signal_all(group: Cgroup, sig: int) -> None:
    """Signal every process with the group frozen, so a forking process cannot slip a child past the loop."""
    was_frozen = group.frozen()
    froze = False
    if not was_frozen:
        with contextlib.suppress(InternalError, InvalidArgument):
            group.freeze()
            froze = True
    try:
        for pid in group.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    finally:
        # a paused container stays paused, except that SIGKILL must reach tasks the v1 freezer holds
        if froze or (was_frozen and sig == signal.SIGKILL):
            group.thaw()


# -- v2 ----------------------------------------------------------------------------------------------------------


class CgroupV2:
    """A cgroup on the unified (v2) hierarchy mounted at ``root``."""

    def __init__(self, path: str, root: Path = CGROUP_ROOT) -> None:
        self.path = _clean_path(path)
        self.root = root
        self.dir = root / self.path

    def create(self) -> None:
        # controllers must be enabled in every ancestor's subtree_control for the files to appear below it
        current = self.root
        for part in self.path.split("/"):
            self._enable_controllers(current)
            current = current / part
            with contextlib.suppress(FileExistsError):
                current.mkdir()

    def _enable_controllers(self, directory: Path) -> None:
        try:
            available = set(_read(directory / "cgroup.controllers").split())
        except OSError:
            return
        try:
            enabled = {c.lstrip("+") for c in _read(directory / "cgroup.subtree_control").split()}
        except OSError:
            enabled = set()
        for controller in V2_CONTROLLERS:
            if controller in available and controller not in enabled:
                # a controller may refuse (e.g. cpu with realtime tasks); the caller is warned in apply()
                with contextlib.suppress(InvalidArgument):
                    _write(directory / "cgroup.subtree_control", f"+{controller}")

    def controllers(self) -> set[str]:
        try:
            return set(_read(self.dir / "cgroup.controllers").split())
        except OSError:
            return set()

    def apply(self, res: Resources) -> list[str]:
        warnings: list[str] = []
        have = self.controllers()

        def need(controller: str, what: str) -> bool:
            if controller in have:
                return True
            warnings.append(f"cgroup v2: the {controller} controller is not enabled for {self.path}; {what} ignored")
            return False

        if (res.memory is not None or res.memory_swap is not None) and need("memory", "memory limit"):
            self._apply_memory(res, warnings)
        if (res.cpu_quota is not None or res.cpu_period is not None) and need("cpu", "CPU quota"):
            self._apply_cpu_max(res)
        if res.cpu_shares is not None and res.cpu_shares != 0 and need("cpu", "CPU shares"):
            _write(self.dir / "cpu.weight", str(shares_to_weight(res.cpu_shares)))
        if (res.cpuset_cpus or res.cpuset_mems) and need("cpuset", "cpuset"):
            if res.cpuset_cpus:
                _write(self.dir / "cpuset.cpus", res.cpuset_cpus)
            if res.cpuset_mems:
                _write(self.dir / "cpuset.mems", res.cpuset_mems)
        if res.pids_limit is not None and need("pids", "PIDs limit"):
            _write(self.dir / "pids.max", "max" if res.pids_limit <= 0 else str(res.pids_limit))
        return warnings

    def _apply_memory(self, res: Resources, warnings: list[str]) -> None:
        if res.memory is not None and res.memory != 0:
            _write(self.dir / "memory.max", "max" if res.memory == -1 else str(res.memory))
        if res.memory_swap is None or res.memory_swap == 0:
            return
        if res.memory_swap == -1:
            swap = "max"
        elif res.memory is None or res.memory <= 0:
            raise InvalidArgument("unable to set swap limit without memory limit")
        else:
            swap = str(res.memory_swap - res.memory)  # v2 limits swap alone, OCI/Docker give memory+swap
        if not (self.dir / "memory.swap.max").exists():
            warnings.append(SWAP_WARNING)
            return
        _write(self.dir / "memory.swap.max", swap)

    def _apply_cpu_max(self, res: Resources) -> None:
        quota, period = "max", DEFAULT_CFS_PERIOD
        with contextlib.suppress(OSError, ValueError, IndexError):
            old = _read(self.dir / "cpu.max").split()
            quota, period = old[0], int(old[1])
        if res.cpu_quota is not None and res.cpu_quota != 0:
            quota = "max" if res.cpu_quota < 0 else str(res.cpu_quota)
        if res.cpu_period:
            period = res.cpu_period
        _write(self.dir / "cpu.max", f"{quota} {period}")

    def apply_devices(self, rules: list[dict[str, Any]]) -> list[str]:
        parsed = [DeviceRule.from_oci(r) for r in rules]
        try:
            attach_device_filter(self.dir, parsed)
        except (OSError, InternalError) as err:
            return [DEVICES_V2_WARNING.format(reason=err)]
        return []

    def add(self, pid: int) -> None:
        _write(self.dir / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        return _procs(self.dir)

    def stats(self) -> dict[str, Any]:
        mem_stat = _read_keyed(self.dir / "memory.stat")
        limit = _read_int(self.dir / "memory.max")
        host = _host_memory()
        memory: dict[str, Any] = {
            "usage": _read_int(self.dir / "memory.current") or 0,
            "limit": host if limit is None or limit > host else limit,
            "stats": mem_stat,
        }
        peak = _read_int(self.dir / "memory.peak")
        if peak is not None:
            memory["max_usage"] = peak
        cpu = _read_keyed(self.dir / "cpu.stat")
        cpu_stats = {
            "cpu_usage": {
                "total_usage": cpu.get("usage_usec", 0) * 1000,
                "usage_in_kernelmode": cpu.get("system_usec", 0) * 1000,
                "usage_in_usermode": cpu.get("user_usec", 0) * 1000,
            },
            "system_cpu_usage": _system_cpu_ns(),
            "online_cpus": os.cpu_count() or 1,
            "throttling_data": {
                "periods": cpu.get("nr_periods", 0),
                "throttled_periods": cpu.get("nr_throttled", 0),
                "throttled_time": cpu.get("throttled_usec", 0) * 1000,
            },
        }
        pids: dict[str, Any] = {"current": _read_int(self.dir / "pids.current") or len(self.pids())}
        pids_max = _read_int(self.dir / "pids.max")
        if pids_max is not None:
            pids["limit"] = pids_max
        return {
            "memory_stats": memory,
            "cpu_stats": cpu_stats,
            "pids_stats": pids,
            "blkio_stats": {"io_service_bytes_recursive": self._io_bytes()},
        }

    def _io_bytes(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        try:
            text = (self.dir / "io.stat").read_text()
        except OSError:
            return entries
        for line in text.splitlines():
            dev, *kvs = line.split()
            major, _, minor = dev.partition(":")
            values = dict(kv.split("=", 1) for kv in kvs if "=" in kv)
            for key, op in (("rbytes", "read"), ("wbytes", "write")):
                if key in values:
                    entries.append({"major": int(major), "minor": int(minor), "op": op, "value": int(values[key])})
        return entries

    def freeze(self) -> None:
        _write(self.dir / "cgroup.freeze", "1")
        self._wait_frozen(True)

    def thaw(self) -> None:
        _write(self.dir / "cgroup.freeze", "0")
        self._wait_frozen(False)

    def _wait_frozen(self, want: bool) -> None:
        deadline = time.monotonic() + FREEZE_TIMEOUT_S
        while _read_keyed(self.dir / "cgroup.events").get("frozen", 0) != int(want):
            if time.monotonic() > deadline:
                raise InternalError(f"cgroup {self.path}: timed out waiting for frozen={int(want)}")
            time.sleep(0.002)

    def oom_kill_count(self) -> int:
        return _read_keyed(self.dir / "memory.events").get("oom_kill", 0)

    def frozen(self) -> bool:
        return _read_keyed(self.dir / "cgroup.events").get("frozen", 0) == 1

    def kill_all(self, sig: int) -> None:
        if sig == signal.SIGKILL and (self.dir / "cgroup.kill").exists():
            _write(self.dir / "cgroup.kill", "1")
            return
        _signal_all(self, sig)

    def destroy(self) -> None:
        _rmtree_cgroup(self.dir)


# -- v1 (and hybrid) ---------------------------------------------------------------------------------------------


class CgroupV1:
    """A cgroup on every v1 hierarchy, plus the cgroup2 mount when the host is hybrid (``unified``)."""

    def __init__(self, path: str, hierarchies: list[Hierarchy]) -> None:
        self.path = _clean_path(path)
        self.dirs: dict[str, Path] = {}  # controller (or name=x) -> this cgroup's directory in its hierarchy
        self.all_dirs: list[Path] = []
        self.unified: CgroupV2 | None = None
        for h in hierarchies:
            if h.version == 2:
                self.unified = CgroupV2(path, h.mountpoint)
                continue
            directory = h.mountpoint / self.path
            self.all_dirs.append(directory)
            for controller in h.controllers:
                self.dirs[controller] = directory

    def _dir(self, controller: str) -> Path | None:
        return self.dirs.get(controller)

    def create(self) -> None:
        for directory in self.all_dirs:
            directory.mkdir(parents=True, exist_ok=True)
        cpuset = self._dir("cpuset")
        if cpuset is not None:
            self._fill_cpuset(cpuset)
        if self.unified is not None:
            self.unified.create()

    def _fill_cpuset(self, directory: Path) -> None:
        """Copy cpuset.cpus/mems down each new level from its parent (v1 refuses tasks while they are empty)."""
        parent = directory.parents[len(self.path.split("/")) - 1]  # the hierarchy's mount point
        for part in self.path.split("/"):
            current = parent / part
            for name in ("cpuset.cpus", "cpuset.mems"):
                if not _read(current / name):
                    _write(current / name, _read(parent / name))
            parent = current

    def apply(self, res: Resources) -> list[str]:
        warnings: list[str] = []

        def need(controller: str, what: str) -> Path | None:
            directory = self._dir(controller)
            if directory is None:
                warnings.append(f"cgroup v1: the {controller} controller is not mounted; {what} ignored")
            return directory

        if res.memory is not None or res.memory_swap is not None:
            mem = need("memory", "memory limit")
            if mem is not None:
                self._apply_memory(mem, res, warnings)
        if res.cpu_period or res.cpu_quota or res.cpu_shares:
            cpu = need("cpu", "CPU limits")
            if cpu is not None:
                # period before quota: a quota is checked against the period already in place
                if res.cpu_period:
                    _write(cpu / "cpu.cfs_period_us", str(res.cpu_period))
                if res.cpu_quota:
                    _write(cpu / "cpu.cfs_quota_us", str(res.cpu_quota))
                if res.cpu_shares:
                    _write(cpu / "cpu.shares", str(res.cpu_shares))
        if res.cpuset_cpus or res.cpuset_mems:
            cpuset = need("cpuset", "cpuset")
            if cpuset is not None:
                if res.cpuset_cpus:
                    _write(cpuset / "cpuset.cpus", res.cpuset_cpus)
                if res.cpuset_mems:
                    _write(cpuset / "cpuset.mems", res.cpuset_mems)
        if res.pids_limit is not None:
            pids = need("pids", "PIDs limit")
            if pids is not None:
                _write(pids / "pids.max", "max" if res.pids_limit <= 0 else str(res.pids_limit))
        return warnings

    def _apply_memory(self, mem: Path, res: Resources, warnings: list[str]) -> None:
        memsw_file = mem / "memory.memsw.limit_in_bytes"
        swap = res.memory_swap if res.memory_swap not in (None, 0) else None
        if swap is not None and not memsw_file.exists():
            warnings.append(SWAP_WARNING)
            swap = None
        memory = res.memory if res.memory not in (None, 0) else None
        # the kernel keeps memory <= memory+swap at every step, so order the two writes (as runc does)
        current_memsw = _read_int(memsw_file) if swap is not None else None
        raising = memory is not None and (memory == -1 or current_memsw is None or memory > current_memsw)
        if swap is not None and raising:
            self._write_memory(memsw_file, swap)
            swap = None
        if memory is not None:
            self._write_memory(mem / "memory.limit_in_bytes", memory)
        if swap is not None:
            self._write_memory(memsw_file, swap)

    @staticmethod
    def _write_memory(path: Path, value: int) -> None:
        try:
            _write(path, str(value))
        except InvalidArgument as err:
            cause = err.__cause__
            if isinstance(cause, OSError) and cause.errno == errno.EBUSY:
                usage = _read_int(path.with_name("memory.usage_in_bytes"))
                peak = _read_int(path.with_name("memory.max_usage_in_bytes"))
                raise InvalidArgument(
                    f"unable to set memory limit to {value} (current usage: {usage}, peak usage: {peak}): "
                    f"{os.strerror(errno.EBUSY)}"
                ) from err
            raise

    def apply_devices(self, rules: list[dict[str, Any]]) -> list[str]:
        devices = self._dir("devices")
        if devices is None:
            return ["cgroup v1: the devices controller is not mounted; device rules ignored"]
        for rule in (DeviceRule.from_oci(r) for r in rules):
            _write(devices / ("devices.allow" if rule.allow else "devices.deny"), rule.v1_line())
        return []

    def add(self, pid: int) -> None:
        for directory in self.all_dirs:
            _write(directory / "cgroup.procs", str(pid))
        if self.unified is not None:
            self.unified.add(pid)

    def pids(self) -> list[int]:
        seen: set[int] = set()
        for directory in self.all_dirs:
            seen.update(_procs(directory))
        if self.unified is not None:
            seen.update(self.unified.pids())
        return sorted(seen)

    def stats(self) -> dict[str, Any]:
        return {
            "memory_stats": self._memory_stats(),
            "cpu_stats": self._cpu_stats(),
            "pids_stats": self._pids_stats(),
            "blkio_stats": self._blkio_stats(),
        }

    def _memory_stats(self) -> dict[str, Any]:
        mem = self._dir("memory")
        if mem is None:
            return {}
        limit = _read_int(mem / "memory.limit_in_bytes")
        host = _host_memory()
        return {
            "usage": _read_int(mem / "memory.usage_in_bytes") or 0,
            "max_usage": _read_int(mem / "memory.max_usage_in_bytes") or 0,
            "failcnt": _read_int(mem / "memory.failcnt") or 0,
            "limit": host if limit is None or limit > host else limit,
            "stats": _read_keyed(mem / "memory.stat"),
        }

    def _cpu_stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"system_cpu_usage": _system_cpu_ns(), "online_cpus": os.cpu_count() or 1}
        acct = self._dir("cpuacct")
        if acct is not None:
            ticks = _read_keyed(acct / "cpuacct.stat")
            hz = os.sysconf("SC_CLK_TCK")
            try:
                percpu = [int(x) for x in _read(acct / "cpuacct.usage_percpu").split()]
            except (OSError, ValueError):
                percpu = []
            out["cpu_usage"] = {
                "total_usage": _read_int(acct / "cpuacct.usage") or 0,
                "percpu_usage": percpu,
                "usage_in_kernelmode": ticks.get("system", 0) * 1_000_000_000 // hz,
                "usage_in_usermode": ticks.get("user", 0) * 1_000_000_000 // hz,
            }
            if percpu:
                out["online_cpus"] = len(percpu)
        cpu = self._dir("cpu")
        if cpu is not None:
            stat = _read_keyed(cpu / "cpu.stat")
            out["throttling_data"] = {
                "periods": stat.get("nr_periods", 0),
                "throttled_periods": stat.get("nr_throttled", 0),
                "throttled_time": stat.get("throttled_time", 0),
            }
        return out

    def _pids_stats(self) -> dict[str, Any]:
        pids = self._dir("pids")
        if pids is None:
            return {"current": len(self.pids())}
        out: dict[str, Any] = {"current": _read_int(pids / "pids.current") or 0}
        limit = _read_int(pids / "pids.max")
        if limit is not None:
            out["limit"] = limit
        return out

    def _blkio_stats(self) -> dict[str, Any]:
        blkio = self._dir("blkio")
        entries: list[dict[str, Any]] = []
        if blkio is not None:
            with contextlib.suppress(OSError):
                for line in (blkio / "blkio.throttle.io_service_bytes_recursive").read_text().splitlines():
                    parts = line.split()
                    if len(parts) == 3 and ":" in parts[0]:
                        major, _, minor = parts[0].partition(":")
                        entries.append(
                            {"major": int(major), "minor": int(minor), "op": parts[1], "value": int(parts[2])}
                        )
        return {"io_service_bytes_recursive": entries}

    def freeze(self) -> None:
        freezer = self._dir("freezer")
        if freezer is None:
            if self.unified is not None:
                self.unified.freeze()
                return
            raise InternalError("cgroup v1: the freezer controller is not mounted")
        deadline = time.monotonic() + FREEZE_TIMEOUT_S
        while True:
            # rewriting FROZEN kicks tasks that were busy in a syscall when the first attempt ran
            _write(freezer / "freezer.state", "FROZEN")
            if _read(freezer / "freezer.state") == "FROZEN":
                return
            if time.monotonic() > deadline:
                _write(freezer / "freezer.state", "THAWED")
                raise InternalError(f"cgroup {self.path}: timed out waiting for the freezer")
            time.sleep(0.002)

    def thaw(self) -> None:
        freezer = self._dir("freezer")
        if freezer is None:
            if self.unified is not None:
                self.unified.thaw()
                return
            raise InternalError("cgroup v1: the freezer controller is not mounted")
        _write(freezer / "freezer.state", "THAWED")
        deadline = time.monotonic() + FREEZE_TIMEOUT_S
        while _read(freezer / "freezer.state") != "THAWED":
            if time.monotonic() > deadline:
                raise InternalError(f"cgroup {self.path}: timed out waiting for the freezer to thaw")
            time.sleep(0.002)

    def oom_kill_count(self) -> int:
        mem = self._dir("memory")
        if mem is None:
            return 0
        return _read_keyed(mem / "memory.oom_control").get("oom_kill", 0)

    def frozen(self) -> bool:
        freezer = self._dir("freezer")
        if freezer is None:
            return self.unified is not None and self.unified.frozen()
        try:
            return _read(freezer / "freezer.state") == "FROZEN"
        except OSError:
            return False

    def kill_all(self, sig: int) -> None:
        if sig == signal.SIGKILL and self.unified is not None and (self.unified.dir / "cgroup.kill").exists():
            self.unified.kill_all(sig)
        _signal_all(self, sig)

    def destroy(self) -> None:
        errors: list[Exception] = []
        targets: list[Path] = list(self.all_dirs)
        for directory in targets:
            try:
                _rmtree_cgroup(directory)
            except (Conflict, InternalError) as err:
                errors.append(err)
        if self.unified is not None:
            try:
                self.unified.destroy()
            except (Conflict, InternalError) as err:
                errors.append(err)
        if errors:
            raise errors[0]


def open_cgroup(path: str, root: Path | None = None) -> Cgroup:
    """The container cgroup at ``path`` (relative to each hierarchy root) for this host, or for a fake ``root``."""
    hierarchies = _host_hierarchies() if root is None else _fake_hierarchies(root)
    layout = _layout(hierarchies)
    if layout == "v2":
        v2 = next(h for h in hierarchies if h.version == 2)
        return CgroupV2(path, v2.mountpoint)
    return CgroupV1(path, hierarchies)


# -- eBPF device filter for cgroup v2 ----------------------------------------------------------------------------

SYS_BPF = 321  # x86_64
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2
BPF_DEVCG_ACC_MKNOD, BPF_DEVCG_ACC_READ, BPF_DEVCG_ACC_WRITE = 1, 2, 4
BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR = 1, 2


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


# eBPF opcodes used below (class | size/op | source)
_LDXW = 0x61  # r_dst = *(u32 *)(r_src + off)
_MOV_REG, _MOV_IMM = 0xBF, 0xB7
_AND_IMM, _RSH_IMM = 0x54, 0x74  # 32-bit ALU
_JNE_IMM = 0x55
_JEQ_REG = 0x1D
_EXIT = 0x95


def device_filter_program(rules: list[DeviceRule]) -> bytes:
    """An eBPF program (like runc's devicefilter) that returns 1 to allow or 0 to deny a device access.

    Context ``struct bpf_cgroup_dev_ctx {u32 access_type; u32 major; u32 minor;}``; access_type holds the
    device type in its low 16 bits and the access mask in its high 16. The last matching rule wins, so the rules
    are emitted in reverse and the first match returns; nothing matching means deny.
    """
    prologue = [
        _insn(_LDXW, 2, 1, 0),  # r2 = access_type
        _insn(_AND_IMM, 2, imm=0xFFFF),  # r2 = device type
        _insn(_LDXW, 3, 1, 0),
        _insn(_RSH_IMM, 3, imm=16),  # r3 = requested access
        _insn(_LDXW, 4, 1, 4),  # r4 = major
        _insn(_LDXW, 5, 1, 8),  # r5 = minor
    ]
    blocks: list[bytes] = []
    for rule in reversed(rules):
        block = _rule_block(rule)
        blocks.extend(block)
        if len(block) == 2:
            # a rule that matches everything decides alone; the verifier refuses code after it (unreachable)
            return b"".join(prologue + blocks)
    epilogue = [_insn(_MOV_IMM, 0, imm=0), _insn(_EXIT)]
    return b"".join(prologue + blocks + epilogue)


def _rule_block(rule: DeviceRule) -> list[bytes]:
    """Instructions that return the rule's verdict when it matches and fall through to the next block if not."""
    acc = 0
    for ch, bit in (("m", BPF_DEVCG_ACC_MKNOD), ("r", BPF_DEVCG_ACC_READ), ("w", BPF_DEVCG_ACC_WRITE)):
        if ch in rule.access:
            acc |= bit
    # each test is (instructions before the jump, register, immediate); a mismatch jumps past the block
    tests: list[tuple[list[bytes], int, int]] = []
    if rule.type != "a":
        tests.append(([], 2, BPF_DEVCG_DEV_CHAR if rule.type == "c" else BPF_DEVCG_DEV_BLOCK))
    if acc != 0b111:
        # requested bits outside the rule's access mean no match: (r3 & ~acc) != 0
        tests.append(([_insn(_MOV_REG, 1, 3), _insn(_AND_IMM, 1, imm=~acc & 0xFFFF)], 1, 0))
    if rule.major is not None:
        tests.append(([], 4, rule.major))
    if rule.minor is not None:
        tests.append(([], 5, rule.minor))
    total = sum(len(pre) + 1 for pre, _, _ in tests) + 2
    block: list[bytes] = []
    for pre, reg, imm in tests:
        block.extend(pre)
        block.append(_insn(_JNE_IMM, reg, off=total - len(block) - 1, imm=imm))
    block.append(_insn(_MOV_IMM, 0, imm=1 if rule.allow else 0))
    block.append(_insn(_EXIT))
    return block


class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("_pad", ctypes.c_uint8 * 80),
    ]


class _ProgAttachAttr(ctypes.Structure):
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_bpf_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("replace_bpf_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint8 * 64),
    ]


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ret = int(libc.syscall(ctypes.c_long(SYS_BPF), ctypes.c_int(cmd), ctypes.byref(attr), ctypes.sizeof(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({cmd}): {os.strerror(err)}")
    return ret


def attach_device_filter(cgroup_dir: Path, rules: list[DeviceRule]) -> None:
    """Load the device filter for ``rules`` and attach it to a cgroup v2 directory (the program lives on with it)."""
    if os.uname().machine != "x86_64":
        raise InternalError("eBPF device filter: only x86_64 syscall numbers are known")
    code = device_filter_program(rules)
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"Apache")
    log = ctypes.create_string_buffer(65536)
    load = _ProgLoadAttr(
        prog_type=BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt=len(code) // 8,
        insns=ctypes.addressof(insns),
        license=ctypes.addressof(license_),
        log_level=1,
        log_size=len(log),
        log_buf=ctypes.addressof(log),
    )
    try:
        prog_fd = _bpf(BPF_PROG_LOAD, load)
    except OSError as err:
        detail = log.value.decode(errors="replace").strip().splitlines()[-1:] if log.value else []
        raise InternalError(f"{err.strerror}{': ' + detail[0] if detail else ''}") from err
    try:
        cg_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            attach = _ProgAttachAttr(
                target_fd=cg_fd, attach_bpf_fd=prog_fd, attach_type=BPF_CGROUP_DEVICE, attach_flags=BPF_F_ALLOW_MULTI
            )
            _bpf(BPF_PROG_ATTACH, attach)
        finally:
            os.close(cg_fd)
    finally:
        os.close(prog_fd)


def iter_hierarchies() -> Iterator[Hierarchy]:
    """The host's cgroup hierarchies (for diagnostics such as ``docker info``)."""
    yield from _host_hierarchies()
