"""IPv4 address management: subnet pools for new networks and addresses for endpoints (Docker's default IPAM).

Pure functions over values: the caller says which networks are in use (berth's own and the host's routes, see
:func:`host_networks`) and which addresses are taken; nothing here touches the kernel or the database.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from berth.errors import Forbidden, InvalidArgument, Unavailable

# dockerd's default-address-pools: 172.17-31.0.0/16, then 192.168.0.0/16 cut in /20s
DEFAULT_POOLS: tuple[tuple[str, int], ...] = (
    *((f"172.{n}.0.0/16", 16) for n in range(17, 32)),
    ("192.168.0.0/16", 20),
)


@dataclass(frozen=True)
class Pool:
    """One network's IPv4 configuration: its subnet, the gateway (the bridge's address), the range handed out."""

    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    ip_range: ipaddress.IPv4Network | None = None

    def __post_init__(self) -> None:
        if self.gateway not in self.subnet:
            raise InvalidArgument(f"invalid gateway {self.gateway}: not in subnet {self.subnet}")
        if self.ip_range is not None and not self.ip_range.subnet_of(self.subnet):
            raise InvalidArgument(f"invalid ip-range {self.ip_range}: not in subnet {self.subnet}")

    @property
    def gateway_interface(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{self.gateway}/{self.subnet.prefixlen}")

    def config(self) -> dict[str, str]:
        """Docker's ``IPAM.Config[]`` entry."""
        out = {"Subnet": str(self.subnet), "Gateway": str(self.gateway)}
        if self.ip_range is not None:
            out["IPRange"] = str(self.ip_range)
        return out

    @classmethod
    def from_config(cls, entry: dict[str, str]) -> Pool:
        return parse_pool(entry.get("Subnet", ""), entry.get("Gateway", ""), entry.get("IPRange", ""))

    def interface(self, address: ipaddress.IPv4Address) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{address}/{self.subnet.prefixlen}")


def parse_network(text: str, what: str = "subnet") -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidArgument(f"invalid {what} {text}: invalid CIDR address: {text}") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise InvalidArgument(f"invalid {what} {text}: IPv6 networks are not supported")
    return net


def parse_address(text: str, what: str = "address") -> ipaddress.IPv4Address:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidArgument(f"invalid {what}: {text}") from None
    if not isinstance(addr, ipaddress.IPv4Address):
        raise InvalidArgument(f"invalid {what} {text}: IPv6 addresses are not supported")
    return addr


def parse_pool(subnet: str, gateway: str = "", ip_range: str = "") -> Pool:
    """A pool from user input (``--subnet``, ``--gateway``, ``--ip-range``); the gateway defaults to the first host."""
    net = parse_network(subnet)
    if net.prefixlen > 30:
        raise InvalidArgument(f"invalid subnet {subnet}: too small for a network (at most /30)")
    gw = parse_address(gateway, "gateway") if gateway else next(net.hosts())
    if gw not in net:
        raise InvalidArgument(f"no matching subnet for gateway {gw}")
    rng = parse_network(ip_range, "ip-range") if ip_range else None
    if rng is not None and not rng.subnet_of(net):
        raise InvalidArgument(f"no matching subnet for range {ip_range}")
    return Pool(net, gw, rng)


def candidate_subnets(pools: Iterable[tuple[str, int]] = DEFAULT_POOLS) -> Iterator[ipaddress.IPv4Network]:
    for base, size in pools:
        net = ipaddress.IPv4Network(base)
        yield from net.subnets(new_prefix=size) if size > net.prefixlen else (net,)


def pick_subnet(used: Iterable[ipaddress.IPv4Network],
                pools: Iterable[tuple[str, int]] = DEFAULT_POOLS) -> ipaddress.IPv4Network:
    """The first pool subnet that overlaps nothing in ``used``."""
    taken = list(used)
    for candidate in candidate_subnets(pools):
        if not any(candidate.overlaps(u) for u in taken):
            return candidate
    raise Unavailable("could not find an available, non-overlapping IPv4 address pool among the defaults to "
                      "assign to the network")


def check_overlap(subnet: ipaddress.IPv4Network, existing: Iterable[ipaddress.IPv4Network]) -> None:
    """Docker refuses a user subnet that overlaps another network's (403)."""
    for other in existing:
        if subnet.overlaps(other):
            raise Forbidden("invalid pool request: Pool overlaps with other one on this address space")


def next_address(pool: Pool, taken: Iterable[ipaddress.IPv4Address]) -> ipaddress.IPv4Address:
    """The lowest free address of the pool's range (the gateway, network and broadcast addresses never)."""
    busy = set(taken) | {pool.gateway}
    rng = pool.ip_range or pool.subnet
    for addr in rng.hosts() if rng.prefixlen < 31 else rng:
        if addr in busy or addr in (pool.subnet.network_address, pool.subnet.broadcast_address):
            continue
        return addr
    raise Unavailable(f"no available IPv4 addresses on this network's address pools: ({pool.subnet})")


def check_requested(pool: Pool, address: ipaddress.IPv4Address, taken: Iterable[ipaddress.IPv4Address]) -> None:
    """``--ip``: inside the subnet, not the gateway, not in use (Docker's wording)."""
    if address not in pool.subnet or address in (pool.subnet.network_address, pool.subnet.broadcast_address):
        raise InvalidArgument(f"invalid address {address}: it does not belong to any of this network's subnets")
    if address == pool.gateway or address in set(taken):
        raise InvalidArgument(f"Address already in use: {address}")


def mac_for(address: ipaddress.IPv4Address) -> str:
    """Docker's MAC for an IPv4 endpoint: 02:42 then the four address bytes."""
    return "02:42:" + ":".join(f"{b:02x}" for b in address.packed)


def host_networks(route_file: Path = Path("/proc/net/route")) -> list[ipaddress.IPv4Network]:
    """The host's IPv4 routes (main table, default route excluded) read from procfs, no netlink needed."""
    try:
        lines = route_file.read_text().splitlines()[1:]
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        dest = int(fields[1], 16).to_bytes(4, "little")
        mask = int(fields[7], 16).to_bytes(4, "little")
        if mask == b"\0\0\0\0":
            continue
        out.append(ipaddress.IPv4Network((ipaddress.IPv4Address(dest), str(ipaddress.IPv4Address(mask))),
                                         strict=False))
    return out
