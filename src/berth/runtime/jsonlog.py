"""Docker's json-file log driver: the writer the monitor feeds with container output, and the reader behind logs.

On disk (the files ``ContainerPaths.log(id)`` names; this module owns the rotated siblings)::

    <id>-json.log          the live file, one JSON object per line:
                           {"log":"hello\\n","stream":"stdout","time":"2024-01-01T00:00:00.123456789Z"}
    <id>-json.log.1[.gz]   the newest rotated file (``.gz`` with compress=true)
    <id>-json.log.N[.gz]   the oldest one, N = max-file - 1

The writer follows Docker's copier + json-file: one entry per line with the ``\\n`` kept, a line longer than
16 KiB split into partial entries (no ``\\n``) that share the first piece's time, an unterminated last line
written with a ``\\n`` at exit (``flush``), Go's string escaping (``<>&`` as ``\\u003c``..., bad UTF-8 as U+FFFD
per byte), rotation by renaming. The writer is single-threaded (the monitor); readers run in other threads or
processes and only ever see whole lines, because every batch of entries goes out in one ``write``.

Imports: the standard library and berth.errors.
"""

from __future__ import annotations

import calendar
import codecs
import contextlib
import gzip
import json
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from berth.errors import InvalidArgument

STREAMS = ("stdout", "stderr")
# Docker's copier buffer: a line longer than this is logged as partial pieces of this size.
PARTIAL_SIZE = 16 * 1024
# berth turns rotation on by default (Docker's json-file has none unless log-opts are set).
DEFAULT_MAX_SIZE = 10 * 1024 * 1024
DEFAULT_MAX_FILE = 5
LOG_OPTS = frozenset({"max-file", "max-size", "compress", "labels", "labels-regex", "env", "env-regex", "tag"})
FILE_MODE = 0o640


# --- options ------------------------------------------------------------------------------------------------


_RAM_RE = re.compile(r"^(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$")
_RAM_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_ATOI_RE = re.compile(r"^[+-]?[0-9]+$")
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def parse_ram(text: str) -> int:
    """go-units ``RAMInBytes``: ``"10m"`` → 10485760 (binary multiples, optional ``i``/``b`` suffixes)."""
    m = _RAM_RE.match(text)
    if m is None:
        raise InvalidArgument(f"invalid size: '{text}'")
    try:
        value = float(m.group(1))
    except ValueError:
        raise InvalidArgument(f"invalid size: '{text}'") from None
    unit = m.group(2)
    return int(value * (_RAM_UNITS[unit.lower()] if unit else 1))


def parse_log_opts(opts: dict[str, str]) -> tuple[int | None, int, bool]:
    """json-file ``--log-opt`` values → (max_size, max_file, compress), with Docker's checks and wording.

    Without ``max-size`` berth rotates at 10 MiB over 5 files (Docker would never rotate); ``max-size`` alone
    keeps Docker's meaning of one file (truncated when full).
    """
    for key in opts:
        if key not in LOG_OPTS:
            raise InvalidArgument(f"unknown log opt '{key}' for json-file log driver")
    max_size: int | None = DEFAULT_MAX_SIZE
    max_file = DEFAULT_MAX_FILE
    if "max-size" in opts:
        max_size = parse_ram(opts["max-size"])
        if max_size <= 0:
            raise InvalidArgument("max-size must be a positive number")
        max_file = 1
    if "max-file" in opts:
        text = opts["max-file"]
        if not _ATOI_RE.match(text):
            raise InvalidArgument(f'strconv.Atoi: parsing "{text}": invalid syntax')
        max_file = int(text)
        if max_file < 1:
            raise InvalidArgument("max-file cannot be less than 1")
    compress = False
    if "compress" in opts:
        text = opts["compress"]
        if text in _TRUE:
            compress = True
        elif text not in _FALSE:
            raise InvalidArgument(f'strconv.ParseBool: parsing "{text}": invalid syntax')
        if compress and (max_file == 1 or max_size is None):
            raise InvalidArgument("compress cannot be true when max-file is less than 2 or max-size is not set")
    return max_size, max_file, compress


# --- time ---------------------------------------------------------------------------------------------------


def format_rfc3339nano(ns: int) -> str:
    """Go's ``time.RFC3339Nano`` in UTC: trailing zeros of the fraction dropped, no fraction when it is 0."""
    secs, frac = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


def format_rfc3339nano_fixed(ns: int) -> str:
    """``jsonmessage.RFC3339NanoFixed``: always 9 fractional digits (the ``timestamps=1`` prefix)."""
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


_RFC3339_RE = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:([Zz])|([+-])(\d\d):(\d\d))$")


def parse_rfc3339(text: str) -> int:
    """An RFC 3339 time (as Go writes it) → nanoseconds since the epoch; ValueError if malformed."""
    m = _RFC3339_RE.match(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    y, mo, d, h, mi, s = (int(m.group(i)) for i in range(1, 7))
    secs = calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))
    if m.group(9):
        offset = (int(m.group(10)) * 60 + int(m.group(11))) * 60
        secs -= offset if m.group(9) == "+" else -offset
    frac = (m.group(7) or "")[:9].ljust(9, "0")
    return secs * 1_000_000_000 + int(frac)


def _seconds_to_ns(value: float) -> int:
    # through decimal text: 1704067200.5 * 1e9 as a float product would be off by up to ~128 ns
    secs, _, frac = f"{value:.9f}".partition(".")
    sign = -1 if secs.startswith("-") else 1
    return int(secs) * 1_000_000_000 + sign * int(frac.ljust(9, "0")[:9])


# --- encoding -----------------------------------------------------------------------------------------------


def _go_replace(err: UnicodeError) -> tuple[str, int]:
    # Go's utf8.DecodeRune gives one U+FFFD per bad byte; Python's "replace" may merge a run of them into one
    if not isinstance(err, UnicodeDecodeError):
        raise err
    return "\ufffd", err.start + 1


codecs.register_error("berth-go-replace", _go_replace)

_ESCAPES = {chr(c): f"\\u{c:04x}" for c in range(0x20)}
_ESCAPES.update({"\n": "\\n", "\r": "\\r", '"': '\\"', "\\": "\\\\"})
_ESCAPES.update({c: f"\\u{ord(c):04x}" for c in "<>&\u2028\u2029"})
_NEEDS_ESCAPE = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029]')


def go_json_string(data: bytes) -> str:
    """``data`` as a JSON string literal the way Docker's jsonlog encoder writes it (quotes included)."""
    text = data.decode("utf-8", "berth-go-replace")
    return '"' + _NEEDS_ESCAPE.sub(lambda m: _ESCAPES[m.group()], text) + '"'


def encode_entry(stream: str, data: bytes, ns: int) -> bytes:
    """One log line: ``{"log":...,"stream":...,"time":...}\\n`` with Docker's key order."""
    return f'{{"log":{go_json_string(data)},"stream":"{stream}","time":"{format_rfc3339nano(ns)}"}}\n'.encode()


# --- writer -------------------------------------------------------------------------------------------------


def rotated_path(path: Path, index: int, compressed: bool) -> Path:
    return path.with_name(f"{path.name}.{index}{'.gz' if compressed else ''}")


class JsonLogWriter:
    """Appends a container's output to its json-file log, rotating it by size. Not thread-safe (one monitor)."""

    def __init__(self, path: Path, max_size: int | None = None, max_file: int = 1, compress: bool = False) -> None:
        if max_size is not None and max_size <= 0:
            raise InvalidArgument("max-size must be a positive number")
        if max_file < 1:
            raise InvalidArgument("max-file cannot be less than 1")
        self.path = path
        self.max_size = max_size
        self.max_file = max_file
        self.compress = compress and max_file > 1
        self._pending: dict[str, bytearray] = {s: bytearray() for s in STREAMS}
        # Docker gives every piece of a split line the first piece's time
        self._partial_ns: dict[str, int | None] = dict.fromkeys(STREAMS)
        self._fd: int | None = None
        self._size = 0
        self._open()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, FILE_MODE)
        self._size = os.fstat(self._fd).st_size

    def write(self, stream: str, data: bytes, ts: float | None = None) -> None:
        """Log ``data`` read from the container's ``stream``; complete lines now, the rest when it completes."""
        if stream not in self._pending:
            raise ValueError(f"unknown log stream {stream!r}")
        if not data:
            return
        ns = time.time_ns() if ts is None else _seconds_to_ns(ts)
        buf = self._pending[stream]
        buf += data
        out: list[bytes] = []
        start = 0
        while True:
            # Docker's copier sees a 16 KiB window: a line (with its newline) must fit in it, or it is split
            nl = buf.find(b"\n", start, start + PARTIAL_SIZE)
            if nl >= 0:
                out.append(encode_entry(stream, bytes(buf[start:nl + 1]), self._take_partial_ns(stream, ns)))
                start = nl + 1
            elif len(buf) - start >= PARTIAL_SIZE:
                first = self._partial_ns[stream]
                if first is None:
                    first = self._partial_ns[stream] = ns
                out.append(encode_entry(stream, bytes(buf[start:start + PARTIAL_SIZE]), first))
                start += PARTIAL_SIZE
            else:
                break
        del buf[:start]
        self._append(out)

    def _take_partial_ns(self, stream: str, ns: int) -> int:
        first = self._partial_ns[stream]
        self._partial_ns[stream] = None
        return ns if first is None else first

    def flush(self, ts: float | None = None) -> None:
        """Write out unterminated lines with a ``\\n`` added, as Docker does for the last piece at exit."""
        ns = time.time_ns() if ts is None else _seconds_to_ns(ts)
        out = []
        for stream, buf in self._pending.items():
            if buf:
                out.append(encode_entry(stream, bytes(buf) + b"\n", self._take_partial_ns(stream, ns)))
                buf.clear()
        self._append(out)

    def close(self) -> None:
        """Flush, then close the file; the writer is unusable afterwards."""
        if self._fd is None:
            return
        self.flush()
        os.close(self._fd)
        self._fd = None

    def _append(self, entries: list[bytes]) -> None:
        if not entries:
            return
        if self._fd is None:
            raise ValueError("log writer is closed")
        batch: list[bytes] = []
        batch_size = 0
        for entry in entries:
            if (self.max_size is not None and self._size + batch_size > 0
                    and self._size + batch_size + len(entry) > self.max_size):
                self._write_all(b"".join(batch))
                batch, batch_size = [], 0
                self._rotate()
            batch.append(entry)
            batch_size += len(entry)
        self._write_all(b"".join(batch))

    def _write_all(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._size += len(data)

    def _rotate(self) -> None:
        """path → path.1 → ... → path.(max_file-1), the oldest dropped; with max_file 1 the log starts over."""
        assert self._fd is not None
        os.close(self._fd)
        self._fd = None
        if self.max_file == 1:
            # a new inode rather than truncate(): a follower still holding the old one reads it to its end
            os.unlink(self.path)
        else:
            # only the files that exist shift (probing all max_file-1 names each time is quadratic for big ones)
            last = 1
            while last < self.max_file - 1 and rotated_path(self.path, last, self.compress).exists():
                last += 1
            for i in range(last, 1, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(rotated_path(self.path, i - 1, self.compress), rotated_path(self.path, i, self.compress))
            newest = rotated_path(self.path, 1, False)
            os.replace(self.path, newest)
            if self.compress:
                _gzip_file(newest, rotated_path(self.path, 1, True))
        self._open()


def _gzip_file(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    # level 1: the monitor's event loop waits for this; 10 MiB of JSON lines still shrinks ~10x
    with open(src, "rb") as fin, gzip.open(tmp, "wb", compresslevel=1) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
    os.chmod(tmp, FILE_MODE)
    os.replace(tmp, dst)
    os.unlink(src)


# --- reader -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogEntry:
    """One decoded log line. ``time_text`` is the file's own text, ``time_ns`` its exact value."""

    stream: str
    data: bytes
    time: float
    time_text: str
    time_ns: int = 0
    attrs: tuple[tuple[str, str], ...] = ()

    @property
    def partial(self) -> bool:
        return not self.data.endswith(b"\n")


def decode_entry(line: bytes) -> LogEntry | None:
    """A json-file line → entry; ``None`` for a line that is not one (a torn write after a crash)."""
    try:
        obj = json.loads(line)
        text = obj.get("time", "")
        ns = parse_rfc3339(text)
        attrs = obj.get("attrs") or {}
        return LogEntry(
            stream=str(obj.get("stream", "")),
            data=str(obj.get("log", "")).encode("utf-8", "surrogatepass"),
            time=ns / 1e9,
            time_text=text,
            time_ns=ns,
            attrs=tuple(sorted((str(k), str(v)) for k, v in attrs.items())) if isinstance(attrs, dict) else (),
        )
    except (ValueError, AttributeError, TypeError):
        return None


@dataclass(frozen=True)
class _Rotated:
    path: Path
    ino: int


def _listing(path: Path) -> list[_Rotated]:
    """The rotated files as one ``scandir`` sees them, oldest first; a plain ``.N`` wins over ``.N.gz``
    (the writer is between compressing and unlinking it)."""
    pattern = re.compile(re.escape(path.name) + r"\.([0-9]+)(\.gz)?")
    by_index: dict[int, tuple[bool, str, int]] = {}
    try:
        with os.scandir(path.parent) as it:
            for d in it:
                m = pattern.fullmatch(d.name)
                if m is None:
                    continue
                index, packed = int(m.group(1)), m.group(2) is not None
                if index not in by_index or by_index[index][0]:
                    by_index[index] = (packed, d.name, d.inode())
    except FileNotFoundError:
        return []
    return [_Rotated(path.parent / by_index[i][1], by_index[i][2]) for i in sorted(by_index, reverse=True)]


def log_files(path: Path) -> list[Path]:
    """The rotated files, oldest first (not the live one)."""
    return [r.path for r in _listing(path)]


def _open_rotated(path: Path, pick: Callable[[list[_Rotated]], list[_Rotated]]) -> list[IO[bytes]]:
    """Open the rotated files ``pick`` chooses from a consistent listing: names shift while the writer renames
    ``.1`` → ``.2`` ..., so each file opened must still be the inode listed, and a second listing must agree.
    If the writer rotates too fast to ever agree, keep the files that still matched (best effort)."""
    for attempt in range(_SNAPSHOT_TRIES):
        listing = _listing(path)
        chosen = pick(listing)
        files: list[IO[bytes]] = []
        for r in chosen:
            with contextlib.suppress(FileNotFoundError):
                f = open(r.path, "rb")  # noqa: SIM115 -- handed to the caller, which closes it
                if os.fstat(f.fileno()).st_ino == r.ino:
                    files.append(f)
                else:
                    f.close()
        if (len(files) == len(chosen) and _listing(path) == listing) or attempt == _SNAPSHOT_TRIES - 1:
            return files
        for opened in files:
            opened.close()
        time.sleep(0.001)
    return []


_SNAPSHOT_TRIES = 50


def _is_gzip(f: IO[bytes]) -> bool:
    return str(getattr(f, "name", "")).endswith(".gz")


def _file_lines(f: IO[bytes]) -> Iterator[bytes]:
    """Whole lines of a finished (rotated) file, which is closed at the end."""
    try:
        with contextlib.closing(f), (gzip.GzipFile(fileobj=f, mode="rb") if _is_gzip(f) else f) as src:
            for line in src:
                if line.endswith(b"\n"):
                    yield line
    except (EOFError, gzip.BadGzipFile):
        return


def _last_lines(f: IO[bytes], end: int, count: int) -> tuple[list[bytes], int]:
    """The last ``count`` whole lines of ``f[0:end]`` and the offset just past the last whole line."""
    block = 64 * 1024
    pos = end
    blocks: list[bytes] = []
    newlines = 0
    while pos > 0 and newlines <= count:
        step = min(block, pos)
        pos -= step
        f.seek(pos)
        piece = f.read(step)
        blocks.append(piece)
        newlines += piece.count(b"\n")
    data = b"".join(reversed(blocks))
    cut = data.rfind(b"\n") + 1
    resume = pos + cut
    lines = _split_lines(data[:cut])
    if pos > 0:
        lines = lines[1:]  # the first one may start before ``pos``
    return (lines[-count:] if count else []), resume


def _split_lines(data: bytes) -> list[bytes]:
    """``data`` (ending in ``\\n`` or empty) cut after each ``\\n`` only (``splitlines`` also cuts at ``\\r``)."""
    if not data:
        return []
    return [line + b"\n" for line in data[:-1].split(b"\n")]


def _tail_of_file(f: IO[bytes], count: int) -> list[bytes]:
    if _is_gzip(f) or not count:
        return list(deque(_file_lines(f), maxlen=count)) if count else []
    with f:
        return _last_lines(f, os.fstat(f.fileno()).st_size, count)[0]


class LogReader:
    """Reads a json-file log in batches: the backlog (``tail`` applied first, then ``since``/``until``, as Docker
    does), then whatever is appended, across rotations. ``read`` never blocks; ``[]`` means nothing new now.
    ``done`` turns true once an entry past ``until`` was seen (nothing more will ever be returned)."""

    def __init__(self, path: Path, *, since: float | None = None, until: float | None = None,
                 tail: int | None = None) -> None:
        self.path = path
        self._since_ns = _seconds_to_ns(since) if since else None
        self._until_ns = _seconds_to_ns(until) if until else None
        self.done = False
        self._live: IO[bytes] | None = None
        self._live_ino: int | None = None
        self._pending = b""
        self._held: list[IO[bytes]] = []  # rotated files opened for the backlog, closed with the reader
        # the newest file whose lines are queued or being read: the next rotated file to read comes after it
        self._seen_ino: int | None = None
        end = os.fstat(self._live.fileno()).st_size if self._reopen() and self._live is not None else 0
        # opened after the live file: if that was rotated meanwhile, only what is older than it is backlog
        rotated = self._open_missed()
        self._backlog: Iterator[bytes]
        if tail is None:
            self._backlog = (line for f in rotated for line in _file_lines(f))
        else:
            self._backlog = iter(self._tail(rotated, end, max(tail, 0)))

    def _tail(self, rotated: list[IO[bytes]], end: int, count: int) -> list[bytes]:
        lines: list[bytes] = []
        if self._live is not None:
            lines, resume = _last_lines(self._live, end, count)
            self._live.seek(resume)
        for f in reversed(rotated):
            if len(lines) >= count:
                break
            lines = _tail_of_file(f, count - len(lines)) + lines
        return lines

    def close(self) -> None:
        for f in self._held:
            f.close()
        self._held.clear()
        if self._live is not None:
            self._live.close()
            self._live = None

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, max_bytes: int = 1 << 20) -> list[LogEntry]:
        """The next entries (about ``max_bytes`` of file at most); ``[]`` once nothing more is there now."""
        out: list[LogEntry] = []
        while not self.done:
            lines = self._next_lines(max_bytes)
            if not lines:
                break
            for line in lines:
                entry = decode_entry(line)
                if entry is not None and self._admit(entry):
                    out.append(entry)
                if self.done:
                    break
            if out:
                break
        return out

    def _admit(self, entry: LogEntry) -> bool:
        if self._since_ns is not None:
            if entry.time_ns < self._since_ns:
                return False
            # like Docker: times may go backwards, so once one entry passed ``since`` all later ones do
            self._since_ns = None
        if self._until_ns is not None and entry.time_ns > self._until_ns:
            self.done = True
            return False
        return True

    def past_until(self, now_ns: int | None = None) -> bool:
        """Whether the wall clock passed ``until`` (a follower can stop waiting for more)."""
        return self._until_ns is not None and (time.time_ns() if now_ns is None else now_ns) > self._until_ns

    def _next_lines(self, budget: int) -> list[bytes]:
        lines: list[bytes] = []
        size = 0
        for line in self._backlog:
            lines.append(line)
            size += len(line)
            if size >= budget:
                return lines
        if lines:
            return lines
        return self._read_live(budget)

    def _read_live(self, budget: int) -> list[bytes]:
        if self._live is None:
            if not self._reopen():
                return []
            # files rotated while there was no live file to hold on to come first
            self._backlog = _chain((line for f in self._open_missed() for line in _file_lines(f)), self._backlog)
            return self._next_lines(budget)
        assert self._live is not None
        data = self._live.read(budget)
        if not data:
            # the rest of a rotated file, and files rotated meanwhile, come before the new live file
            return self._next_lines(budget) if self._check_rotation() else []
        data = self._pending + data
        cut = data.rfind(b"\n") + 1
        self._pending = data[cut:]
        return _split_lines(data[:cut])

    def _reopen(self) -> bool:
        self._live_ino = None
        try:
            # held across calls on purpose: the reader follows this inode through renames
            self._live = open(self.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            return False
        self._live_ino = os.fstat(self._live.fileno()).st_ino
        self._pending = b""
        return True

    def _check_rotation(self) -> bool:
        """At the end of the live file: move on if it was rotated away, start over if it was truncated.
        True when there may be more to read now."""
        assert self._live is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # between the writer's rename and its new file: look again next time
        if st.st_ino == self._live_ino:
            if st.st_size < self._live.tell():
                self._live.seek(0)
                self._pending = b""
                return True
            return False
        # the writer never writes a file again once it renamed it, so what is left of ours is all there is
        rest = self._live.read()
        self._live.close()
        self._live = None
        tail = self._pending + rest
        # the new live file first, then the files rotated between the old one and it (several rotations
        # may have happened since the last look); anything rotated later is found on the next rotation
        self._reopen()
        missed = self._open_missed()
        self._backlog = _chain(_split_lines(tail[: tail.rfind(b"\n") + 1]),
                               (line for f in missed for line in _file_lines(f)), self._backlog)
        return True

    def _open_missed(self) -> list[IO[bytes]]:
        """Open the rotated files between the newest one accounted for and the live file, and account for them."""
        found: list[_Rotated] = []

        def pick(listing: list[_Rotated]) -> list[_Rotated]:
            found[:] = _between(listing, self._seen_ino, self._live_ino)
            return found

        files = _open_rotated(self.path, pick)
        self._held += files
        if self._live_ino is not None:
            self._seen_ino = self._live_ino
        elif found:
            self._seen_ino = found[-1].ino
        return files


def _between(listing: list[_Rotated], older: int | None, newer: int | None) -> list[_Rotated]:
    """The rotated files after inode ``older`` (``None``: from the oldest) and before inode ``newer`` (``None``
    or not rotated: to the newest). A vanished ``older`` (rotated out, compressed) gives nothing."""
    inos = [r.ino for r in listing]
    if older is not None and older not in inos:
        return []
    start = inos.index(older) + 1 if older is not None else 0
    stop = inos.index(newer) if newer in inos else len(listing)
    return listing[start:stop]


def _chain(*parts: Iterable[bytes]) -> Iterator[bytes]:
    for part in parts:
        yield from part


def read_entries(path: Path, *, since: float | None = None, until: float | None = None,
                 tail: int | None = None) -> Iterator[LogEntry]:
    """Every entry across the rotated files and the live one, oldest first; ``tail=N`` the last N lines."""
    with LogReader(path, since=since, until=until, tail=tail) as reader:
        while batch := reader.read():
            yield from batch


def follow_entries(path: Path, *, since: float | None = None, until: float | None = None,
                   tail: int | None = None, stop: Callable[[], bool], poll_s: float = 0.05) -> Iterator[LogEntry]:
    """Like ``read_entries``, then keep returning new entries (across rotations) until ``stop()`` is true;
    whatever was written before ``stop()`` turned true is still returned. For worker threads; it sleeps."""
    with LogReader(path, since=since, until=until, tail=tail) as reader:
        while True:
            batch = reader.read()
            if batch:
                yield from batch
                continue
            if reader.done or reader.past_until():
                return
            if stop():
                while batch := reader.read():
                    yield from batch
                return
            time.sleep(poll_s)
