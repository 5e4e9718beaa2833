"""``docker logs``: a container's json-file log read back and framed for the client (engine-api §8).

Non-TTY containers get ``pkg/stdcopy`` frames (8-byte header: stream 1 stdout / 2 stderr, big-endian length);
TTY containers get the raw bytes. ``timestamps`` prefixes each entry with its RFC3339Nano time fixed at nine
digits, ``details`` with its attributes (``k=v,k2=v2 ``; just a space when it has none), as dockerd does.

Imports: berth.runtime.jsonlog (the file format), berth.errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote_plus

from berth.errors import InvalidArgument, NotImplementedYet
from berth.runtime.jsonlog import LogEntry, LogReader, format_rfc3339nano_fixed

MULTIPLEXED = "application/vnd.docker.multiplexed-stream"
RAW = "application/vnd.docker.raw-stream"
_STREAM_IDS = {"stdout": 1, "stderr": 2}
_POLL_S = 0.05
# how often an idle follower asks whether the container still runs (a DB read each time)
_RUNNING_CHECK_S = 0.1
_BATCH = 256 * 1024


class _LogPaths(Protocol):
    def log(self, cid: str) -> Path: ...


class LoggedContainers(Protocol):
    """What logs needs from the container service."""

    @property
    def paths(self) -> _LogPaths: ...

    def resolve(self, ref: str) -> tuple[str, str, dict[str, Any]]: ...

    def is_running(self, cid: str) -> bool: ...


class StopSignal(Protocol):
    """An ``asyncio.Event``-like signal that ends a follow early (the container stopped, the daemon shuts down)."""

    def is_set(self) -> bool: ...

    async def wait(self) -> Any: ...


@dataclass(frozen=True)
class LogStream:
    """The framed log of one container: ``chunks`` to send, and how (``content_type`` for the API version)."""

    tty: bool
    chunks: AsyncIterator[bytes]

    def content_type(self, api_version: str = "1.44") -> str:
        """dockerd: the multiplexed type for non-TTY streams from API 1.42 on, the raw type otherwise."""
        if self.tty:
            return RAW
        try:
            major, minor = (int(x) for x in api_version.split(".")[:2])
        except ValueError:
            return MULTIPLEXED
        return MULTIPLEXED if (major, minor) >= (1, 42) else RAW


_INT_RE = re.compile(r"^[+-]?[0-9]+$")


def parse_log_time(text: str | None) -> float | None:
    """``since``/``until`` as the API carries them (unix seconds, an optional fraction of up to 9 digits).
    Empty or ``0`` means no limit (``None``). The CLI and docker-py convert dates and durations themselves."""
    if text is None or text.strip() == "":
        return None
    for i, part in enumerate(text.split(".", 1)):
        if not _INT_RE.match(part) or (i and not part.isdigit()):
            raise InvalidArgument(f'strconv.ParseInt: parsing "{part}": invalid syntax')
    value = float(text)
    return value or None


def parse_tail(text: str | None) -> int | None:
    """``tail``: ``all`` (or anything not a number, or a negative number) is everything; else the last N lines."""
    if text is None:
        return None
    try:
        n = int(text.strip())
    except ValueError:
        return None
    return n if n >= 0 else None


def frame(stream: str, data: bytes) -> bytes:
    """One ``pkg/stdcopy`` frame; an empty payload makes no frame."""
    if not data:
        return b""
    return struct.pack(">BxxxL", _STREAM_IDS.get(stream, 1), len(data)) + data


def details_prefix(entry: LogEntry) -> bytes:
    """dockerd's ``--details`` prefix: attributes as ``k=v`` (query-escaped, sorted, comma-joined) and a space."""
    return (",".join(f"{quote_plus(k)}={quote_plus(v)}" for k, v in sorted(entry.attrs)) + " ").encode()


@dataclass(frozen=True)
class LogOptions:
    """What the client asked for; times are unix seconds."""

    follow: bool = False
    stdout: bool = True
    stderr: bool = True
    since: float | None = None
    until: float | None = None
    timestamps: bool = False
    tail: int | None = None
    details: bool = False

    def render(self, entries: list[LogEntry], tty: bool) -> bytes:
        """The wire bytes for a batch of entries (one frame per entry unless TTY)."""
        out: list[bytes] = []
        for e in entries:
            if not (self.stdout if e.stream == "stdout" else self.stderr if e.stream == "stderr" else False):
                continue
            line = e.data
            if self.details:
                line = details_prefix(e) + line
            if self.timestamps:
                line = format_rfc3339nano_fixed(e.time_ns).encode() + b" " + line
            out.append(line if tty else frame(e.stream, line))
        return b"".join(out)


class LogService:
    """Reads container logs back; follow mode ends when the container stops (or ``stopped`` fires)."""

    def __init__(self, containers: LoggedContainers) -> None:
        self.containers = containers

    async def logs(
        self,
        ref: str,
        follow: bool = False,
        stdout: bool = True,
        stderr: bool = True,
        since: float | None = None,
        until: float | None = None,
        timestamps: bool = False,
        tail: int | None = None,
        details: bool = False,
        stopped: StopSignal | None = None,
    ) -> LogStream:
        """Check the request and the container now (errors before any header goes out), then stream lazily."""
        opts = LogOptions(follow, stdout, stderr, since, until, timestamps, tail, details)
        if not (stdout or stderr):
            raise InvalidArgument("Bad parameters: you must choose at least one stream")
        cid, _, doc = await asyncio.to_thread(self.containers.resolve, ref)
        driver = ((doc.get("HostConfig") or {}).get("LogConfig") or {}).get("Type") or "json-file"
        if driver != "json-file":
            raise NotImplementedYet("configured logging driver does not support reading")
        tty = bool((doc.get("Config") or {}).get("Tty"))
        return LogStream(tty=tty, chunks=self._chunks(cid, opts, tty, stopped))

    async def _chunks(self, cid: str, opts: LogOptions, tty: bool, stopped: StopSignal | None) -> AsyncIterator[bytes]:
        # dockerd follows only a running container; a stopped one gets its backlog and the end
        follow = opts.follow and await asyncio.to_thread(self.containers.is_running, cid)
        path = self.containers.paths.log(cid)
        reader = await asyncio.to_thread(LogReader, path, since=opts.since, until=opts.until, tail=opts.tail)
        try:
            next_check = 0.0
            while True:
                entries = await asyncio.to_thread(reader.read, _BATCH)
                if entries:
                    data = opts.render(entries, tty)
                    if data:
                        yield data
                    continue
                if not follow or reader.done or reader.past_until():
                    return
                ended = stopped is not None and stopped.is_set()
                now = time.monotonic()
                if not ended and now >= next_check:
                    ended = not await asyncio.to_thread(self.containers.is_running, cid)
                    next_check = now + _RUNNING_CHECK_S
                if ended:
                    # whatever the container wrote before it stopped is on disk by now: send it, then end
                    follow = False
                    continue
                await _pause(stopped)
        finally:
            reader.close()


async def _pause(stopped: StopSignal | None) -> None:
    """Sleep one poll interval, waking early when ``stopped`` fires."""
    if stopped is None:
        await asyncio.sleep(_POLL_S)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopped.wait(), _POLL_S)
