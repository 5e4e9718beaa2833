"""The Engine API's HTTP/1.1 server: asyncio + h11 on a unix socket.

One task per connection, keep-alive, request bodies streamed to handlers (chunked or not), chunked
responses flushed per chunk, HEAD/204/304 without a body, the ``/v1.NN`` prefix, Docker's headers on
every response, and hand-over of the raw connection for attach/exec (``Hijack``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import h11

import berth
from berth.api.errors import error_response, message_for
from berth.api.http import (
    ADVERTISED_API_VERSION,
    JSON,
    Hijack,
    Request,
    Response,
    StreamResponse,
    json_line,
    json_response,
)
from berth.api.router import Router
from berth.engine.services import Engine
from berth.engine.system import MIN_API_VERSION
from berth.errors import InvalidArgument
from berth.httpserver.connection import (
    NO_BODY_STATUSES,
    READ_SIZE,
    ClientGone,
    ConnectionSet,
    HttpConnection,
    HttpDate,
    RequestBody,
    encode_head,
    header_dict,
    reason,
)

log = logging.getLogger("berth.api")

_VERSION_PREFIX = re.compile(r"^/v([0-9.]+)(/.*)$")
_MAX_HEADER_BYTES = 1 << 20


def version_tuple(version: str) -> tuple[int, ...]:
    """``"1.24"`` → ``(1, 24)``; empty or odd parts count as 0, like moby's ``versions.compare``."""
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("."))


def check_api_version(version: str) -> None:
    """dockerd's bounds check on the path version, with its wording."""
    if version_tuple(version) < version_tuple(MIN_API_VERSION):
        raise InvalidArgument(
            f"client version {version} is too old. Minimum supported API version is {MIN_API_VERSION}, "
            "please upgrade your client to a newer version"
        )
    if version_tuple(version) > version_tuple(ADVERTISED_API_VERSION):
        raise InvalidArgument(
            f"client version {version} is too new. Maximum supported API version is {ADVERTISED_API_VERSION}"
        )


def _reason(status: int) -> bytes:
    return b"UPGRADED" if status == 101 else reason(status)  # what dockerd says; the CLI only looks at the code


class _RawStream:
    """``HijackedStream`` over the asyncio stream pair, starting with bytes h11 had already read."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, initial: bytes) -> None:
        self._reader = reader
        self._writer = writer
        self._initial = initial

    async def read(self, n: int = READ_SIZE) -> bytes:
        if self._initial:
            data, self._initial = self._initial[:n], self._initial[n:]
            return data
        try:
            return await self._reader.read(n)
        except ConnectionError:
            return b""

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    def close_write(self) -> None:
        if self._writer.can_write_eof():
            with contextlib.suppress(OSError):
                self._writer.write_eof()


class _Connection(HttpConnection):
    """One client connection: Docker's headers, the router, streamed responses and hijack."""

    log = log

    def __init__(self, server: ApiServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super().__init__(reader, writer, max_header_bytes=_MAX_HEADER_BYTES)
        self.server = server

    def bad_request(self, err: h11.RemoteProtocolError) -> bytes:
        body = json_line({"message": f"bad request: {err}"})
        status = err.error_status_hint
        extra = {"Content-Length": str(len(body)), "Connection": "close"}
        return encode_head(status, _reason(status), self._headers(extra, JSON)) + body

    def _headers(self, extra: dict[str, str], content_type: str | None) -> list[tuple[bytes, bytes]]:
        out = [
            (b"Api-Version", ADVERTISED_API_VERSION.encode()),
            (b"Docker-Experimental", b"false"),
            (b"Ostype", b"linux"),
            (b"Server", self.server.server_header),
            (b"Date", self.server.date.now()),
        ]
        if content_type:
            out.append((b"Content-Type", content_type.encode()))
        out += [(k.encode(), v.encode()) for k, v in extra.items()]
        return out

    def _parse(self, event: h11.Request, body: RequestBody) -> Request:
        target = bytes(event.target)
        raw_path, _, raw_query = target.partition(b"?")
        path = unquote(raw_path.decode("utf-8", "replace"))
        version = ADVERTISED_API_VERSION
        m = _VERSION_PREFIX.match(path)
        if m:
            version, path = m.group(1), m.group(2)
        headers = header_dict(event.headers)
        return Request(
            method=event.method.decode("ascii", "replace").upper(),
            path=path,
            query=raw_query.decode("utf-8", "replace"),
            headers=headers,
            api_version=version,
            source=body,
            loop=asyncio.get_running_loop(),
        )

    async def handle(self, event: h11.Request) -> bool:
        body = RequestBody(self)
        req = self._parse(event, body)
        started = time.monotonic()
        result: Response | StreamResponse | Hijack
        found = self.server.router.match(req.method, req.path)
        if found is None:
            result = json_response({"message": "page not found"}, status=404)
        else:
            handler, params = found
            try:
                check_api_version(req.api_version)
                result = await handler(req, self.server.engine, **params)
            except (ClientGone, ConnectionError):
                raise
            except Exception as err:
                result = error_response(err)
        if isinstance(result, Hijack):
            await body.drain()
            await self._hijack(req, result)
            return False
        if isinstance(result, StreamResponse):
            status = await self._send_stream(req, result, body)
        else:
            status = result.status
            await self._send_fixed(req.method, result)
        log.debug("%s %s -> %d (%.1f ms)", req.method, bytes(event.target).decode("latin-1"), status,
                  (time.monotonic() - started) * 1000)
        await body.drain()
        return True

    async def _send_fixed(self, method: str, resp: Response) -> None:
        status = resp.status
        headers = dict(resp.headers)
        content_type = resp.content_type
        payload = resp.body
        if status in NO_BODY_STATUSES:
            payload, content_type = b"", None
        else:
            headers["Content-Length"] = str(len(payload))
        await self.send_fixed(status, self._headers(headers, content_type), payload, with_body=method != "HEAD",
                              phrase=_reason(status))

    async def _send_stream(self, req: Request, resp: StreamResponse, body: RequestBody) -> int:
        chunks = resp.chunks
        first: bytes | None = None
        ended = False
        try:
            if not resp.eager_headers:
                try:
                    first = await anext(chunks)
                except StopAsyncIteration:
                    ended = True
                except (ClientGone, ConnectionError):
                    raise
                except Exception as err:
                    err_resp = error_response(err)
                    await self._send_fixed(req.method, err_resp)
                    return err_resp.status
            self.start_response(resp.status, self._headers(resp.headers, resp.content_type), _reason(resp.status))
            no_body = req.method == "HEAD" or resp.status in NO_BODY_STATUSES
            if first and not no_body:
                self.send_data(first)
            await self.writer.drain()
            if not ended:
                await self._pump(chunks, resp, body, no_body)
            self.end_response()
            await self.writer.drain()
            return resp.status
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def _pump(self, chunks: AsyncIterator[bytes], resp: StreamResponse, body: RequestBody,
                    no_body: bool) -> None:
        """Copy chunks to the client until the iterator ends, the client leaves, or the iterator fails."""
        watcher: asyncio.Task[None] | None = None
        step: asyncio.Future[bytes] | None = None
        try:
            while True:
                if watcher is None and body.poll_done():
                    watcher = asyncio.create_task(self.wait_peer_closed())
                step = asyncio.ensure_future(anext(chunks))
                waiting: set[asyncio.Future[Any]] = {step}
                if watcher is not None:
                    waiting.add(watcher)
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    raise ClientGone("client closed the connection during a streamed response")
                try:
                    chunk = step.result()
                except StopAsyncIteration:
                    return
                except (ClientGone, ConnectionError):
                    raise
                except Exception as err:
                    message = message_for(err)
                    log.info("error in a streamed response: %s: %s", type(err).__name__, message)
                    if not resp.json_errors:
                        # no in-band error format (a tar): cut the connection so the client sees a truncated body
                        raise ClientGone(f"stream aborted: {message}") from err
                    if not no_body:
                        line = json_line({"errorDetail": {"message": message}, "error": message})
                        self.send_data(line)
                    return
                if chunk and not no_body:
                    self.send_data(chunk)
                    await self.writer.drain()
        finally:
            # the producer must be stopped before the caller closes the iterator
            for task in (step, watcher):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task

    async def _hijack(self, req: Request, hijack: Hijack) -> None:
        upgrade = "upgrade" in req.headers.get("connection", "").lower() and "upgrade" in req.headers
        status = 101 if upgrade else 200
        extra = dict(hijack.headers)
        if upgrade:
            extra.setdefault("Connection", "Upgrade")
            extra.setdefault("Upgrade", "tcp")
        # the header block goes out alone: docker-py drops stream bytes that share its read (engine-api §0.3)
        self.writer.write(encode_head(status, _reason(status), self._headers(extra, hijack.content_type)))
        await self.writer.drain()
        if hijack.settle_s > 0:
            await asyncio.sleep(hijack.settle_s)
        initial, _closed = self.h11.trailing_data
        log.debug("%s %s -> %d hijacked", req.method, req.path, status)
        try:
            await hijack.run(_RawStream(self.reader, self.writer, initial))
        except (ConnectionError, ClientGone) as err:
            log.debug("hijacked stream ended: %s", err)
        except Exception:
            log.exception("hijacked stream %s %s failed", req.method, req.path)


class ApiServer:
    """Serves the router on one or more unix sockets until ``close``."""

    def __init__(self, router: Router, engine: Engine) -> None:
        self.router = router
        self.engine = engine
        self.server_header = f"berth/{berth.__version__} (linux)".encode()
        self.date = HttpDate()
        self._servers: list[asyncio.AbstractServer] = []
        self._paths: list[Path] = []
        self._connections = ConnectionSet(lambda reader, writer: _Connection(self, reader, writer))

    async def listen(self, path: str | Path, mode: int = 0o660) -> None:
        """Bind ``path`` (replacing a stale socket file) with ``mode`` set before anyone can connect."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(path.lstat().st_mode):
                path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chmod(path, mode)
            sock.listen(512)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        server = await asyncio.start_unix_server(self._connections.accept, sock=sock, limit=READ_SIZE)
        self._servers.append(server)
        self._paths.append(path)

    async def close(self, grace: float = 2.0) -> None:
        """Stop accepting, end every open connection (streams included), remove the socket files."""
        for server in self._servers:
            server.close()
        for path in self._paths:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        await self._connections.close(grace)
        self._servers.clear()
        self._paths.clear()

    @property
    def connections(self) -> int:
        return len(self._connections)

