"""berthd's command line, with dockerd's flag names where the two overlap, parsed into a frozen config."""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from berth.errors import InvalidArgument

DEFAULT_SOCKET = "/run/berth/berth.sock"
DEFAULT_DATA_ROOT = "/var/lib/berth"
DEFAULT_EXEC_ROOT = "/run/berth"
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")
STORAGE_DRIVERS = ("auto", "overlayfs", "copy")
FIREWALL_BACKENDS = ("auto", "nftables", "iptables")  # berth.network.firewall.BACKENDS (daemon/ stays light)
# berth.runtime.oci_cli.RUNTIMES' names, not imported: it pulls in the whole runtime before the lock is taken
BUILTIN_RUNTIMES = ("berth", "runc", "crun")


@dataclass(frozen=True)
class DaemonConfig:
    """Where berthd listens and keeps its state."""

    socket: Path
    data_root: Path
    exec_root: Path
    pidfile: Path
    log_level: str = "info"
    storage_driver: str = "auto"
    default_runtime: str = "berth"
    extra_runtimes: tuple[tuple[str, str], ...] = ()   # --add-runtime name=path
    network_prefix: str = "berth"  # names every host network object: bridge P0, table P, veths P<hex>
    bridge: str = ""  # -b: the default bridge's name ("" = <prefix>0, "none" = no default bridge network)
    bip: str = ""  # --bip: the default bridge's address and prefix (172.20.0.1/16)
    iptables: bool = True  # --iptables=false: no firewall rules (no NAT, no isolation, no published ports)
    firewall_backend: str = "auto"  # --firewall-backend: auto (nft when it works, else iptables), nftables, iptables
    dns: tuple[str, ...] = ()  # --dns: name servers for containers that set none (and the embedded DNS's upstreams)
    dns_search: tuple[str, ...] = ()  # --dns-search
    dns_options: tuple[str, ...] = ()  # --dns-opt
    host_gateway_ip: str = ""  # --host-gateway-ip: what --add-host x:host-gateway names ("" = the gateway)
    insecure_registries: tuple[str, ...] = ()  # --insecure-registry: hosts or CIDRs reachable over plain HTTP

    def __post_init__(self) -> None:
        if self.default_runtime not in BUILTIN_RUNTIMES + tuple(name for name, _ in self.extra_runtimes):
            raise InvalidArgument(f"unknown or invalid runtime name: {self.default_runtime}")
        if self.firewall_backend not in FIREWALL_BACKENDS:
            raise InvalidArgument(f"invalid firewall backend {self.firewall_backend!r}: use one of "
                                  f"{', '.join(FIREWALL_BACKENDS)}")
        if self.log_level not in LOG_LEVELS:
            raise InvalidArgument(f"invalid log level {self.log_level!r}: use one of {', '.join(LOG_LEVELS)}")
        if self.storage_driver not in STORAGE_DRIVERS:
            raise InvalidArgument(
                f"invalid storage driver {self.storage_driver!r}: use one of {', '.join(STORAGE_DRIVERS)}"
            )
        for addr in (*self.dns, *([self.host_gateway_ip] if self.host_gateway_ip else [])):
            try:
                ipaddress.ip_address(addr)
            except ValueError:
                raise InvalidArgument(f"IP address is not correctly formatted: {addr}") from None

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"


def socket_path(host: str) -> Path:
    """``unix:///run/x.sock`` (or a bare path) → the socket path; TCP is refused (no TLS here)."""
    if host.startswith("unix://"):
        path = host[len("unix://"):]
    elif "://" in host:
        raise InvalidArgument(f"berthd listens only on unix sockets, not {host!r}")
    else:
        path = host
    if not path.startswith("/"):
        raise InvalidArgument(f"socket path must be absolute: {host!r}")
    if len(path.encode()) > 107:
        raise InvalidArgument(f"socket path too long (max 107 bytes): {path}")
    return Path(path)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="berthd", description="berth: a Docker-compatible container engine")
    p.add_argument("-H", "--host", default=f"unix://{DEFAULT_SOCKET}",
                   help="daemon socket to listen on (unix:///path.sock)")
    p.add_argument("--data-root", default=DEFAULT_DATA_ROOT, help="root of persistent state")
    p.add_argument("--exec-root", default=DEFAULT_EXEC_ROOT, help="root of runtime state")
    p.add_argument("-p", "--pidfile", default=None, help="pid file (default <exec-root>/berthd.pid)")
    p.add_argument("-l", "--log-level", default="info", choices=LOG_LEVELS)
    p.add_argument("-s", "--storage-driver", default="auto", choices=STORAGE_DRIVERS)
    p.add_argument("--default-runtime", default=BUILTIN_RUNTIMES[0],
                   help="OCI runtime for containers that name none (berth, runc, crun or an --add-runtime name)")
    p.add_argument("--add-runtime", action="append", default=[], metavar="NAME=PATH",
                   help="register an OCI runtime binary under a name (repeatable)")
    p.add_argument("--network-prefix", default="berth",
                   help="name prefix of the host's network objects (bridges, veths, the nftables table)")
    p.add_argument("-b", "--bridge", default="", help='the default bridge network\'s bridge ("none" disables it)')
    p.add_argument("--bip", default="", help="the default bridge's address and prefix (e.g. 172.20.0.1/16)")
    p.add_argument("--iptables", nargs="?", const="true", default="true", metavar="BOOL",
                   help="program firewall rules for NAT, isolation and published ports (default true)")
    p.add_argument("--firewall-backend", default="auto", choices=FIREWALL_BACKENDS,
                   help="how the rules are loaded: nftables, iptables, or auto (nft when it works, else iptables)")
    p.add_argument("--dns", action="append", default=[], help="DNS server for containers (repeatable)")
    p.add_argument("--dns-search", action="append", default=[], help="DNS search domain for containers (repeatable)")
    p.add_argument("--dns-opt", action="append", default=[], help="DNS option for containers (repeatable)")
    p.add_argument("--host-gateway-ip", default="",
                   help="the address --add-host NAME:host-gateway stands for (default: the container's gateway)")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]|CIDR",
                   help="a registry berthd may reach over plain HTTP (repeatable; loopback always may)")
    p.add_argument("-v", "--version", action="store_true", help="print the version and exit")
    return p


def parse_args(argv: Sequence[str] | None = None) -> tuple[DaemonConfig, bool]:
    """The config, and whether only ``--version`` was asked for. Exits with usage on bad flags."""
    parser = _parser()
    ns = parser.parse_args(argv)
    try:
        sock = socket_path(ns.host)
    except InvalidArgument as err:
        parser.error(str(err))
    exec_root = Path(ns.exec_root).absolute()
    extra = []
    for item in ns.add_runtime:
        name, sep, path = item.partition("=")
        if not sep or not name or not path or name == BUILTIN_RUNTIMES[0]:
            parser.error(f"invalid --add-runtime {item!r}: use NAME=PATH (and not the name berth)")
        extra.append((name, path))
    try:
        config = _config(ns, sock, exec_root, tuple(extra))
    except InvalidArgument as err:
        parser.error(str(err))
    return config, bool(ns.version)


def _bool_flag(name: str, text: str) -> bool:
    """Go's strconv.ParseBool, as dockerd reads ``--iptables=false``."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise InvalidArgument(f"invalid boolean value {text!r} for {name}")


def _config(ns: argparse.Namespace, sock: Path, exec_root: Path,
            extra_runtimes: tuple[tuple[str, str], ...]) -> DaemonConfig:
    return DaemonConfig(
        socket=sock,
        data_root=Path(ns.data_root).absolute(),
        exec_root=exec_root,
        pidfile=Path(ns.pidfile).absolute() if ns.pidfile else exec_root / "berthd.pid",
        log_level=ns.log_level,
        storage_driver=ns.storage_driver,
        default_runtime=ns.default_runtime,
        extra_runtimes=extra_runtimes,
        network_prefix=ns.network_prefix,
        bridge=ns.bridge,
        bip=ns.bip,
        iptables=_bool_flag("--iptables", ns.iptables),
        firewall_backend=ns.firewall_backend,
        dns=tuple(ns.dns),
        dns_search=tuple(ns.dns_search),
        dns_options=tuple(ns.dns_opt),
        host_gateway_ip=ns.host_gateway_ip,
        insecure_registries=tuple(ns.insecure_registry),
    )
