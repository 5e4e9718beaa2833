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

:class:`Firewall` loads the rules only when the rendered script changed, through one of two backends that render
the same rules: :class:`Nftables` (this module) or berth.network.iptables for hosts without nftables (``auto``: nft
when the ``nft`` binary works, else iptables). With no network and no port left, everything is removed.
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from berth.errors import InternalError
from berth.kernel.netlink import ensure_ipv4_forwarding

log = logging.getLogger("berth.network")

NFT = "nft"
LOCAL_ANY = ("", "0.0.0.0")
BACKENDS = ("auto", "nftables", "iptables")


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


def check_name(name: str) -> str:
    """``name`` when it is safe to paste into a rule (interface, table and chain names)."""
    if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ValueError(f"bad interface name {name!r}")
    return name


def _quote(name: str) -> str:
    return f'"{check_name(name)}"'


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


def nft_works() -> bool:
    """Whether this host's ``nft`` binary runs and reaches the kernel."""
    try:
        proc = subprocess.run([NFT, "list", "tables"], capture_output=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


class Backend(Protocol):
    """One way of loading the rules into the kernel; both backends render the same semantics."""

    name: str
    prefix: str

    def render(self, networks: Sequence[NetworkRule], ports: Sequence[PortRule]) -> str: ...
    def load(self, script: str) -> None: ...
    def remove(self) -> None: ...
    def leftovers(self) -> list[str]: ...


class Nftables:
    """The ``ip <prefix>`` table, replaced whole in one nft transaction."""

    name = "nftables"

    def __init__(self, table: str) -> None:
        self.prefix = self.table = check_name(table)

    def render(self, networks: Sequence[NetworkRule], ports: Sequence[PortRule]) -> str:
        return render(self.table, networks, ports)

    def load(self, script: str) -> None:
        run_nft(script)

    def remove(self) -> None:
        """Delete the table (creating it first makes the delete succeed when it is not there)."""
        run_nft(f"table ip {self.table}\ndelete table ip {self.table}\n")

    def leftovers(self) -> list[str]:
        proc = subprocess.run([NFT, "list", "table", "ip", self.table], capture_output=True, text=True, check=False,
                              timeout=30)
        return [line.strip() for line in proc.stdout.splitlines() if line.strip()] if proc.returncode == 0 else []


def make_backend(choice: str, prefix: str) -> Backend:
    """``auto``, ``nftables`` or ``iptables`` → the backend for ``prefix``."""
    if choice not in BACKENDS:
        raise ValueError(f"unknown firewall backend {choice!r}")
    if choice == "auto":
        choice = "nftables" if nft_works() else "iptables"
    if choice == "iptables":
        from berth.network.iptables import Iptables  # it builds on this module's rule types

        return Iptables(prefix)
    return Nftables(prefix)


class Firewall:
    """The daemon's rules; ``enabled=False`` (``--iptables=false``) makes every call a no-op. The backend is chosen
    at first use (``auto`` runs nft once: off the daemon's ready time)."""

    def __init__(self, table: str, *, enabled: bool = True, backend: str = "auto") -> None:
        check_name(table)
        if backend not in BACKENDS:
            raise ValueError(f"unknown firewall backend {backend!r}")
        self.table = table
        self.enabled = enabled
        self.choice = backend
        self._backend: Backend | None = None
        self._applied: str | None = None
        self._lock = threading.Lock()

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = make_backend(self.choice, self.table)
        return self._backend

    def apply(self, networks: Sequence[NetworkRule], ports: Sequence[PortRule]) -> bool:
        """Make the rules match; True when the backend had to run."""
        if not self.enabled:
            return False
        with self._lock:
            script = self.backend.render(networks, ports) if networks or ports else ""
            if script == self._applied:
                return False
            if script:
                if any(not n.internal for n in networks) and _forwarding_on():
                    log.info("net.ipv4.ip_forward was 0: set to 1 (containers' NAT needs the host to route)")
                self.backend.load(script)
            else:  # nothing left to program: no empty table or chain stays behind either
                self.backend.remove()
            self._applied = script
            return True

    def remove(self) -> None:
        """Delete every rule and chain (or table) of the daemon's prefix."""
        with self._lock:
            self._applied = None
            self.backend.remove()


def _forwarding_on() -> bool:
    """Turn the host's IPv4 forwarding on where it is off (True then); a host that refuses keeps its setting."""
    try:
        return ensure_ipv4_forwarding()
    except OSError as e:
        log.warning("cannot enable net.ipv4.ip_forward (%s): containers reach no other network", e)
        return False
