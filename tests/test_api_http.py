"""The HTTP layer (berth.api.server/http/router) on a real unix socket, with test routes in-process."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from berth.api.http import (
    Hijack,
    HijackedStream,
    Request,
    Response,
    StreamResponse,
    empty,
    json_line,
    json_response,
    thread_stream,
)
from berth.api.router import Router, compile_pattern
from berth.engine.events import EventBus
from berth.engine.services import Engine
from berth.engine.system import SystemService
from berth.errors import InvalidArgument, NotFound, NotModified
from berth.testing.daemon import ServerThread, request


class Probe:
    """What the test routes observed, shared with the tests."""

    def __init__(self) -> None:
        self.forever_closed = threading.Event()
        self.thread_cancelled = threading.Event()


def _router(probe: Probe) -> Router:
    router = Router()

    @router.route("POST", "/echo")
    async def echo(req: Request, engine: Engine) -> Response:
        data = await req.body()
        return json_response({"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                              "te": req.headers.get("transfer-encoding", "")})

    @router.route("POST", "/json")
    async def parse_json(req: Request, engine: Engine) -> Response:
        return json_response({"got": await req.json()})

    @router.route("POST", "/upload")
    async def upload(req: Request, engine: Engine) -> StreamResponse:
        reader = req.blocking_reader()

        def work(emit: Any) -> None:
            digest, total = hashlib.sha256(), 0
            while block := reader.read(1 << 20):
                digest.update(block)
                total += len(block)
                emit(json_line({"status": "read", "progressDetail": {"current": total}}))
            emit(json_line({"size": total, "sha256": digest.hexdigest()}))

        return StreamResponse(thread_stream(work))

    @router.route("GET", "/things/{name:.*}/json")
    async def thing(req: Request, engine: Engine, name: str) -> Response:
        return json_response({"name": name, "version": req.api_version})

    @router.route("GET", "/things/json")
    async def things(req: Request, engine: Engine) -> Response:
        return json_response({"list": True})

    @router.route("GET", "/slow")
    async def slow(req: Request, engine: Engine) -> Response:
        await asyncio.sleep(float(req.q("s", "0.3") or 0.3))
        return json_response({"ok": True})

    @router.route("GET", "/stream/late-error")
    async def late_error(req: Request, engine: Engine) -> StreamResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield json_line({"status": "working"})
            raise InvalidArgument("boom")

        return StreamResponse(chunks())

    @router.route("GET", "/stream/early-error")
    async def early_error(req: Request, engine: Engine) -> StreamResponse:
        async def chunks() -> AsyncIterator[bytes]:
            raise NotFound("No such image: nope")
            yield b""  # pragma: no cover

        return StreamResponse(chunks())

    @router.route("GET", "/stream/thread-error")
    async def thread_error(req: Request, engine: Engine) -> StreamResponse:
        def work(emit: Any) -> None:
            emit(json_line({"status": "one"}))
            raise InvalidArgument("thread boom")

        return StreamResponse(thread_stream(work))

    @router.route("GET", "/stream/raw-error")
    async def raw_error(req: Request, engine: Engine) -> StreamResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"tar bytes"
            raise InvalidArgument("disk on fire")

        return StreamResponse(chunks(), content_type="application/x-tar", json_errors=False)

    @router.route("GET", "/stream/eager")
    async def eager(req: Request, engine: Engine) -> StreamResponse:
        async def chunks() -> AsyncIterator[bytes]:
            await asyncio.sleep(0.5)
            yield json_line({"StatusCode": 0})

        return StreamResponse(chunks(), eager_headers=True)

    @router.route("GET", "/stream/forever")
    async def forever(req: Request, engine: Engine) -> StreamResponse:
        async def chunks() -> AsyncIterator[bytes]:
            try:
                yield json_line({"status": "started"})
                await asyncio.Event().wait()
            finally:
                probe.forever_closed.set()

        return StreamResponse(chunks(), eager_headers=True)

    @router.route("GET", "/stream/thread-forever")
    async def thread_forever(req: Request, engine: Engine) -> StreamResponse:
        def work(emit: Any) -> None:
            try:
                while True:
                    emit(b"x" * 65536)
            finally:
                probe.thread_cancelled.set()

        return StreamResponse(thread_stream(work), content_type="application/octet-stream")

    @router.route("POST", "/start")
    async def start(req: Request, engine: Engine) -> Response:
        raise NotModified("container is already running")

    @router.route("POST", "/nothing")
    async def nothing(req: Request, engine: Engine) -> Response:
        return empty()

    @router.route("HEAD", "/archive")
    async def archive_head(req: Request, engine: Engine) -> Response:
        if req.qbool("missing"):
            raise NotFound("Could not find the file /x in container c")
        return Response(body=b"would-be body", content_type="text/plain", headers={"X-Test": "1"})

    @router.route("GET", "/crash")
    async def crash(req: Request, engine: Engine) -> Response:
        raise KeyError("unexpected")

    @router.route("POST", "/attach")
    async def attach(req: Request, engine: Engine) -> Hijack:
        async def run(stream: HijackedStream) -> None:
            stream.write(b"hello\n")
            await stream.drain()
            while data := await stream.read():
                stream.write(data.upper())
                await stream.drain()
            stream.write(b"bye\n")
            await stream.drain()
            stream.close_write()

        return Hijack(run, settle_s=0)

    return router


@pytest.fixture(scope="module")
def probe() -> Probe:
    return Probe()


@pytest.fixture(scope="module")
def api(probe: Probe, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    system = SystemService(tmp_path_factory.mktemp("sys"))
    engine = Engine(events=EventBus(), system=system, images=None, containers=None, runner=None, logs=None)  # type: ignore[arg-type]
    with ServerThread(_router(probe), engine) as server:
        yield server


def _request(api: ServerThread, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return request(api.http(timeout=10), method, path, body, headers)


def _raw(api: ServerThread, data: bytes, timeout: float = 5) -> bytes:
    """Send raw bytes, read until the server closes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(api.socket))
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_chunked_upload_streams_through_a_worker_thread(api: ServerThread) -> None:
    block = bytes(range(256)) * 4096  # 1 MiB
    count = 24

    def gen() -> Iterator[bytes]:
        for _ in range(count):
            yield block

    conn = api.http(timeout=30)
    try:
        conn.request("POST", "/v1.44/upload", body=gen(), encode_chunked=True,
                     headers={"Content-Type": "application/x-tar", "Transfer-Encoding": "chunked"})
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.getheader("Transfer-Encoding") == "chunked"
        lines = [json.loads(line) for line in resp.read().splitlines()]
    finally:
        conn.close()
    expected = hashlib.sha256(block * count).hexdigest()
    assert lines[-1] == {"size": len(block) * count, "sha256": expected}
    assert len(lines) > 2


def test_chunked_and_fixed_bodies_buffered(api: ServerThread) -> None:
    data = b"a" * 100_000
    conn = api.http(timeout=10)
    try:
        conn.request("POST", "/echo", body=iter([data[:7], data[7:]]), encode_chunked=True,
                     headers={"Transfer-Encoding": "chunked"})
        resp = conn.getresponse()
        status, body = resp.status, resp.read()
    finally:
        conn.close()
    assert status == 200
    assert json.loads(body) == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "te": "chunked"}
    status, _, body = _request(api, "POST", "/echo", body=data)
    assert json.loads(body)["size"] == len(data)


def test_keep_alive_serves_many_requests_on_one_connection(api: ServerThread) -> None:
    conn = api.http(timeout=10)
    try:
        for i in range(20):
            conn.request("POST", "/echo", body=b"x" * i)
            resp = conn.getresponse()
            assert json.loads(resp.read())["size"] == i
            assert resp.getheader("Api-Version") == "1.44"
        # an unread body does not break the next request on the same connection
        conn.request("GET", "/things/json", body=b"ignored body")
        assert json.loads(conn.getresponse().read()) == {"list": True}
        conn.request("POST", "/nothing", body=b"z" * 300_000)
        resp = conn.getresponse()
        assert (resp.status, resp.read()) == (204, b"")
        conn.request("GET", "/things/json")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_concurrent_connections(api: ServerThread) -> None:
    results: list[int] = []

    def one() -> None:
        results.append(_request(api, "GET", "/slow?s=0.4")[0])

    threads = [threading.Thread(target=one) for _ in range(30)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [200] * 30
    assert time.monotonic() - started < 3


def test_pipelined_requests(api: ServerThread) -> None:
    req = b"GET /things/json HTTP/1.1\r\nHost: x\r\n\r\n"
    out = _raw(api, req * 3 + b"GET /things/json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.count(b"HTTP/1.1 200 OK") == 4


def test_head_never_has_a_body(api: ServerThread) -> None:
    out = _raw(api, b"HEAD /archive HTTP/1.1\r\nHost: x\r\n\r\nHEAD /archive?missing=1 HTTP/1.1\r\nHost: x\r\n\r\n"
                    b"GET /things/json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    first, second, third = out.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200 OK") and first.endswith(b"\r\n\r\n") and b"x-test: 1" in first.lower()
    assert second.startswith(b"404 Not Found") and second.endswith(b"\r\n\r\n")
    assert b"content-type: application/json" in second.lower()
    assert third.endswith(b'{"list":true}\n')


def test_304_and_204_have_no_body(api: ServerThread) -> None:
    out = _raw(api, b"POST /start HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                    b"POST /nothing HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    first, second = out.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"304 ") and first.endswith(b"\r\n\r\n") and b"content-length" not in first.lower()
    assert second.startswith(b"204 ") and second.endswith(b"\r\n\r\n")


def test_every_response_carries_docker_headers(api: ServerThread) -> None:
    for method, path in (("GET", "/things/json"), ("GET", "/nosuch"), ("GET", "/crash"), ("POST", "/start")):
        status, headers, _ = _request(api, method, path)
        assert headers["api-version"] == "1.44", (path, status)
        assert headers["ostype"] == "linux"
        assert headers["docker-experimental"] == "false"
        assert headers["server"].startswith("berth/")
        assert "date" in headers


def test_unexpected_exception_is_a_500_with_message(api: ServerThread) -> None:
    status, headers, body = _request(api, "GET", "/crash")
    assert status == 500
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"message": "'unexpected'"}


def test_bad_json_body_is_400(api: ServerThread) -> None:
    status, _, body = _request(api, "POST", "/json", body=b"{nope", headers={"Content-Type": "application/json"})
    assert status == 400
    assert json.loads(body)["message"].startswith("invalid JSON: ")
    assert json.loads(_request(api, "POST", "/json", body=b"")[2]) == {"got": None}
    assert json.loads(_request(api, "POST", "/json", body=b'{"a":1}')[2]) == {"got": {"a": 1}}


def test_routes_prefix_and_greedy_names(api: ServerThread) -> None:
    assert json.loads(_request(api, "GET", "/v1.24/things/json")[2]) == {"list": True}
    doc = json.loads(_request(api, "GET", "/v1.40/things/localhost:5000/a/b:1.0/json")[2])
    assert doc == {"name": "localhost:5000/a/b:1.0", "version": "1.40"}
    doc = json.loads(_request(api, "GET", "/things/sha256:abc/json")[2])
    assert doc == {"name": "sha256:abc", "version": "1.44"}
    assert _request(api, "GET", "/v1.12/things/json")[0] == 400
    assert _request(api, "GET", "/v1.45/things/json")[0] == 400
    assert _request(api, "GET", "/v1.44/nosuch")[0] == 404


def test_stream_error_before_first_chunk_is_a_normal_error(api: ServerThread) -> None:
    status, headers, body = _request(api, "GET", "/stream/early-error")
    assert status == 404
    assert headers["content-type"] == "application/json"
    assert "transfer-encoding" not in headers
    assert json.loads(body) == {"message": "No such image: nope"}


@pytest.mark.parametrize("path,message", [("/stream/late-error", "boom"), ("/stream/thread-error", "thread boom")])
def test_stream_error_after_first_chunk_is_in_band(api: ServerThread, path: str, message: str) -> None:
    status, headers, body = _request(api, "GET", path)
    assert status == 200
    assert headers["transfer-encoding"] == "chunked"
    lines = [json.loads(line) for line in body.splitlines()]
    assert lines[-1] == {"errorDetail": {"message": message}, "error": message}
    assert len(lines) == 2


def test_raw_stream_error_cuts_the_connection(api: ServerThread) -> None:
    out = _raw(api, b"GET /stream/raw-error HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK")
    assert out.endswith(b"tar bytes\r\n")  # no terminating 0-chunk: the client knows it is truncated
    conn = api.http(timeout=5)
    try:
        conn.request("GET", "/stream/raw-error")
        with pytest.raises(http.client.IncompleteRead):
            conn.getresponse().read()
    finally:
        conn.close()


def test_eager_headers_go_out_before_the_body(api: ServerThread) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(api.socket))
        started = time.monotonic()
        s.sendall(b"GET /stream/eager HTTP/1.1\r\nHost: x\r\n\r\n")
        head = s.recv(65536)
        assert head.startswith(b"HTTP/1.1 200 OK") and head.endswith(b"\r\n\r\n")
        assert time.monotonic() - started < 0.4
        rest = b""
        while not rest.endswith(b"0\r\n\r\n"):
            rest += s.recv(65536)
        assert b'{"StatusCode":0}\n' in rest


def test_client_hangup_stops_the_stream(api: ServerThread, probe: Probe) -> None:
    for path, flag in (("/stream/forever", probe.forever_closed), ("/stream/thread-forever", probe.thread_cancelled)):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(api.socket))
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert s.recv(65536).startswith(b"HTTP/1.1 200 OK")
        assert flag.wait(5), path
    deadline = time.monotonic() + 5
    while api.server is not None and api.server.connections and time.monotonic() < deadline:
        time.sleep(0.02)
    assert api.server is not None and api.server.connections == 0


def test_hijack_with_and_without_upgrade(api: ServerThread) -> None:
    for upgrade in (True, False):
        headers = b"Connection: Upgrade\r\nUpgrade: tcp\r\n" if upgrade else b""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(api.socket))
            # bytes right behind the request (stdin sent early) must reach the handler too
            s.sendall(b"POST /v1.44/attach HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n" + headers +
                      b"\r\n{}early ")
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            if upgrade:
                assert head.startswith(b"HTTP/1.1 101 UPGRADED")
                assert b"Upgrade: tcp" in head
            else:
                assert head.startswith(b"HTTP/1.1 200 OK")
            assert b"Content-Type: application/vnd.docker.raw-stream" in head
            s.sendall(b"stdin")
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(65536):
                rest += chunk
        assert rest == b"hello\nEARLY STDINbye\n"


def test_http_10_and_garbage(api: ServerThread) -> None:
    out = _raw(api, b"GET /things/json HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK") and out.endswith(b'{"list":true}\n')
    out = _raw(api, b"NOT HTTP AT ALL\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ")


def test_expect_100_continue(api: ServerThread) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(api.socket))
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 100 ")
        s.sendall(b"abc")
        data = b""
        while not data.endswith(b"}\n"):
            data += s.recv(65536)
        assert b'"size":3' in data


# Request helpers and the router, without a server.

def _req(query: str) -> Request:
    return Request("GET", "/x", query, {})


def test_qbool_follows_dockerd() -> None:
    for value in ("", "0", "no", "false", "False", " NONE "):
        assert _req(f"v={value}").qbool("v", default=True) is False
    for value in ("1", "true", "True", "yes", "anything"):
        assert _req(f"v={value}").qbool("v") is True
    assert _req("").qbool("v") is False
    assert _req("").qbool("v", default=True) is True
    assert _req("v=0&v=1").qbool("v") is True


def test_qint_q_qall() -> None:
    assert _req("t=10").qint("t", 5) == 10
    assert _req("t=").qint("t", 5) == 5
    assert _req("").qint("t", -1) == -1
    with pytest.raises(InvalidArgument):
        _req("t=ten").qint("t", 5)
    req = _req("names=a&names=b%2Fc&x=1+2")
    assert req.qall("names") == ["a", "b/c"]
    assert req.q("names") == "b/c"
    assert req.q("x") == "1 2"
    assert req.q("missing", "d") == "d"


def test_qfilters_both_shapes() -> None:
    cli = json.dumps({"label": {"a=b": True, "c": True}, "type": {"container": True}})
    assert _req("filters=" + cli).qfilters() == {"label": ["a=b", "c"], "type": ["container"]}
    py = json.dumps({"label": ["a=b"], "dangling": ["true"]})
    assert _req("filters=" + py).qfilters() == {"label": ["a=b"], "dangling": ["true"]}
    assert _req("").qfilters() == {}
    for bad in ("{nope", "[1]", '{"a":1}'):
        with pytest.raises(InvalidArgument):
            _req("filters=" + bad).qfilters()


def test_router_exact_before_patterns_in_order() -> None:
    router = Router()

    async def a(req: Request, engine: Engine) -> Response:
        return empty()

    async def b(req: Request, engine: Engine, name: str) -> Response:
        return empty()

    async def c(req: Request, engine: Engine, name: str) -> Response:
        return empty()

    router.add("GET", "/images/{name:.*}/json", b)
    router.add("GET", "/images/json", a)
    router.add("GET", "/images/{name}", c)
    assert router.match("GET", "/images/json") == (a, {})
    assert router.match("GET", "/images/a/b:c/json") == (b, {"name": "a/b:c"})
    assert router.match("GET", "/images/alpine") == (c, {"name": "alpine"})
    assert router.match("GET", "/images/a/b") is None
    assert router.match("POST", "/images/json") is None
    with pytest.raises(ValueError):
        router.add("GET", "/images/json", a)
    assert compile_pattern("/x/{id:[0-9]{2}}").match("/x/42")


def test_build_router_has_system_routes() -> None:
    from berth.api.router import build_router

    router = build_router()
    for method, path in (("HEAD", "/_ping"), ("GET", "/_ping"), ("GET", "/version"), ("GET", "/info"),
                         ("GET", "/events")):
        assert router.match(method, path) is not None, (method, path)


def test_socket_permissions_and_stale_socket(tmp_path: Path) -> None:
    from berth.api.server import ApiServer

    engine = Engine(events=EventBus(), system=SystemService(tmp_path),  # type: ignore[arg-type]
                    images=None, containers=None, runner=None, logs=None)
    path = tmp_path / "s.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # leaves the socket file behind, as a crashed daemon would

    async def main() -> int:
        server = ApiServer(Router(), engine)
        await server.listen(path)
        mode = path.stat().st_mode & 0o777
        await server.close()
        return mode

    assert asyncio.run(main()) == 0o660
    assert not path.exists()

