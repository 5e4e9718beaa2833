"""Which ports listen, and on which addresses, in a process's network namespace.

Reads ``/proc/<pid>/net/{tcp,tcp6,udp,udp6}``, which show the sockets of the namespace ``<pid>`` lives in (no
setns needed): TCP sockets in state LISTEN, UDP sockets bound to a port (UDP has no listen state; a bound,
unconnected socket is what receives). Addresses are printed there as hex words in host byte order.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"
_FILES = (("tcp", "tcp", 4), ("tcp6", "tcp", 6), ("udp", "udp", 4), ("udp6", "udp", 6))


@dataclass(frozen=True)
class Listener:
    """A listening socket: protocol (``tcp``/``udp``), local address as text, and port."""

    proto: str
    address: str
    port: int

    @property
    def loopback_only(self) -> bool:
        """Reachable only from inside the namespace (127.0.0.0/8, ::1, or v4-mapped loopback)."""
        ip = ipaddress.ip_address(self.address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped.is_loopback
        return ip.is_loopback

    @property
    def wildcard(self) -> bool:
        return ipaddress.ip_address(self.address).is_unspecified


def _hex_address(text: str) -> str:
    """``0100007F`` → ``127.0.0.1``; 32 hex digits → an IPv6 address (four 32-bit words, each host-endian)."""
    raw = bytes.fromhex(text)
    words = [raw[i:i + 4] for i in range(0, len(raw), 4)]
    if sys.byteorder == "little":
        words = [w[::-1] for w in words]
    packed = b"".join(words)
    family = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, packed)


def parse_table(text: str, proto: str) -> list[Listener]:
    """The listening sockets in one /proc/net table's text (``proto``: ``tcp`` or ``udp``)."""
    want = TCP_LISTEN if proto == "tcp" else UDP_UNCONNECTED
    out: list[Listener] = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != want:
            continue
        addr, _, port = fields[1].partition(":")
        out.append(Listener(proto, _hex_address(addr), int(port, 16)))
    return out


def listeners(pid: int, proc: Path = Path("/proc")) -> list[Listener]:
    """Every listening socket in ``pid``'s network namespace (empty if the process is gone)."""
    found: list[Listener] = []
    for name, proto, _family in _FILES:
        try:
            text = (proc / str(pid) / "net" / name).read_text()
        except OSError:
            continue
        found += parse_table(text, proto)
    return found


def on_port(found: list[Listener], port: int, proto: str) -> list[Listener]:
    return [li for li in found if li.port == port and li.proto == proto]
