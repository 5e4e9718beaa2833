"""Bridge networking through the real docker CLI: the predefined networks, container addresses and routes,
reachability between containers and from the host, --network none|host|container:, user-defined networks
(create/ls/inspect/rm/prune, connect/disconnect, --ip, aliases, isolation, --internal), nothing left behind,
and a daemon SIGKILL that leaves running containers' networks alone. Pure IPAM and firewall rendering too.

Traffic only goes to loopback and to addresses of networks these tests' daemons create."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from berth.network import firewall, ipam
from berth.testing.rootfs import FIXTURES
from berth.testing.waiting import until

BUSYBOX = FIXTURES / "busybox-docker-save.tar"


# --- pure parts -------------------------------------------------------------------------------------------------


def test_pick_subnet_skips_used_networks() -> None:
    used = [ipaddress.IPv4Network("172.17.0.0/16"), ipaddress.IPv4Network("172.18.5.0/24")]
    assert ipam.pick_subnet(used) == ipaddress.IPv4Network("172.19.0.0/16")
    everything = [ipaddress.IPv4Network("172.16.0.0/12"), ipaddress.IPv4Network("192.168.0.0/19")]
    assert ipam.pick_subnet(everything) == ipaddress.IPv4Network("192.168.32.0/20")


def test_pool_addresses() -> None:
    pool = ipam.parse_pool("10.9.0.0/24", "10.9.0.254", "10.9.0.128/25")
    assert ipam.next_address(pool, []) == ipaddress.IPv4Address("10.9.0.129")
    small = ipam.parse_pool("10.9.1.0/30")
    assert small.gateway == ipaddress.IPv4Address("10.9.1.1")
    assert ipam.next_address(small, []) == ipaddress.IPv4Address("10.9.1.2")
    with pytest.raises(Exception, match="no available IPv4 addresses"):
        ipam.next_address(small, [ipaddress.IPv4Address("10.9.1.2")])
    with pytest.raises(Exception, match="Address already in use"):
        ipam.check_requested(small, ipaddress.IPv4Address("10.9.1.1"), [])
    assert ipam.mac_for(ipaddress.IPv4Address("172.17.0.2")) == "02:42:ac:11:00:02"
    with pytest.raises(Exception, match="invalid CIDR address"):
        ipam.parse_pool("10.9.0.0/33")


def test_host_networks_from_procfs(tmp_path: Path) -> None:
    route = tmp_path / "route"
    route.write_text("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
                     "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
                     "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n")
    assert ipam.host_networks(route) == [ipaddress.IPv4Network("192.0.2.0/24")]


def test_firewall_render_is_valid_nft() -> None:
    nets = [firewall.NetworkRule("ztest0", ipaddress.IPv4Network("10.77.0.0/16")),
            firewall.NetworkRule("ztest-1", ipaddress.IPv4Network("10.78.0.0/16"), internal=True)]
    ports = [firewall.PortRule("tcp", "0.0.0.0", 18080, ipaddress.IPv4Address("10.77.0.2"), 80, "ztest0"),
             firewall.PortRule("udp", "127.0.0.1", 18081, ipaddress.IPv4Address("10.77.0.2"), 53, "ztest0")]
    script = firewall.render("ztestfw", nets, ports)
    assert "fib daddr type local tcp dport 18080 dnat to 10.77.0.2:80" in script
    assert "ip daddr 127.0.0.1 udp dport 18081 dnat to 10.77.0.2:53" in script
    assert 'iifname "ztest-1" oifname != "ztest-1" drop' in script
    check = subprocess.run(["nft", "-c", "-f", "-"], input=script.encode(), capture_output=True, check=False)
    assert check.returncode == 0, check.stderr.decode()


# --- through the docker CLI ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(shared_berthd: Any) -> Any:
    shared_berthd.docker("load", "-i", str(BUSYBOX))
    return shared_berthd


def _inspect(daemon: Any, *names: str) -> Any:
    out = json.loads(daemon.docker("inspect", *names).stdout)
    return out if len(names) > 1 else out[0]


def _links(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]
    return [n for n in names if n.startswith(prefix)]


def _http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return str(r.read().decode())


def _serve(daemon: Any, name: str, *args: str, text: str = "hello") -> None:
    """A busybox httpd on port 8080 that serves ``text`` at /index.html."""
    daemon.docker("run", "-d", "--name", name, *args, "busybox", "sh", "-c",
                  f"mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p 8080 -h /www")


@pytest.mark.root
@pytest.mark.docker_cli
def test_predefined_networks(daemon: Any) -> None:
    ls = daemon.docker("network", "ls", "--format", "{{.Name}} {{.Driver}} {{.Scope}}").stdout.split("\n")
    assert {"bridge bridge local", "host host local", "none null local"} <= set(ls)
    bridge = json.loads(daemon.docker("network", "inspect", "bridge").stdout)[0]
    cfg = bridge["IPAM"]["Config"][0]
    subnet = ipaddress.IPv4Network(cfg["Subnet"])
    assert ipaddress.IPv4Address(cfg["Gateway"]) in subnet
    assert bridge["Options"]["com.docker.network.bridge.name"] == f"{daemon.network_prefix}0"
    assert bridge["Options"]["com.docker.network.bridge.default_bridge"] == "true"
    assert bridge["Driver"] == "bridge" and bridge["Scope"] == "local" and len(bridge["Id"]) == 64
    for name in ("bridge", "host", "none"):
        res = daemon.docker("network", "rm", name, check=False)
        assert res.returncode != 0
        assert f"{name} is a pre-defined network and cannot be removed" in res.stderr
    custom = daemon.docker("network", "ls", "-q", "--filter", "type=custom").stdout.split()
    assert bridge["Id"][:12] not in custom
    builtin = daemon.docker("network", "ls", "--filter", "type=builtin", "--format", "{{.Name}}").stdout.split()
    assert sorted(builtin) == ["bridge", "host", "none"]


@pytest.mark.root
@pytest.mark.docker_cli
def test_default_bridge_container(daemon: Any) -> None:
    bridge = json.loads(daemon.docker("network", "inspect", "bridge").stdout)[0]
    subnet = ipaddress.IPv4Network(bridge["IPAM"]["Config"][0]["Subnet"])
    gateway = bridge["IPAM"]["Config"][0]["Gateway"]
    out = daemon.docker("run", "--rm", "busybox", "sh", "-c", "ip -o -4 addr show eth0; ip route; ip -o link show lo")
    assert f"default via {gateway} dev eth0" in out.stdout
    addr = ipaddress.IPv4Interface(out.stdout.split("inet ")[1].split()[0])
    assert addr.network == subnet
    assert "UP" in out.stdout.split("lo:")[1]
    try:
        _serve(daemon, "nb-web", text="from-web")
        doc = _inspect(daemon, "nb-web")
        ns = doc["NetworkSettings"]
        ip = ns["IPAddress"]
        assert ipaddress.IPv4Address(ip) in subnet
        assert ns["Gateway"] == gateway and ns["IPPrefixLen"] == subnet.prefixlen
        assert ns["MacAddress"] == ipam.mac_for(ipaddress.IPv4Address(ip))
        ep = ns["Networks"]["bridge"]
        assert ep["NetworkID"] == bridge["Id"] and len(ep["EndpointID"]) == 64 and ep["IPAddress"] == ip
        assert ns["SandboxKey"] and Path(ns["SandboxKey"]).exists()
        # the host reaches the container; another container reaches it by IP
        assert until(lambda: _http_get(f"http://{ip}:8080/"), ignore=(OSError,)).strip() == "from-web"
        got = daemon.docker("run", "--rm", "busybox", "wget", "-qO-", f"http://{ip}:8080/").stdout
        assert got.strip() == "from-web"
        net = json.loads(daemon.docker("network", "inspect", "bridge").stdout)[0]
        assert net["Containers"][doc["Id"]]["IPv4Address"] == f"{ip}/{subnet.prefixlen}"
        listed = json.loads(daemon.docker("ps", "--no-trunc", "--filter", "name=nb-web", "--format",
                                          "{{json .Networks}}").stdout)
        assert listed == "bridge"
        until(lambda: len([n for n in _links(daemon.network_prefix) if n != f"{daemon.network_prefix}0"]) == 1)
    finally:
        daemon.docker("rm", "-f", "nb-web", check=False)
    # nothing left: no veth, no namespace file, the endpoint gone from the network
    until(lambda: _links(daemon.network_prefix) == [f"{daemon.network_prefix}0"])
    assert not list((daemon.exec_root / "netns").iterdir())
    assert json.loads(daemon.docker("network", "inspect", "bridge").stdout)[0]["Containers"] == {}


@pytest.mark.root
@pytest.mark.docker_cli
def test_stop_releases_and_restart_gets_a_new_endpoint(daemon: Any) -> None:
    try:
        daemon.docker("run", "-d", "--name", "nb-stop", "busybox", "sleep", "300")
        first = _inspect(daemon, "nb-stop")["NetworkSettings"]
        assert first["IPAddress"]
        daemon.docker("stop", "-t", "0", "nb-stop")
        stopped = _inspect(daemon, "nb-stop")["NetworkSettings"]
        assert stopped["IPAddress"] == "" and stopped["SandboxKey"] == ""
        assert stopped["Networks"]["bridge"]["NetworkID"] == first["Networks"]["bridge"]["NetworkID"]
        until(lambda: _links(daemon.network_prefix) == [f"{daemon.network_prefix}0"])
        daemon.docker("start", "nb-stop")
        again = _inspect(daemon, "nb-stop")["NetworkSettings"]
        assert again["IPAddress"] and again["EndpointID"] != first["EndpointID"]
    finally:
        daemon.docker("rm", "-f", "nb-stop", check=False)


@pytest.mark.root
@pytest.mark.docker_cli
def test_none_host_and_container_modes(daemon: Any) -> None:
    out = daemon.docker("run", "--rm", "--network", "none", "busybox", "ip", "-o", "link").stdout
    assert [line.split(":")[1].strip() for line in out.splitlines()] == ["lo"]
    assert "UP" in out
    host_links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    out = daemon.docker("run", "--rm", "--network", "host", "busybox", "ip", "-o", "link").stdout
    assert len(out.splitlines()) == len(host_links.splitlines())
    try:
        daemon.docker("run", "-d", "--name", "nb-owner", "busybox", "sleep", "300")
        ip = _inspect(daemon, "nb-owner")["NetworkSettings"]["IPAddress"]
        out = daemon.docker("run", "--rm", "--network", "container:nb-owner", "busybox", "ip", "-o", "-4",
                            "addr", "show", "eth0").stdout
        assert f"inet {ip}/" in out
        joined = _inspect(daemon, "nb-owner")
        assert joined["HostConfig"]["NetworkMode"] == "bridge"
        cid = daemon.docker("create", "--network", "none", "busybox", "true").stdout.strip()
        assert list(_inspect(daemon, cid)["NetworkSettings"]["Networks"]) == ["none"]
        daemon.docker("rm", cid)
    finally:
        daemon.docker("rm", "-f", "nb-owner", check=False)
    res = daemon.docker("run", "--rm", "--network", "nosuchnet", "busybox", "true", check=False)
    assert res.returncode != 0 and "network nosuchnet not found" in res.stderr


@pytest.mark.root
@pytest.mark.docker_cli
def test_user_networks(daemon: Any) -> None:
    prefix = daemon.network_prefix
    try:
        nid = daemon.docker("network", "create", "--subnet", "10.231.7.0/24", "--gateway", "10.231.7.254",
                            "--label", "team=a", "nb-one").stdout.strip()
        assert len(nid) == 64
        daemon.docker("network", "create", "nb-two")
        res = daemon.docker("network", "create", "nb-one", check=False)
        assert res.returncode != 0 and "network with name nb-one already exists" in res.stderr
        res = daemon.docker("network", "create", "--subnet", "10.231.7.128/25", "nb-overlap", check=False)
        assert res.returncode != 0 and "Pool overlaps" in res.stderr
        one = json.loads(daemon.docker("network", "inspect", "nb-one").stdout)[0]
        assert one["IPAM"]["Config"] == [{"Subnet": "10.231.7.0/24", "Gateway": "10.231.7.254"}]
        assert one["Labels"] == {"team": "a"} and one["Internal"] is False
        assert f"{prefix}-{nid[:8]}" in _links(prefix)
        names = daemon.docker("network", "ls", "--filter", "label=team=a", "--format", "{{.Name}}").stdout.split()
        assert names == ["nb-one"]
        names = daemon.docker("network", "ls", "--filter", "name=nb-", "--format", "{{.Name}}").stdout.split()
        assert sorted(names) == ["nb-one", "nb-two"]
        assert daemon.docker("network", "ls", "-q", "--filter", f"id={nid[:10]}").stdout.split() == [nid[:12]]

        _serve(daemon, "nb-a", "--network", "nb-one", "--ip", "10.231.7.50", "--network-alias", "web",
               text="on-one")
        a = _inspect(daemon, "nb-a")
        ep = a["NetworkSettings"]["Networks"]["nb-one"]
        assert ep["IPAddress"] == "10.231.7.50" and ep["Gateway"] == "10.231.7.254"
        assert "web" in ep["Aliases"] and a["Id"][:12] in ep["Aliases"]
        assert ep["DNSNames"][:2] == ["nb-a", a["Id"][:12]]
        assert ep["IPAMConfig"] == {"IPv4Address": "10.231.7.50"}
        assert a["NetworkSettings"]["IPAddress"] == ""  # top-level fields are the default bridge's
        route = daemon.docker("exec", "nb-a", "ip", "route").stdout
        assert "default via 10.231.7.254" in route
        # same network: reachable; another user network: isolated; the default bridge: isolated
        got = daemon.docker("run", "--rm", "--network", "nb-one", "busybox", "wget", "-qO-",
                            "http://10.231.7.50:8080/").stdout
        assert got.strip() == "on-one"
        res = daemon.docker("run", "--rm", "--network", "nb-two", "busybox", "wget", "-T", "1", "-qO-",
                            "http://10.231.7.50:8080/", check=False)
        assert res.returncode != 0
        res = daemon.docker("run", "--rm", "busybox", "wget", "-T", "1", "-qO-", "http://10.231.7.50:8080/",
                            check=False)
        assert res.returncode != 0
        res = daemon.docker("run", "--rm", "--network", "nb-one", "--ip", "10.231.7.50", "busybox", "true",
                            check=False)
        assert res.returncode != 0 and "Address already in use" in res.stderr
        res = daemon.docker("run", "--rm", "--ip", "172.17.9.9", "busybox", "true", check=False)
        assert "user specified IP address is supported on user defined networks only" in res.stderr

        net = json.loads(daemon.docker("network", "inspect", "nb-one").stdout)[0]
        assert net["Containers"][a["Id"]]["Name"] == "nb-a"
        res = daemon.docker("network", "rm", "nb-one", check=False)
        assert res.returncode != 0
        assert f"error while removing network: network nb-one id {nid} has active endpoints" in res.stderr

        # hot-plug: a container on nb-two joins nb-one and reaches nb-a, then leaves
        daemon.docker("run", "-d", "--name", "nb-b", "--network", "nb-two", "busybox", "sleep", "300")
        daemon.docker("network", "connect", "--alias", "client", "nb-one", "nb-b")
        b = _inspect(daemon, "nb-b")
        assert set(b["NetworkSettings"]["Networks"]) == {"nb-one", "nb-two"}
        assert "client" in b["NetworkSettings"]["Networks"]["nb-one"]["Aliases"]
        assert "eth1" in daemon.docker("exec", "nb-b", "ip", "-o", "link").stdout
        got = daemon.docker("exec", "nb-b", "wget", "-qO-", "http://10.231.7.50:8080/").stdout
        assert got.strip() == "on-one"
        res = daemon.docker("network", "connect", "nb-one", "nb-b", check=False)
        assert "endpoint with name nb-b already exists in network nb-one" in res.stderr
        daemon.docker("network", "disconnect", "nb-one", "nb-b")
        assert "eth1" not in daemon.docker("exec", "nb-b", "ip", "-o", "link").stdout
        assert set(_inspect(daemon, "nb-b")["NetworkSettings"]["Networks"]) == {"nb-two"}
        assert daemon.docker("ps", "-q", "--filter", "network=nb-two").stdout.split() == [b["Id"][:12]]
    finally:
        daemon.docker("rm", "-f", "nb-a", "nb-b", check=False)
        daemon.docker("network", "rm", "nb-one", "nb-two", check=False)
    until(lambda: _links(prefix) == [f"{prefix}0"])
    assert "nb-one" not in daemon.docker("network", "ls").stdout


@pytest.mark.root
@pytest.mark.docker_cli
def test_internal_network_and_prune(daemon: Any) -> None:
    try:
        daemon.docker("network", "create", "--internal", "--subnet", "10.231.8.0/24", "nb-int")
        daemon.docker("network", "create", "--label", "keep=yes", "nb-keep")
        daemon.docker("network", "create", "nb-drop")
        assert json.loads(daemon.docker("network", "inspect", "nb-int").stdout)[0]["Internal"] is True
        out = daemon.docker("run", "--rm", "--network", "nb-int", "busybox", "ip", "route").stdout
        assert "default" not in out and "10.231.8.0/24" in out
        table = subprocess.run(["nft", "list", "table", "ip", daemon.network_prefix], capture_output=True,
                               text=True, check=True).stdout
        bridge = json.loads(daemon.docker("network", "inspect", "nb-int").stdout)[0]["Id"][:8]
        assert f'iifname "{daemon.network_prefix}-{bridge}" oifname != "{daemon.network_prefix}-{bridge}" drop' \
            in table
        out = daemon.docker("network", "prune", "-f", "--filter", "label!=keep=yes").stdout
        assert "nb-drop" in out and "nb-int" in out and "nb-keep" not in out
        names = daemon.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
        assert "nb-keep" in names and "nb-drop" not in names
    finally:
        daemon.docker("network", "rm", "nb-int", "nb-keep", "nb-drop", check=False)


@pytest.mark.root
@pytest.mark.docker_cli
def test_network_survives_daemon_kill(berthd: Any) -> None:
    berthd.docker("load", "-i", str(BUSYBOX))
    berthd.docker("network", "create", "nb-live")
    berthd.docker("run", "-d", "--name", "nb-keep", "--network", "nb-live", "busybox", "sh", "-c",
                  "echo alive > /i.html && exec httpd -f -p 8080 -h /")
    ip = _inspect(berthd, "nb-keep")["NetworkSettings"]["Networks"]["nb-live"]["IPAddress"]
    assert until(lambda: _http_get(f"http://{ip}:8080/i.html"), ignore=(OSError,)).strip() == "alive"
    berthd.kill()
    assert _http_get(f"http://{ip}:8080/i.html").strip() == "alive"
    berthd.start()
    doc = _inspect(berthd, "nb-keep")
    assert doc["State"]["Running"] and doc["NetworkSettings"]["Networks"]["nb-live"]["IPAddress"] == ip
    assert _http_get(f"http://{ip}:8080/i.html").strip() == "alive"
    # a second container still gets a different address, and the stop after the restart cleans up
    berthd.docker("run", "--rm", "--network", "nb-live", "busybox", "wget", "-qO-", f"http://{ip}:8080/i.html")
    berthd.docker("rm", "-f", "nb-keep")
    berthd.docker("network", "rm", "nb-live")
    until(lambda: _links(berthd.network_prefix) == [f"{berthd.network_prefix}0"])


@pytest.mark.root
@pytest.mark.docker_cli
def test_berth_cli_network_commands(daemon: Any) -> None:
    import sys

    berth_bin = str(Path(sys.executable).parent / "berth")

    def berth(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([berth_bin, "-H", daemon.host, *args], capture_output=True, text=True, timeout=60,
                              check=False)
    try:
        nid = berth("network", "create", "--subnet", "10.231.9.0/24", "--label", "x=y", "nb-cli").stdout.strip()
        assert len(nid) == 64
        for args in (("network", "ls"), ("network", "ls", "-q", "--filter", "label=x=y"),
                     ("network", "inspect", "nb-cli")):
            assert berth(*args).stdout == daemon.docker(*args).stdout
        daemon.docker("run", "-d", "--name", "nb-clic", "busybox", "sleep", "300")
        assert berth("network", "connect", "--ip", "10.231.9.9", "nb-cli", "nb-clic").returncode == 0
        assert _inspect(daemon, "nb-clic")["NetworkSettings"]["Networks"]["nb-cli"]["IPAddress"] == "10.231.9.9"
        res = berth("network", "rm", "nb-cli")
        assert res.returncode != 0 and "has active endpoints" in res.stderr
        assert berth("network", "disconnect", "nb-cli", "nb-clic").returncode == 0
        assert berth("network", "rm", "nb-cli").stdout == "nb-cli\n"
        assert "nb-cli" not in berth("network", "ls").stdout
    finally:
        daemon.docker("rm", "-f", "nb-clic", check=False)
        daemon.docker("network", "rm", "nb-cli", check=False)


def test_a_host_interface_is_never_taken_as_a_network_bridge(daemon: Any) -> None:
    """`-o com.docker.network.bridge.name=` naming an interface the host has (lo here) is refused: berth would
    otherwise address it and delete it at `network rm`."""
    res = daemon.docker("network", "create", "-o", "com.docker.network.bridge.name=lo", "takes-lo", check=False)
    assert res.returncode != 0 and "the host already has an interface of that name" in res.stderr, res
    assert "takes-lo" not in daemon.docker("network", "ls", "--format", "{{.Name}}").stdout
    lo = subprocess.run(["ip", "-o", "-4", "addr", "show", "lo"], capture_output=True, text=True, check=True).stdout
    assert lo.count("inet ") == 1  # nothing added to it
