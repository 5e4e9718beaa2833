"""Layer blob compression: sniff gzip/zstd/plain by magic bytes and decompress as a bounded-memory stream.

gzip is decoded with ISA-L's zlib-compatible inflate (``isal``; ``zlib`` when it is missing) directly
(multi-member, CRC and length checked, output capped per call so a decompression bomb never sits in RAM), in a
thread of its own that runs ahead of the reader by a few bounded chunks, so inflating overlaps with what the
reader does with the bytes (a layer's files are written while the next megabytes inflate); zstd with the
``zstandard`` package's stream reader, whose silence about truncated input is made up for by walking the frame
and block headers as the bytes pass.
Corrupt or truncated input raises ``InvalidArgument`` ("unexpected EOF" for truncation).
"""

from __future__ import annotations

import bz2
import io
import lzma
import queue
import threading
import types
import zlib
from typing import BinaryIO, cast

import zstandard

from berth.errors import InvalidArgument

_inflate: types.ModuleType
try:
    from isal import isal_zlib  # ISA-L inflates about twice as fast as zlib

    _inflate = isal_zlib
    _INFLATE_ERRORS: tuple[type[Exception], ...] = (zlib.error, cast(type[Exception], isal_zlib.error))
except ImportError:  # pragma: no cover - isal is a dependency; zlib keeps pulls working without it
    _inflate = zlib
    _INFLATE_ERRORS = (zlib.error,)

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BZIP2_MAGIC = b"BZh"
XZ_MAGIC = b"\xfd7zXZ\x00"
READ_SIZE = 1 << 20
AHEAD_CHUNK = 1 << 20   # inflated bytes handed over per queue item
AHEAD_ITEMS = 8         # how far the inflating thread may run ahead (bounded memory)


def detect(head: bytes) -> str:
    """``"gzip"``, ``"zstd"`` or ``"none"`` from the first bytes of a blob."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def read_full(stream: BinaryIO, n: int) -> bytes:
    """``n`` bytes, fewer only at the end of ``stream``."""
    parts: list[bytes] = []
    while n > 0:
        chunk = stream.read(n)
        if not chunk:
            break
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


class _Prefixed(io.RawIOBase):
    """``head`` followed by the rest of ``stream`` (undoes the sniffing read)."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head = head
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        readinto = getattr(self._stream, "readinto", None)
        if readinto is not None:
            return int(readinto(b))
        data = self._stream.read(len(b))
        b[: len(data)] = data
        return len(data)


class _GzipReader(io.RawIOBase):
    """Streaming gzip decoder over zlib; each ``readinto`` produces at most ``len(b)`` bytes."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._z = _inflate.decompressobj(16 + zlib.MAX_WBITS)
        self._pending = b""  # compressed input not yet given to zlib
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        want = len(b)
        while not self._done:
            if self._z.eof:
                rest = self._z.unused_data + self._pending
                self._pending = b""
                if not rest:
                    rest = self._stream.read(READ_SIZE)
                    if not rest:
                        self._done = True
                        break
                if len(rest) < 2:
                    rest += self._stream.read(READ_SIZE)
                if not rest.startswith(GZIP_MAGIC):
                    raise InvalidArgument("gzip: invalid header")
                self._z = _inflate.decompressobj(16 + zlib.MAX_WBITS)
                self._pending = rest
            data = self._z.unconsumed_tail or self._pending
            self._pending = b""
            if not data:
                data = self._stream.read(READ_SIZE)
                if not data:
                    raise InvalidArgument("unexpected EOF")
            try:
                out = self._z.decompress(data, want)
            except _INFLATE_ERRORS as e:
                raise InvalidArgument(f"gzip: invalid data: {e}") from e
            if out:
                b[: len(out)] = out
                return len(out)
        return 0


class _ReadAhead(io.RawIOBase):
    """``inner`` read by a thread of its own into a bounded queue; the reader takes chunks off the queue.

    The thread holds no reference to this object, so dropping the reader (or ``close``) stops the thread at
    its next hand-over; errors are raised to the reader in order, after the bytes before them.
    """

    def __init__(self, inner: io.RawIOBase) -> None:
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(AHEAD_ITEMS)
        self._stop = threading.Event()
        self._chunk = memoryview(b"")
        self._eof = False
        threading.Thread(target=_read_ahead, args=(inner, self._queue, self._stop), daemon=True,
                         name="berth-inflate").start()

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        if not self._chunk:
            if self._eof:
                return 0
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            if not item:
                self._eof = True
                return 0
            self._chunk = memoryview(item)
        n = min(len(b), len(self._chunk))
        b[:n] = self._chunk[:n]
        self._chunk = self._chunk[n:]
        return n

    def close(self) -> None:
        self._stop.set()
        super().close()

    def __del__(self) -> None:
        self._stop.set()
        super().__del__()


def _read_ahead(inner: io.RawIOBase, out: queue.Queue[bytes | BaseException], stop: threading.Event) -> None:
    def put(item: bytes | BaseException) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    buf = bytearray(AHEAD_CHUNK)
    view = memoryview(buf)
    try:
        while True:
            n = inner.readinto(view)
            if not put(bytes(view[:n]) if n else b"") or not n:
                return
    except BaseException as e:  # handed to the reader, which raises it in its own thread
        put(e)


_SKIPPABLE_MAGIC_HIGH = 0x184D2A5  # skippable frames: 0x184D2A50..0x184D2A5F, little-endian on the wire


class _ZstdFrames:
    """Follows zstd frame/block headers (RFC 8878) over the compressed bytes to tell complete from truncated."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = "magic"
        self._need = 4
        self._skip = 0
        self._checksum = False

    def feed(self, data: bytes | memoryview) -> None:
        pos, n = 0, len(data)
        while pos < n:
            if self._skip:
                k = min(self._skip, n - pos)
                self._skip -= k
                pos += k
                continue
            take = data[pos : pos + self._need - len(self._buf)]
            self._buf += take
            pos += len(take)
            if len(self._buf) == self._need:
                field = bytes(self._buf)
                self._buf.clear()
                self._step(field)

    def _next(self, state: str, need: int) -> None:
        self._state, self._need = state, need

    def _step(self, field: bytes) -> None:
        value = int.from_bytes(field, "little")
        if self._state == "magic":
            if field == ZSTD_MAGIC:
                self._next("descriptor", 1)
            elif value >> 4 == _SKIPPABLE_MAGIC_HIGH:
                self._next("skippable", 4)
            else:
                raise InvalidArgument("zstd: invalid frame header")
        elif self._state == "descriptor":
            if value & 0x08:
                raise InvalidArgument("zstd: invalid frame header")
            single = bool(value & 0x20)
            fcs = (0 if not single else 1, 2, 4, 8)[value >> 6]
            rest = (0 if single else 1) + (0, 1, 2, 4)[value & 0x03] + fcs
            self._checksum = bool(value & 0x04)
            self._next("header", rest) if rest else self._next("block", 3)
        elif self._state == "header":
            self._next("block", 3)
        elif self._state == "block":
            kind, size = (value >> 1) & 0x03, value >> 3
            if kind == 3:
                raise InvalidArgument("zstd: invalid block type")
            self._skip = 1 if kind == 1 else size
            if not value & 0x01:
                self._next("block", 3)
            elif self._checksum:
                self._next("checksum", 4)
            else:
                self._next("magic", 4)
        elif self._state == "checksum":
            self._next("magic", 4)
        else:  # skippable frame size
            self._skip = value
            self._next("magic", 4)

    def finish(self) -> None:
        if self._state != "magic" or self._buf or self._skip:
            raise InvalidArgument("unexpected EOF")


class _Tap(io.RawIOBase):
    """Passes reads through while showing every byte to a ``_ZstdFrames``."""

    def __init__(self, stream: BinaryIO, frames: _ZstdFrames) -> None:
        self._stream = stream
        self.frames = frames

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        n = int(self._stream.readinto(b))  # type: ignore[attr-defined]
        self.frames.feed(memoryview(b)[:n])
        return n


class _ZstdReader(io.RawIOBase):
    """zstd stream reader with truncation detection and ``InvalidArgument`` for corrupt data."""

    def __init__(self, raw: BinaryIO) -> None:
        self._tap = _Tap(raw, _ZstdFrames())
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            cast(BinaryIO, self._tap), read_size=READ_SIZE, read_across_frames=True)

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        try:
            n = self._reader.readinto(b)
        except zstandard.ZstdError as e:
            raise InvalidArgument(f"zstd: invalid data: {e}") from e
        if n == 0:
            while self._tap.readinto(memoryview(bytearray(READ_SIZE))):
                pass  # anything zstd left unread must still parse as whole frames
            self._tap.frames.finish()
        return n


class _StdlibReader(io.RawIOBase):
    """bzip2 or xz as a stream (``bz2``/``lzma`` decompressors, output bounded per read)."""

    def __init__(self, stream: BinaryIO, decompressor: bz2.BZ2Decompressor | lzma.LZMADecompressor) -> None:
        self._stream = stream
        self._d = decompressor
        self._input = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        while not self._d.eof:
            if self._d.needs_input and not self._input:
                self._input = self._stream.read(READ_SIZE)
                if not self._input:
                    raise InvalidArgument("unexpected EOF")
            try:
                out = self._d.decompress(self._input, len(b))
            except (OSError, lzma.LZMAError) as e:
                raise InvalidArgument(f"invalid compressed data: {e}") from e
            self._input = b""
            if out:
                b[: len(out)] = out
                return len(out)
        return 0


def open_decompressed(stream: BinaryIO) -> BinaryIO:
    """A readable stream of the uncompressed bytes of ``stream`` (gzip, zstd, bzip2, xz or plain, sniffed like
    moby's ``DecompressStream``; bzip2 and xz only reach here in build contexts and ADD archives)."""
    head = read_full(stream, 6)
    raw = _Prefixed(head, stream)
    if head.startswith(BZIP2_MAGIC) or head.startswith(XZ_MAGIC):
        decompressor = bz2.BZ2Decompressor() if head.startswith(BZIP2_MAGIC) else lzma.LZMADecompressor()
        return cast(BinaryIO, io.BufferedReader(_StdlibReader(cast(BinaryIO, raw), decompressor), READ_SIZE))
    kind = detect(head)
    if kind == "gzip":
        return cast(BinaryIO, io.BufferedReader(_ReadAhead(_GzipReader(cast(BinaryIO, raw))), READ_SIZE))
    if kind == "zstd":
        return cast(BinaryIO, io.BufferedReader(_ZstdReader(cast(BinaryIO, raw)), READ_SIZE))
    return cast(BinaryIO, io.BufferedReader(raw, READ_SIZE))
