"""One HTTP/1.1 server connection on asyncio streams with h11, and the set of a server's open connections.

Shared by the Engine API (``berth.api.server``) and the registry (``berth.registry.server``): the per-connection
loop (keep-alive, ``100 Continue``, optional idle timeout, a hand-written answer to a request h11 cannot parse),
request bodies (streamed, read whole under a limit, drained), responses (fixed in one write, or a head then pieces
framed by ``Content-Length`` or chunked), reason phrases and the ``Date`` header. A server subclasses
``HttpConnection`` with its ``handle`` and ``bad_request``; its headers, routes, hijack and Range stay its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import h11

log = logging.getLogger("berth.httpserver")

READ_SIZE = 1 << 18
NO_BODY_STATUSES = frozenset({204, 304})
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}

HeaderList = list[tuple[bytes, bytes]] | list[tuple[str, str]]


class ClientGone(Exception):
    """The client closed the connection, or broke the protocol, while a request or response was in progress."""


def reason(status: int) -> bytes:
    """The standard reason phrase, ``b""`` for a status without one."""
    return _REASONS.get(status, b"")


def encode_head(status: int, phrase: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A response head written by hand, for when h11 cannot send it (after a peer error, or a hijack)."""
    lines = [b"HTTP/1.1 %d %s" % (status, phrase)]
    lines += [k + b": " + v for k, v in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def header_dict(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Request headers by lower-cased name; a repeated header's values joined with ``", "``."""
    out: dict[str, str] = {}
    for name, value in headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        out[key] = f"{out[key]}, {text}" if key in out else text
    return out


class HttpDate:
    """The ``Date`` header, formatted once per second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self._second:
            self._second = second
            self._value = email.utils.formatdate(second, usegmt=True).encode()
        return self._value


class RequestBody:
    """The current request's body over the connection's h11 state: ``Data`` until ``EndOfMessage``."""

    def __init__(self, conn: HttpConnection) -> None:
        self._conn = conn
        self.done = False
        self._pending: list[bytes] = []

    async def receive(self) -> bytes:
        """The next piece of the body, ``b""`` at its end."""
        if self._pending:
            return self._pending.pop(0)
        if self.done:
            return b""
        try:
            event = await self._conn.next_event()
        except h11.RemoteProtocolError as err:
            raise ClientGone(f"request body: {err}") from None
        if isinstance(event, h11.Data):
            return bytes(event.data)
        if isinstance(event, h11.EndOfMessage):
            self.done = True
            return b""
        raise ClientGone(f"unexpected {type(event).__name__} in the request body")

    async def read(self, limit: int) -> bytes | None:
        """The whole body, or None once it exceeds ``limit`` bytes."""
        parts: list[bytes] = []
        size = 0
        while chunk := await self.receive():
            size += len(chunk)
            if size > limit:
                return None
            parts.append(chunk)
        return b"".join(parts)

    async def drain(self, limit: int | None = None) -> bool:
        """Read and drop the rest of the body; False once more than ``limit`` bytes went by (close, then)."""
        seen = 0
        while chunk := await self.receive():
            seen += len(chunk)
            if limit is not None and seen > limit:
                return False
        return True

    def poll_done(self) -> bool:
        """Whether the body is over, learning it without I/O when h11 already has the end (a GET)."""
        h = self._conn.h11
        if not self.done and not self._pending and h.their_state is h11.SEND_BODY:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError:
                return False
            if isinstance(event, h11.Data):
                self._pending.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self.done = True
        return self.done


class HttpConnection:
    """One client connection: h11 events in, responses out, one request after another while both sides agree.

    Subclasses answer requests in ``handle`` and unparsable ones in ``bad_request``.
    """

    log = log

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, max_header_bytes: int,
                 idle_timeout_s: float | None = None) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self.peer_closed = False
        self._idle_timeout_s = idle_timeout_s
        peer = writer.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else "local"

    async def handle(self, event: h11.Request) -> bool:
        """Serve one request, its body included; returns whether the connection may carry another."""
        raise NotImplementedError

    def bad_request(self, err: h11.RemoteProtocolError) -> bytes:
        """The whole response (head and body, ``Connection: close``) to a request h11 could not parse."""
        raise NotImplementedError

    async def next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.h11.they_are_waiting_for_100_continue:
                self.write(self.h11.send(h11.InformationalResponse(status_code=100, headers=[])))
            await self.writer.drain()
            data = b"" if self.peer_closed else await self._read()
            if not data:
                self.peer_closed = True
            self.h11.receive_data(data)

    async def _read(self) -> bytes:
        if self._idle_timeout_s is None:
            return await self.reader.read(READ_SIZE)
        try:
            return await asyncio.wait_for(self.reader.read(READ_SIZE), self._idle_timeout_s)
        except TimeoutError:
            raise ConnectionError("client idle too long") from None

    async def serve(self) -> None:
        try:
            while True:
                try:
                    event = await self.next_event()
                except h11.RemoteProtocolError as err:
                    with contextlib.suppress(ConnectionError):
                        self.writer.write(self.bad_request(err))
                        await self.writer.drain()
                    return
                if not isinstance(event, h11.Request):
                    return  # ConnectionClosed, or PAUSED after a protocol switch we did not make
                if not await self.handle(event):
                    return
                if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
                    return
                self.h11.start_next_cycle()
        except (ConnectionError, ClientGone, h11.LocalProtocolError, h11.RemoteProtocolError) as err:
            self.log.debug("connection from %s ended: %s", self.peer, err)
        finally:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    def write(self, data: bytes | None) -> None:
        if data:
            self.writer.write(data)

    async def send_fixed(self, status: int, headers: HeaderList, body: bytes, *, with_body: bool = True,
                         phrase: bytes | None = None) -> None:
        """A whole response; framing comes from ``headers`` (``Content-Length``, or chunked without it)."""
        out = [self.h11.send(h11.Response(status_code=status, headers=headers,
                                          reason=reason(status) if phrase is None else phrase))]
        if body and with_body:
            out.append(self.h11.send(h11.Data(data=body)))
        out.append(self.h11.send(h11.EndOfMessage()))
        # one write, so a small response leaves in one segment
        self.writer.write(b"".join(part for part in out if part))
        await self.writer.drain()

    def start_response(self, status: int, headers: HeaderList, phrase: bytes | None = None) -> None:
        """Write the head of a response whose body follows in ``send_data`` pieces, then ``end_response``."""
        self.write(self.h11.send(h11.Response(status_code=status, headers=headers,
                                              reason=reason(status) if phrase is None else phrase)))

    def send_data(self, data: bytes) -> None:
        self.write(self.h11.send(h11.Data(data=data)))

    def end_response(self) -> None:
        self.write(self.h11.send(h11.EndOfMessage()))

    async def send_stream(self, chunks: AsyncIterator[bytes], *, with_body: bool = True) -> None:
        """Send every piece of ``chunks`` as it comes, flushed, then end the response; closes ``chunks``."""
        try:
            if with_body:
                async for chunk in chunks:
                    self.send_data(chunk)
                    await self.writer.drain()
            self.end_response()
            await self.writer.drain()
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def wait_peer_closed(self) -> None:
        """Returns when the client hangs up; keeps any pipelined bytes for h11."""
        while not self.peer_closed:
            try:
                data = await self.reader.read(READ_SIZE)
            except ConnectionError:
                data = b""
            if not data:
                self.peer_closed = True
                return
            self.h11.receive_data(data)


class ConnectionSet:
    """A server's open connections, one task each: ``accept`` is the asyncio stream callback, ``close`` ends all."""

    def __init__(self, factory: Callable[[asyncio.StreamReader, asyncio.StreamWriter], HttpConnection]) -> None:
        self._factory = factory
        self._tasks: set[asyncio.Task[Any]] = set()

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._factory(reader, writer).serve()
        except asyncio.CancelledError:
            # shutdown cancels connections; the task is the top of its stack, and asyncio 3.11 logs a
            # cancelled connection callback as an error
            pass
        finally:
            self._tasks.discard(task)

    async def close(self, grace: float) -> None:
        """Cancel every open connection (streams included) and wait up to ``grace`` seconds for them to end."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace)

    def __len__(self) -> int:
        return len(self._tasks)
