"""System routes against a real berthd: the docker CLI, docker-py and raw HTTP."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from berth.api.router import build_router
from berth.engine.events import EventBus
from berth.engine.services import Engine
from berth.engine.system import SystemService
from berth.testing.daemon import BerthDaemon, ServerThread, request


def _get(daemon: BerthDaemon, path: str, method: str = "GET", body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    return request(daemon.http(timeout=10), method, path, body, headers)


@pytest.mark.docker_cli
def test_docker_version_shows_the_server(shared_berthd: BerthDaemon) -> None:
    out = shared_berthd.docker("version").stdout
    assert "Server: berth" in out
    assert re.search(r"API version:\s+1\.44 \(minimum version 1\.24\)", out), out


@pytest.mark.docker_cli
def test_docker_info(shared_berthd: BerthDaemon) -> None:
    result = shared_berthd.docker("info")
    assert "Server Version: 0.1.0" in result.stdout
    assert "ERROR" not in result.stderr
    fmt = shared_berthd.docker("info", "--format", "{{json .}}").stdout
    info = json.loads(fmt)
    assert info["OSType"] == "linux"
    assert info["DockerRootDir"] == str(shared_berthd.data_root)
    assert info["Swarm"]["LocalNodeState"] == "inactive"


def test_docker_py_ping_and_version(shared_berthd: BerthDaemon) -> None:
    client = shared_berthd.client()
    assert client.ping() is True
    version = client.version()
    assert version["ApiVersion"] == "1.44"
    assert version["Platform"]["Name"] == "berth"
    assert client.api.api_version == "1.44"
    assert client.info()["Images"] == 0


def test_ping_headers(shared_berthd: BerthDaemon) -> None:
    for method in ("HEAD", "GET"):
        status, headers, body = _get(shared_berthd, "/_ping", method)
        assert status == 200
        assert headers["api-version"] == "1.44"
        assert headers["ostype"] == "linux"
        assert headers["docker-experimental"] == "false"
        assert headers["builder-version"] == "1"
        assert headers["swarm"] == "inactive"
        assert headers["content-type"] == "text/plain; charset=utf-8"
        assert "server" in headers and "date" in headers
        assert body == (b"" if method == "HEAD" else b"OK")
    assert _get(shared_berthd, "/v1.44/_ping")[2] == b"OK"


@pytest.mark.parametrize("prefix", ["", "/v1.24", "/v1.40", "/v1.44"])
def test_version_on_every_supported_prefix(shared_berthd: BerthDaemon, prefix: str) -> None:
    status, headers, body = _get(shared_berthd, prefix + "/version")
    assert status == 200
    assert headers["content-type"] == "application/json"
    doc = json.loads(body)
    assert doc["ApiVersion"] == headers["api-version"] == "1.44"
    assert doc["MinAPIVersion"] == "1.24"
    assert doc["Components"][0]["Name"] == "Engine"


def test_version_out_of_bounds(shared_berthd: BerthDaemon) -> None:
    status, headers, body = _get(shared_berthd, "/v1.12/version")
    assert status == 400
    assert headers["api-version"] == "1.44"
    assert json.loads(body) == {"message": "client version 1.12 is too old. Minimum supported API version "
                                           "is 1.24, please upgrade your client to a newer version"}
    status, _, body = _get(shared_berthd, "/v1.50/version")
    assert status == 400
    assert json.loads(body)["message"] == "client version 1.50 is too new. Maximum supported API version is 1.44"


@pytest.mark.docker_cli
def test_cli_pinned_to_old_version(shared_berthd: BerthDaemon) -> None:
    env_args = ("--format", "{{.Server.APIVersion}}")
    ok = shared_berthd.docker("version", *env_args)
    assert ok.stdout.strip() == "1.44"


def test_unknown_path_and_method(shared_berthd: BerthDaemon) -> None:
    for method, path in (("GET", "/nosuch"), ("DELETE", "/version"), ("GET", "/v1.44/nosuch/x")):
        status, headers, body = _get(shared_berthd, path, method)
        assert status == 404
        assert headers["content-type"] == "application/json"
        assert headers["api-version"] == "1.44"
        assert json.loads(body) == {"message": "page not found"}


def test_head_error_has_no_body(shared_berthd: BerthDaemon) -> None:
    conn = shared_berthd.http(timeout=5)
    try:
        conn.request("HEAD", "/nosuch")
        resp = conn.getresponse()
        assert resp.status == 404
        assert resp.read() == b""
        # the same connection still works: nothing stray was left on it
        conn.request("GET", "/_ping")
        assert conn.getresponse().read() == b"OK"
    finally:
        conn.close()


def _events(daemon: BerthDaemon, **query: str) -> list[dict[str, Any]]:
    status, headers, body = _get(daemon, "/events?" + urllib.parse.urlencode(query))
    assert status == 200, body
    assert headers["content-type"] == "application/json"
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def test_events_bad_requests(shared_berthd: BerthDaemon) -> None:
    status, _, body = _get(shared_berthd, "/events?since=yesterday&until=1")
    assert status == 400
    status, _, body = _get(shared_berthd, "/events?since=20&until=10")
    assert status == 400 and b"cannot be after" in body
    status, _, body = _get(shared_berthd, "/events?until=1&filters=%7Bnot-json")
    assert status == 400
    assert "invalid filter" in json.loads(body)["message"]


def test_events_until_in_the_past_ends_at_once(shared_berthd: BerthDaemon) -> None:
    started = time.monotonic()
    assert _events(shared_berthd, since="0", until=str(int(time.time()) - 1000)) == []
    assert time.monotonic() - started < 2


def test_events_until_in_the_future_ends_then(shared_berthd: BerthDaemon) -> None:
    started = time.monotonic()
    assert _events(shared_berthd, until=f"{time.time() + 0.5:.3f}") == []
    assert 0.3 < time.monotonic() - started < 5


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ServerThread]:
    """The real router in-process, so a test can publish events straight onto the bus."""
    engine = Engine(events=EventBus(), system=SystemService(tmp_path),  # type: ignore[arg-type]
                    images=None, containers=None, runner=None, logs=None)
    with ServerThread(build_router(), engine) as server:
        yield server


def _publish_samples(bus: EventBus) -> None:
    bus.publish("container", "create", "c" * 64, {"image": "alpine", "name": "web", "com.example.app": "a"})
    bus.publish("container", "start", "c" * 64, {"image": "alpine", "name": "web", "com.example.app": "a"})
    bus.publish("image", "tag", "sha256:" + "e" * 64, {"name": "alpine:3.19"})
    bus.publish("network", "create", "n" * 64, {"name": "net1", "type": "bridge"})
    bus.publish("container", "exec_start: ls /", "d" * 64, {"image": "busybox", "name": "db", "execID": "x"})


@pytest.mark.docker_cli
def test_docker_events_replays_and_filters(api: ServerThread) -> None:
    since = time.time() - 1
    _publish_samples(api.engine.events)
    until = time.time() + 0.05
    time.sleep(0.1)
    window = ("--since", f"{since:.3f}", "--until", f"{until:.3f}")
    out = api.docker("events", *window, "--format", "{{json .}}").stdout
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["Action"] for e in events] == ["create", "start", "tag", "create", "exec_start: ls /"]
    start = events[1]
    assert (start["status"], start["id"], start["from"]) == ("start", "c" * 64, "alpine")
    assert start["Actor"]["Attributes"]["name"] == "web"
    assert start["time"] == start["timeNano"] // 10**9 and start["scope"] == "local"
    assert "status" not in events[3] and "from" not in events[2]
    # the CLI's filter shape: {"type":{"container":true},"event":{"start":true}}
    out = api.docker("events", *window, "--filter", "type=container", "--filter", "event=start",
                     "--format", "{{.Action}} {{.Actor.ID}}").stdout
    assert out.split() == ["start", "c" * 64]
    out = api.docker("events", *window, "--filter", "label=com.example.app=a", "--format", "{{.Action}}").stdout
    assert out.split() == ["create", "start"]
    out = api.docker("events", *window, "--filter", "event=exec_start", "--format", "{{.Actor.ID}}").stdout
    assert out.split() == ["d" * 64]
    out = api.docker("events", *window, "--filter", "image=alpine", "--format", "{{.Type}}").stdout
    assert out.split() == ["container", "container", "image"]
    out = api.docker("events", *window, "--filter", "container=web", "--format", "{{.Action}}").stdout
    assert out.split() == ["create", "start"]


def test_docker_py_events_filters_and_live_stream(api: ServerThread) -> None:
    import docker  # type: ignore[import-untyped]

    client = docker.DockerClient(base_url=api.host)
    try:
        since = time.time() - 1
        _publish_samples(api.engine.events)
        until = time.time() + 0.05
        time.sleep(0.1)
        # docker-py's filter shape: {"type":["network"]}
        got = list(client.api.events(since=since, until=until, filters={"type": ["network"]}, decode=True))
        assert [(e["Type"], e["Action"]) for e in got] == [("network", "create")]
        got = list(client.api.events(since=since, until=until, filters={"event": ["tag", "create"]},
                                     decode=True))
        assert [e["Action"] for e in got] == ["create", "tag", "create"]
        # live: headers arrive before any event; an event published later is delivered promptly
        stream = client.api.events(filters={"type": ["volume"]}, decode=True)
        api.engine.events.publish("container", "die", "c" * 64, {"exitCode": "0"})
        api.engine.events.publish("volume", "create", "v1", {"driver": "local"})
        first = next(stream)
        assert (first["Type"], first["Action"], first["Actor"]["ID"]) == ("volume", "create", "v1")
        stream.close()
        deadline = time.monotonic() + 5
        while api.engine.events.subscriber_count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert api.engine.events.subscriber_count == 0
    finally:
        client.close()


def test_event_bus_replay_window_threads_and_unsubscribe() -> None:
    clock = iter(range(1_000_000_000, 10**12, 1_000_000_000))  # one event per second, from t=1 s
    bus = EventBus(history=256, clock=lambda: next(clock))

    async def main() -> None:
        threads = [threading.Thread(target=bus.publish, args=("image", "tag", f"id{i}")) for i in range(300)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(bus.history()) == 256  # the ring buffer keeps the newest 256
        window = [e.time_nano // 10**9 async for e in bus.subscribe(since=100, until=102.5)]
        assert window == [100, 101, 102]
        assert [e async for e in bus.subscribe(since=0, until=10)] == []  # already dropped from the ring
        # no since/until: nothing replayed, live events only; the subscription exists before iteration
        live = bus.subscribe(filters={"event": ["pull"]})
        assert bus.subscriber_count == 1
        threading.Thread(target=bus.publish, args=("image", "tag", "x")).start()
        threading.Thread(target=bus.publish, args=("image", "pull", "alpine:latest")).start()
        got = await asyncio.wait_for(anext(aiter(live)), 5)
        assert (got.action, got.actor_id) == ("pull", "alpine:latest")
        live.close()
        assert bus.subscriber_count == 0
        dropped = bus.subscribe()
        assert bus.subscriber_count == 1
        del dropped  # never iterated: must not stay registered
        assert bus.subscriber_count == 0

    asyncio.run(main())


def test_event_filters() -> None:
    from berth.engine.events import Event, matches

    ev = Event("container", "exec_start: ls /", "abc123", {"name": "web", "image": "alpine:3.19", "a": "1"})
    assert matches(ev, {})
    assert matches(ev, {"event": ["exec_start"]}) and not matches(ev, {"event": ["start"]})
    assert matches(ev, {"container": ["abc"]}) and matches(ev, {"container": ["web"]})
    assert not matches(ev, {"container": ["other"]})
    assert matches(ev, {"image": ["alpine"]}) and matches(ev, {"image": ["alpine:3.19"]})
    assert matches(ev, {"label": ["a=1"]}) and matches(ev, {"label": ["a"]})
    assert not matches(ev, {"label": ["a=1", "b"]})  # every label must hold
    assert matches(ev, {"type": ["image", "container"], "scope": ["local"]})
    assert not matches(ev, {"type": ["container"], "event": ["die"]})
    img = Event("image", "tag", "sha256:" + "e" * 64, {"name": "docker.io/library/alpine:3.19"})
    assert matches(img, {"image": ["alpine"]}) and not matches(img, {"image": ["busybox"]})
