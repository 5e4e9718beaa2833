"""The json-file log driver (writer, reader, follower) and the logs service/route on top of it; files only."""

from __future__ import annotations

import asyncio
import gzip
import json
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from berth.api.http import Request, Response, json_response
from berth.api.router import Router
from berth.api.routes import logs as logs_routes
from berth.engine.logs import MULTIPLEXED, RAW, LogService, LogStream, parse_log_time, parse_tail
from berth.errors import InvalidArgument, NotFound, NotImplementedYet
from berth.runtime.jsonlog import (
    DEFAULT_MAX_FILE,
    DEFAULT_MAX_SIZE,
    PARTIAL_SIZE,
    JsonLogWriter,
    LogEntry,
    follow_entries,
    format_rfc3339nano,
    parse_log_opts,
    parse_rfc3339,
    read_entries,
)
from berth.testing.daemon import ServerThread, request

T0 = 1704067200.0  # 2024-01-01T00:00:00Z


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / "c-json.log"


# --- writer -------------------------------------------------------------------------------------------------


def test_one_entry_per_line_with_the_newline_kept_in_dockers_format(log: Path) -> None:
    w = JsonLogWriter(log)
    w.write("stdout", b"hello\nworld\n", ts=T0)
    w.write("stderr", b"oops\n", ts=T0 + 1.5)
    w.close()
    assert log.read_bytes() == (
        b'{"log":"hello\\n","stream":"stdout","time":"2024-01-01T00:00:00Z"}\n'
        b'{"log":"world\\n","stream":"stdout","time":"2024-01-01T00:00:00Z"}\n'
        b'{"log":"oops\\n","stream":"stderr","time":"2024-01-01T00:00:01.5Z"}\n'
    )
    assert log.stat().st_mode & 0o777 == 0o640


def test_partial_lines_wait_for_their_newline_per_stream(log: Path) -> None:
    w = JsonLogWriter(log)
    w.write("stdout", b"ab", ts=T0)
    w.write("stderr", b"err", ts=T0 + 1)
    assert log.read_bytes() == b""
    w.write("stdout", b"c\nd", ts=T0 + 2)
    # like Docker's copier: a short line is timed when it completes
    assert [(e["log"], e["time"]) for e in _lines(log)] == [("abc\n", "2024-01-01T00:00:02Z")]
    w.write("stdout", b"e\n", ts=T0 + 3)
    assert _lines(log)[-1]["log"] == "de\n"
    assert _lines(log)[-1]["time"] == "2024-01-01T00:00:03Z"
    # at exit Docker writes the unterminated rest with a newline added
    w.flush(ts=T0 + 4)
    assert (_lines(log)[-1]["log"], _lines(log)[-1]["stream"]) == ("err\n", "stderr")
    w.close()


def test_lines_longer_than_16k_are_split_into_partial_entries_sharing_a_time(log: Path) -> None:
    w = JsonLogWriter(log)
    w.write("stdout", b"x" * 20000, ts=T0)
    w.write("stdout", b"y" * 20000 + b"\nz\n", ts=T0 + 1)
    w.close()
    entries = _lines(log)
    assert [len(e["log"]) for e in entries] == [PARTIAL_SIZE, PARTIAL_SIZE, 40000 - 2 * PARTIAL_SIZE + 1, 2]
    assert {e["time"] for e in entries[:3]} == {"2024-01-01T00:00:00Z"}
    assert entries[3]["time"] == "2024-01-01T00:00:01Z"
    read = list(read_entries(log))
    assert [e.partial for e in read] == [True, True, False, False]
    assert b"".join(e.data for e in read[:3]) == b"x" * 20000 + b"y" * 20000 + b"\n"


def test_a_line_of_exactly_16k_plus_newline_is_split_like_docker(log: Path) -> None:
    w = JsonLogWriter(log)
    w.write("stdout", b"a" * PARTIAL_SIZE + b"\n" + b"b" * (PARTIAL_SIZE - 1) + b"\n", ts=T0)
    w.close()
    assert [len(e.data) for e in read_entries(log)] == [PARTIAL_SIZE, 1, PARTIAL_SIZE]


def test_escaping_is_gos_and_bad_utf8_becomes_one_replacement_char_per_byte(log: Path) -> None:
    w = JsonLogWriter(log)
    w.write("stdout", '<a&b>\t\x01"\\ é €\u2028\n'.encode(), ts=T0)
    w.write("stdout", b"bad \xff \xe2\x82 end\n", ts=T0)
    w.close()
    raw = log.read_bytes().splitlines()
    escaped = b'\\u003ca\\u0026b\\u003e\\u0009\\u0001\\"\\\\ ' + "é €".encode() + b"\\u2028\\n"
    assert raw[0].startswith(b'{"log":"' + escaped + b'"')
    assert json.loads(raw[1])["log"] == "bad \ufffd \ufffd\ufffd end\n"
    read = list(read_entries(log))
    assert read[0].data == '<a&b>\t\x01"\\ é €\u2028\n'.encode()
    assert read[1].data == "bad \ufffd \ufffd\ufffd end\n".encode()


def test_writer_appends_to_an_existing_log(log: Path) -> None:
    for i in range(2):
        w = JsonLogWriter(log)
        w.write("stdout", f"run {i}\n".encode())
        w.close()
    assert [e.data for e in read_entries(log)] == [b"run 0\n", b"run 1\n"]


def test_rfc3339nano_round_trip() -> None:
    assert format_rfc3339nano(1_704_067_200_123_456_789) == "2024-01-01T00:00:00.123456789Z"
    assert format_rfc3339nano(1_704_067_200_120_000_000) == "2024-01-01T00:00:00.12Z"
    assert parse_rfc3339("2024-01-01T00:00:00.123456789Z") == 1_704_067_200_123_456_789
    assert parse_rfc3339("2024-01-01T01:00:00+01:00") == 1_704_067_200_000_000_000
    with pytest.raises(ValueError):
        parse_rfc3339("yesterday")


# --- rotation -----------------------------------------------------------------------------------------------


def _write_numbered(w: JsonLogWriter, start: int, count: int, t0: float = T0) -> None:
    for i in range(start, start + count):
        w.write("stdout", f"line {i:04d}\n".encode(), ts=t0 + i)


def test_rotation_keeps_max_file_files_under_max_size_and_reads_across_them(log: Path) -> None:
    w = JsonLogWriter(log, max_size=400, max_file=3)
    _write_numbered(w, 0, 60)
    w.close()
    files = sorted(p.name for p in log.parent.iterdir())
    assert files == [log.name, log.name + ".1", log.name + ".2"]
    assert all(p.stat().st_size <= 400 for p in log.parent.iterdir())
    numbers = [int(e.data.split()[1]) for e in read_entries(log)]
    assert numbers == list(range(numbers[0], 60))
    assert numbers[0] > 0  # the oldest file was dropped
    assert [int(e.data.split()[1]) for e in read_entries(log, tail=7)] == list(range(53, 60))


def test_rotation_with_compress_gzips_rotated_files(log: Path) -> None:
    w = JsonLogWriter(log, max_size=400, max_file=4, compress=True)
    _write_numbered(w, 0, 60)
    w.close()
    names = sorted(p.name for p in log.parent.iterdir())
    assert names == [log.name, log.name + ".1.gz", log.name + ".2.gz", log.name + ".3.gz"]
    assert gzip.decompress((log.parent / (log.name + ".1.gz")).read_bytes()).startswith(b'{"log":"line ')
    numbers = [int(e.data.split()[1]) for e in read_entries(log)]
    assert numbers == list(range(numbers[0], 60))
    tail = [int(e.data.split()[1]) for e in read_entries(log, tail=len(numbers) - 2)]
    assert tail == numbers[2:]


def test_max_file_one_starts_the_log_over(log: Path) -> None:
    w = JsonLogWriter(log, max_size=300, max_file=1)
    _write_numbered(w, 0, 20)
    w.close()
    assert [p.name for p in log.parent.iterdir()] == [log.name]
    numbers = [int(e.data.split()[1]) for e in read_entries(log)]
    assert numbers == list(range(numbers[0], 20)) and numbers[0] > 0


# --- reading: since / until / tail --------------------------------------------------------------------------


@pytest.fixture
def numbered(log: Path) -> Path:
    w = JsonLogWriter(log, max_size=500, max_file=10)
    _write_numbered(w, 0, 20)
    w.close()
    assert (log.parent / (log.name + ".1")).exists()
    return log


def _nums(entries: Iterator[LogEntry]) -> list[int]:
    return [int(e.data.split()[1]) for e in entries]


def test_since_until_tail(numbered: Path) -> None:
    assert _nums(read_entries(numbered)) == list(range(20))
    assert _nums(read_entries(numbered, since=T0 + 15)) == [15, 16, 17, 18, 19]
    assert _nums(read_entries(numbered, until=T0 + 3)) == [0, 1, 2, 3]
    assert _nums(read_entries(numbered, since=T0 + 5, until=T0 + 7.5)) == [5, 6, 7]
    assert _nums(read_entries(numbered, tail=3)) == [17, 18, 19]
    assert _nums(read_entries(numbered, tail=0)) == []
    assert _nums(read_entries(numbered, tail=1000)) == list(range(20))
    # Docker applies tail first, then since
    assert _nums(read_entries(numbered, tail=5, since=T0 + 2)) == [15, 16, 17, 18, 19]
    assert _nums(read_entries(numbered, tail=5, since=T0 + 17)) == [17, 18, 19]
    entry = next(read_entries(numbered, tail=1))
    assert (entry.stream, entry.time, entry.time_text) == ("stdout", T0 + 19, "2024-01-01T00:00:19Z")


def test_reader_skips_a_torn_line_and_a_missing_file_reads_empty(log: Path) -> None:
    assert list(read_entries(log)) == []
    w = JsonLogWriter(log)
    w.write("stdout", b"a\n", ts=T0)
    w.close()
    with open(log, "ab") as f:
        f.write(b'{"log":"torn\n{"log":"b\\n","stream":"stdout","time":"2024-01-01T00:00:01Z"}\n{"log":"half')
    assert [e.data for e in read_entries(log)] == [b"a\n", b"b\n"]


# --- following ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rotate", [False, True])
def test_follower_thread_sees_every_line_in_order_while_the_writer_rotates(log: Path, rotate: bool) -> None:
    total = 3000
    w = JsonLogWriter(log, max_size=8192 if rotate else None, max_file=100)
    w.write("stdout", b"before\n")
    writer_done = threading.Event()
    seen: list[bytes] = []

    def follow() -> None:
        seen.extend(e.data for e in follow_entries(log, stop=writer_done.is_set, poll_s=0.005))

    t = threading.Thread(target=follow)
    t.start()
    try:
        for i in range(total):
            w.write("stderr" if i % 7 == 0 else "stdout", f"line {i}\n".encode())
            if i % 100 == 0:
                time.sleep(0.002)
        w.write("stdout", b"unterminated")
        w.flush()
    finally:
        w.close()
        writer_done.set()
        t.join(10)
    assert not t.is_alive()
    assert seen == [b"before\n", *(f"line {i}\n".encode() for i in range(total)), b"unterminated\n"]
    if rotate:
        assert (log.parent / (log.name + ".5")).exists()


def test_follower_starts_before_the_file_exists_and_honours_tail(log: Path) -> None:
    stop = threading.Event()
    seen: list[bytes] = []
    t = threading.Thread(target=lambda: seen.extend(e.data for e in follow_entries(log, stop=stop.is_set,
                                                                                    poll_s=0.005)))
    t.start()
    time.sleep(0.02)
    w = JsonLogWriter(log)
    w.write("stdout", b"1\n2\n")
    time.sleep(0.05)
    w.close()
    stop.set()
    t.join(5)
    assert seen == [b"1\n", b"2\n"]
    stop2 = threading.Event()
    stop2.set()
    assert [e.data for e in follow_entries(log, tail=1, stop=stop2.is_set)] == [b"2\n"]


# --- options ------------------------------------------------------------------------------------------------


def test_parse_log_opts_defaults_and_values() -> None:
    assert parse_log_opts({}) == (DEFAULT_MAX_SIZE, DEFAULT_MAX_FILE, False)
    assert (DEFAULT_MAX_SIZE, DEFAULT_MAX_FILE) == (10 << 20, 5)
    assert parse_log_opts({"max-size": "1k"}) == (1024, 1, False)
    assert parse_log_opts({"max-size": "10m", "max-file": "3", "compress": "true"}) == (10 << 20, 3, True)
    assert parse_log_opts({"max-size": "1.5g", "max-file": "2"}) == (int(1.5 * (1 << 30)), 2, False)
    assert parse_log_opts({"max-size": "100", "compress": "false"}) == (100, 1, False)
    assert parse_log_opts({"max-file": "2"}) == (DEFAULT_MAX_SIZE, 2, False)
    assert parse_log_opts({"tag": "{{.Name}}", "labels": "a"}) == (DEFAULT_MAX_SIZE, DEFAULT_MAX_FILE, False)


@pytest.mark.parametrize(("opts", "message"), [
    ({"max-sise": "1m"}, "unknown log opt 'max-sise' for json-file log driver"),
    ({"max-size": "ten"}, "invalid size: 'ten'"),
    ({"max-size": "0"}, "max-size must be a positive number"),
    ({"max-size": "1m", "max-file": "x"}, 'strconv.Atoi: parsing "x": invalid syntax'),
    ({"max-size": "1m", "max-file": "0"}, "max-file cannot be less than 1"),
    ({"max-size": "1m", "max-file": "2", "compress": "maybe"}, 'strconv.ParseBool: parsing "maybe": invalid syntax'),
    ({"max-size": "1m", "compress": "true"},
     "compress cannot be true when max-file is less than 2 or max-size is not set"),
])
def test_parse_log_opts_errors(opts: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_log_opts(opts)
    assert str(err.value) == message


# --- the logs service ---------------------------------------------------------------------------------------


class FakeContainers:
    """Just what LogService needs: resolve, the log path, is_running."""

    def __init__(self, root: Path, tty: bool = False, driver: str = "json-file") -> None:
        self.cid = "c" * 64
        self.paths = SimpleNamespace(log=lambda cid: root / f"{cid}-json.log")
        self.running = False
        self.doc = {"Config": {"Tty": tty}, "HostConfig": {"LogConfig": {"Type": driver, "Config": {}}}}

    def resolve(self, ref: str) -> tuple[str, str, dict[str, Any]]:
        if ref not in ("x", self.cid):
            raise NotFound(f"No such container: {ref}")
        return self.cid, "x", self.doc

    def is_running(self, cid: str) -> bool:
        return self.running


def _seed(fake: FakeContainers) -> None:
    w = JsonLogWriter(fake.paths.log(fake.cid))
    w.write("stdout", b"out 1\n", ts=T0)
    w.write("stderr", b"err 2\n", ts=T0 + 1.25)
    w.write("stdout", b"out 3\n", ts=T0 + 2)
    w.close()


def _collect(stream: LogStream) -> bytes:
    async def run() -> bytes:
        return b"".join([chunk async for chunk in stream.chunks])
    return asyncio.run(run())


def _logs(fake: FakeContainers, **kw: Any) -> bytes:
    async def run() -> bytes:
        stream = await LogService(fake).logs("x", **kw)
        return b"".join([chunk async for chunk in stream.chunks])
    return asyncio.run(run())


def _frames(data: bytes) -> list[tuple[int, bytes]]:
    out = []
    while data:
        kind, size = struct.unpack(">BxxxL", data[:8])
        out.append((kind, data[8:8 + size]))
        data = data[8 + size:]
    return out


def test_service_frames_with_stdcopy_headers(tmp_path: Path) -> None:
    fake = FakeContainers(tmp_path)
    _seed(fake)
    assert _frames(_logs(fake)) == [(1, b"out 1\n"), (2, b"err 2\n"), (1, b"out 3\n")]
    assert _frames(_logs(fake, stderr=False)) == [(1, b"out 1\n"), (1, b"out 3\n")]
    assert _frames(_logs(fake, stdout=False)) == [(2, b"err 2\n")]


def test_service_tty_is_raw_and_timestamps_and_details_prefix_lines(tmp_path: Path) -> None:
    fake = FakeContainers(tmp_path, tty=True)
    _seed(fake)
    assert _logs(fake) == b"out 1\nerr 2\nout 3\n"
    assert _logs(fake, timestamps=True, tail=2) == (
        b"2024-01-01T00:00:01.250000000Z err 2\n2024-01-01T00:00:02.000000000Z out 3\n"
    )
    assert _logs(fake, details=True, tail=1) == b" out 3\n"  # no attributes: dockerd still adds the space
    assert _logs(fake, details=True, timestamps=True, tail=1) == b"2024-01-01T00:00:02.000000000Z  out 3\n"


def test_service_since_until_tail(tmp_path: Path) -> None:
    fake = FakeContainers(tmp_path)
    _seed(fake)
    assert _frames(_logs(fake, since=T0 + 1)) == [(2, b"err 2\n"), (1, b"out 3\n")]
    assert _frames(_logs(fake, until=T0 + 1.25)) == [(1, b"out 1\n"), (2, b"err 2\n")]
    assert _frames(_logs(fake, tail=1)) == [(1, b"out 3\n")]
    assert _logs(fake, tail=0) == b""


def test_service_errors_before_streaming(tmp_path: Path) -> None:
    fake = FakeContainers(tmp_path)
    svc = LogService(fake)
    with pytest.raises(InvalidArgument, match="Bad parameters: you must choose at least one stream"):
        asyncio.run(svc.logs("x", stdout=False, stderr=False))
    with pytest.raises(NotFound, match="No such container: nope"):
        asyncio.run(svc.logs("nope"))
    with pytest.raises(NotImplementedYet, match="configured logging driver does not support reading"):
        asyncio.run(LogService(FakeContainers(tmp_path, driver="none")).logs("x"))
    # a created container has no log file yet: empty, not an error
    assert _logs(fake) == b""


def test_follow_on_a_stopped_container_sends_the_backlog_and_ends(tmp_path: Path) -> None:
    fake = FakeContainers(tmp_path)
    _seed(fake)
    assert len(_frames(_logs(fake, follow=True))) == 3


def test_follow_streams_new_lines_until_the_container_stops(tmp_path: Path) -> None:
    fake = FakeContainers(tmp_path)
    fake.running = True
    path = fake.paths.log(fake.cid)
    w = JsonLogWriter(path)
    w.write("stdout", b"first\n")

    async def run() -> list[bytes]:
        stream = await LogService(fake).logs("x", follow=True)
        got: list[bytes] = []
        async for chunk in stream.chunks:
            got.append(chunk)
            if len(got) == 1:
                w.write("stderr", b"second\n")
            elif len(got) == 2:
                w.write("stdout", b"last")
                w.flush()
                fake.running = False
        return got

    got = asyncio.run(asyncio.wait_for(run(), 5))
    w.close()
    assert _frames(b"".join(got)) == [(1, b"first\n"), (2, b"second\n"), (1, b"last\n")]


def test_follow_ends_promptly_when_stopped_fires(tmp_path: Path) -> None:
    fake = FakeContainers(tmp_path)
    fake.running = True
    _seed(fake)

    async def run() -> tuple[bytes, float]:
        stopped = asyncio.Event()
        stream = await LogService(fake).logs("x", follow=True, stopped=stopped)
        asyncio.get_running_loop().call_later(0.2, stopped.set)
        start = time.monotonic()
        data = b"".join([chunk async for chunk in stream.chunks])
        return data, time.monotonic() - start

    data, took = asyncio.run(asyncio.wait_for(run(), 5))
    assert len(_frames(data)) == 3
    assert 0.15 < took < 1.0


def test_follow_stops_once_until_has_passed(tmp_path: Path) -> None:
    fake = FakeContainers(tmp_path)
    fake.running = True
    _seed(fake)
    data = asyncio.run(asyncio.wait_for(_collect_async(fake, follow=True, until=time.time() + 0.2), 5))
    assert len(_frames(data)) == 3


async def _collect_async(fake: FakeContainers, **kw: Any) -> bytes:
    stream = await LogService(fake).logs("x", **kw)
    return b"".join([chunk async for chunk in stream.chunks])


def test_query_parsing() -> None:
    assert parse_log_time(None) is None
    assert parse_log_time("") is None
    assert parse_log_time("0") is None
    assert parse_log_time("1704067200") == T0
    assert parse_log_time("1704067200.5") == T0 + 0.5
    assert parse_log_time("1704067200.000000000") == T0
    with pytest.raises(InvalidArgument, match=r'strconv\.ParseInt: parsing "10m": invalid syntax'):
        parse_log_time("10m")
    assert parse_tail("all") is None
    assert parse_tail("5") == 5
    assert parse_tail("-1") is None
    assert parse_tail("0") == 0


# --- the route, over a real socket --------------------------------------------------------------------------


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[ServerThread, FakeContainers]]:
    fake = FakeContainers(tmp_path)
    _seed(fake)
    router = Router()
    logs_routes.register(router)
    engine = SimpleNamespace(logs=LogService(fake))
    with ServerThread(router, engine) as server:  # type: ignore[arg-type]
        yield server, fake


def test_route_streams_frames_with_dockers_content_types(api: tuple[ServerThread, FakeContainers]) -> None:
    server, fake = api
    status, headers, body = request(server.http(10), "GET",
                                    "/v1.44/containers/x/logs?stderr=1&stdout=1&tail=all&timestamps=1")
    assert status == 200
    assert headers["content-type"] == MULTIPLEXED
    assert _frames(body)[1] == (2, b"2024-01-01T00:00:01.250000000Z err 2\n")
    status, headers, body = request(server.http(10), "GET", "/v1.41/containers/x/logs?stdout=1&until=1704067200")
    assert (status, headers["content-type"], _frames(body)) == (200, RAW, [(1, b"out 1\n")])
    fake.doc["Config"]["Tty"] = True
    status, headers, body = request(server.http(10), "GET", "/v1.44/containers/x/logs?stdout=1&stderr=1&tail=1")
    assert (status, headers["content-type"], body) == (200, RAW, b"out 3\n")


def test_route_errors_are_plain_responses(api: tuple[ServerThread, FakeContainers]) -> None:
    server, _ = api
    status, _, body = request(server.http(10), "GET", "/v1.44/containers/x/logs")
    assert status == 400
    assert json.loads(body)["message"] == "Bad parameters: you must choose at least one stream"
    status, _, body = request(server.http(10), "GET", "/v1.44/containers/nope/logs?stdout=1")
    assert (status, json.loads(body)["message"]) == (404, "No such container: nope")
    status, _, body = request(server.http(10), "GET", "/v1.44/containers/x/logs?stdout=1&since=yesterday")
    assert status == 400


@pytest.mark.docker_cli
def test_real_docker_cli_reads_and_demultiplexes_the_logs(tmp_path: Path) -> None:
    fake = FakeContainers(tmp_path)
    _seed(fake)
    router = Router()
    logs_routes.register(router)

    @router.route("GET", "/containers/{name}/json")
    async def inspect(req: Request, engine: Any, name: str) -> Response:
        cid, _, doc = fake.resolve(name)
        return json_response({"Id": cid, "Name": "/x", "Config": doc["Config"], "State": {"Running": False}})

    engine = SimpleNamespace(logs=LogService(fake))
    with ServerThread(router, engine) as server:  # type: ignore[arg-type]
        res = server.docker("logs", "x")
        assert (res.stdout, res.stderr) == ("out 1\nout 3\n", "err 2\n")
        res = server.docker("logs", "-t", "--tail", "1", "x")
        assert res.stdout == "2024-01-01T00:00:02.000000000Z out 3\n"
        res = server.docker("logs", "--until", "2024-01-01T00:00:01Z", "x")
        assert (res.stdout, res.stderr) == ("out 1\n", "")
        res = server.docker("logs", "-f", "--since", "2024-01-01T00:00:01Z", "x", timeout=10)
        assert (res.stdout, res.stderr) == ("out 3\n", "err 2\n")
        fake.doc["Config"]["Tty"] = True
        assert server.docker("logs", "x").stdout == "out 1\nerr 2\nout 3\n"
