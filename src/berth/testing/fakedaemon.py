"""A fake berthd for the CLI's unit tests: a real HTTP/1.1 server on a unix socket in a thread that answers
canned replies (JSON, bytes or chunked streams) per route and records every request (method, path without the
/v1.xx prefix, query, headers, decoded body). Plus ``TextStream``, a text stream over bytes that can claim to
be a terminal, for the CLI's stdin/stdout/stderr."""

from __future__ import annotations

import contextlib
import io
import json
import socketserver
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Req:
    method: str
    path: str  # without the /v1.xx prefix
    raw_path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-able, bytes, or None
    chunks: list[bytes] | None = None  # sent chunked, flushed one by one
    content_type: str = "application/json"


Route = Callable[[Req], Reply]


@dataclass
class Fake:
    sock: str
    routes: dict[tuple[str, str], Route | Reply] = field(default_factory=dict)
    requests: list[Req] = field(default_factory=list)

    def on(self, method: str, path: str, reply: Route | Reply) -> None:
        self.routes[(method, path)] = reply

    def last(self) -> Req:
        return self.requests[-1]


def _read_chunked(rfile: Any) -> bytes:
    out = bytearray()
    while True:
        size = int(rfile.readline().split(b";")[0].strip(), 16)
        if size == 0:
            while rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return bytes(out)
        out += rfile.read(size)
        rfile.readline()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def address_string(self) -> str:
        return "unix"

    def _handle(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = _read_chunked(self.rfile)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        path = url.path
        if path.startswith("/v1."):
            path = "/" + path.split("/", 2)[2]
        req = Req(self.command, path, self.path, parse_qs(url.query, keep_blank_values=True),
                  dict(self.headers.items()), body)
        fake = self.server.fake
        fake.requests.append(req)
        route = fake.routes.get((self.command, path))
        reply = Reply(404, {"message": "page not found"}) if route is None else route
        if callable(reply):
            reply = reply(req)
        self.close_connection = True
        self.send_response(reply.status)
        self.send_header("Api-Version", "1.44")
        if reply.chunks is not None:
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in reply.chunks:
                self.wfile.write(b"%X\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
            return
        data = reply.body if isinstance(reply.body, bytes) else (
            b"" if reply.body is None else json.dumps(reply.body).encode())
        if data:
            self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_HEAD = do_PUT = _handle


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True
    fake: Fake


@contextlib.contextmanager
def serve(sock: str) -> Iterator[Fake]:
    """A fake daemon listening on ``sock`` for the block."""
    server = _Server(sock, _Handler)
    server.fake = Fake(sock)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server.fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class TextStream(io.TextIOWrapper):
    """A text stream over bytes that can claim to be a terminal."""

    def __init__(self, data: bytes = b"", tty: bool = False) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8", newline="")
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty

    def raw_value(self) -> bytes:
        self.flush()
        assert isinstance(self.buffer, io.BytesIO)
        return self.buffer.getvalue()

    def text(self) -> str:
        return self.raw_value().decode()
