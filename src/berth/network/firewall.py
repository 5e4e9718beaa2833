"""The nftables side of networking: one ``ip`` table named by the daemon's prefix, rebuilt whole and atomically.

:func:`render` turns the desired state (networks, published ports) into an nft script that replaces the table in
one transaction (``nft -f -``): conntrack entries live outside the table, so established flows through a published
port keep working across a rebuild and across a daemon restart. The rules::

    table ip <prefix>
      chain prerouting   nat    dnat for published ports (fib daddr type local = every local address)
      chain output       nat    the same for connections from the host itself (localhost too)
      chain postrouting  nat    masquerade: localhost->container (needs route_localnet on the bridge),
                                hairpin (a container reaching a port published by its own network), outbound
                                traffic of non-internal networks
      chain forward      filter isolation between networks (published ports excepted); internal networks
                                never leave their bridge

:class:`Firewall` runs nft only when the rendered script changed.
"""

from __future__ import annotations

import ipaddress
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from berth.errors import InternalError

NFT = "nft"
LOCAL_ANY = ("", "0.0.0.0")


@dataclass(frozen=True)
class NetworkRule:
    """One bridge network as the firewall sees it."""

    bridge: str
    subnet: ipaddress.IPv4Network
    internal: bool = False
    masquerade: bool = True


@dataclass(frozen=True)
class PortRule:
    """One published port: ``host_ip:host_port/proto`` → ``dest_ip:dest_port`` behind ``bridge``."""

    proto: str
    host_ip: str
    host_port: int
    dest_ip: ipaddress.IPv4Address
    dest_port: int
    bridge: str

    def __post_init__(self) -> None:
        if self.proto not in ("tcp", "udp", "sctp"):
            raise ValueError(f"bad protocol {self.proto!r}")
        if self.host_ip not in LOCAL_ANY:
            ipaddress.IPv4Address(self.host_ip)  # validated: it is pasted into a rule


def _quote(name: str) -> str:
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"bad interface name {name!r}")
    return f'"{name}"'


def _dnat(p: PortRule) -> str:
    match = "fib daddr type local" if p.host_ip in LOCAL_ANY else f"ip daddr {p.host_ip}"
    return f"{match} {p.proto} dport {p.host_port} dnat to {p.dest_ip}:{p.dest_port}"


def render(table: str, networks: Sequence[NetworkRule], ports: Sequence[PortRule]) -> str:
    """The nft script that (re)creates ``table`` with exactly these rules."""
    _quote(table)
    nets = sorted(networks, key=lambda n: n.bridge)
    lines = [f"table ip {table}", f"delete table ip {table}", f"table ip {table} {{"]
    dnat = [_dnat(p) for p in sorted(ports, key=lambda p: (p.proto, p.host_port, p.host_ip))]
    lines.append("  chain prerouting {")
    lines.append("    type nat hook prerouting priority -100; policy accept;")
    lines += [f"    {r}" for r in dnat]
    lines.append("  }")
    lines.append("  chain output {")
    lines.append("    type nat hook output priority -100; policy accept;")
    lines += [f"    {r}" for r in dnat]
    lines.append("  }")
    lines.append("  chain postrouting {")
    lines.append("    type nat hook postrouting priority 100; policy accept;")
    for n in nets:
        br = _quote(n.bridge)
        lines.append(f"    ip saddr 127.0.0.0/8 oifname {br} masquerade")
        lines.append(f"    ip saddr {n.subnet} oifname {br} ct status dnat masquerade")
        if n.masquerade and not n.internal:
            lines.append(f"    ip saddr {n.subnet} oifname != {br} masquerade")
    lines.append("  }")
    lines.append("  chain forward {")
    lines.append("    type filter hook forward priority 0; policy accept;")
    for n in nets:
        if n.internal:
            br = _quote(n.bridge)
            lines.append(f"    iifname {br} oifname != {br} drop")
            lines.append(f"    oifname {br} iifname != {br} drop")
    # a published port is public: another network's container may reach it through a host address (Docker's
    # userland proxy allows the same); only direct traffic between networks is isolated
    lines.append("    ct status dnat accept")
    for n in nets:
        others = [_quote(o.bridge) for o in nets if o.bridge != n.bridge]
        if others:
            lines.append(f"    iifname {_quote(n.bridge)} oifname {{ {', '.join(others)} }} drop")
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def run_nft(script: str) -> None:
    try:
        proc = subprocess.run([NFT, "-f", "-"], input=script.encode(), capture_output=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InternalError(f"nftables: {e}") from None
    if proc.returncode != 0:
        raise InternalError(f"nftables: {proc.stderr.decode(errors='replace').strip()}")


class Firewall:
    """The daemon's table; ``enabled=False`` (``--iptables=false``) makes every call a no-op."""

    def __init__(self, table: str, *, enabled: bool = True) -> None:
        _quote(table)
        self.table = table
        self.enabled = enabled
        self._applied: str | None = None
        self._lock = threading.Lock()

    def apply(self, networks: Sequence[NetworkRule], ports: Sequence[PortRule]) -> bool:
        """Make the table match; True when nft had to run."""
        if not self.enabled:
            return False
        script = render(self.table, networks, ports)
        with self._lock:
            if script == self._applied:
                return False
            run_nft(script)
            self._applied = script
            return True

    def remove(self) -> None:
        """Delete the table (creating it first makes the delete succeed when it is not there)."""
        with self._lock:
            self._applied = None
            run_nft(f"table ip {self.table}\ndelete table ip {self.table}\n")
