"""The published-port warning: listeners read from /proc, the polling rules, and the warning end to end.

End to end (root, busybox; its nc has no ``-s``, so httpd plays the loopback-only app): a container whose app
listens only on 127.0.0.1 gets the warning on its stderr (an attached ``docker run`` shows it, ``docker logs``
keeps it), in inspect's ``Warnings`` and in berthd's log; one that listens on nothing gets "nothing ...
listens"; one that listens on 0.0.0.0 gets none.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator

import pytest

from berth.engine.portcheck import PublishedPort, diagnose, missing_warning, published_ports
from berth.network.listeners import Listener, listeners, parse_table
from berth.testing import rootfs
from berth.testing.daemon import BerthDaemon, running
from berth.testing.waiting import until

TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 10 0
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 10 0
   2: 0200A8C0:A2B4 0100A8C0:0050 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 10 0
"""
TCP6 = """  sl  local_address                         remote_address                        st tx_queue rx_queue
   0: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000
   1: 0000000000000000FFFF00000100007F:1F92 00000000000000000000000000000000:0000 0A 00000000:00000000
"""
UDP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref
  10: 0B00007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4 2 0 0
"""


def test_parse_proc_tables() -> None:
    assert parse_table(TCP, "tcp") == [Listener("tcp", "127.0.0.1", 8080), Listener("tcp", "0.0.0.0", 80)]
    v6 = parse_table(TCP6, "tcp")
    assert v6 == [Listener("tcp", "::1", 8081), Listener("tcp", "::ffff:127.0.0.1", 8082)]
    assert all(li.loopback_only for li in v6)
    assert parse_table(UDP, "udp") == [Listener("udp", "127.0.0.11", 53)]
    assert Listener("tcp", "0.0.0.0", 80).wildcard and not Listener("tcp", "::", 80).loopback_only


def test_listeners_of_this_process() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert Listener("tcp", "127.0.0.1", port) in listeners(os.getpid())
    assert listeners(2**22 + 12345) == []  # no such process


def test_published_ports() -> None:
    doc = {"HostConfig": {"PortBindings": {"8080/tcp": [{"HostPort": "1"}], "53/udp": None}, "PublishAllPorts": True},
           "Config": {"ExposedPorts": {"9000/tcp": {}, "8080/tcp": {}}}}
    assert published_ports(doc) == [PublishedPort(53, "udp"), PublishedPort(8080, "tcp"), PublishedPort(9000, "tcp")]
    for mode in ("host", "none", "container:abc"):
        assert published_ports({"HostConfig": {"NetworkMode": mode, "PortBindings": {"80/tcp": []}}}) == []


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_diagnose_rules() -> None:
    web, dns = PublishedPort(8080, "tcp"), PublishedPort(53, "udp")
    clock = FakeClock()

    def read() -> list[Listener]:
        # the app opens 8080 on loopback after 0.5 s; nothing ever binds 53/udp
        return [Listener("tcp", "127.0.0.1", 8080), Listener("tcp", "::1", 8080)] if clock.now >= 0.5 else []

    warnings = diagnose([web, dns], read, grace=5, settle=1, clock=clock, sleep=clock.sleep)
    assert warnings == [
        "WARNING: published port 8080/tcp: the app in the container listens only on 127.0.0.1:8080 and [::1]:8080, "
        "so connections from outside the container cannot reach it; make it listen on 0.0.0.0 "
        '(Flask: app.run(host="0.0.0.0"))',
        missing_warning(dns),
    ]
    assert missing_warning(dns) == "WARNING: published port 53/udp: nothing in the container listens on 53/udp yet"
    assert 5 <= clock.now < 5.5

    # a reachable listener ends the poll at once; a loopback one that moves to 0.0.0.0 in time is fine
    clock = FakeClock()

    def moving() -> list[Listener]:
        return [Listener("tcp", "127.0.0.1" if clock.now < 0.5 else "0.0.0.0", 8080)]

    assert diagnose([web], moving, grace=5, settle=1, clock=clock, sleep=clock.sleep) == []
    assert clock.now < 1
    # the container went away: no warning
    assert diagnose([web], list, grace=5, clock=clock, sleep=clock.sleep, alive=lambda: False) == []


# --- end to end ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def daemon() -> Iterator[BerthDaemon]:
    if os.geteuid() != 0:
        pytest.skip("runs containers: needs root")
    with running(BerthDaemon(), rootfs.FIXTURES / "busybox-docker-save.tar") as d:
        yield d


def _inspect(d: BerthDaemon, name: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads(d.docker("inspect", name).stdout)[0]
    return doc


def _wait_warnings(d: BerthDaemon, name: str) -> list[str]:
    found = until(lambda: _inspect(d, name).get("Warnings"), what=f"warnings on {name}", interval=0.2)
    assert isinstance(found, list)
    return [str(w) for w in found]


@pytest.mark.root
def test_warnings_end_to_end(daemon: BerthDaemon) -> None:
    run = ("run", "-d", "-p", "127.0.0.1::8080")
    daemon.docker(*run, "--name", "lo", "busybox", "httpd", "-f", "-p", "127.0.0.1:8080")
    daemon.docker(*run, "--name", "idle", "busybox", "sleep", "60")
    daemon.docker(*run, "--name", "good", "busybox", "nc", "-l", "-p", "8080")
    daemon.docker("run", "-d", "--name", "unpublished", "busybox", "sleep", "60")
    try:
        lo = _wait_warnings(daemon, "lo")
        assert lo == ["WARNING: published port 8080/tcp: the app in the container listens only on 127.0.0.1:8080, "
                      "so connections from outside the container cannot reach it; make it listen on 0.0.0.0 "
                      '(Flask: app.run(host="0.0.0.0"))']
        logs = daemon.docker("logs", "lo")
        assert lo[0] in logs.stderr and lo[0] not in logs.stdout
        assert _wait_warnings(daemon, "idle") == [
            "WARNING: published port 8080/tcp: nothing in the container listens on 8080/tcp yet"]
        assert "nothing in the container listens on 8080/tcp yet" in daemon.docker("logs", "idle").stderr
        assert "Warnings" not in _inspect(daemon, "good")
        assert "Warnings" not in _inspect(daemon, "unpublished")
        assert "listens only on 127.0.0.1:8080" in daemon.log()
    finally:
        daemon.docker("rm", "-f", "lo", "idle", "good", "unpublished", check=False)


@pytest.mark.root
def test_attached_run_shows_the_warning(daemon: BerthDaemon) -> None:
    out = daemon.docker("run", "--rm", "-p", "127.0.0.1::8080", "busybox", "sh", "-c",
                        "httpd -p 127.0.0.1:8080; sleep 2.5; echo done")
    assert "the app in the container listens only on 127.0.0.1:8080" in out.stderr
    assert out.stdout.strip() == "done"
