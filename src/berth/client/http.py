"""HTTP/1.1 over a unix socket to berthd's Engine API: one request per connection, streamed both ways.

Used by the CLI (and anything else that wants to talk to berthd the way the docker CLI does). Paths go out
with the ``/v1.44`` prefix; a non-2xx/3xx answer becomes a ``berth.errors`` kind carrying the daemon's
``message``; a daemon that is not there becomes ``DaemonUnreachable``.
"""

from __future__ import annotations

import codecs
import contextlib
import http.client
import json as _json
import os
import socket
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

from berth import __version__
from berth.errors import (
    BerthError,
    Conflict,
    Forbidden,
    InternalError,
    InvalidArgument,
    NotFound,
    NotImplementedYet,
    Unauthorized,
    Unavailable,
)

API_VERSION = "1.44"
DEFAULT_HOST = "unix:///run/berth/berth.sock"
HOST_ENV = "BERTH_HOST"
USER_AGENT = f"berth-cli/{__version__} (linux)"

# Uploads (docker load of a few hundred MB) go out in blocks this big; small blocks cost syscalls.
_BLOCK = 1 << 20

Body = bytes | IO[bytes] | Iterable[bytes]
ParamValue = str | int | bool | None | Iterable[str]

_KIND_BY_STATUS: dict[int, type[BerthError]] = {
    400: InvalidArgument,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    500: InternalError,
    501: NotImplementedYet,
    503: Unavailable,
}


class DaemonUnreachable(Unavailable):
    """The socket is missing, refuses connections, or is not ours to open (not an answer from the daemon)."""


def resolve_host(host: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The daemon URL to use: the ``-H`` value, else ``$BERTH_HOST``, else the default socket."""
    env = os.environ if environ is None else environ
    return host or env.get(HOST_ENV) or DEFAULT_HOST


def socket_path(host: str) -> str:
    """The filesystem path of a ``unix:///path`` URL (a bare absolute path is accepted too)."""
    if host.startswith("unix://"):
        path = host[len("unix://"):]
    elif host.startswith("/"):
        path = host
    else:
        scheme = host.split("://", 1)[0] if "://" in host else host
        raise InvalidArgument(f"unsupported daemon host {host!r}: only unix:// sockets are supported ({scheme})")
    if not path:
        raise InvalidArgument(f"invalid daemon host {host!r}: empty socket path")
    return path


def encode_filters(filters: Mapping[str, Iterable[str]]) -> str:
    """Filters in the docker CLI's JSON shape, ``{"label":{"a=b":true}}``, keys sorted like Go's encoder."""
    shaped = {key: {value: True for value in values} for key, values in filters.items()}
    return _json.dumps(shaped, sort_keys=True, separators=(",", ":"))


def error_for(status: int, message: str) -> BerthError:
    """The berth.errors kind for an HTTP error status, carrying the daemon's message."""
    kind = _KIND_BY_STATUS.get(status)
    if kind is None:
        kind = InternalError if status >= 500 else InvalidArgument
    return kind(message)


class _UnixConnection(http.client.HTTPConnection):
    """An HTTPConnection whose transport is a unix stream socket."""

    def __init__(self, path: str, timeout: float | None) -> None:
        # The Host header is not checked by the daemon; docker sends this same name.
        super().__init__("api.moby.localhost", timeout=timeout, blocksize=_BLOCK)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Response:
    """An answer from the daemon; the body is read on demand and the connection closed once it is drained."""

    def __init__(self, conn: http.client.HTTPConnection, raw: http.client.HTTPResponse) -> None:
        self._conn = conn
        self._raw = raw
        self.status: int = raw.status
        self.headers: http.client.HTTPMessage = raw.headers

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    def read(self) -> bytes:
        """The whole (remaining) body."""
        try:
            return self._raw.read()
        finally:
            self.close()

    def json(self) -> Any:
        data = self.read()
        if not data.strip():
            return None
        try:
            return _json.loads(data)
        except ValueError as exc:
            raise InternalError(f"invalid JSON from daemon: {exc}") from None

    def iter_chunks(self, size: int = 1 << 16) -> Iterator[bytes]:
        """The body as it arrives: each piece is whatever the socket had, up to ``size`` bytes."""
        try:
            while True:
                chunk = self._raw.read1(size)
                if not chunk:
                    return
                yield chunk
        finally:
            self.close()

    def iter_json(self) -> Iterator[Any]:
        """Decode a stream of concatenated JSON values (newline or CRLF separated, or not at all)."""
        decoder = _json.JSONDecoder()
        text = codecs.getincrementaldecoder("utf-8")(errors="replace")
        buf = ""
        for chunk in self.iter_chunks():
            buf += text.decode(chunk)
            while True:
                buf = buf.lstrip()
                if not buf:
                    break
                try:
                    value, end = decoder.raw_decode(buf)
                except ValueError:
                    break  # an incomplete message: wait for more bytes
                yield value
                buf = buf[end:]
        buf = (buf + text.decode(b"", final=True)).strip()
        if buf:
            raise InternalError(f"unexpected end of JSON stream from daemon: {buf[:80]!r}")

    def close(self) -> None:
        self._raw.close()
        self._conn.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    """Talks to one daemon. Each request uses its own connection, so streams can run side by side."""

    def __init__(
        self,
        host: str | None = None,
        *,
        timeout: float | None = None,
        api_version: str = API_VERSION,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.host = resolve_host(host, environ)
        self._path = socket_path(self.host)
        self._timeout = timeout
        self._prefix = f"/v{api_version}" if api_version else ""

    def get(self, path: str, params: Mapping[str, ParamValue] | None = None, **kw: Any) -> Response:
        return self.request("GET", path, params, **kw)

    def post(self, path: str, params: Mapping[str, ParamValue] | None = None, **kw: Any) -> Response:
        return self.request("POST", path, params, **kw)

    def put(self, path: str, params: Mapping[str, ParamValue] | None = None, **kw: Any) -> Response:
        return self.request("PUT", path, params, **kw)

    def delete(self, path: str, params: Mapping[str, ParamValue] | None = None, **kw: Any) -> Response:
        return self.request("DELETE", path, params, **kw)

    def head(self, path: str, params: Mapping[str, ParamValue] | None = None, **kw: Any) -> Response:
        return self.request("HEAD", path, params, **kw)

    def hijack(self, path: str, params: Mapping[str, ParamValue] | None = None, json: Any = None) -> Hijacked:
        """POST with ``Upgrade: tcp`` (attach, exec start); after ``101`` the socket is the caller's.
        An error answer becomes a berth.errors kind like any other request."""
        return _hijack(self, "POST", path, params, json)

    def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, ParamValue] | None = None,
        json: Any = None,
        body: Body | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> Response:
        """Send one request. Without ``stream`` the body is read before returning (the connection is freed);
        with it, the caller drains the response (``iter_json``/``iter_chunks``/``read``) or closes it."""
        url = self._prefix + path + _query(params)
        hdrs = {"User-Agent": USER_AGENT}
        if json is not None:
            body = _json.dumps(json).encode()
            hdrs["Content-Type"] = "application/json"
        if headers:
            hdrs.update(headers)
        if body is None and method in ("POST", "PUT"):
            hdrs.setdefault("Content-Length", "0")
        conn = _UnixConnection(self._path, self._timeout)
        raw = self._exchange(conn, method, url, body, hdrs)
        resp = Response(conn, raw)
        if resp.status >= 400:
            raise self._error(resp, method, path)
        if not stream:
            data = resp.read()
            return _Buffered(resp, data)
        return resp

    def _exchange(
        self, conn: http.client.HTTPConnection, method: str, url: str, body: Body | None, hdrs: dict[str, str]
    ) -> http.client.HTTPResponse:
        try:
            conn.connect()
        except FileNotFoundError:
            conn.close()
            raise DaemonUnreachable(self._cannot_connect()) from None
        except ConnectionRefusedError:
            conn.close()
            raise DaemonUnreachable(self._cannot_connect()) from None
        except PermissionError as exc:
            conn.close()
            raise DaemonUnreachable(
                f"permission denied while trying to connect to the berth daemon socket at {self.host}: "
                f"{exc.strerror or exc}"
            ) from None
        except OSError as exc:
            conn.close()
            raise DaemonUnreachable(f"error during connect: {self.host}: {exc.strerror or exc}") from None
        # the daemon may answer (an error) before taking the whole body: read that answer below
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.request(method, url, body=body, headers=hdrs)
        try:
            return conn.getresponse()
        except (http.client.HTTPException, OSError) as exc:
            conn.close()
            raise Unavailable(f"error during connect: {method} {url}: {exc}") from None

    def _cannot_connect(self) -> str:
        return f"Cannot connect to the berth daemon at {self.host}. Is berthd running?"

    @staticmethod
    def _error(resp: Response, method: str, path: str) -> BerthError:
        data = resp.read()
        message = ""
        if resp.content_type.split(";")[0].strip() == "application/json":
            try:
                decoded = _json.loads(data)
            except ValueError:
                decoded = None
            if isinstance(decoded, dict) and isinstance(decoded.get("message"), str):
                message = decoded["message"]
        if not message:
            message = data.decode("utf-8", "replace").strip()
        if not message:
            message = (
                f"request returned {resp.status} {http.client.responses.get(resp.status, '')} for API route "
                f"and version {API_VERSION}, check if the server supports the requested API version"
            )
        return error_for(resp.status, message)

    def close(self) -> None:
        """Nothing is pooled; present so callers can treat the client as a resource."""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Buffered(Response):
    """A response whose body was read eagerly (``stream=False``)."""

    def __init__(self, done: Response, data: bytes) -> None:
        self._conn = done._conn
        self._raw = done._raw
        self.status = done.status
        self.headers = done.headers
        self._data = data

    def read(self) -> bytes:
        return self._data

    def iter_chunks(self, size: int = 1 << 16) -> Iterator[bytes]:
        for start in range(0, len(self._data), size):
            yield self._data[start:start + size]

    def close(self) -> None:
        """Already closed when the body was read."""


def _query(params: Mapping[str, ParamValue] | None) -> str:
    if not params:
        return ""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            pairs.append((key, "1" if value else "0"))
        elif isinstance(value, int | str):
            pairs.append((key, str(value)))
        else:
            pairs.extend((key, item) for item in value)
    return "?" + urllib.parse.urlencode(pairs) if pairs else ""


def quote_name(name: str) -> str:
    """An image or container name for a path segment; slashes and colons stay as docker sends them."""
    return urllib.parse.quote(name, safe="/:@")


class Hijacked:
    """A connection taken over after ``101 UPGRADED``: raw bytes both ways (stdcopy frames unless a TTY).

    ``buffered`` holds stream bytes that arrived in the same read as the response headers; ``read`` yields
    them first.
    """

    def __init__(self, sock: socket.socket, buffered: bytes, headers: Mapping[str, str]) -> None:
        self.sock = sock
        self.headers = headers
        self._buffered = buffered

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def read(self, size: int = 1 << 16) -> bytes:
        """The next bytes from the daemon; ``b""`` at end of stream."""
        if self._buffered:
            data, self._buffered = self._buffered, b""
            return data
        try:
            return self.sock.recv(size)
        except (ConnectionResetError, OSError):
            return b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close_write(self) -> None:
        """Half-close: the daemon sees stdin EOF but keeps sending output."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def abort(self) -> None:
        """End both directions now (detach); wakes a reader blocked on the socket, which ``close`` would not."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> Hijacked:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _hijack(client: Client, method: str, path: str, params: Mapping[str, ParamValue] | None,
            json: Any) -> Hijacked:
    """Send one request with ``Connection: Upgrade``/``Upgrade: tcp`` and take over the socket after the 101."""
    body = b"" if json is None else _json.dumps(json).encode()
    ctype = "text/plain" if json is None else "application/json"
    url = client._prefix + path + _query(params)
    head = (f"{method} {url} HTTP/1.1\r\nHost: api.moby.localhost\r\nUser-Agent: {USER_AGENT}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: Upgrade\r\nContent-Type: {ctype}\r\nUpgrade: tcp\r\n\r\n")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(client._path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise DaemonUnreachable(client._cannot_connect()) from None
        except OSError as exc:
            raise DaemonUnreachable(f"error during connect: {client.host}: {exc.strerror or exc}") from None
        sock.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise Unavailable(f"error during connect: {method} {url}: EOF before the response headers")
            data += chunk
        block, _, rest = data.partition(b"\r\n\r\n")
        lines = block.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        headers: dict[str, str] = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        if status >= 400:
            raise _hijack_error(sock, status, headers, rest)
        if status != 101:
            raise Unavailable(f"unable to upgrade to tcp, received {status}")
        return Hijacked(sock, rest, headers)
    except BaseException:
        sock.close()
        raise


def _hijack_error(sock: socket.socket, status: int, headers: Mapping[str, str], rest: bytes) -> BerthError:
    length = int(headers.get("content-length", "0") or 0)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        length = -1
    while length < 0 or len(rest) < length:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        rest += chunk
    if length < 0:
        rest = _dechunk(rest)
    message = ""
    try:
        decoded = _json.loads(rest[:length] if length >= 0 else rest)
        if isinstance(decoded, dict) and isinstance(decoded.get("message"), str):
            message = decoded["message"]
    except ValueError:
        message = rest.decode("utf-8", "replace").strip()
    return error_for(status, message or f"unable to upgrade to tcp, received {status}")


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2:]
    return out
