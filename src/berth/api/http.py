"""Request and response values that route handlers see; the wire itself is ``berth.api.server``.

A handler receives a ``Request`` and returns one of:

* ``Response``        a fixed-size body (``Content-Length``),
* ``StreamResponse``  a chunked body, one chunk flushed per yielded ``bytes``,
* ``Hijack``          ``101 UPGRADED`` (or ``200`` without ``Upgrade``), then the raw connection (attach, exec).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol
from urllib.parse import parse_qs

from berth.engine.system import API_VERSION
from berth.errors import InvalidArgument

ADVERTISED_API_VERSION = API_VERSION
JSON = "application/json"

_FALSE_WORDS = frozenset({"", "0", "no", "false", "none"})


class BodySource(Protocol):
    """Where a request body comes from: the next piece of it, ``b""`` once it is over."""

    async def receive(self) -> bytes: ...


class Request:
    """One parsed request. ``path`` has the ``/v1.NN`` prefix removed; header names are lower-cased."""

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        api_version: str = ADVERTISED_API_VERSION,
        source: BodySource | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.api_version = api_version
        self.headers = headers
        self.query = parse_qs(query, keep_blank_values=True)
        self._source = source
        self._loop = loop
        self._body: bytes | None = None
        self._consumed = False

    def q(self, name: str, default: str | None = None) -> str | None:
        """The last value of query parameter ``name``."""
        values = self.query.get(name)
        return values[-1] if values else default

    def qall(self, name: str) -> list[str]:
        return list(self.query.get(name, []))

    def qbool(self, name: str, default: bool = False) -> bool:
        """dockerd's rule: ``""``, ``0``, ``no``, ``false``, ``none`` (any case, trimmed) are false, the rest true."""
        value = self.q(name)
        if value is None:
            return default
        return value.strip().lower() not in _FALSE_WORDS

    def qint(self, name: str, default: int) -> int:
        value = self.q(name)
        if value is None or value.strip() == "":
            return default
        try:
            return int(value.strip())
        except ValueError:
            raise InvalidArgument(f'invalid value for {name}: strconv.ParseInt: parsing "{value}": '
                                  "invalid syntax") from None

    def qfilters(self) -> dict[str, list[str]]:
        """The ``filters`` parameter in either shape: ``{"k":{"v":true}}`` (CLI) or ``{"k":["v"]}`` (docker-py)."""
        return parse_filters(self.q("filters") or "")

    async def body(self) -> bytes:
        """The whole body, buffered (use ``blocking_reader`` for big uploads)."""
        if self._body is None:
            if self._consumed:
                raise RuntimeError("request body already streamed")
            parts = []
            while chunk := await self._receive():
                parts.append(chunk)
            self._body = b"".join(parts)
        return self._body

    async def json(self) -> Any:
        """The body parsed as JSON; ``None`` when it is empty."""
        raw = await self.body()
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise InvalidArgument(f"invalid JSON: {err}") from None

    async def receive(self) -> bytes:
        """The next piece of the body as it arrives; ``b""`` at the end."""
        return await self._receive()

    def blocking_reader(self) -> BinaryIO:
        """A file over the body for a worker thread only; it pulls from the connection on the event loop."""
        if self._loop is None:
            raise RuntimeError("no event loop to read the body from")
        if self._body is not None:
            return io.BytesIO(self._body)
        return io.BufferedReader(_ThreadBodyReader(self._receive_batch, self._loop), _BATCH)

    async def _receive_batch(self) -> bytes:
        """At least ``_BATCH`` bytes of the body (less only at its end): one loop round trip per batch."""
        parts = []
        size = 0
        while size < _BATCH:
            chunk = await self._receive()
            if not chunk:
                break
            parts.append(chunk)
            size += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def _receive(self) -> bytes:
        if self._source is None:
            return b""
        self._consumed = True
        return await self._source.receive()


# Body bytes a worker thread fetches per hop to the event loop (clients send 4-32 KiB chunks; each hop costs ~50 us).
_BATCH = 1 << 20


class _ThreadBodyReader(io.RawIOBase):
    """Raw reader that fetches each piece of the body by running the receive coroutine on the loop."""

    def __init__(self, receive: Callable[[], Coroutine[Any, Any, bytes]], loop: asyncio.AbstractEventLoop) -> None:
        self._receive = receive
        self._loop = loop
        self._pending = memoryview(b"")
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        while not self._pending and not self._eof:
            fut = asyncio.run_coroutine_threadsafe(self._receive(), self._loop)
            data = fut.result()
            if data:
                self._pending = memoryview(data)
            else:
                self._eof = True
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def parse_filters(text: str) -> dict[str, list[str]]:
    """Decode a ``filters`` JSON value of either shape into ``{key: [values]}``."""
    if not text.strip():
        return {}
    try:
        raw = json.loads(text)
    except ValueError as err:
        raise InvalidArgument(f"invalid filter: {err}") from None
    if not isinstance(raw, dict):
        raise InvalidArgument(f"invalid filter: expected a JSON object, got {text!r}")
    out: dict[str, list[str]] = {}
    for key, values in raw.items():
        if isinstance(values, dict | list):
            out[str(key)] = [str(v) for v in values]
        else:
            raise InvalidArgument(f"invalid filter '{key}': values must be a list or an object")
    return out


@dataclass
class Response:
    """A fixed-size response."""

    status: int = 200
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamResponse:
    """A chunked response; each ``bytes`` from ``chunks`` goes out as one flushed chunk.

    The server pulls the first chunk before it sends the headers, so an error raised before anything is
    produced becomes a normal error response; after that, ``json_errors`` turns it into Docker's in-band
    ``{"errorDetail":...,"error":...}`` line. ``eager_headers`` sends the headers at once (wait, events).
    """

    chunks: AsyncIterator[bytes]
    status: int = 200
    content_type: str = JSON
    json_errors: bool = True
    eager_headers: bool = False
    headers: dict[str, str] = field(default_factory=dict)


class HijackedStream(Protocol):
    """The raw connection after the upgrade: bytes in, bytes out, no more HTTP."""

    async def read(self, n: int = 65536) -> bytes: ...  # b"" once the client half-closed or left

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close_write(self) -> None: ...  # half-close: tells the client the stream is over


@dataclass
class Hijack:
    """Take over the connection: the server answers ``101 UPGRADED`` (``200 OK`` if the client did not ask
    for an upgrade), flushes the header block alone, then runs ``run`` and closes the connection after it."""

    run: Callable[[HijackedStream], Awaitable[None]]
    content_type: str = "application/vnd.docker.raw-stream"
    headers: dict[str, str] = field(default_factory=dict)
    settle_s: float = 0.02  # pause after the header block before ``run`` (docker-py, engine-api §0.3)


def json_line(obj: Any) -> bytes:
    """Compact JSON plus a newline, the way dockerd encodes each message."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(status=status, body=json_line(obj), content_type=JSON)


def empty(status: int = 204) -> Response:
    return Response(status=status)


class StreamCancelled(Exception):
    """Raised by ``emit`` in a ``thread_stream`` worker once the client has gone."""


_QUEUE_DEPTH = 16
_END = object()


async def thread_stream(fn: Callable[[Callable[[bytes], None]], None]) -> AsyncIterator[bytes]:
    """Run ``fn(emit)`` in a worker thread; every ``emit(b)`` becomes a chunk.

    The queue is bounded so a slow client slows the worker down; when the client leaves, ``emit``
    raises ``StreamCancelled`` in the worker. An exception from ``fn`` is re-raised here.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=_QUEUE_DEPTH)
    cancelled = threading.Event()

    def put(item: object) -> None:
        fut = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        while True:
            try:
                fut.result(timeout=0.25)
                return
            except concurrent.futures.TimeoutError:
                # the consumer may have gone away while the queue is full
                if cancelled.is_set():
                    fut.cancel()
                    raise StreamCancelled() from None

    def emit(data: bytes) -> None:
        if cancelled.is_set():
            raise StreamCancelled()
        if data:
            put(bytes(data))

    def work() -> None:
        try:
            fn(emit)
        except StreamCancelled:
            return
        except BaseException as err:
            if not cancelled.is_set():
                put(_Failure(err))
            return
        if not cancelled.is_set():
            put(_END)

    worker = loop.run_in_executor(None, work)
    try:
        while True:
            item = await queue.get()
            if item is _END:
                break
            if isinstance(item, _Failure):
                raise item.error
            assert isinstance(item, bytes)
            yield item
        await worker
    finally:
        cancelled.set()


class EmitWriter(io.RawIOBase):
    """A write-only file for a ``thread_stream`` worker: buffers writes and hands ``emit`` large chunks."""

    def __init__(self, emit: Callable[[bytes], None], chunk: int = 1 << 20) -> None:
        self._emit = emit
        self._chunk = chunk
        self._buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._buf += b
        if len(self._buf) >= self._chunk:
            self.flush()
        return len(b)

    def flush(self) -> None:
        if self._buf:
            self._emit(bytes(self._buf))
            self._buf.clear()


@dataclass(frozen=True)
class _Failure:
    error: BaseException
