"""The embedded DNS server: wire format, local answers, forwarding to a fake upstream, TCP, truncation; and end to
end, containers on user-defined networks resolving each other through it.

Servers bind random 127.x.y.z addresses (port 53 needs root), so parallel runs do not collide; nothing is sent
anywhere but loopback: the test daemon's ``--dns`` is a fake upstream this module starts.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import struct
import subprocess
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from berth.network import dns
from berth.network.dns import (
    RCODE_FORMERR,
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    RCODE_SERVFAIL,
    TYPE_A,
    TYPE_AAAA,
    TYPE_PTR,
    DnsServer,
    build_query,
    parse_query,
    parse_response,
)
from berth.network.etcfiles import parse_resolv_conf
from berth.testing import rootfs
from berth.testing.daemon import BerthDaemon, request, running

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="binds port 53")

NAMES = {"web": ["172.18.0.2"], "many": [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(60)], "v4only": ["10.0.0.9"]}


def fake_lookup(name: str, qtype: int) -> Sequence[str] | None:
    if qtype == TYPE_PTR:
        return ["web"] if name == "2.0.18.172.in-addr.arpa" else None
    if name not in NAMES:
        return None
    return NAMES[name] if qtype == TYPE_A else []


def upstream_lookup(name: str, qtype: int) -> Sequence[str] | None:
    if name != "upstream.test":
        return None
    return ["192.0.2.7"] if qtype == TYPE_A else []


def _loopback() -> str:
    return f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 2}"


async def udp_ask(addr: tuple[str, int], data: bytes, timeout: float = 5) -> bytes:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        s.connect(addr)
        await loop.sock_sendall(s, data)
        return await asyncio.wait_for(loop.sock_recv(s, 65535), timeout)


async def tcp_ask(addr: tuple[str, int], *messages: bytes) -> list[bytes]:
    reader, writer = await asyncio.open_connection(*addr)
    out = []
    try:
        for m in messages:
            writer.write(struct.pack(">H", len(m)) + m)
        await writer.drain()
        for _ in messages:
            size = struct.unpack(">H", await reader.readexactly(2))[0]
            out.append(await reader.readexactly(size))
    finally:
        writer.close()
    return out


Body = Callable[[tuple[str, int], tuple[str, int]], Awaitable[None]]


def with_servers(body: Body, *, internal: bool = False, timeout: float = 2.0) -> None:
    """Run ``body(server_addr, upstream_addr)`` with the embedded server forwarding to a fake upstream."""
    async def main() -> None:
        up_addr = (_loopback(), 53)
        upstream = DnsServer(upstream_lookup, internal=True)
        await upstream.start(*up_addr)
        server = DnsServer(fake_lookup, [up_addr], internal=internal, timeout=timeout)
        addr = (_loopback(), 53)
        await server.start(*addr)
        try:
            await body(addr, up_addr)
        finally:
            await server.close()
            await upstream.close()
    asyncio.run(main())


# --- wire format --------------------------------------------------------------------------------------------------


def test_query_roundtrip_and_answer() -> None:
    q = parse_query(build_query(0x1234, "Web.", TYPE_A))
    assert (q.id, q.question.name, q.question.qtype, q.recursion_desired) == (0x1234, "web", TYPE_A, True)
    r = parse_response(dns.build_response(q, ["172.18.0.2", "172.18.0.3"]))
    assert (r.id, r.rcode, r.answers) == (0x1234, RCODE_NOERROR, ("172.18.0.2", "172.18.0.3"))
    assert r.flags & dns.FLAG_AA and r.flags & dns.FLAG_RA and r.flags & dns.FLAG_QR
    assert parse_response(dns.nxdomain(q)).rcode == RCODE_NXDOMAIN
    assert parse_response(dns.servfail(q)).rcode == RCODE_SERVFAIL


def test_aaaa_and_ptr_answers() -> None:
    q6 = parse_query(build_query(1, "web", TYPE_AAAA))
    assert parse_response(dns.build_response(q6, ["2001:db8::5"])).answers == ("2001:db8::5",)
    name = dns.reverse_name("172.18.0.2")
    assert name == "2.0.18.172.in-addr.arpa"
    assert dns.address_of_reverse(name) == "172.18.0.2"
    assert dns.address_of_reverse(dns.reverse_name("2001:db8::5")) == "2001:db8::5"
    assert dns.address_of_reverse("18.172.in-addr.arpa") is None
    qp = parse_query(build_query(2, name, TYPE_PTR))
    assert parse_response(dns.build_response(qp, ["web.mynet"])).answers == ("web.mynet",)


def test_truncation_to_udp_size() -> None:
    q = parse_query(build_query(7, "many", TYPE_A))
    reply = dns.build_response(q, NAMES["many"], max_size=512)
    r = parse_response(reply)
    assert len(reply) <= 512 and r.truncated and 0 < len(r.answers) < 60
    # EDNS0 OPT record advertising 4096 bytes: everything fits
    edns = bytearray(build_query(8, "many", TYPE_A))
    edns[10:12] = struct.pack(">H", 1)
    edns += b"\x00" + struct.pack(">HHIH", dns.TYPE_OPT, 4096, 0, 0)
    qe = parse_query(bytes(edns))
    assert qe.udp_size == 4096
    assert not parse_response(dns.build_response(qe, NAMES["many"], max_size=qe.udp_size)).truncated


def test_malformed_messages() -> None:
    with pytest.raises(dns.FormatError):
        parse_query(b"\x00\x01")
    bad = build_query(9, "web", TYPE_A)[:-3]
    with pytest.raises(dns.FormatError):
        parse_query(bad)
    err = dns.formerr(bad)
    assert err is not None and parse_response(err).rcode == RCODE_FORMERR
    loop = struct.pack(">HHHHHH", 3, 0, 1, 0, 0, 0) + b"\xc0\x0c" + b"\x00\x01\x00\x01"
    with pytest.raises(dns.FormatError, match="loop"):
        parse_query(loop)


# --- server -------------------------------------------------------------------------------------------------------


@needs_root
def test_local_answers_over_udp_and_tcp() -> None:
    async def body(addr: tuple[str, int], _up: tuple[str, int]) -> None:
        r = parse_response(await udp_ask(addr, build_query(11, "web", TYPE_A)))
        assert (r.id, r.rcode, r.answers) == (11, RCODE_NOERROR, ("172.18.0.2",))
        nodata = parse_response(await udp_ask(addr, build_query(12, "v4only", TYPE_AAAA)))
        assert (nodata.rcode, nodata.answers) == (RCODE_NOERROR, ())
        ptr = parse_response(await udp_ask(addr, build_query(13, "2.0.18.172.in-addr.arpa", TYPE_PTR)))
        assert ptr.answers == ("web",)
        big = parse_response(await udp_ask(addr, build_query(14, "many", TYPE_A)))
        assert big.truncated
        # the client retries over TCP and gets everything, several questions on one connection
        replies = await tcp_ask(addr, build_query(15, "many", TYPE_A), build_query(16, "web", TYPE_A))
        first, second = (parse_response(x) for x in replies)
        assert (first.id, len(first.answers), first.truncated) == (15, 60, False)
        assert (second.id, second.answers) == (16, ("172.18.0.2",))
        formerr = parse_response(await udp_ask(addr, build_query(17, "web", TYPE_A)[:-2]))
        assert formerr.rcode == RCODE_FORMERR
    with_servers(body)


@needs_root
def test_forwards_unknown_names_to_upstream() -> None:
    async def body(addr: tuple[str, int], _up: tuple[str, int]) -> None:
        r = parse_response(await udp_ask(addr, build_query(21, "upstream.test", TYPE_A)))
        assert (r.id, r.answers) == (21, ("192.0.2.7",))
        (tcp,) = await tcp_ask(addr, build_query(22, "upstream.test", TYPE_A))
        assert parse_response(tcp).answers == ("192.0.2.7",)
        # the upstream's own answer passes through unchanged (here: its SERVFAIL for a name it does not know)
        miss = parse_response(await udp_ask(addr, build_query(23, "nothing.test", TYPE_A)))
        assert (miss.id, miss.rcode) == (23, RCODE_SERVFAIL)
        # names the server knows, with a type it does not answer, are forwarded too
        mx = parse_response(await udp_ask(addr, build_query(24, "web", 15)))
        assert mx.id == 24 and mx.rcode == RCODE_SERVFAIL
    with_servers(body)


@needs_root
def test_internal_network_does_not_forward() -> None:
    async def body(addr: tuple[str, int], _up: tuple[str, int]) -> None:
        r = parse_response(await udp_ask(addr, build_query(31, "upstream.test", TYPE_A)))
        assert (r.rcode, r.answers) == (RCODE_SERVFAIL, ())
        assert parse_response(await udp_ask(addr, build_query(32, "web", TYPE_A))).answers == ("172.18.0.2",)
    with_servers(body, internal=True)


@needs_root
def test_dead_upstream_gives_servfail() -> None:
    async def main() -> None:
        server = DnsServer(fake_lookup, [(_loopback(), 53)], timeout=0.3)
        addr = (_loopback(), 53)
        await server.start(*addr)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            r = parse_response(await udp_ask(addr, build_query(41, "upstream.test", TYPE_A)))
            assert r.rcode == RCODE_SERVFAIL and loop.time() - started < 3
        finally:
            await server.close()
    asyncio.run(main())


# --- end to end: containers on user-defined networks ----------------------------------------------------------------


class FakeUpstream:
    """A DNS server on 127.x.y.z:53 in a thread of its own: the daemon's --dns, so nothing leaves loopback."""

    def __init__(self) -> None:
        self.address = _loopback()
        self.loop = asyncio.new_event_loop()
        self.server = DnsServer(upstream_lookup, internal=True)
        self.thread = threading.Thread(target=self.loop.run_forever, name="fake-upstream", daemon=True)

    def __enter__(self) -> FakeUpstream:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(self.address, 53), self.loop).result(5)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    if os.geteuid() != 0:
        pytest.skip("binds port 53 and runs containers: needs root")
    with FakeUpstream() as up:
        yield up


@pytest.fixture(scope="module")
def netd(upstream: FakeUpstream) -> Iterator[BerthDaemon]:
    """A daemon whose containers' upstream name server is the fake one."""
    with running(BerthDaemon(extra_args=("--dns", upstream.address)), rootfs.FIXTURES / "busybox-docker-save.tar") as d:
        yield d


def _ip(d: BerthDaemon, name: str, network: str) -> str:
    return str(json.loads(d.docker("inspect", name).stdout)[0]["NetworkSettings"]["Networks"][network]["IPAddress"])


def _nslookup(d: BerthDaemon, name: str) -> subprocess.CompletedProcess[str]:
    return d.docker("exec", "aa", "nslookup", name, check=False)


@pytest.mark.root
def test_containers_resolve_each_other(netd: BerthDaemon, upstream: FakeUpstream) -> None:
    d = netd
    d.docker("network", "create", "n1")
    d.docker("network", "create", "n2")
    try:
        d.docker("run", "-d", "--name", "aa", "--network", "n1", "--add-host", "x:1.2.3.4",
                 "--add-host", "h:host-gateway", "busybox", "sleep", "120")
        bb = d.docker("run", "-d", "--name", "bb", "--network", "n1", "--network-alias", "web", "busybox",
                      "sleep", "120").stdout.strip()
        d.docker("run", "-d", "--name", "cc", "--network", "n2", "busybox", "sleep", "120")
        ip = _ip(d, "bb", "n1")
        for name in ("bb", "web", bb[:12], "bb.n1", "BB"):
            out = _nslookup(d, name)
            assert out.returncode == 0 and f"Address: {ip}" in out.stdout, (name, out)
        # another network's container is not ours to answer: forwarded (the fake upstream says SERVFAIL)
        miss = _nslookup(d, "cc")
        assert miss.returncode != 0 and _ip(d, "cc", "n2") not in miss.stdout
        # anything else goes to the upstream (the daemon's --dns), from the daemon's namespace
        fwd = _nslookup(d, "upstream.test")
        assert fwd.returncode == 0 and "Address: 192.0.2.7" in fwd.stdout
        assert "name = bb.n1" in _nslookup(d, ip).stdout
        # the C library's resolver (busybox ping) reads resolv.conf and asks 127.0.0.11 too
        assert d.docker("exec", "aa", "ping", "-c1", "-W2", "web").returncode == 0

        hosts = d.docker("exec", "aa", "cat", "/etc/hosts").stdout
        gateway = json.loads(d.docker("network", "inspect", "n1").stdout)[0]["IPAM"]["Config"][0]["Gateway"]
        assert "1.2.3.4\tx\n" in hosts and f"{gateway}\th\n" in hosts
        assert f"{_ip(d, 'aa', 'n1')}\t" in hosts
        resolv = d.docker("exec", "aa", "cat", "/etc/resolv.conf").stdout
        assert "nameserver 127.0.0.11\n" in resolv and "options ndots:0\n" in resolv
        assert f"nameserver {upstream.address}" not in resolv and f"# ExtServers: [{upstream.address}]" in resolv

        # a container in aa's namespace uses aa's files and aa's embedded server
        joined = d.docker("run", "--rm", "--network", "container:aa", "busybox", "nslookup", "web")
        assert f"Address: {ip}" in joined.stdout

        # a daemon restart (live restore) opens the sockets again in the running containers
        d.restart()
        after = _nslookup(d, "web")
        assert after.returncode == 0 and f"Address: {ip}" in after.stdout
    finally:
        d.docker("rm", "-f", "aa", "bb", "cc", check=False)
        d.docker("network", "rm", "n1", "n2", check=False)


@pytest.mark.root
def test_dns_flags_land_in_resolv_conf(netd: BerthDaemon, upstream: FakeUpstream) -> None:
    d = netd
    d.docker("network", "create", "n3")
    flags = ("--dns", "127.0.0.99", "--dns-search", "example.test", "--dns-option", "ndots:3")
    try:
        user = d.docker("run", "--rm", "--network", "n3", *flags, "busybox", "cat", "/etc/resolv.conf").stdout
        assert _directives(user) == ["nameserver 127.0.0.11", "search example.test", "options ndots:3"]
        assert "# ExtServers: [127.0.0.99]" in user
        legacy = d.docker("run", "--rm", *flags, "busybox", "cat", "/etc/resolv.conf").stdout
        assert _directives(legacy) == ["nameserver 127.0.0.99", "search example.test", "options ndots:3"]
        # the daemon's --dns is every container's default
        plain = d.docker("run", "--rm", "busybox", "cat", "/etc/resolv.conf").stdout
        assert _directives(plain) == [f"nameserver {upstream.address}"]
    finally:
        d.docker("network", "rm", "n3", check=False)


@pytest.mark.root
def test_bad_add_host_and_dns_are_refused(netd: BerthDaemon) -> None:
    for host_config, message in (({"ExtraHosts": ["nocolon"]}, 'bad format for add-host: "nocolon"'),
                                 ({"ExtraHosts": ["x:1.2.3"]}, 'invalid IP address in add-host: "1.2.3"'),
                                 ({"Dns": ["dns.example"]}, "IP address is not correctly formatted: dns.example")):
        body = json.dumps({"Image": "busybox", "Cmd": ["true"], "HostConfig": host_config})
        status, _, raw = request(netd.http(), "POST", "/containers/create", body,
                                 {"Content-Type": "application/json"})
        assert (status, json.loads(raw)["message"]) == (400, message)


@pytest.mark.root
def test_default_bridge_keeps_the_hosts_resolv_conf(berthd_factory: Any) -> None:
    berthd = berthd_factory(dns=None)  # the host's servers land in the file; nothing here looks a name up
    berthd.docker("load", "-i", str(rootfs.FIXTURES / "busybox-docker-save.tar"))
    text = berthd.docker("run", "--rm", "busybox", "cat", "/etc/resolv.conf").stdout
    host = parse_resolv_conf(Path("/etc/resolv.conf").read_text())
    kept = [ns for ns in host.nameservers if not ns.startswith("127.") and ":" not in ns]
    assert [ln.split()[1] for ln in _directives(text) if ln.startswith("nameserver")] == kept
    assert "127.0.0.11" not in text and "(legacy)" in text


def _directives(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
