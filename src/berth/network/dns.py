"""Docker's embedded DNS server: the wire format (RFC 1035) for what it needs, and an asyncio UDP+TCP server.

The server answers A, AAAA and PTR questions about containers from a lookup callable and forwards everything
else, byte for byte, to upstream servers over the protocol the question came in on (moby's libnetwork
``resolver.go``). On an internal network there is nothing to forward to: unknown names get SERVFAIL, as in
Docker, so clients fail fast instead of timing out.

The lookup callable gets the question's name (lower case, no trailing dot; for PTR the ``in-addr.arpa`` /
``ip6.arpa`` form) and type, and returns the answers (addresses, or names for PTR), an empty list when the name is
known but has no record of that type (NODATA: Docker's answer to AAAA for an IPv4-only container), or None when
the name is not the server's to answer.

The server serves sockets it is given, so the engine can create them inside a container's network namespace and
serve them from the daemon's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, cast

log = logging.getLogger("berth.dns")

TYPE_A = 1
TYPE_PTR = 12
TYPE_AAAA = 28
TYPE_OPT = 41
CLASS_IN = 1
RCODE_NOERROR = 0
RCODE_FORMERR = 1
RCODE_SERVFAIL = 2
RCODE_NXDOMAIN = 3
FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080
UDP_MIN_SIZE = 512
UDP_MAX_SIZE = 4096
TTL = 600                   # moby's respTTL
FORWARD_TIMEOUT_S = 4.0     # moby's extIOTimeout
MAX_CONCURRENT = 1024       # moby's maxConcurrent forwards
TCP_IDLE_S = 10.0
_HEADER = struct.Struct(">HHHHHH")

Lookup = Callable[[str, int], Sequence[str] | None]


class FormatError(ValueError):
    """A message that is not a well-formed DNS message."""


# --- wire format --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    name: str      # lower case, no trailing dot ("" for the root)
    qtype: int
    qclass: int


@dataclass(frozen=True)
class Query:
    """The parts of a query the server needs: header fields, the one question, the EDNS UDP size if any."""

    id: int
    flags: int
    question: Question
    question_end: int      # offset just past the question: a reply copies the bytes before it
    udp_size: int = UDP_MIN_SIZE
    raw: bytes = b""

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def recursion_desired(self) -> bool:
        return bool(self.flags & FLAG_RD)


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    """A (possibly compressed) domain name at ``offset``: (dotted name, offset after it in the original stream)."""
    labels: list[str] = []
    end = -1
    jumps = 0
    while True:
        if offset >= len(data):
            raise FormatError("name runs past the message")
        n = data[offset]
        if n & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise FormatError("truncated compression pointer")
            if end < 0:
                end = offset + 2
            jumps += 1
            if jumps > 64:
                raise FormatError("compression loop")
            offset = ((n & 0x3F) << 8) | data[offset + 1]
            continue
        if n & 0xC0:
            raise FormatError("unsupported label type")
        offset += 1
        if n == 0:
            break
        if offset + n > len(data):
            raise FormatError("label runs past the message")
        labels.append(data[offset:offset + n].decode("ascii", "replace"))
        offset += n
    name = ".".join(labels)
    if len(name) > 253:
        raise FormatError("name too long")
    return name, (end if end >= 0 else offset)


def _skip_rr(data: bytes, offset: int) -> tuple[int, int, int]:
    """Skip one resource record: (type, class field, offset after it)."""
    _, offset = _read_name(data, offset)
    if offset + 10 > len(data):
        raise FormatError("truncated record")
    rtype, rclass, _ttl, rdlen = struct.unpack_from(">HHIH", data, offset)
    offset += 10 + rdlen
    if offset > len(data):
        raise FormatError("truncated record data")
    return rtype, rclass, offset


def parse_query(data: bytes) -> Query:
    """A query with exactly one question; the EDNS OPT record in the additional section sets the UDP size."""
    if len(data) < _HEADER.size:
        raise FormatError("message shorter than its header")
    qid, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
    if flags & FLAG_QR:
        raise FormatError("not a query")
    if qd != 1:
        raise FormatError(f"{qd} questions")
    name, offset = _read_name(data, _HEADER.size)
    if offset + 4 > len(data):
        raise FormatError("truncated question")
    qtype, qclass = struct.unpack_from(">HH", data, offset)
    offset += 4
    question_end = offset
    udp_size = UDP_MIN_SIZE
    for _ in range(an + ns + ar):
        rtype, rclass, offset = _skip_rr(data, offset)
        if rtype == TYPE_OPT:
            udp_size = min(max(rclass, UDP_MIN_SIZE), UDP_MAX_SIZE)
    return Query(qid, flags, Question(name.lower(), qtype, qclass), question_end, udp_size, data)


def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.strip(".").split("."):
        if not label:
            continue
        raw = label.encode("ascii")
        if len(raw) > 63:
            raise ValueError(f"label too long: {label!r}")
        out += bytes([len(raw)]) + raw
    return bytes(out) + b"\x00"


def _rdata(qtype: int, value: str) -> bytes:
    if qtype == TYPE_A:
        return ipaddress.IPv4Address(value).packed
    if qtype == TYPE_AAAA:
        return ipaddress.IPv6Address(value).packed
    if qtype == TYPE_PTR:
        return encode_name(value)
    raise ValueError(f"no rdata encoding for type {qtype}")


def build_response(query: Query, answers: Sequence[str] = (), *, rcode: int = RCODE_NOERROR,
                   authoritative: bool = True, max_size: int | None = None) -> bytes:
    """A reply to ``query`` with ``answers`` (addresses for A/AAAA, names for PTR) of the question's type, each
    owned by the question's name (a compression pointer to it). With ``max_size`` (UDP), answers that do not fit
    are dropped and TC is set, as miekg/dns's ``Truncate`` does."""
    flags = FLAG_QR | (query.flags & (0x7800 | FLAG_RD)) | FLAG_RA | (rcode & 0xF)
    if authoritative and rcode in (RCODE_NOERROR, RCODE_NXDOMAIN):
        flags |= FLAG_AA
    question = query.raw[_HEADER.size:query.question_end]
    records: list[bytes] = []
    size = _HEADER.size + len(question)
    truncated = False
    for value in answers:
        rdata = _rdata(query.question.qtype, value)
        rr = struct.pack(">HHHIH", 0xC000 | _HEADER.size, query.question.qtype, CLASS_IN, TTL, len(rdata)) + rdata
        if max_size is not None and size + len(rr) > max_size:
            truncated = True
            break
        records.append(rr)
        size += len(rr)
    if truncated:
        flags |= FLAG_TC
    header = _HEADER.pack(query.id, flags, 1, len(records), 0, 0)
    return header + question + b"".join(records)


def nxdomain(query: Query) -> bytes:
    return build_response(query, rcode=RCODE_NXDOMAIN)


def servfail(query: Query) -> bytes:
    return build_response(query, rcode=RCODE_SERVFAIL, authoritative=False)


def formerr(data: bytes) -> bytes | None:
    """FORMERR echoing the header's ID, or None when there is not even a header to answer."""
    if len(data) < _HEADER.size:
        return None
    qid, flags = struct.unpack_from(">HH", data)
    if flags & FLAG_QR:
        return None
    return _HEADER.pack(qid, FLAG_QR | (flags & (0x7800 | FLAG_RD)) | FLAG_RA | RCODE_FORMERR, 0, 0, 0, 0)


def build_query(qid: int, name: str, qtype: int, *, rd: bool = True) -> bytes:
    """A plain query (for tests and clients)."""
    return _HEADER.pack(qid, FLAG_RD if rd else 0, 1, 0, 0, 0) + encode_name(name) + struct.pack(">HH", qtype,
                                                                                                  CLASS_IN)


@dataclass(frozen=True)
class Response:
    """A parsed reply: header fields and the answers of the question's type, as text."""

    id: int
    flags: int
    question: Question
    answers: tuple[str, ...]

    @property
    def rcode(self) -> int:
        return self.flags & 0xF

    @property
    def truncated(self) -> bool:
        return bool(self.flags & FLAG_TC)


def parse_response(data: bytes) -> Response:
    """Enough of a reply to check it (tests, and the forwarder's ID check)."""
    if len(data) < _HEADER.size:
        raise FormatError("message shorter than its header")
    qid, flags, qd, an, _ns, _ar = _HEADER.unpack_from(data)
    offset = _HEADER.size
    question = Question("", 0, 0)
    for _ in range(qd):
        name, offset = _read_name(data, offset)
        qtype, qclass = struct.unpack_from(">HH", data, offset)
        offset += 4
        question = Question(name.lower(), qtype, qclass)
    answers: list[str] = []
    for _ in range(an):
        _, offset = _read_name(data, offset)
        rtype, _rclass, _ttl, rdlen = struct.unpack_from(">HHIH", data, offset)
        offset += 10
        rdata = data[offset:offset + rdlen]
        if rtype == TYPE_A and rdlen == 4:
            answers.append(str(ipaddress.IPv4Address(rdata)))
        elif rtype == TYPE_AAAA and rdlen == 16:
            answers.append(str(ipaddress.IPv6Address(rdata)))
        elif rtype == TYPE_PTR:
            answers.append(_read_name(data, offset)[0])
        offset += rdlen
    return Response(qid, flags, question, tuple(answers))


def reverse_name(ip: str) -> str:
    """``172.18.0.2`` → ``2.0.18.172.in-addr.arpa`` (the PTR question's name)."""
    return ipaddress.ip_address(ip).reverse_pointer


def address_of_reverse(name: str) -> str | None:
    """The address a PTR question's name stands for, or None when it is not a complete reverse name."""
    name = name.lower().rstrip(".")
    if name.endswith(".in-addr.arpa"):
        parts = name[: -len(".in-addr.arpa")].split(".")
        if len(parts) == 4:
            with contextlib.suppress(ValueError):
                return str(ipaddress.IPv4Address(".".join(reversed(parts))))
    elif name.endswith(".ip6.arpa"):
        nibbles = name[: -len(".ip6.arpa")].split(".")
        if len(nibbles) == 32 and all(len(n) == 1 for n in nibbles):
            text = "".join(reversed(nibbles))
            with contextlib.suppress(ValueError):
                return str(ipaddress.IPv6Address(int(text, 16)))
    return None


# --- server -------------------------------------------------------------------------------------------------------


class _UdpServer(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # a selector transport, not a subclass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.server.answer_locally(data, udp=True)
        if reply is not None:
            if self.transport is not None:
                self.transport.sendto(reply, addr)
            return
        self.server.spawn(self._forward(data, addr))

    async def _forward(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self.server.forward(data, udp=True)
        if reply is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("dns udp: %s", exc)


class _UdpClient(asyncio.DatagramProtocol):
    def __init__(self, qid: int) -> None:
        self.qid = qid
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) >= 2 and struct.unpack_from(">H", data)[0] == self.qid and not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


class DnsServer:
    """Answers from ``lookup``, forwards the rest to ``upstreams`` ((address, port) pairs) unless ``internal``."""

    def __init__(self, lookup: Lookup, upstreams: Sequence[tuple[str, int]] = (), *, internal: bool = False,
                 timeout: float = FORWARD_TIMEOUT_S) -> None:
        self.lookup = lookup
        self.upstreams = list(upstreams)
        self.internal = internal
        self.timeout = timeout
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self.address: tuple[str, int] | None = None

    # --- sockets

    async def serve(self, udp: socket.socket, tcp: socket.socket) -> None:
        """Serve a bound UDP socket and a bound (not yet listening) TCP socket; returns once both are served."""
        loop = asyncio.get_running_loop()
        udp.setblocking(False)
        tcp.setblocking(False)
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpServer(self), sock=udp)
        self._udp = transport
        self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp, backlog=64)
        self.address = udp.getsockname()[:2]

    async def start(self, host: str, port: int = 53) -> None:
        """Bind and serve ``host:port`` in the current network namespace (tests, host-side use)."""
        udp, tcp = bind_sockets(host, port)
        await self.serve(udp, tcp)

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await self._tcp.wait_closed()
            self._tcp = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- answers

    def answer_locally(self, data: bytes, *, udp: bool) -> bytes | None:
        """The reply when the server answers itself (a container's name, a bad message, an internal network's
        unknown name); None when the message is to be forwarded."""
        try:
            query = parse_query(data)
        except FormatError:
            return formerr(data)
        q = query.question
        if query.opcode == 0 and q.qclass == CLASS_IN and q.qtype in (TYPE_A, TYPE_AAAA, TYPE_PTR):
            try:
                found = self.lookup(q.name, q.qtype)
            except Exception:
                log.exception("dns lookup of %s failed", q.name)
                return servfail(query)
            if found is not None:
                return build_response(query, found, max_size=query.udp_size if udp else None)
        if self.internal or not self.upstreams:
            return servfail(query)
        return None

    async def forward(self, data: bytes, *, udp: bool) -> bytes | None:
        """Ask each upstream in turn; SERVFAIL when none answers (so the client does not wait for its timeout)."""
        if self._slots.locked():
            return _servfail_raw(data)
        async with self._slots:
            for host, port in self.upstreams:
                try:
                    if udp:
                        return await self._ask_udp(data, host, port)
                    return await self._ask_tcp(data, host, port)
                except (OSError, TimeoutError, asyncio.IncompleteReadError, FormatError) as e:
                    log.debug("dns upstream %s:%d: %s", host, port, e)
        return _servfail_raw(data)

    async def _ask_udp(self, data: bytes, host: str, port: int) -> bytes:
        loop = asyncio.get_running_loop()
        qid = struct.unpack_from(">H", data)[0]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        transport, proto = await loop.create_datagram_endpoint(lambda: _UdpClient(qid), remote_addr=(host, port),
                                                               family=family)
        try:
            transport.sendto(data)
            return await asyncio.wait_for(proto.reply, self.timeout)
        finally:
            transport.close()

    async def _ask_tcp(self, data: bytes, host: str, port: int) -> bytes:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self.timeout)
        try:
            writer.write(struct.pack(">H", len(data)) + data)
            await writer.drain()
            size = struct.unpack(">H", await asyncio.wait_for(reader.readexactly(2), self.timeout))[0]
            return await asyncio.wait_for(reader.readexactly(size), self.timeout)
        finally:
            writer.close()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """RFC 7766: length-prefixed messages, several per connection, answered in order."""
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_S)
                except (asyncio.IncompleteReadError, TimeoutError):
                    return
                size = struct.unpack(">H", head)[0]
                data = await asyncio.wait_for(reader.readexactly(size), TCP_IDLE_S)
                reply = self.answer_locally(data, udp=False)
                if reply is None:
                    reply = await self.forward(data, udp=False)
                if reply is None:
                    return
                writer.write(struct.pack(">H", len(reply)) + reply)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
            log.debug("dns tcp: %s", e)
        finally:
            writer.close()


def _servfail_raw(data: bytes) -> bytes | None:
    try:
        return servfail(parse_query(data))
    except FormatError:
        return formerr(data)


def bind_sockets(host: str, port: int = 53) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket bound to ``host:port`` in the calling thread's network namespace. IP_FREEBIND lets
    the bind succeed before the address is up (a fresh netns's loopback may still be down)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    udp = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    tcp = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        for s in (udp, tcp):
            if family == socket.AF_INET:
                s.setsockopt(socket.SOL_IP, _IP_FREEBIND, 1)
            else:
                s.setsockopt(socket.IPPROTO_IPV6, _IPV6_FREEBIND, 1)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        udp.bind((host, port))
        tcp.bind((host, port))
    except BaseException:
        udp.close()
        tcp.close()
        raise
    return udp, tcp


_IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
_IPV6_FREEBIND = 78  # linux/in6.h; the socket module does not name it
