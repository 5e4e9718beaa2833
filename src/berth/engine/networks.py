"""Docker's network semantics: the predefined networks, user-defined bridge networks, endpoints, published ports.

:class:`NetworkService` is the engine's network layer. It serves the ``/networks`` routes, checks and records a
container's networks at create (hooks called by ``ContainerService``), builds the container's network namespace
before its spec is written and tears it down at exit (hooks called by ``ContainerRunner``), and keeps the firewall
table equal to what the records say. Host objects are named from the daemon's prefix P: the default bridge ``P0``,
user bridges ``P-<8 hex of the network id>``, veth host ends ``P<hex>``, the nftables table ``P`` (or, with the
iptables backend, the chains ``P-PRE``, ``P-OUT``, ``P-POST``, ``P-FWD``). ``connect``/``disconnect`` of a running
container tell the watchers (the embedded DNS) so that its files and name server follow.

Namespace files live under ``<exec-root>/netns/<container id>`` (a shared mount, like iproute2's /run/netns).
Setup of the predefined networks and the firewall runs in a background thread at daemon start (pyroute2's import
and the bridge's creation stay off the ready time); every method that needs it waits for it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import logging
import re
import secrets
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from berth.errors import BerthError, Conflict, Forbidden, InternalError, InvalidArgument, NotFound, Unavailable
from berth.metadata.networks import Attachment, NetworkDB, PortRecord
from berth.network import ipam
from berth.network.bridge import BridgeDriver, Endpoint
from berth.network.firewall import BACKENDS as FIREWALL_BACKENDS
from berth.network.firewall import Firewall, NetworkRule, PortRule
from berth.oci.digest import is_hex_id
from berth.units import now_rfc3339

log = logging.getLogger("berth.network")

PREDEFINED = ("bridge", "host", "none")
NETWORK_FILTERS = {"name", "id", "label", "driver", "type", "scope", "dangling"}
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
IFNAME_RE = re.compile(r"^[a-zA-Z0-9_.-]{1,15}$")
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,5}$")
EPHEMERAL = (32768, 60999)  # dockerd's range for random host ports
PROTOCOLS = ("tcp", "udp", "sctp")
BRIDGE_NAME_OPT = "com.docker.network.bridge.name"
MASQUERADE_OPT = "com.docker.network.bridge.enable_ip_masquerade"
PRIVATE = "berth.bridge"  # the document's key for the bridge's name; not shown to clients
HOST_LOCK = Path("/run/lock/berth-networks.lock")  # one subnet choice at a time on this host, across daemons
READY_TIMEOUT_S = 60.0


class ContainerLookup(Protocol):
    """What the network layer reads about containers (``ContainerService``)."""

    def resolve(self, ref: str) -> tuple[str, str, dict[str, Any]]: ...


class EventSink(Protocol):
    def publish(self, type: str, action: str, actor_id: str, attributes: Mapping[str, str] | None = None) -> object: ...


@dataclass(frozen=True)
class NetworkOptions:
    """The daemon's network flags: ``--network-prefix``, ``-b/--bridge``, ``--bip``, ``--iptables``,
    ``--firewall-backend``."""

    prefix: str = "berth"
    bridge: str = ""  # "" → <prefix>0; "none" → no default bridge network
    bip: str = ""
    iptables: bool = True
    firewall_backend: str = "auto"  # auto (nft when it works, else iptables), nftables, iptables

    def __post_init__(self) -> None:
        if not PREFIX_RE.match(self.prefix):
            raise InvalidArgument(f"invalid network prefix {self.prefix!r}: 1-6 lower-case letters and digits, "
                                  "starting with a letter")
        if self.bridge and self.bridge != "none" and not IFNAME_RE.match(self.bridge):
            raise InvalidArgument(f"invalid bridge name {self.bridge!r}")
        if self.firewall_backend not in FIREWALL_BACKENDS:
            raise InvalidArgument(f"invalid firewall backend {self.firewall_backend!r}: use one of "
                                  f"{', '.join(FIREWALL_BACKENDS)}")
        if self.bip:
            with contextlib.suppress(ValueError):
                ipaddress.IPv4Interface(self.bip)
                return
            raise InvalidArgument(f"invalid --bip {self.bip!r}: use an address with a prefix (172.20.0.1/16)")

    @property
    def default_bridge(self) -> str:
        return self.bridge or f"{self.prefix}0"


@dataclass(frozen=True)
class PortSpec:
    """One requested publication: container ``port/proto`` on ``host_ip`` at ``host_port`` ("" = any free)."""

    proto: str
    port: int
    host_ip: str
    host_port: str


def parse_port_key(key: str) -> tuple[int, str]:
    """``8080/tcp`` (or ``8080``) → (8080, "tcp"), with Docker's errors."""
    port, _, proto = key.partition("/")
    proto = (proto or "tcp").lower()
    if proto not in PROTOCOLS:
        raise InvalidArgument(f'invalid proto: "{proto}"')
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgument(f'invalid port specification: "{port}"')
    return int(port), proto


def _host_port_range(text: str) -> tuple[int, int] | None:
    """"" → None (any); "8080" or "8000-8010" → bounds; Docker's "Invalid hostPort" otherwise."""
    if text == "":
        return None
    lo, sep, hi = text.partition("-")
    if not lo.isdigit() or (sep and not hi.isdigit()):
        raise InvalidArgument(f"Invalid hostPort: {text}")
    a, b = int(lo), int(hi) if sep else int(lo)
    if not (0 < a <= b < 65536) and not (a == 0 and b == 0):
        raise InvalidArgument(f"Invalid hostPort: {text}")
    return (a, b) if a else None


def port_specs(host: Mapping[str, Any], config: Mapping[str, Any]) -> list[PortSpec]:
    """HostConfig.PortBindings, plus every exposed port under PublishAllPorts (``-P``), checked."""
    bindings = host.get("PortBindings") or {}
    if not isinstance(bindings, dict):
        raise InvalidArgument("invalid PortBindings: must be an object")
    out: list[PortSpec] = []
    seen: set[tuple[int, str]] = set()
    for key, entries in bindings.items():
        port, proto = parse_port_key(str(key))
        seen.add((port, proto))
        for b in entries or [{}]:
            if not isinstance(b, dict):
                raise InvalidArgument(f"invalid PortBindings entry for {key}")
            host_ip = str(b.get("HostIp") or "")
            if host_ip:
                try:
                    ipaddress.ip_address(host_ip)
                except ValueError:
                    raise InvalidArgument(f"invalid IP address: {host_ip}") from None
            host_port = str(b.get("HostPort") or "")
            _host_port_range(host_port)
            out.append(PortSpec(proto, port, host_ip, host_port))
    if host.get("PublishAllPorts"):
        for key in config.get("ExposedPorts") or {}:
            port, proto = parse_port_key(str(key))
            if (port, proto) not in seen:
                out.append(PortSpec(proto, port, "", ""))
    return out


def _bind_free(proto: str, host_ip: str, port: int) -> bool:
    """Whether a socket could bind ``host_ip:port`` now (listening host sockets make it fail)."""
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        if proto == "tcp":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers do not count
        try:
            s.bind((host_ip, port))
        except OSError:
            return False
    return True


def _clashes(a_ip: str, b_ip: str) -> bool:
    return a_ip == b_ip or "0.0.0.0" in (a_ip, b_ip)


def _unix(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@contextlib.contextmanager
def _host_lock() -> Iterator[None]:
    path = HOST_LOCK if HOST_LOCK.parent.is_dir() else Path("/run/berth-networks.lock")
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class NetworkService:
    """Networks, endpoints and published ports (see the module docstring)."""

    def __init__(self, db: NetworkDB, containers: ContainerLookup, events: EventSink, exec_root: Path,
                 options: NetworkOptions | None = None, driver: BridgeDriver | None = None) -> None:
        self.db = db
        self.containers = containers
        self.events = events
        self.options = options or NetworkOptions()
        self.netns_dir = exec_root / "netns"
        self.driver = driver or BridgeDriver()
        self.firewall = Firewall(self.options.prefix, enabled=self.options.iptables,
                                 backend=self.options.firewall_backend)
        self._lock = threading.RLock()
        self._ready = threading.Event()
        self._setup_error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._watchers: list[Callable[[str], None]] = []

    def watch(self, fn: Callable[[str], None]) -> None:
        """Call ``fn(container id)`` (in the caller's worker thread) after a running container's endpoints changed
        by connect or disconnect; the container's lock is held."""
        self._watchers.append(fn)

    def _changed(self, cid: str) -> None:
        for fn in self._watchers:
            try:
                fn(cid)
            except Exception as e:  # the endpoint is in place; a file or DNS failure must not undo it
                log.warning("container %s: after a network change: %s", cid[:12], e)

    # --- start-up ---------------------------------------------------------------------------------------------

    def start_background(self, active: set[str]) -> None:
        """Set up the predefined networks, bridges and firewall in a thread; ``active``: containers that run."""
        self._thread = threading.Thread(target=self._setup, args=(active,), name="berth-network-setup", daemon=True)
        self._thread.start()

    def setup_now(self, active: set[str]) -> None:
        self._setup(active)
        self._wait_ready()

    def _setup(self, active: set[str]) -> None:
        try:
            from berth.kernel.netlink import prepare_netns_dir

            prepare_netns_dir(self.netns_dir)
            with _host_lock():
                self._ensure_predefined()
            for doc in self.db.all():
                if doc["Driver"] == "bridge" and doc.get(PRIVATE):
                    self.driver.ensure_bridge(doc[PRIVATE], self._pool(doc).gateway_interface)
            self._reap(active)
            self._apply_firewall()
        except BaseException as e:  # reported to every caller that needs networking
            log.error("network setup failed: %s", e)
            self._setup_error = e
        finally:
            self._ready.set()

    def _wait_ready(self) -> None:
        if not self._ready.wait(READY_TIMEOUT_S):
            raise Unavailable("networking is not ready yet")
        if self._setup_error is not None:
            raise Unavailable(f"networking is unavailable: {self._setup_error}")

    def close(self) -> None:
        self._ready.wait(READY_TIMEOUT_S)
        self.driver.close()
        self.db.close()

    def _ensure_predefined(self) -> None:
        existing = {doc["Name"]: doc for doc in self.db.all()}
        bridge_name = self.options.default_bridge
        if self.options.bridge != "none":
            doc = existing.get("bridge")
            if doc is None or (self.options.bip and self._pool(doc).gateway_interface !=
                               ipaddress.IPv4Interface(self.options.bip)) or doc.get(PRIVATE) != bridge_name:
                if doc is not None:
                    if any(a.active for a in self.db.attachments_to(doc["Id"])):
                        raise Unavailable("the default bridge changed while containers use it")
                    self.db.delete(doc["Id"])
                    if doc.get(PRIVATE) and doc[PRIVATE] != bridge_name:
                        self.driver.remove_bridge(doc[PRIVATE])
                if self.options.bip:
                    iface = ipaddress.IPv4Interface(self.options.bip)
                    pool = ipam.Pool(iface.network, iface.ip)
                else:
                    used = self.driver.used_networks() + [self._pool(d).subnet for d in existing.values()
                                                          if d["Name"] != "bridge" and d["IPAM"]["Config"]]
                    subnet = ipam.pick_subnet(used)
                    pool = ipam.Pool(subnet, next(subnet.hosts()))
                nid = doc["Id"] if doc is not None else secrets.token_hex(32)
                self.db.insert(nid, "bridge", self._new_doc(nid, "bridge", "bridge", pool, options={
                    "com.docker.network.bridge.default_bridge": "true",
                    "com.docker.network.bridge.enable_icc": "true",
                    "com.docker.network.bridge.enable_ip_masquerade": "true",
                    "com.docker.network.bridge.host_binding_ipv4": "0.0.0.0",
                    BRIDGE_NAME_OPT: bridge_name,
                    "com.docker.network.driver.mtu": "1500",
                }, bridge=bridge_name))
                self.driver.ensure_bridge(bridge_name, pool.gateway_interface)
        for name, driver in (("host", "host"), ("none", "null")):
            if name not in existing:
                nid = secrets.token_hex(32)
                self.db.insert(nid, name, self._new_doc(nid, name, driver, None))

    @staticmethod
    def _new_doc(nid: str, name: str, driver: str, pool: ipam.Pool | None, *, options: dict[str, str] | None = None,
                 labels: dict[str, str] | None = None, internal: bool = False, attachable: bool = False,
                 bridge: str | None = None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "Name": name, "Id": nid, "Created": now_rfc3339(), "Scope": "local", "Driver": driver,
            "EnableIPv4": True, "EnableIPv6": False,
            "IPAM": {"Driver": "default", "Options": None if name in PREDEFINED else {},
                     "Config": [pool.config()] if pool else []},
            "Internal": internal, "Attachable": attachable, "Ingress": False, "ConfigFrom": {"Network": ""},
            "ConfigOnly": False, "Options": options or {}, "Labels": labels or {},
        }
        if bridge:
            doc[PRIVATE] = bridge
        return doc

    def _reap(self, active: set[str]) -> None:
        """Namespaces, endpoints and ports of containers that no longer run (a crash, a reboot)."""
        stale = {a.container_id for a in self.db.active_attachments() if a.container_id not in active}
        stale |= {p.container_id for p in self.db.ports() if p.container_id not in active}
        if self.netns_dir.is_dir():
            stale |= {f.name for f in self.netns_dir.iterdir() if f.name not in active}
        for cid in stale:
            self._release(cid)

    # --- lookups -------------------------------------------------------------------------------------------

    def _find(self, ref: str) -> dict[str, Any]:
        """Full ID, then name, then unique ID prefix (Docker's order); 404 ``network X not found``."""
        if is_hex_id(ref, 64):
            with contextlib.suppress(NotFound):
                return self.db.get(ref)
        nid = self.db.id_by_name(ref)
        if nid:
            return self.db.get(nid)
        if ref and is_hex_id(ref):
            ids = self.db.ids_with_prefix(ref)
            if len(ids) > 1:
                raise InvalidArgument(f"network {ref} is ambiguous ({len(ids)} matches found on name)")
            if ids:
                return self.db.get(ids[0])
        raise NotFound(f"network {ref} not found")

    @staticmethod
    def _pool(doc: Mapping[str, Any]) -> ipam.Pool:
        return ipam.Pool.from_config(doc["IPAM"]["Config"][0])

    def _public(self, doc: dict[str, Any], *, containers: bool) -> dict[str, Any]:
        out = {k: v for k, v in doc.items() if k != PRIVATE}
        out["Containers"] = {}
        if containers:
            plen = self._pool(doc).subnet.prefixlen if doc["IPAM"]["Config"] else 0
            for a in self.db.attachments_to(doc["Id"]):
                if not a.active:
                    continue
                try:
                    _, name, _ = self.containers.resolve(a.container_id)
                except NotFound:
                    continue
                out["Containers"][a.container_id] = {"Name": name, "EndpointID": a.endpoint_id,
                                                     "MacAddress": a.mac, "IPv4Address": f"{a.ip}/{plen}",
                                                     "IPv6Address": ""}
        return out

    # --- the /networks API ----------------------------------------------------------------------------------

    def list_networks(self, filters: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
        self._wait_ready()
        filters = filters or {}
        for key in filters:
            if key not in NETWORK_FILTERS:
                raise InvalidArgument(f"invalid filter '{key}'")
        for v in filters.get("type", []):
            if v not in ("custom", "builtin"):
                raise InvalidArgument(f"invalid filter: 'type'='{v}'")
        for v in filters.get("dangling", []):
            if v.lower() not in ("true", "false", "1", "0"):
                raise InvalidArgument(f"invalid filter 'dangling={v}'")
        out = []
        for doc in self.db.all():
            if self._matches(doc, filters):
                out.append(self._public(doc, containers=False))
        return out

    def _matches(self, doc: dict[str, Any], filters: dict[str, list[str]]) -> bool:
        labels = doc.get("Labels") or {}
        builtin = doc["Name"] in PREDEFINED
        checks: dict[str, Any] = {
            "name": lambda v: v in doc["Name"],
            "id": lambda v: doc["Id"].startswith(v),
            "driver": lambda v: doc["Driver"] == v,
            "type": lambda v: builtin == (v == "builtin"),
            "scope": lambda v: v == "local",
            "dangling": lambda v: (v.lower() in ("true", "1")) == (not builtin and not
                                                                   self.db.attachments_to(doc["Id"])),
        }
        for key, values in filters.items():
            if key == "label":
                for v in values:
                    k, eq, val = v.partition("=")
                    if k not in labels or (eq and labels[k] != val):
                        return False
            elif not any(bool(checks[key](v)) for v in values):
                return False
        return True

    def inspect(self, ref: str) -> dict[str, Any]:
        self._wait_ready()
        return self._public(self._find(ref), containers=True)

    def create(self, body: Any) -> dict[str, Any]:
        """``POST /networks/create``: a bridge network with its own bridge and subnet."""
        self._wait_ready()
        if not isinstance(body, dict):
            raise InvalidArgument("invalid network config: the body must be a JSON object")
        name = body.get("Name")
        if not isinstance(name, str) or not name:
            raise InvalidArgument("network name is required")
        if not NAME_RE.match(name):
            raise InvalidArgument(f"invalid network name {name!r}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        driver = body.get("Driver") or "bridge"
        if driver in ("host", "null"):
            raise Forbidden(f'only one instance of "{driver}" network is allowed')
        if driver != "bridge":
            raise NotFound(f'could not find plugin {driver} in v1 plugin registry: plugin not found')
        if body.get("EnableIPv6"):
            raise InvalidArgument("IPv6 networks are not supported by berth yet")
        options = {str(k): str(v) for k, v in (body.get("Options") or {}).items()}
        labels = {str(k): str(v) for k, v in (body.get("Labels") or {}).items()}
        ipam_cfg = body.get("IPAM") or {}
        if ipam_cfg.get("Driver") not in (None, "", "default"):
            raise NotFound(f"could not find plugin {ipam_cfg['Driver']} in v1 plugin registry: plugin not found")
        entries = [e for e in ipam_cfg.get("Config") or [] if isinstance(e, dict)]
        v4 = []
        for e in entries:
            subnet = str(e.get("Subnet") or "")
            if subnet and ":" in subnet:
                raise InvalidArgument("IPv6 networks are not supported by berth yet")
            v4.append(e)
        if len(v4) > 1:
            raise InvalidArgument("berth supports one IPv4 subnet per network")
        if v4 and not v4[0].get("Subnet") and (v4[0].get("Gateway") or v4[0].get("IPRange")):
            raise InvalidArgument("invalid network config: a gateway or ip-range needs a subnet")
        internal = bool(body.get("Internal"))
        nid = secrets.token_hex(32)
        bridge = options.get(BRIDGE_NAME_OPT) or f"{self.options.prefix}-{nid[:8]}"[:15]
        if not IFNAME_RE.match(bridge):
            raise InvalidArgument(f"invalid bridge name {bridge!r}")
        if self.db.id_by_name(name):
            raise Conflict(f"network with name {name} already exists")
        with self._lock, _host_lock():
            others = [self._pool(d).subnet for d in self.db.all() if d["IPAM"]["Config"]]
            if any(d.get(PRIVATE) == bridge for d in self.db.all()):
                raise Conflict(f"bridge name {bridge} is already used by another network")
            # a named bridge is berth's to create and to delete at `network rm`: never an interface of the host's
            if BRIDGE_NAME_OPT in options and self.driver.link_exists(bridge):
                raise Conflict(f"cannot use {bridge} as the network's bridge: the host already has an interface "
                               "of that name")
            if v4 and v4[0].get("Subnet"):
                pool = ipam.parse_pool(str(v4[0]["Subnet"]), str(v4[0].get("Gateway") or ""),
                                       str(v4[0].get("IPRange") or ""))
                ipam.check_overlap(pool.subnet, others)
            else:
                picked = ipam.pick_subnet(self.driver.used_networks() + others)
                pool = ipam.Pool(picked, next(picked.hosts()))
            doc = self._new_doc(nid, name, "bridge", pool, options=options, labels=labels, internal=internal,
                                attachable=bool(body.get("Attachable")), bridge=bridge)
            self.db.insert(nid, name, doc)
            try:
                self.driver.ensure_bridge(bridge, pool.gateway_interface)
                self._apply_firewall()
            except BaseException:
                self.db.delete(nid)
                with contextlib.suppress(OSError):
                    self.driver.remove_bridge(bridge)
                raise
        self.events.publish("network", "create", nid, {"name": name, "type": "bridge"})
        return {"Id": nid, "Warning": ""}

    def remove(self, ref: str) -> None:
        self._wait_ready()
        doc = self._find(ref)
        name, nid = doc["Name"], doc["Id"]
        if name in PREDEFINED:
            raise Forbidden(f"{name} is a pre-defined network and cannot be removed")
        with self._lock:
            if any(a.active for a in self.db.attachments_to(nid)):
                raise Forbidden(f"error while removing network: network {name} id {nid} has active endpoints")
            self.db.delete(nid)
            if doc.get(PRIVATE):
                self.driver.remove_bridge(doc[PRIVATE])
            self._apply_firewall()
        self.events.publish("network", "destroy", nid, {"name": name, "type": doc["Driver"]})

    def prune(self, filters: dict[str, list[str]]) -> dict[str, Any]:
        self._wait_ready()
        for key in filters:
            if key not in {"until", "label", "label!"}:
                raise InvalidArgument(f"invalid filter '{key}'")
        deleted = []
        for doc in self.db.all():
            if doc["Name"] in PREDEFINED or self.db.attachments_to(doc["Id"]):
                continue
            labels = doc.get("Labels") or {}
            if not all(self._matches(doc, {"label": [v]}) for v in filters.get("label", [])):
                continue
            if any(self._matches(doc, {"label": [v]}) for v in filters.get("label!", [])):
                continue
            if "until" in filters and not _before(doc["Created"], filters["until"][0]):
                continue
            del labels
            with contextlib.suppress(NotFound, Forbidden):
                self.remove(doc["Id"])
                deleted.append(doc["Name"])
        return {"NetworksDeleted": deleted or None}

    def connect(self, ref: str, body: Any) -> None:
        """``POST /networks/{id}/connect``; the caller holds the container's lock."""
        self._wait_ready()
        if not isinstance(body, dict) or not isinstance(body.get("Container"), str):
            raise InvalidArgument("invalid connect request: Container is required")
        doc = self._find(ref)
        cid, cname, cdoc = self.containers.resolve(body["Container"])
        mode = cdoc["HostConfig"].get("NetworkMode") or "bridge"
        if doc["Name"] in ("host", "none") or mode in ("host", "none") or mode.startswith("container:"):
            raise Forbidden("container sharing network namespace with another container or host cannot be "
                            "connected to any other network")
        config = self._endpoint_config(doc, body.get("EndpointConfig") or {})
        current = {a.network_id: a for a in self.db.attachments_of(cid)}
        running = cdoc["State"]["Status"] in ("running", "paused", "restarting")
        with self._lock:
            if doc["Id"] in current and running:
                raise Forbidden(f"endpoint with name {cname} already exists in network {doc['Name']}")
            self.db.attach(cid, doc["Id"], config)
            if running:
                try:
                    used = {a.ifname for a in current.values() if a.ifname}
                    ifname = next(f"eth{i}" for i in range(len(used) + 1) if f"eth{i}" not in used)
                    has_route = any(a.active for a in current.values())
                    ep = self._claim(cid, self.db.attachments_of(cid), doc["Id"], ifname, route=not has_route)
                    self.driver.attach(self.netns_dir / cid, [ep])
                except BaseException:
                    self.db.clear_endpoint(cid, doc["Id"])
                    self.db.detach(cid, doc["Id"])
                    raise
        if running:
            self._changed(cid)
        self.events.publish("network", "connect", doc["Id"], {"container": cid, "name": doc["Name"],
                                                              "type": doc["Driver"]})

    def disconnect(self, ref: str, body: Any) -> None:
        self._wait_ready()
        if not isinstance(body, dict) or not isinstance(body.get("Container"), str):
            raise InvalidArgument("invalid disconnect request: Container is required")
        doc = self._find(ref)
        cid, _cname, _cdoc = self.containers.resolve(body["Container"])
        with self._lock:
            att = next((a for a in self.db.attachments_of(cid) if a.network_id == doc["Id"]), None)
            if att is None:
                raise Forbidden(f"container {cid} is not connected to network {doc['Name']}")
            if att.host_if:
                self.driver.detach(att.host_if)
            self.db.detach(cid, doc["Id"])
            if any(p.network_id == doc["Id"] for p in self.db.ports_of(cid)):
                self._apply_firewall()
        if att.active:
            self._changed(cid)
        self.events.publish("network", "disconnect", doc["Id"], {"container": cid, "name": doc["Name"],
                                                                 "type": doc["Driver"]})

    # --- container records (ContainerService hooks) ---------------------------------------------------------

    def _endpoint_config(self, net: dict[str, Any], raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise InvalidArgument("invalid EndpointsConfig entry: must be an object")
        aliases = [str(a) for a in raw.get("Aliases") or []]
        ipam_cfg = raw.get("IPAMConfig") or None
        user_net = net["Name"] not in PREDEFINED
        wanted = (ipam_cfg or {}).get("IPv4Address") or ""
        if wanted:
            if not user_net:
                raise InvalidArgument("user specified IP address is supported on user defined networks only")
            addr = ipam.parse_address(str(wanted), "IPv4 address")
            if net["IPAM"]["Config"] and addr not in self._pool(net).subnet:
                raise InvalidArgument(f"invalid address {addr}: it does not belong to any of this network's "
                                      "subnets")
        if (ipam_cfg or {}).get("IPv6Address"):
            raise InvalidArgument("IPv6 addresses are not supported by berth yet")
        if aliases and not user_net:
            raise InvalidArgument("network-scoped alias is supported only for containers in user defined networks")
        return {"Name": net["Name"], "Aliases": aliases or None, "IPAMConfig": ipam_cfg, "Links": raw.get("Links"),
                "DriverOpts": raw.get("DriverOpts"), "MacAddress": raw.get("MacAddress") or ""}

    def _create_plan(self, host: Mapping[str, Any], networking: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """(network id, endpoint config) for each network a new container joins; raises on bad input."""
        mode = host.get("NetworkMode") or "bridge"
        if mode == "default":
            mode = "bridge"
        endpoints = (networking or {}).get("EndpointsConfig") or {}
        if not isinstance(endpoints, dict):
            raise InvalidArgument("invalid NetworkingConfig: EndpointsConfig must be an object")
        if mode == "host" or mode == "none" or mode.startswith("container:"):
            if mode.startswith("container:"):
                if not mode[len("container:"):]:
                    raise InvalidArgument(f"invalid network mode: {mode}")
                self.containers.resolve(mode[len("container:"):])
                if host.get("PortBindings") or host.get("PublishAllPorts"):
                    raise InvalidArgument("conflicting options: port publishing and the container type network "
                                          "mode")
            for key in endpoints:
                if key not in (mode, "default"):
                    raise InvalidArgument("container cannot be connected to multiple networks with one of the "
                                          f"networks in private ({mode}) mode")
            return []
        primary = self._find(mode)
        if primary["Name"] in ("host", "none"):
            return self._create_plan({**host, "NetworkMode": primary["Name"]}, networking)
        plan = []
        seen = set()
        raw_primary = endpoints.get(mode) or endpoints.get(primary["Name"]) or endpoints.get("default") or {}
        plan.append((primary["Id"], self._endpoint_config(primary, raw_primary)))
        seen.add(primary["Id"])
        for key, raw in endpoints.items():
            if key in (mode, "default"):
                continue
            net = self._find(key)
            if net["Id"] in seen:
                continue
            if net["Name"] in ("host", "none"):
                raise InvalidArgument("container cannot be connected to multiple networks with one of the "
                                      f"networks in private ({net['Name']}) mode")
            plan.append((net["Id"], self._endpoint_config(net, raw)))
            seen.add(net["Id"])
        return plan

    def validate_create(self, host: dict[str, Any], config: dict[str, Any], networking: dict[str, Any]) -> None:
        """Create-time checks of NetworkMode, NetworkingConfig, PortBindings and ExposedPorts (all 400/404)."""
        self._wait_ready()
        for key in config.get("ExposedPorts") or {}:
            parse_port_key(str(key))
        port_specs(host, config)
        try:
            self._create_plan(host, networking)
        except NotFound as e:
            # dockerd answers 404, which makes the docker CLI try to pull the image: offline, that hides the cause
            raise InvalidArgument(str(e)) from None

    def created(self, cid: str, host: dict[str, Any], networking: dict[str, Any]) -> None:
        """Record the new container's networks (its endpoints are made at start)."""
        for nid, config in self._create_plan(host, networking):
            self.db.attach(cid, nid, config)

    def forget(self, cid: str) -> None:
        """The container record is gone: its memberships go too."""
        self._release(cid)
        self.db.forget_container(cid)

    def network_names(self, cid: str) -> list[str]:
        names = []
        for a in self.db.attachments_of(cid):
            names.append(str(a.config.get("Name") or ""))
            names.append(a.network_id)
        return names

    def _endpoint_view(self, cid: str, name: str, a: Attachment, net: dict[str, Any] | None) -> dict[str, Any]:
        user_net = bool(net) and net is not None and net["Name"] not in PREDEFINED
        aliases = list(a.config.get("Aliases") or [])
        pool = self._pool(net) if net and net["IPAM"]["Config"] else None
        if user_net and cid[:12] not in aliases:
            aliases.append(cid[:12])  # API <= 1.44: the short ID is an alias (compose v1 checks for it)
        return {
            "IPAMConfig": a.config.get("IPAMConfig"),
            "Links": a.config.get("Links"),
            "Aliases": aliases or None,
            "MacAddress": a.mac or "",
            "DriverOpts": a.config.get("DriverOpts"),
            "NetworkID": a.network_id,
            "EndpointID": a.endpoint_id or "",
            "Gateway": str(pool.gateway) if pool and a.active and not (net or {}).get("Internal") else "",
            "IPAddress": a.ip or "",
            "IPPrefixLen": pool.subnet.prefixlen if pool and a.active else 0,
            "IPv6Gateway": "",
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "DNSNames": [name, cid[:12], *(a.config.get("Aliases") or [])] if user_net and a.active else None,
        }

    def _networks_view(self, cid: str, name: str, doc: dict[str, Any]) -> dict[str, Any]:
        mode = doc["HostConfig"].get("NetworkMode") or "bridge"
        out: dict[str, Any] = {}
        if mode in ("host", "none"):
            nid = self.db.id_by_name(mode) or ""
            out[mode] = self._endpoint_view(cid, name, Attachment(cid, nid, 0, {}), None)
            return out
        for a in self.db.attachments_of(cid):
            try:
                net: dict[str, Any] | None = self.db.get(a.network_id)
            except NotFound:
                net = None
            key = net["Name"] if net else str(a.config.get("Name") or a.network_id)
            out[key] = self._endpoint_view(cid, name, a, net)
        return out

    def _ports_view(self, cid: str, doc: dict[str, Any]) -> dict[str, list[dict[str, str]] | None]:
        ports: dict[str, list[dict[str, str]] | None] = {}
        for key in doc["Config"].get("ExposedPorts") or {}:
            with contextlib.suppress(InvalidArgument):
                port, proto = parse_port_key(str(key))
                ports[f"{port}/{proto}"] = None
        for p in self.db.ports_of(cid):
            key = f"{p.container_port}/{p.proto}"
            entries = ports.get(key) or []
            entries.append({"HostIp": p.host_ip, "HostPort": str(p.host_port)})
            ports[key] = entries
        return ports

    def settings(self, cid: str, name: str, doc: dict[str, Any]) -> dict[str, Any]:
        """The container's inspect ``NetworkSettings``."""
        networks = self._networks_view(cid, name, doc)
        running = doc["State"]["Status"] in ("running", "paused", "restarting")
        bridge = networks.get("bridge") or {}
        bridge_doc = self.db.id_by_name("bridge")
        sandbox = self.netns_dir / cid
        return {
            "Bridge": "",
            "SandboxID": hashlib.sha256(f"sandbox:{cid}".encode()).hexdigest() if running else "",
            "SandboxKey": str(sandbox) if running and sandbox.exists() else "",
            "HairpinMode": False,
            "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0,
            "Ports": self._ports_view(cid, doc) if running else {},
            "SecondaryIPAddresses": None,
            "SecondaryIPv6Addresses": None,
            "EndpointID": bridge.get("EndpointID", ""),
            "Gateway": bridge.get("Gateway", ""),
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "IPAddress": bridge.get("IPAddress", ""),
            "IPPrefixLen": bridge.get("IPPrefixLen", 0),
            "IPv6Gateway": "",
            "MacAddress": bridge.get("MacAddress", "") if bridge_doc else "",
            "Networks": networks,
        }

    def summary(self, cid: str, name: str, doc: dict[str, Any]) -> dict[str, Any]:
        """The container list's ``Ports`` and ``NetworkSettings``."""
        ports: list[dict[str, Any]] = []
        published = set()
        for p in self.db.ports_of(cid):
            ports.append({"IP": p.host_ip, "PrivatePort": p.container_port, "PublicPort": p.host_port,
                          "Type": p.proto})
            published.add((p.container_port, p.proto))
        for key in doc["Config"].get("ExposedPorts") or {}:
            with contextlib.suppress(InvalidArgument):
                port, proto = parse_port_key(str(key))
                if (port, proto) not in published:
                    ports.append({"PrivatePort": port, "Type": proto})
        return {"Ports": ports, "NetworkSettings": {"Networks": self._networks_view(cid, name, doc)}}

    # --- start and exit (ContainerRunner hooks) ----------------------------------------------------------------

    def setup(self, cid: str, name: str, doc: dict[str, Any]) -> str | None:
        """Build the container's network namespace before its spec is written: the path to join, None for the
        host's. Published ports are checked, reserved and programmed; on failure nothing is left behind."""
        self._wait_ready()
        mode = doc["HostConfig"].get("NetworkMode") or "bridge"
        if mode == "host":
            return None
        if mode.startswith("container:"):
            other, _oname, odoc = self.containers.resolve(mode[len("container:"):])
            if odoc["State"]["Status"] not in ("running", "paused", "restarting"):
                raise Conflict(f"cannot join network of a non running container: {other}")
            omode = odoc["HostConfig"].get("NetworkMode") or "bridge"
            if omode == "host":
                return "/proc/1/ns/net"
            path = self.netns_dir / other
            if not path.exists():
                raise Conflict(f"cannot join network of a non running container: {other}")
            return str(path)
        path = self.netns_dir / cid
        # the runner holds the container's lock: no other setup or release of this container runs now
        self._release(cid)  # leftovers of a start that did not finish
        atts = self.db.attachments_of(cid)
        if mode != "none" and not atts:  # a record made before networking existed
            self.created(cid, doc["HostConfig"], doc.get("NetworkingConfig") or {})
            atts = self.db.attachments_of(cid)
        endpoints: list[Endpoint] = []
        try:
            with self._lock:  # port choices must not interleave (addresses are guarded by the database)
                for i, a in enumerate(atts):
                    endpoints.append(self._claim(cid, atts, a.network_id, f"eth{i}", route=i == 0))
                if endpoints:
                    self._publish(cid, name, doc, atts[0].network_id, endpoints[0])
            self.driver.create_sandbox(path, endpoints)
            if endpoints and self.db.ports_of(cid):
                self._apply_firewall()
        except BaseException:
            self._release(cid)
            raise
        return str(path)

    def _claim(self, cid: str, atts: list[Attachment], nid: str, ifname: str, *, route: bool) -> Endpoint:
        """Allocate the endpoint of ``cid`` on network ``nid``: an address (the requested one or the lowest free),
        a MAC derived from it, a host-side veth name; recorded before any kernel object exists."""
        att = next(a for a in atts if a.network_id == nid)
        try:
            net = self.db.get(nid)
        except NotFound:
            raise NotFound(f"network {att.config.get('Name') or nid} not found") from None
        pool = self._pool(net)
        wanted = ((att.config.get("IPAMConfig") or {}).get("IPv4Address") or "")
        for _ in range(64):
            taken = [ipaddress.IPv4Address(ip) for ip in self.db.taken_ips(nid)]
            if wanted:
                addr = ipam.parse_address(str(wanted), "IPv4 address")
                ipam.check_requested(pool, addr, taken)
            else:
                addr = ipam.next_address(pool, taken)
            mac = str(att.config.get("MacAddress") or "") or ipam.mac_for(addr)
            host_if = self.options.prefix + secrets.token_hex(8)[: 15 - len(self.options.prefix)]
            if self.db.set_endpoint(cid, nid, secrets.token_hex(32), str(addr), mac, host_if, ifname):
                gateway = pool.gateway if route and not net.get("Internal") else None
                return Endpoint(net[PRIVATE], host_if, ifname, pool.interface(addr), mac, gateway)
            if wanted:
                raise InvalidArgument(f"Address already in use: {addr}")
        raise Unavailable(f"no available IPv4 addresses on network {net['Name']}")

    def _publish(self, cid: str, name: str, doc: dict[str, Any], nid: str, ep: Endpoint) -> None:
        """Reserve the container's host ports (Docker's wording when one is taken); the firewall follows."""
        specs = port_specs(doc["HostConfig"], doc["Config"])
        if not specs:
            return
        eid = next((a.endpoint_id for a in self.db.attachments_of(cid) if a.network_id == nid), "") or ""
        records: list[PortRecord] = []
        existing = self.db.ports()
        for s in specs:
            if ":" in s.host_ip:
                continue  # IPv6 host addresses: not published by berth yet
            host_ip = s.host_ip or "0.0.0.0"
            busy = [(p.proto, p.host_ip, p.host_port) for p in existing + records]
            rng = _host_port_range(s.host_port)

            def free(port: int, host_ip: str = host_ip, s: PortSpec = s,
                     busy: list[tuple[str, str, int]] = busy) -> bool:
                if any(proto == s.proto and hp == port and _clashes(ip, host_ip) for proto, ip, hp in busy):
                    return False
                return _bind_free(s.proto, host_ip, port)

            chosen = None
            if rng is None:
                lo, hi = EPHEMERAL
                for _ in range(256):
                    candidate = lo + secrets.randbelow(hi - lo + 1)
                    if free(candidate):
                        chosen = candidate
                        break
            else:
                chosen = next((p for p in range(rng[0], rng[1] + 1) if free(p)), None)
            if chosen is None:
                shown = s.host_port or "a random port"
                raise InternalError(f"driver failed programming external connectivity on endpoint {name} ({eid}): "
                                    f"Bind for {host_ip}:{shown} failed: port is already allocated")
            records.append(PortRecord(s.proto, host_ip, chosen, cid, nid, s.port))
        try:
            self.db.add_ports(records)
        except Conflict:
            raise InternalError(f"driver failed programming external connectivity on endpoint {name} ({eid}): "
                                "port is already allocated") from None

    def release(self, cid: str) -> None:
        """The container stopped: its namespace, endpoints and published ports go (Docker releases at stop)."""
        with contextlib.suppress(Unavailable):
            self._wait_ready()
        self._release(cid)

    def _release(self, cid: str) -> None:
        path = self.netns_dir / cid
        atts = [a for a in self.db.attachments_of(cid) if a.active]
        had_ports = bool(self.db.ports_of(cid))
        if not atts and not had_ports and not path.exists():
            return
        try:
            self.driver.remove_sandbox(path, [a.host_if for a in atts if a.host_if])
        finally:
            self.db.clear_endpoint(cid)
            self.db.remove_ports(cid)
            if had_ports:
                with contextlib.suppress(BerthError):
                    self._apply_firewall()

    def _apply_firewall(self) -> None:
        nets = []
        bridges: dict[str, str] = {}
        for doc in self.db.all():
            if doc["Driver"] != "bridge" or not doc.get(PRIVATE) or not doc["IPAM"]["Config"]:
                continue
            bridges[doc["Id"]] = doc[PRIVATE]
            masq = str((doc.get("Options") or {}).get(MASQUERADE_OPT, "true")).lower() != "false"
            nets.append(NetworkRule(doc[PRIVATE], self._pool(doc).subnet, bool(doc.get("Internal")), masq))
        ips = {(a.container_id, a.network_id): a.ip for a in self.db.active_attachments()}
        rules = []
        for p in self.db.ports():
            ip = ips.get((p.container_id, p.network_id))
            if ip and p.network_id in bridges:
                rules.append(PortRule(p.proto, p.host_ip, p.host_port, ipaddress.IPv4Address(ip), p.container_port,
                                      bridges[p.network_id]))
        self.firewall.apply(nets, rules)

    # --- for the embedded DNS (berth.engine.dns) ------------------------------------------------------------

    def resolve(self, cid: str, name: str) -> list[str]:
        """IPv4 addresses of running containers that share a user-defined network with ``cid`` and answer to
        ``name`` (container name, network alias or 12-char short ID)."""
        wanted = name.rstrip(".").lower()
        out: list[str] = []
        for mine in self.db.attachments_of(cid):
            if mine.config.get("Name") in PREDEFINED:
                continue
            for a in self.db.attachments_to(mine.network_id):
                if not a.active or not a.ip:
                    continue
                names = {a.container_id[:12]} | {str(x).lower() for x in a.config.get("Aliases") or []}
                with contextlib.suppress(NotFound):
                    names.add(self.containers.resolve(a.container_id)[1].lower())
                if wanted in names and a.ip not in out:
                    out.append(a.ip)
        return out

    def endpoints(self, cid: str) -> list[dict[str, Any]]:
        """The container's live endpoints: network name and id, internal flag, address, prefix, gateway."""
        out = []
        for a in self.db.attachments_of(cid):
            if not a.active:
                continue
            with contextlib.suppress(NotFound):
                net = self.db.get(a.network_id)
                pool = self._pool(net)
                out.append({"Network": net["Name"], "NetworkID": net["Id"], "Internal": bool(net.get("Internal")),
                            "UserDefined": net["Name"] not in PREDEFINED, "IPAddress": a.ip,
                            "IPPrefixLen": pool.subnet.prefixlen, "Gateway": str(pool.gateway),
                            "Aliases": list(a.config.get("Aliases") or [])})
        return out

    def sandbox(self, cid: str) -> Path | None:
        """The container's network namespace file while it runs."""
        path = self.netns_dir / cid
        return path if path.exists() else None


def _before(created: str, until: str) -> bool:
    try:
        limit = float(until)
    except ValueError:
        limit = _unix(until)
    return _unix(created) < limit
