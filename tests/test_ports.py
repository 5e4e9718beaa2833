"""Published ports through the real docker CLI and docker-py: -p (tcp, udp, a given host address), -P and random
host ports, inspect/ps/`docker port`, Docker's error for a port that is taken (by a container or a host socket)
with nothing left behind, release at stop, and a daemon SIGKILL + restart that keeps serving (established flows too).

Only loopback is used from the host side."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from berth.kernel.netlink import run_in_netns
from berth.testing.rootfs import FIXTURES
from berth.testing.waiting import free_port, until

BUSYBOX = FIXTURES / "busybox-docker-save.tar"
HTTPD = ["sh", "-c", "mkdir -p /www && echo served > /www/index.html && exec httpd -f -p 8080 -h /www"]

pytestmark = [pytest.mark.root, pytest.mark.docker_cli]


@pytest.fixture(scope="module")
def daemon(shared_berthd: Any) -> Any:
    shared_berthd.docker("load", "-i", str(BUSYBOX))
    return shared_berthd


def _get(port: int, host: str = "127.0.0.1") -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/", timeout=3) as r:
        return str(r.read().decode()).strip()


def _inspect(daemon: Any, name: str) -> Any:
    return json.loads(daemon.docker("inspect", name).stdout)[0]


def _table(daemon: Any) -> str:
    res = subprocess.run(["nft", "list", "table", "ip", daemon.network_prefix], capture_output=True, text=True,
                         check=False)
    return res.stdout


def _links(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    return sorted(n for n in (line.split(":")[1].strip().split("@")[0] for line in out.splitlines())
                  if n.startswith(prefix))


def test_publish_fixed_port(daemon: Any) -> None:
    port = free_port("0.0.0.0")
    try:
        daemon.docker("run", "-d", "--name", "np-web", "-p", f"{port}:8080", "busybox", *HTTPD)
        assert until(lambda: _get(port), ignore=(OSError,)) == "served"
        doc = _inspect(daemon, "np-web")
        assert doc["NetworkSettings"]["Ports"] == {"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]}
        assert doc["HostConfig"]["PortBindings"] == {"8080/tcp": [{"HostIp": "", "HostPort": str(port)}]}
        assert daemon.docker("port", "np-web").stdout.strip() == f"8080/tcp -> 0.0.0.0:{port}"
        assert daemon.docker("port", "np-web", "8080").stdout.strip() == f"0.0.0.0:{port}"
        ps = daemon.docker("ps", "--filter", "name=np-web", "--format", "{{.Ports}}").stdout.strip()
        assert ps == f"0.0.0.0:{port}->8080/tcp"
        assert f"tcp dport {port} dnat to" in _table(daemon)

        # taken by a container: Docker's error, the container stays created, nothing is left behind
        before = _links(daemon.network_prefix)
        res = daemon.docker("run", "-d", "--name", "np-clash", "-p", f"{port}:80", "busybox", "sleep", "30",
                            check=False)
        assert res.returncode != 0
        cid = _inspect(daemon, "np-clash")["Id"]
        assert "driver failed programming external connectivity on endpoint np-clash (" in res.stderr
        assert f"Bind for 0.0.0.0:{port} failed: port is already allocated" in res.stderr
        clash = _inspect(daemon, "np-clash")
        assert clash["State"]["Status"] == "created" and "port is already allocated" in clash["State"]["Error"]
        until(lambda: set(_links(daemon.network_prefix)) <= set(before))
        assert not (daemon.exec_root / "netns" / cid).exists()
        assert _get(port) == "served"
        # --rm with a taken port removes the container, like dockerd
        res = daemon.docker("run", "--rm", "-p", f"{port}:80", "busybox", "true", check=False)
        assert res.returncode != 0 and "port is already allocated" in res.stderr
        # the stop releases the port: the other container can have it now
        daemon.docker("stop", "-t", "0", "np-web")
        assert f"dport {port} " not in _table(daemon)
        daemon.docker("rm", "np-clash")
        daemon.docker("run", "-d", "--name", "np-clash", "-p", f"{port}:8080", "busybox", *HTTPD)
        assert until(lambda: _get(port), ignore=(OSError,)) == "served"
    finally:
        daemon.docker("rm", "-f", "np-web", "np-clash", check=False)
    assert f"dport {port} " not in _table(daemon)


def test_port_taken_by_a_host_socket(daemon: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        res = daemon.docker("run", "--rm", "-p", f"{port}:80", "busybox", "true", check=False)
        assert res.returncode != 0
        assert f"Bind for 0.0.0.0:{port} failed: port is already allocated" in res.stderr


def test_publish_all_and_random_ports(daemon: Any) -> None:
    try:
        daemon.docker("run", "-d", "--name", "np-rand", "--expose", "8080", "--expose", "9999/udp", "-P",
                      "busybox", *HTTPD)
        ports = _inspect(daemon, "np-rand")["NetworkSettings"]["Ports"]
        assert set(ports) == {"8080/tcp", "9999/udp"}
        host_port = int(ports["8080/tcp"][0]["HostPort"])
        assert 32768 <= host_port <= 60999 and ports["8080/tcp"][0]["HostIp"] == "0.0.0.0"
        assert 32768 <= int(ports["9999/udp"][0]["HostPort"]) <= 60999
        assert until(lambda: _get(host_port), ignore=(OSError,)) == "served"
        shown = daemon.docker("port", "np-rand", "8080/tcp").stdout.strip()
        assert shown == f"0.0.0.0:{host_port}"
        listed = json.loads(daemon.docker("ps", "--filter", "name=np-rand", "--format", "{{json .}}").stdout)
        assert f"0.0.0.0:{host_port}->8080/tcp" in listed["Ports"]
        # an exposed port without -P is listed but not published
        daemon.docker("run", "-d", "--name", "np-exp", "--expose", "7000", "-p", "8080", "busybox", *HTTPD)
        doc = _inspect(daemon, "np-exp")["NetworkSettings"]["Ports"]
        assert doc["7000/tcp"] is None and int(doc["8080/tcp"][0]["HostPort"]) >= 32768
    finally:
        daemon.docker("rm", "-f", "np-rand", "np-exp", check=False)


def test_publish_on_one_address(daemon: Any) -> None:
    port = free_port("0.0.0.0")
    try:
        daemon.docker("run", "-d", "--name", "np-lo", "-p", f"127.0.0.1:{port}:8080", "busybox", *HTTPD)
        assert until(lambda: _get(port), ignore=(OSError,)) == "served"
        with pytest.raises(OSError):
            _get(port, "127.0.0.2")
        ports = _inspect(daemon, "np-lo")["NetworkSettings"]["Ports"]
        assert ports == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}
        # another address on the same port is a different binding; 0.0.0.0 clashes with it
        res = daemon.docker("run", "--rm", "-p", f"{port}:80", "busybox", "true", check=False)
        assert "port is already allocated" in res.stderr
    finally:
        daemon.docker("rm", "-f", "np-lo", check=False)


def test_publish_udp(daemon: Any) -> None:
    port = free_port("0.0.0.0")
    try:
        daemon.docker("run", "-d", "--name", "np-udp", "-p", f"{port}:5353/udp", "busybox", "sleep", "300")
        sandbox = Path(_inspect(daemon, "np-udp")["NetworkSettings"]["SandboxKey"])
        # a UDP server inside the container's network namespace (busybox has none): this thread's socket
        server = run_in_netns(sandbox, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        try:
            server.bind(("0.0.0.0", 5353))
            server.settimeout(5)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.sendto(b"ping", ("127.0.0.1", port))
                data, _addr = server.recvfrom(100)
            assert data == b"ping"
        finally:
            server.close()
        assert _inspect(daemon, "np-udp")["NetworkSettings"]["Ports"] == {
            "5353/udp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]}
    finally:
        daemon.docker("rm", "-f", "np-udp", check=False)


def test_bad_port_specs(daemon: Any) -> None:
    res = daemon.docker("run", "--rm", "-p", "1:2/xyz", "busybox", "true", check=False)
    assert res.returncode != 0
    res = daemon.docker("run", "--rm", "--network", "host", "-p", "8080:80", "busybox", "true", check=False)
    assert res.returncode == 0  # Docker discards published ports in host mode


def test_ports_survive_daemon_kill(berthd: Any) -> None:
    berthd.docker("load", "-i", str(BUSYBOX))
    port, echo_port = free_port("0.0.0.0"), free_port("0.0.0.0")
    berthd.docker("run", "-d", "--name", "np-live", "-p", f"{port}:8080", "-p", f"{echo_port}:7000", "busybox",
                  "sh", "-c", "mkdir /www && echo alive > /www/index.html && httpd -p 8080 -h /www && "
                  "exec nc -ll -p 7000 -e cat")
    assert until(lambda: _get(port), ignore=(OSError,)) == "alive"
    conn = until(lambda: socket.create_connection(("127.0.0.1", echo_port), timeout=5), ignore=(OSError,))
    try:
        def echo(data: bytes) -> bytes:
            conn.sendall(data)
            return bytes(conn.recv(100))
        assert until(lambda: echo(b"a\n"), ignore=(OSError,)) == b"a\n"
        berthd.kill()
        assert _get(port) == "alive"
        assert echo(b"b\n") == b"b\n"
        berthd.start()
        doc = _inspect(berthd, "np-live")
        assert doc["NetworkSettings"]["Ports"]["8080/tcp"] == [{"HostIp": "0.0.0.0", "HostPort": str(port)}]
        assert echo(b"c\n") == b"c\n"  # the rebuilt table kept the established flow
        assert _get(port) == "alive"
    finally:
        conn.close()
    berthd.docker("rm", "-f", "np-live")
    assert f"dport {port} " not in _table(berthd)


def test_docker_py_random_port(daemon: Any) -> None:
    client = daemon.client()
    c = client.containers.run("busybox", "httpd -f -p 8080", ports={"8080/tcp": None}, detach=True)
    try:
        c.reload()
        host_port = int(c.ports["8080/tcp"][0]["HostPort"])
        assert c.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
        assert client.api.port(c.id, 8080)[0]["HostPort"] == str(host_port)

        def fetch() -> int:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{host_port}/", timeout=3) as r:
                    return int(r.status)
            except urllib.error.HTTPError as e:  # busybox httpd with no index: 404 still proves the path
                return int(e.code)
        assert until(fetch, ignore=(OSError,)) in (200, 404)
    finally:
        c.remove(force=True)


def test_published_port_reachable_from_another_network(daemon: Any) -> None:
    """Networks are isolated from each other, but a published port is public: a container on another network
    reaches it through a host address (its own gateway), as through Docker's proxy; direct traffic stays dropped."""
    port = free_port("0.0.0.0")
    daemon.docker("network", "create", "np-a")
    daemon.docker("network", "create", "np-b")
    try:
        daemon.docker("run", "-d", "--name", "np-pub", "--network", "np-a", "-p", f"{port}:8080", "busybox", *HTTPD)
        until(lambda: _get(port), ignore=(OSError,))
        daemon.docker("run", "-d", "--name", "np-probe", "--network", "np-b", "busybox", "sleep", "60")
        gateway = _inspect(daemon, "np-probe")["NetworkSettings"]["Networks"]["np-b"]["Gateway"]
        direct = _inspect(daemon, "np-pub")["NetworkSettings"]["Networks"]["np-a"]["IPAddress"]
        # (this busybox's wget -T crashes: busybox's own timeout applet bounds the tries instead)
        res = daemon.docker("exec", "np-probe", "timeout", "5", "wget", "-qO-", f"http://{gateway}:{port}/",
                            check=False)
        assert res.returncode == 0 and res.stdout.strip() == "served", res
        res = daemon.docker("exec", "np-probe", "timeout", "2", "wget", "-qO-", f"http://{direct}:8080/",
                            check=False)
        assert res.returncode != 0
    finally:
        daemon.docker("rm", "-f", "np-pub", "np-probe", check=False)
        daemon.docker("network", "rm", "np-a", "np-b", check=False)
