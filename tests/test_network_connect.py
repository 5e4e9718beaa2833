"""``docker network connect``/``disconnect`` of a running container does what a start does for that network: the
container's /etc/hosts and resolv.conf are rewritten in place and the embedded DNS server starts (or stops) in its
namespace, so a container started on the default bridge resolves containers of a user network it joins later.

Names are looked up only through the embedded server; nothing is forwarded off the host (the daemon's --dns is the
harness's loopback default)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from berth.testing import rootfs
from berth.testing.daemon import BerthDaemon, running
from berth.testing.waiting import until

pytestmark = [pytest.mark.root, pytest.mark.docker_cli]


@pytest.fixture(scope="module")
def d() -> Iterator[BerthDaemon]:
    with running(BerthDaemon(), rootfs.FIXTURES / "busybox-docker-save.tar") as daemon:
        yield daemon


def _ip(d: BerthDaemon, name: str, network: str) -> str:
    return str(json.loads(d.docker("inspect", name).stdout)[0]["NetworkSettings"]["Networks"][network]["IPAddress"])


def _nslookup(d: BerthDaemon, who: str, name: str) -> subprocess.CompletedProcess[str]:
    return d.docker("exec", who, "timeout", "5", "nslookup", name, check=False)


def _cat(d: BerthDaemon, who: str, path: str) -> str:
    return d.docker("exec", who, "cat", path).stdout


def test_connect_from_the_default_bridge_brings_dns(d: BerthDaemon) -> None:
    d.docker("network", "create", "nc-one")
    try:
        srv = d.docker("run", "-d", "--name", "nc-srv", "--network", "nc-one", "--network-alias", "web", "busybox",
                       "sleep", "120").stdout.strip()
        d.docker("run", "-d", "--name", "nc-cli", "busybox", "sleep", "120")
        srv_ip = _ip(d, "nc-srv", "nc-one")
        before = _cat(d, "nc-cli", "/etc/resolv.conf")
        assert "127.0.0.11" not in before
        assert _nslookup(d, "nc-cli", "nc-srv").returncode != 0

        d.docker("network", "connect", "--alias", "client", "nc-one", "nc-cli")
        cli_ip = _ip(d, "nc-cli", "nc-one")
        resolv = _cat(d, "nc-cli", "/etc/resolv.conf")
        assert "nameserver 127.0.0.11\n" in resolv
        hosts = _cat(d, "nc-cli", "/etc/hosts")
        assert f"{cli_ip}\t" in hosts and f"{_ip(d, 'nc-cli', 'bridge')}\t" in hosts
        for name in ("nc-srv", "web", srv[:12], "nc-srv.nc-one"):
            out = _nslookup(d, "nc-cli", name)
            assert out.returncode == 0 and f"Address: {srv_ip}" in out.stdout, (name, out)
        # the C library's resolver (busybox ping) reads the rewritten resolv.conf; the route is the new eth1
        assert d.docker("exec", "nc-cli", "ping", "-c1", "-W2", "web").returncode == 0
        # and the other side finds the newcomer by name and by its connect-time alias
        for name in ("nc-cli", "client"):
            out = _nslookup(d, "nc-srv", name)
            assert out.returncode == 0 and f"Address: {cli_ip}" in out.stdout, (name, out)

        # disconnect: back to what a start on the default bridge writes; the embedded server is gone
        d.docker("network", "disconnect", "nc-one", "nc-cli")
        assert _cat(d, "nc-cli", "/etc/resolv.conf") == before
        assert f"{cli_ip}\t" not in _cat(d, "nc-cli", "/etc/hosts")
        assert _nslookup(d, "nc-cli", "nc-srv").returncode != 0
        probe = d.docker("exec", "nc-cli", "nslookup", "nc-srv", "127.0.0.11", check=False)
        assert probe.returncode != 0

        # connecting again opens the sockets again
        d.docker("network", "connect", "nc-one", "nc-cli")
        out = _nslookup(d, "nc-cli", "web")
        assert out.returncode == 0 and f"Address: {srv_ip}" in out.stdout
    finally:
        d.docker("rm", "-f", "nc-srv", "nc-cli", check=False)
        d.docker("network", "rm", "nc-one", check=False)


def test_connect_a_second_user_network(d: BerthDaemon) -> None:
    d.docker("network", "create", "nc-a")
    d.docker("network", "create", "nc-b")
    try:
        d.docker("run", "-d", "--name", "nc-x", "--network", "nc-a", "busybox", "sleep", "120")
        d.docker("run", "-d", "--name", "nc-y", "--network", "nc-b", "busybox", "sleep", "120")
        y_ip = _ip(d, "nc-y", "nc-b")
        assert _nslookup(d, "nc-x", "nc-y").returncode != 0
        d.docker("network", "connect", "nc-b", "nc-x")
        out = _nslookup(d, "nc-x", "nc-y")
        assert out.returncode == 0 and f"Address: {y_ip}" in out.stdout
        assert f"{_ip(d, 'nc-x', 'nc-b')}\t" in _cat(d, "nc-x", "/etc/hosts")
        # leaving one of two user networks keeps the embedded server (still needed for nc-a)
        d.docker("network", "disconnect", "nc-b", "nc-x")
        assert "nameserver 127.0.0.11\n" in _cat(d, "nc-x", "/etc/resolv.conf")
        until(lambda: _nslookup(d, "nc-x", "nc-y").returncode != 0)
        d.docker("run", "-d", "--name", "nc-z", "--network", "nc-a", "busybox", "sleep", "120")
        out = _nslookup(d, "nc-x", "nc-z")
        assert out.returncode == 0 and f"Address: {_ip(d, 'nc-z', 'nc-a')}" in out.stdout
    finally:
        d.docker("rm", "-f", "nc-x", "nc-y", "nc-z", check=False)
        d.docker("network", "rm", "nc-a", "nc-b", check=False)
