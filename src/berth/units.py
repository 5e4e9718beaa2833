"""Docker's human-readable units (docker/go-units): sizes, durations and timestamps, shared by engine and CLI.

The bottom layer: imports only the standard library.
"""

from __future__ import annotations

import math
import platform
import re
from datetime import UTC, datetime

SECOND_NS = 1_000_000_000
_DURATION_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": SECOND_NS, "m": 60 * SECOND_NS,
                "h": 3600 * SECOND_NS}
_DURATION_RE = re.compile(r"[-+]?((\d+(\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h))+")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")

_DECIMAL = ("B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB")
_BINARY = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")


def _scaled(size: float, base: float, units: tuple[str, ...], precision: int) -> str:
    i = 0
    while size >= base and i < len(units) - 1:
        size /= base
        i += 1
    return f"{size:.{precision}g}{units[i]}"


def human_size(size: float, precision: int = 4) -> str:
    """units.HumanSizeWithPrecision: decimal units, ``precision`` significant digits ("4.26MB")."""
    return _scaled(float(size), 1000.0, _DECIMAL, precision)


def bytes_size(size: float) -> str:
    """units.BytesSize: binary units, 4 significant digits ("15.5GiB")."""
    return _scaled(float(size), 1024.0, _BINARY, 4)


def human_duration(seconds: float) -> str:
    """units.HumanDuration: "Less than a second", "About a minute", "2 days", ..."""
    secs = int(seconds)
    if secs < 1:
        return "Less than a second"
    if secs == 1:
        return "1 second"
    if secs < 60:
        return f"{secs} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    # Go's math.Round rounds halves away from zero, Python's round() to even.
    hours = math.floor(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def parse_go_duration(text: str) -> int | None:
    """Go's time.ParseDuration ("1m30s", "200ms", "1.5h") in nanoseconds; None when ``text`` is not one."""
    if text in ("0", "+0", "-0"):
        return 0
    if not _DURATION_RE.fullmatch(text):
        return None
    total = sum(round(float(n) * _DURATION_NS[u]) for n, u in _DURATION_PART_RE.findall(text))
    return -total if text.startswith("-") else total


def go_duration(ns: int) -> str:
    """Go's time.Duration.String ("0s", "200ms", "30s", "1m30s", "1h2m3s")."""
    if ns == 0:
        return "0s"
    if ns < 0:
        return "-" + go_duration(-ns)
    if ns < SECOND_NS:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size or unit == "ns":
                return f"{ns / size:.9f}".rstrip("0").rstrip(".") + unit
    hours, rest = divmod(ns, 3600 * SECOND_NS)
    minutes, rest = divmod(rest, 60 * SECOND_NS)
    seconds = f"{rest / SECOND_NS:.9f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    return f"{minutes}m{seconds}" if minutes else seconds


def now_rfc3339() -> str:
    """The current time as dockerd stamps records: RFC 3339 in UTC with microseconds (``...05.123456Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_GO_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le",
            "s390x": "s390x", "riscv64": "riscv64"}


def go_arch(machine: str | None = None) -> str:
    """Docker's (Go's) name for the machine architecture: ``x86_64`` → ``amd64``."""
    machine = machine or platform.machine()
    return _GO_ARCH.get(machine, machine)
