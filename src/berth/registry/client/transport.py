"""HTTP/1.1 to one registry: keep-alive connections, HTTPS or (loopback/insecure only) HTTP, auth retries,
redirects that drop credentials when they change host, and registry errors turned into berth error kinds.

One ``Transport`` per registry host and credentials; it is thread-safe (each request borrows a pooled
connection). Network failures are reported like dockerd (``Get "http://…/v2/": dial tcp …: connect: connection
refused``) so the user sees which request to which registry failed.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.message import Message
from typing import IO

from berth import __version__
from berth.errors import BerthError, Forbidden, InvalidArgument, NotFound, Unauthorized, Unavailable
from berth.registry import protocol
from berth.registry.client.auth import ANONYMOUS, Authenticator, Credentials, InsecurePolicy
from berth.registry.protocol import Route, path_for

USER_AGENT = f"berth/{__version__}"
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_MAX_REDIRECTS = 5
_MAX_ERROR_BODY = 64 * 1024
_IDLE_PER_HOST = 8
_BLOCK = 1 << 20
_REDIRECTS = (301, 302, 303, 307, 308)

Body = bytes | IO[bytes] | Iterable[bytes] | None


def api_host(domain: str) -> str:
    """The host that serves a reference's domain (``docker.io`` lives at ``registry-1.docker.io``)."""
    return DOCKER_HUB_API if domain == DOCKER_HUB else domain


def describe_error(status: int, body: bytes) -> str:
    """A registry error body as distribution's errcode prints it (``manifest unknown: manifest unknown``)."""
    errors = protocol.parse_error_body(status, body)
    parts = []
    for e in errors:
        if e.code is protocol.ErrorCode.UNKNOWN:
            reason = http.client.responses.get(status, "")
            parts.append(f"unexpected status {status} {reason}".rstrip() + (f": {e.message}" if body else ""))
        else:
            parts.append(f"{e.code.name.lower().replace('_', ' ')}: {e.message}")
    return "; ".join(parts) if parts else f"unexpected status {status}"


def error_kind(status: int) -> type[BerthError]:
    if status == 401:
        return Unauthorized
    if status == 403:
        return Forbidden
    if status == 404:
        return NotFound
    if status in (400, 405, 411, 413, 416):
        return InvalidArgument
    return Unavailable


class Response:
    """A response whose body is read by the caller; ``close`` returns the connection to the pool when the
    body was fully read."""

    def __init__(self, transport: Transport, key: tuple[str, str], conn: http.client.HTTPConnection,
                 raw: http.client.HTTPResponse, url: str) -> None:
        self._transport = transport
        self._key = key
        self._conn: http.client.HTTPConnection | None = conn
        self.raw = raw
        self.url = url
        self.status = raw.status
        self.headers: Message = raw.msg

    def header(self, name: str, default: str = "") -> str:
        value = self.headers.get(name)
        return value if value is not None else default

    def read(self, limit: int | None = None) -> bytes:
        """The whole body (at most ``limit`` bytes: more is an error, the body is then abandoned)."""
        if limit is None:
            data = self.raw.read()
        else:
            data = self.raw.read(limit + 1)
            if len(data) > limit:
                self.abort()
                raise InvalidArgument(f"response from {self.url} is larger than {limit} bytes")
        self.close()
        return data

    def readinto(self, buf: memoryview) -> int:
        """What has arrived, up to ``len(buf)`` bytes (not a full buffer: what came is written to disk at once, so
        a download cut off, even by a daemon crash, keeps every byte it got)."""
        data = self.raw.read1(len(buf))
        buf[:len(data)] = data
        return len(data)

    def abort(self) -> None:
        """Drop the connection (the body is not wanted or is broken)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self.raw.isclosed() and not self.raw.will_close:
            self._transport._release(self._key, conn)
        else:
            conn.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.abort()
        else:
            self.close()


@dataclass(frozen=True)
class _Target:
    scheme: str
    netloc: str
    path: str     # path and query


class Transport:
    """Requests to one registry (``host[:port]``) as one set of credentials."""

    def __init__(self, registry: str, credentials: Credentials = ANONYMOUS,
                 insecure: InsecurePolicy | None = None, timeout: float = 60.0) -> None:
        self.registry = registry
        self.host = api_host(registry)
        self.insecure = insecure or InsecurePolicy()
        self.timeout = timeout
        self.auth = Authenticator(credentials, self._fetch_plain, USER_AGENT)
        self._lock = threading.Lock()
        self._idle: dict[tuple[str, str], list[http.client.HTTPConnection]] = {}
        self._scheme: str | None = None

    # --- the /v2/ handshake ---------------------------------------------------------------------------

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.host}"

    @property
    def scheme(self) -> str:
        if self._scheme is None:
            self.ping()
        assert self._scheme is not None
        return self._scheme

    def ping(self) -> Response:
        """``GET /v2/``: picks HTTPS or (when allowed) HTTP, and learns the auth challenge. Returns the response,
        body read (a 401 is not an error here)."""
        schemes = ["https", "http"] if self.insecure.allows_http(self.host) else ["https"]
        last: BaseException | None = None
        last_url = ""
        for scheme in schemes:
            try:
                resp = self._send_once(_Target(scheme, self.host, path_for(Route.BASE)), "GET", {}, None)
            except (OSError, http.client.HTTPException) as err:
                # no TLS there (or nothing at all): like dockerd, fall back to plain HTTP where allowed and
                # report the last attempt
                last = err
                last_url = f"{scheme}://{self.host}/v2/"
                continue
            self._scheme = scheme
            resp.read()
            if resp.status == 401:
                self.auth.on_unauthorized(resp.headers.get_all("WWW-Authenticate") or [], None)
            return resp
        assert last is not None
        raise _network_error("GET", last_url, self.host, last)

    def login(self) -> None:
        """Check the credentials the way ``docker login`` does: ``GET /v2/`` must succeed with them."""
        resp = self.ping()
        if resp.status == 200:
            return
        if resp.status != 401:
            raise Unavailable(f"login attempt to {self.base}/v2/ failed with status: {resp.status} "
                              f"{http.client.responses.get(resp.status, '')}".rstrip())
        if self.auth.credentials.anonymous:
            raise Unauthorized(f'Get "{self.base}/v2/": no basic auth credentials')
        with self.request("GET", path_for(Route.BASE), scopes=(), ok=(200,)) as checked:
            checked.read()

    # --- requests ---------------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, scopes: tuple[str, ...], headers: dict[str, str] | None = None,
                body: Body = None, ok: tuple[int, ...] = (200,), what: str = "") -> Response:
        """Send ``method path`` (or an absolute URL, e.g. an upload Location) with auth; a 401 is retried once
        with a fresh header. Statuses outside ``ok`` raise a berth error naming ``what`` failed."""
        url = path if "://" in path else self.base + path
        target = _split(url)
        hdrs = dict(headers or {})
        sent = self.auth.header(scopes) if target.netloc == self.host else None
        retried = False
        redirects = 0
        while True:
            if sent:
                hdrs["Authorization"] = sent
            else:
                hdrs.pop("Authorization", None)
            resp = self._send(target, method, hdrs, body)
            if resp.status == 401 and not retried and target.netloc == self.host and _replayable(body):
                challenges = resp.headers.get_all("WWW-Authenticate") or []
                resp.read()
                retried = True
                if self.auth.on_unauthorized(challenges, sent):
                    sent = self.auth.header(scopes)
                    if sent is not None:
                        continue
                raise self._unauthorized(method, url, b"")
            if resp.status in _REDIRECTS and method in ("GET", "HEAD") and redirects < _MAX_REDIRECTS:
                location = resp.header("Location")
                resp.read()
                if not location:
                    raise Unavailable(f"{method} {_shown(url)}: redirect without a Location")
                url = urllib.parse.urljoin(url, location)
                new = _split(url)
                if new.netloc != target.netloc:
                    sent = None  # never hand our credentials to another host
                target = new
                redirects += 1
                continue
            break
        if resp.status in ok:
            return resp
        data = _error_body(resp)
        if resp.status == 401:
            raise self._unauthorized(method, url, data)
        kind = error_kind(resp.status)
        message = describe_error(resp.status, data)
        raise kind(f"{what}: {message}" if what else f'{method.title()} "{_shown(url)}": {message}')

    def _unauthorized(self, method: str, url: str, data: bytes) -> Unauthorized:
        if self.auth.credentials.anonymous and not self.auth.challenged:
            return Unauthorized(f'{method.title()} "{_shown(url)}": no basic auth credentials')
        if data:
            return Unauthorized(describe_error(401, data))
        if self.auth.credentials.anonymous:
            return Unauthorized(f'{method.title()} "{_shown(url)}": no basic auth credentials')
        return Unauthorized(f'{method.title()} "{_shown(url)}": unauthorized: authentication required')

    def _send(self, target: _Target, method: str, headers: dict[str, str], body: Body) -> Response:
        try:
            return self._send_once(target, method, headers, body)
        except OSError as err:
            raise _network_error(method, f"{target.scheme}://{target.netloc}{target.path}", target.netloc,
                                 err) from None

    def _send_once(self, target: _Target, method: str, headers: dict[str, str], body: Body) -> Response:
        key = (target.scheme, target.netloc)
        hdrs = {"User-Agent": USER_AGENT, **headers}
        chunked = body is not None and not isinstance(body, bytes | bytearray) and not hasattr(body, "read") \
            and "Content-Length" not in hdrs
        for attempt in (0, 1):
            conn, reused = self._borrow(key)
            try:
                conn.request(method, target.path, body=body, headers=hdrs, encode_chunked=chunked)
                raw = conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                conn.close()
                # a keep-alive connection the server had closed: one retry on a fresh one, if the body allows
                if reused and attempt == 0 and _replayable(body):
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            if method == "HEAD":
                raw.read()
            return Response(self, key, conn, raw, f"{target.scheme}://{target.netloc}{target.path}")
        raise AssertionError("unreachable")

    def _borrow(self, key: tuple[str, str]) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop(), True
        scheme, netloc = key
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = http.client.HTTPSConnection(netloc, timeout=self.timeout, blocksize=_BLOCK,
                                               context=ssl.create_default_context())
        else:
            if not self.insecure.allows_http(netloc) and netloc == self.host:
                raise Unavailable(f"refusing plain HTTP to {netloc}: not a loopback or insecure registry")
            conn = http.client.HTTPConnection(netloc, timeout=self.timeout, blocksize=_BLOCK)
        return conn, False

    def _release(self, key: tuple[str, str], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < _IDLE_PER_HOST:
                idle.append(conn)
                return
        conn.close()

    def _fetch_plain(self, method: str, url: str, headers: dict[str, str],
                     body: bytes | None) -> tuple[int, list[tuple[str, str]], bytes]:
        """One request to a token realm (any host; no registry auth, no redirects beyond a few GETs)."""
        target = _split(url)
        if target.scheme == "http" and not self.insecure.allows_http(target.netloc):
            raise Unauthorized(f"refusing to send credentials over plain HTTP to token realm {url}")
        for _ in range(_MAX_REDIRECTS):
            resp = self._send(target, method, headers, body)
            if resp.status in _REDIRECTS and method == "GET" and resp.header("Location"):
                location = urllib.parse.urljoin(url, resp.header("Location"))
                resp.read()
                new = _split(location)
                if new.netloc != target.netloc:
                    headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                target, url = new, location
                continue
            return resp.status, list(resp.headers.items()), resp.read(1 << 20)
        raise Unavailable(f"too many redirects fetching a token from {url}")

    def close(self) -> None:
        with self._lock:
            conns = [c for idle in self._idle.values() for c in idle]
            self._idle.clear()
        for c in conns:
            with contextlib.suppress(OSError):
                c.close()


def _split(url: str) -> _Target:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise Unavailable(f"invalid registry URL {url!r}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return _Target(parts.scheme, parts.netloc, path)


def _replayable(body: Body) -> bool:
    return body is None or isinstance(body, bytes | bytearray)


def _shown(url: str) -> str:
    return url


def _error_body(resp: Response) -> bytes:
    try:
        return resp.read(_MAX_ERROR_BODY)
    except (InvalidArgument, OSError, http.client.HTTPException):
        resp.abort()
        return b""


def _network_error(method: str, url: str, netloc: str, err: BaseException) -> Unavailable:
    """dockerd's wording for a request that never got an answer."""
    verb = method.title()
    if isinstance(err, ConnectionRefusedError):
        reason = f"dial tcp {netloc}: connect: connection refused"
    elif isinstance(err, socket.gaierror):
        reason = f"dial tcp: lookup {netloc.rsplit(':', 1)[0]}: {err.strerror or err}"
    elif isinstance(err, TimeoutError | socket.timeout):
        reason = f"dial tcp {netloc}: i/o timeout"
    elif isinstance(err, ssl.SSLError):
        reason = f"tls: {err.reason or err}"
    else:
        reason = str(err) or type(err).__name__
    return Unavailable(f'{verb} "{url}": {reason}')


def iter_body(resp: Response, size: int = _BLOCK) -> Iterator[bytes]:
    while chunk := resp.raw.read(size):
        yield chunk


__all__ = ["Response", "Transport", "api_host", "describe_error", "error_kind", "iter_body"]

