"""What ``GET /version`` and ``GET /info`` report: the daemon's identity and the host it runs on.

Owns one file in the data root::

    <data-root>/
    └── engine-id      the daemon's stable ID (a UUID), created on first start, shown as ``ID`` in info
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import berth
from berth.runtime import oci_cli
from berth.units import go_arch

API_VERSION = "1.44"
MIN_API_VERSION = "1.24"
def rfc3339_nano(ts: float) -> str:
    """A local timestamp with nanosecond digits and offset, as Go's ``time.RFC3339Nano`` prints it."""
    dt = datetime.datetime.fromtimestamp(ts).astimezone()
    text = dt.isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z") if dt.utcoffset() == datetime.timedelta(0) else text


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _os_name() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.partition("=")[2].strip().strip('"')
    return "Linux"


def _mem_total() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _cgroup_version() -> str:
    return "2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "1"


def disk_usage(images: dict[str, Any], containers: list[dict[str, Any]], volumes: list[dict[str, Any]],
               build_cache: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """``GET /system/df``: the images' usage with each image's container count, the containers (as ``ps -a -s``
    lists them), the volumes and the builds' cache mounts."""
    users: dict[str, int] = {}
    for c in containers:
        users[str(c.get("ImageID"))] = users.get(str(c.get("ImageID")), 0) + 1
    rows = [{**i, "Containers": users.get(str(i.get("Id")), 0)} for i in images.get("Images") or []]
    return {**images, "Images": rows, "Containers": containers, "Volumes": volumes, "BuildCache": build_cache or []}


@dataclass
class SystemService:
    """Version and info documents for the API; counts of images and containers are passed in by the route."""

    data_root: Path
    storage_driver: str = "overlayfs"
    default_runtime: str = "berth"
    # name -> binary of every runtime a container may ask for (HostConfig.Runtime)
    runtimes: dict[str, str] = field(default_factory=lambda: dict(oci_cli.RUNTIMES))
    started: float = field(default_factory=time.time)
    engine_id: str = ""

    def __post_init__(self) -> None:
        self.data_root = Path(self.data_root)
        if not self.engine_id:
            self.engine_id = self._load_engine_id()

    def _load_engine_id(self) -> str:
        path = self.data_root / "engine-id"
        try:
            existing = path.read_text().strip()
        except FileNotFoundError:
            existing = ""
        if existing:
            return existing
        new = str(uuid.uuid4())
        tmp = path.with_name(f".engine-id.{os.getpid()}")
        tmp.write_text(new + "\n")
        os.replace(tmp, path)
        return new

    def _build_time(self) -> str:
        ts = os.stat(berth.__file__).st_mtime
        return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.000000000+00:00")

    def version(self) -> dict[str, Any]:
        """``GET /version``: ``ApiVersion`` equals the ``Api-Version`` header (docker-py reads it)."""
        details = {
            "ApiVersion": API_VERSION,
            "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "unknown",
            "GoVersion": f"python{platform.python_version()}",
            "Os": "linux",
            "Arch": go_arch(),
            "KernelVersion": platform.release(),
            "BuildTime": self._build_time(),
            "Experimental": "false",
        }
        return {
            "Platform": {"Name": "berth"},
            "Components": [{"Name": "Engine", "Version": berth.__version__, "Details": details}],
            "Version": berth.__version__,
            "ApiVersion": API_VERSION,
            "MinAPIVersion": MIN_API_VERSION,
            "GitCommit": "unknown",
            "GoVersion": details["GoVersion"],
            "Os": "linux",
            "Arch": details["Arch"],
            "KernelVersion": details["KernelVersion"],
            "BuildTime": details["BuildTime"],
            "Experimental": False,
        }

    def info(self, *, images: int = 0, containers: int = 0, running: int = 0, paused: int = 0,
             stopped: int = 0, warnings: list[str] | None = None) -> dict[str, Any]:
        """``GET /info`` with every field the CLI and compose read (engine-api §6.6)."""
        return {
            "ID": self.engine_id,
            "Containers": containers,
            "ContainersRunning": running,
            "ContainersPaused": paused,
            "ContainersStopped": stopped,
            "Images": images,
            "Driver": self.storage_driver,
            "DriverStatus": [["Backing Filesystem", "extfs"]] if self.storage_driver == "overlayfs" else [],
            "Plugins": {
                "Volume": ["local"],
                "Network": ["bridge", "host", "null"],
                "Authorization": None,
                "Log": ["json-file"],
            },
            "MemoryLimit": True,
            "SwapLimit": True,
            "KernelMemoryTCP": False,
            "CpuCfsPeriod": True,
            "CpuCfsQuota": True,
            "CPUShares": True,
            "CPUSet": True,
            "PidsLimit": True,
            "OomKillDisable": False,
            "IPv4Forwarding": _read("/proc/sys/net/ipv4/ip_forward").strip() == "1",
            "BridgeNfIptables": False,
            "BridgeNfIp6tables": False,
            "Debug": False,
            "NFd": len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0,
            "NGoroutines": 0,
            "SystemTime": rfc3339_nano(time.time()),
            "LoggingDriver": "json-file",
            "CgroupDriver": "cgroupfs",
            "CgroupVersion": _cgroup_version(),
            "NEventsListener": 0,
            "KernelVersion": platform.release(),
            "OperatingSystem": _os_name(),
            "OSVersion": "",
            "OSType": "linux",
            "Architecture": platform.machine(),
            "IndexServerAddress": "https://index.docker.io/v1/",
            "RegistryConfig": {
                "AllowNondistributableArtifactsCIDRs": None,
                "AllowNondistributableArtifactsHostnames": None,
                "InsecureRegistryCIDRs": ["::1/128", "127.0.0.0/8"],
                "IndexConfigs": {
                    "docker.io": {"Name": "docker.io", "Mirrors": [], "Secure": True, "Official": True},
                },
                "Mirrors": None,
            },
            "NCPU": os.cpu_count() or 1,
            "MemTotal": _mem_total(),
            "GenericResources": None,
            "DockerRootDir": str(self.data_root),
            "HttpProxy": "",
            "HttpsProxy": "",
            "NoProxy": "",
            "Name": socket.gethostname(),
            "Labels": [],
            "ExperimentalBuild": False,
            "ServerVersion": berth.__version__,
            "Runtimes": {name: {"path": path} for name, path in self.runtimes.items()
                         if name in (oci_cli.LIBRARY, self.default_runtime) or oci_cli.binary_for(path)},
            "DefaultRuntime": self.default_runtime,
            "Swarm": {
                "NodeID": "",
                "NodeAddr": "",
                "LocalNodeState": "inactive",
                "ControlAvailable": False,
                "Error": "",
                "RemoteManagers": None,
            },
            "LiveRestoreEnabled": False,
            "Isolation": "",
            "InitBinary": "",
            "ContainerdCommit": {"ID": ""},
            "RuncCommit": {"ID": ""},
            "InitCommit": {"ID": ""},
            "SecurityOptions": ["name=seccomp,profile=builtin"],
            "CDISpecDirs": [],
            "Warnings": list(warnings or []),
        }
