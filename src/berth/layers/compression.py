"""Layer blob compression: sniff gzip/zstd/plain by magic bytes and decompress as a bounded-memory stream.

gzip is decoded with ``zlib`` directly (multi-member, CRC and length checked by zlib, output capped per
call so a decompression bomb never sits in RAM); zstd with the ``zstandard`` package's stream reader.
"""

from __future__ import annotations

import io
import zlib
from typing import BinaryIO, cast

import zstandard

from berth.errors import InvalidArgument

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
READ_SIZE = 1 << 20


def detect(head: bytes) -> str:
    """``"gzip"``, ``"zstd"`` or ``"none"`` from the first bytes of a blob."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def _read_full(stream: BinaryIO, n: int) -> bytes:
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
        self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._pending = b""  # compressed input not yet given to zlib
        self._done = False
        self._in_member = True

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
                self._z = zlib.decompressobj(16 + zlib.MAX_WBITS)
                self._pending = rest
            data = self._z.unconsumed_tail or self._pending
            self._pending = b""
            if not data:
                data = self._stream.read(READ_SIZE)
                if not data:
                    raise InvalidArgument("unexpected EOF")
            try:
                out = self._z.decompress(data, want)
            except zlib.error as e:
                raise InvalidArgument(f"gzip: invalid data: {e}") from e
            if out:
                b[: len(out)] = out
                return len(out)
        return 0


def open_decompressed(stream: BinaryIO) -> BinaryIO:
    """A readable stream of the uncompressed bytes of ``stream`` (gzip, zstd or plain, sniffed)."""
    head = _read_full(stream, 4)
    raw = _Prefixed(head, stream)
    kind = detect(head)
    if kind == "gzip":
        return cast(BinaryIO, io.BufferedReader(_GzipReader(cast(BinaryIO, raw)), READ_SIZE))
    if kind == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=READ_SIZE, read_across_frames=True)
        return cast(BinaryIO, reader)
    return cast(BinaryIO, io.BufferedReader(raw, READ_SIZE))
