"""The two firewall backends (berth.network.firewall's nftables, berth.network.iptables) under one suite: the same
rules load, change and go, nothing outside the daemon's prefix is touched, and a daemon per backend gives the same
published ports (localhost and through another network's gateway), isolation and internal networks. When the
daemon's last network is removed no rule of its prefix is left (``iptables-save``, ``nft list ruleset``).

Only loopback is used from the host side; every prefix is unique to the run and removed at teardown."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth.daemon.config import parse_args
from berth.engine.networks import NetworkOptions
from berth.errors import InvalidArgument
from berth.network import firewall
from berth.network.firewall import Backend, NetworkRule, PortRule, make_backend
from berth.network.iptables import IPTABLES_SAVE, Iptables
from berth.testing import rootfs
from berth.testing.daemon import BerthDaemon, running
from berth.testing.waiting import free_port, until

BACKENDS = ("nftables", "iptables")
HTTPD = ["sh", "-c", "mkdir -p /www && echo served > /www/index.html && exec httpd -f -p 8080 -h /www"]

pytestmark = [pytest.mark.root]


def _prefix() -> str:
    return "zf" + os.urandom(2).hex()


def _rules(prefix: str) -> tuple[NetworkRule, NetworkRule, PortRule, PortRule]:
    a = NetworkRule(f"{prefix}-a", ipaddress.IPv4Network("10.231.90.0/24"))
    b = NetworkRule(f"{prefix}-b", ipaddress.IPv4Network("10.231.91.0/24"), internal=True)
    tcp = PortRule("tcp", "0.0.0.0", 18080, ipaddress.IPv4Address("10.231.90.2"), 80, a.bridge)
    udp = PortRule("udp", "127.0.0.1", 18081, ipaddress.IPv4Address("10.231.90.2"), 53, a.bridge)
    return a, b, tcp, udp


def _host_state(prefix: str) -> list[str]:
    """Every iptables rule that does not name ``prefix`` (berth must never change them; the nft backend only ever
    names its own table, and other daemons' tables may change meanwhile)."""
    saved = subprocess.run([IPTABLES_SAVE], capture_output=True, text=True, check=True).stdout
    return sorted(ln for ln in saved.splitlines() if ln.startswith("-A ") and prefix not in ln)


def _mentions(prefix: str) -> list[str]:
    saved = subprocess.run([IPTABLES_SAVE], capture_output=True, text=True, check=True).stdout
    ruleset = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True).stdout
    return [ln for ln in (saved + ruleset).splitlines() if prefix in ln]


def _tables() -> set[str]:
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False).stdout
    return {line.strip() for line in out.splitlines() if line.startswith("table ")}


@pytest.fixture(scope="module", autouse=True)
def no_new_empty_tables() -> Iterator[None]:
    """The host's iptables (nf_tables flavour) makes its ``ip nat``/``ip filter`` tables on first use and leaves
    them; the ones this module's runs made go again once empty (as the bench's dockerd clean-up does)."""
    before = _tables()
    yield
    for table in _tables() - before:
        family, name = table.split()[1:3]
        listing = subprocess.run(["nft", "list", "table", family, name], capture_output=True, text=True,
                                 check=False).stdout
        rules = [ln for ln in listing.splitlines() if ln.strip() and not ln.strip().startswith(
            ("table", "chain", "type", "}"))]
        if family in ("ip", "ip6") and name in ("filter", "nat", "mangle", "raw") and not rules:
            subprocess.run(["nft", "delete", "table", family, name], capture_output=True, check=False)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    b = make_backend(str(request.param), _prefix())
    try:
        yield b
    finally:
        b.remove()


def test_auto_picks_nft_when_it_works(monkeypatch: pytest.MonkeyPatch) -> None:
    assert make_backend("auto", "zfauto").name == ("nftables" if firewall.nft_works() else "iptables")
    with pytest.raises(ValueError):
        make_backend("pf", "zfauto")
    monkeypatch.setattr(firewall, "NFT", "/nonexistent/nft")  # a host without nftables
    assert make_backend("auto", "zfauto").name == "iptables"


def test_the_daemon_flag() -> None:
    config, _ = parse_args(["--firewall-backend", "iptables"])
    assert config.firewall_backend == "iptables"
    assert parse_args([])[0].firewall_backend == "auto"
    with pytest.raises(SystemExit):
        parse_args(["--firewall-backend", "pf"])
    with pytest.raises(InvalidArgument, match="invalid firewall backend"):
        NetworkOptions(firewall_backend="pf")


def test_render_is_accepted_by_the_tools() -> None:
    prefix = _prefix()
    a, b, tcp, udp = _rules(prefix)
    script = Iptables(prefix).render([a, b], [tcp, udp])
    assert f"-A {prefix}-PRE -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 18080 -j DNAT " \
           "--to-destination 10.231.90.2:80" in script
    assert f"-A {prefix}-FWD -i {b.bridge} ! -o {b.bridge} -j DROP" in script
    assert f"-A {prefix}-FWD -i {a.bridge} -o {b.bridge} -j DROP" in script
    check = subprocess.run(["iptables-restore", "--test", "--noflush"], input=script.encode(), capture_output=True,
                           check=False)
    assert check.returncode == 0, check.stderr.decode()
    assert _mentions(prefix) == []  # --test loads nothing


def test_load_change_remove(backend: Backend) -> None:
    prefix = backend.prefix
    before = _host_state(prefix)
    a, b, tcp, udp = _rules(prefix)
    backend.load(backend.render([a, b], [tcp, udp]))
    text = "\n".join(backend.leftovers())
    assert "18080" in text and "18081" in text and b.bridge in text
    backend.load(backend.render([a], [tcp]))
    text = "\n".join(backend.leftovers())
    assert "18080" in text and "18081" not in text and b.bridge not in text
    backend.load(backend.render([a], [tcp]))  # a reload stays single (one jump per built-in chain)
    if isinstance(backend, Iptables):
        assert sum(f"-j {prefix}-" in ln and f"-A {prefix}-" not in ln for ln in backend.leftovers()) == 4
    assert _host_state(prefix) == before
    backend.remove()
    assert backend.leftovers() == [] and _mentions(prefix) == []
    backend.remove()  # twice is fine
    assert _host_state(prefix) == before


def test_firewall_removes_everything_when_nothing_is_left(backend: Backend) -> None:
    prefix = backend.prefix
    fw = firewall.Firewall(prefix, backend=backend.name)
    a, _b, tcp, _udp = _rules(prefix)
    try:
        assert fw.apply([a], [tcp]) and not fw.apply([a], [tcp])
        assert fw.backend.leftovers()
        assert fw.apply([], [])
        assert _mentions(prefix) == []
    finally:
        fw.remove()


# --- a daemon per backend --------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def fwd(request: pytest.FixtureRequest) -> Iterator[BerthDaemon]:
    """A daemon without a default bridge (so that removing its networks leaves nothing) on one backend."""
    daemon = BerthDaemon(extra_args=("-b", "none", "--firewall-backend", str(request.param)))
    try:
        with running(daemon, rootfs.FIXTURES / "busybox-docker-save.tar"):
            yield daemon
    finally:
        make_backend(str(request.param), daemon.network_prefix).remove()


def _get(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3) as r:
        return str(r.read().decode()).strip()


def _net(d: BerthDaemon, name: str, field: str, network: str) -> str:
    return str(json.loads(d.docker("inspect", name).stdout)[0]["NetworkSettings"]["Networks"][network][field])


@pytest.mark.docker_cli
def test_published_ports_isolation_and_cleanup(fwd: BerthDaemon) -> None:
    d = fwd
    prefix = d.network_prefix
    port = free_port("0.0.0.0")
    d.docker("network", "create", "fb-a")
    d.docker("network", "create", "fb-b")
    d.docker("network", "create", "--internal", "fb-int")
    try:
        d.docker("run", "-d", "--name", "fb-web", "--network", "fb-a", "-p", f"{port}:8080", "busybox", *HTTPD)
        assert until(lambda: _get(port), ignore=(OSError,)) == "served"  # localhost: DNAT in the output hook
        rules = make_backend(d.extra_args[-1], prefix)
        assert f"dport {port}" in "\n".join(rules.leftovers())
        d.docker("run", "-d", "--name", "fb-probe", "--network", "fb-b", "busybox", "sleep", "120")
        d.docker("run", "-d", "--name", "fb-inside", "--network", "fb-int", "busybox", "sleep", "120")
        direct = _net(d, "fb-web", "IPAddress", "fb-a")
        gateway = _net(d, "fb-probe", "Gateway", "fb-b")
        # published ports are public (through a host address); direct traffic between networks is dropped
        res = d.docker("exec", "fb-probe", "timeout", "5", "wget", "-qO-", f"http://{gateway}:{port}/", check=False)
        assert res.returncode == 0 and res.stdout.strip() == "served", res
        res = d.docker("exec", "fb-probe", "timeout", "2", "wget", "-qO-", f"http://{direct}:8080/", check=False)
        assert res.returncode != 0
        # an internal network never leaves its bridge, published ports included
        a_gateway = _net(d, "fb-web", "Gateway", "fb-a")
        res = d.docker("exec", "fb-inside", "timeout", "2", "wget", "-qO-", f"http://{a_gateway}:{port}/",
                       check=False)
        assert res.returncode != 0
        # the same network reaches its own container directly
        res = d.docker("run", "--rm", "--network", "fb-a", "busybox", "timeout", "5", "wget", "-qO-",
                       f"http://{direct}:8080/", check=False)
        assert res.returncode == 0 and res.stdout.strip() == "served", res
        d.docker("rm", "-f", "fb-web")
        assert f"dport {port}" not in "\n".join(rules.leftovers())
    finally:
        d.docker("rm", "-f", "fb-web", "fb-probe", "fb-inside", check=False)
        d.docker("network", "rm", "fb-a", "fb-b", "fb-int", check=False)
    # the daemon's last network went: no rule, chain or table of its prefix is left
    until(lambda: _mentions(prefix) == [])


def test_ipv4_forwarding_is_turned_on_once(tmp_path: Path) -> None:
    """Like dockerd, berth turns the host's net.ipv4.ip_forward on for its NAT (checked on a stand-in file: the
    real one is on here already, and a test must not turn it off on a shared machine)."""
    from berth.kernel.netlink import ensure_ipv4_forwarding

    knob = tmp_path / "ip_forward"
    knob.write_text("0\n")
    assert ensure_ipv4_forwarding(str(knob)) is True and knob.read_text() == "1"
    assert ensure_ipv4_forwarding(str(knob)) is False
