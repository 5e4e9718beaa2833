"""The CLI's side of a hijacked attach/exec stream: stdcopy demultiplexing, output and stdin pumps, detach keys.

Follows the docker CLI's hijackedIOStreamer: output is copied until the daemon closes its side; stdin is copied
until EOF, then the socket is half-closed so the daemon sees stdin end but keeps sending output. In TTY mode the
detach sequence (default ctrl-p,ctrl-q) typed on stdin ends the session without stopping the container.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from collections.abc import Callable
from typing import IO, Any

from berth.cli.command import CliError

DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"
STDOUT, STDERR, SYSTEMERR = 1, 2, 3
_HEADER = struct.Struct(">BxxxL")
_CTRL_PUNCT = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


class Detached(Exception):
    """The user typed the detach sequence."""


def parse_detach_keys(spec: str) -> bytes:
    """``ctrl-p,ctrl-q`` → ``b"\\x10\\x11"`` (docker's term.ToBytes); a bad spec is a CLI error."""
    out = bytearray()
    for key in spec.split(","):
        key = key.strip()
        lowered = key.lower()
        if len(key) == 1:
            out.append(ord(key))
        elif lowered.startswith("ctrl-") and len(key) == 6:
            c = lowered[5]
            if "a" <= c <= "z":
                out.append(ord(c) - ord("a") + 1)
            elif c in _CTRL_PUNCT:
                out.append(_CTRL_PUNCT[c])
            else:
                raise CliError(f"Unknown character: '{key}'")
        else:
            raise CliError(f"Unknown character: '{key}'")
    return bytes(out)


class Demux:
    """Feeds stdcopy frames (8-byte header, then payload) to the stdout/stderr sinks as they arrive."""

    def __init__(self, out: IO[bytes], err: IO[bytes]) -> None:
        self._sinks = {0: out, STDOUT: out, STDERR: err}
        self._buf = b""

    def feed(self, data: bytes) -> None:
        self._buf += data
        while len(self._buf) >= _HEADER.size:
            kind, length = _HEADER.unpack_from(self._buf)
            if len(self._buf) < _HEADER.size + length:
                return
            payload = self._buf[_HEADER.size:_HEADER.size + length]
            self._buf = self._buf[_HEADER.size + length:]
            if kind == SYSTEMERR:
                raise CliError(f"error from daemon in stream: {payload.decode('utf-8', 'replace')}")
            sink = self._sinks.get(kind)
            if sink is None:
                raise CliError(f"Unrecognized input header: {kind}")
            if payload:
                sink.write(payload)
                sink.flush()


def copy_output(read: Callable[[], bytes], out: IO[bytes], err: IO[bytes], tty: bool) -> None:
    """Copy the daemon's output to the local streams until it closes: raw for a TTY, demultiplexed otherwise."""
    demux = None if tty else Demux(out, err)
    while data := read():
        if demux is None:
            out.write(data)
            out.flush()
        else:
            demux.feed(data)


class StdinPump:
    """A daemon thread copying local stdin to the stream; half-closes at EOF, watches for the detach keys."""

    def __init__(self, source: Any, send: Callable[[bytes], None], close_write: Callable[[], None],
                 detach_keys: bytes | None, on_detach: Callable[[], None]) -> None:
        self._source = source
        self._send = send
        self._close_write = close_write
        self._keys = detach_keys or b""
        self._on_detach = on_detach
        self.detached = threading.Event()
        self._thread = threading.Thread(target=self._run, name="berth-stdin", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _read(self) -> bytes:
        try:
            fd = self._source.fileno()
        except (AttributeError, OSError, ValueError):
            data = self._source.read1(65536) if hasattr(self._source, "read1") else self._source.read(65536)
            return data.encode() if isinstance(data, str) else bytes(data or b"")
        return os.read(fd, 65536)

    def _run(self) -> None:
        held = b""  # a prefix of the detach sequence, not sent until we know it is not one
        try:
            while data := self._read():
                if self._keys:
                    data, held = self._scan(held + data)
                if data:
                    self._send(data)
                if self.detached.is_set():
                    self._on_detach()
                    return
            if held:
                self._send(held)
        except OSError:
            return
        with contextlib.suppress(OSError):
            self._close_write()

    def _scan(self, data: bytes) -> tuple[bytes, bytes]:
        """Pass through what cannot start the detach sequence; keep a trailing partial match back."""
        keys = self._keys
        out = bytearray()
        i = 0
        while i < len(data):
            if data[i] != keys[0]:
                out.append(data[i])
                i += 1
                continue
            tail = data[i:i + len(keys)]
            if tail == keys:
                self.detached.set()
                return bytes(out), b""
            if keys.startswith(tail):
                return bytes(out), tail
            out.append(data[i])
            i += 1
        return bytes(out), b""
