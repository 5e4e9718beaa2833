"""A container's name resolution: its /etc/hosts and /etc/resolv.conf, and Docker's embedded DNS server.

At start, right after the network service built the container's namespace (so its addresses are known), the
runner calls :meth:`ContainerDns.prepare` in its worker thread: the files are rewritten (berth.network.etcfiles:
the default bridge gets the host's resolv.conf without loopback servers; user-defined networks get ``nameserver
127.0.0.11``), and for a container on a user-defined network a UDP and a TCP socket are bound to 127.0.0.11:53
*inside* its network namespace, from a throw-away thread that joined it (a socket stays in the namespace it was
made in). :meth:`started` serves them from the daemon's event loop (berth.network.dns): names of containers that
share a network with this one (container name, ``--network-alias``, short ID, also as ``name.network``) are
answered here, anything else is forwarded to the real name servers (the host's or ``--dns``) from the daemon's
namespace, except on internal networks. The sockets close when the container stops; after a daemon restart
:meth:`started` opens them again for containers that kept running. ``network connect``/``disconnect`` of a running
container calls :meth:`endpoints_changed` (registered with the network service): the files are rewritten as a start
would write them and the sockets are opened (first user-defined network) or closed (last one gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from berth.engine.containers import ContainerPaths
from berth.errors import BerthError, NotFound
from berth.kernel import netlink
from berth.metadata.networks import Attachment
from berth.network import dns as wire
from berth.network import etcfiles
from berth.network.etcfiles import DnsSettings

log = logging.getLogger("berth.dns")

DNS_PORT = 53


class AttachmentStore(Protocol):
    """The network records (berth.metadata.networks), read for reverse (PTR) answers."""

    def get(self, nid: str) -> dict[str, Any]: ...
    def attachments_of(self, cid: str) -> list[Attachment]: ...
    def attachments_to(self, nid: str) -> list[Attachment]: ...


class NetworkView(Protocol):
    """What name resolution reads from the network service (berth.engine.networks)."""

    @property
    def db(self) -> AttachmentStore: ...
    def resolve(self, cid: str, name: str) -> list[str]: ...
    def endpoints(self, cid: str) -> list[dict[str, Any]]: ...
    def inspect(self, ref: str) -> dict[str, Any]: ...
    def sandbox(self, cid: str) -> Path | None: ...
    def watch(self, fn: Callable[[str], None]) -> None: ...


class ContainerNames(Protocol):
    def resolve(self, ref: str) -> tuple[str, str, dict[str, Any]]: ...


@dataclass(frozen=True)
class DnsOptions:
    """The daemon's flags: ``--dns``/``--dns-search``/``--dns-opt`` defaults, ``--host-gateway-ip``, and where the
    host's resolv.conf is read from."""

    defaults: DnsSettings = field(default_factory=DnsSettings)
    host_gateway_ip: str = ""
    host_resolv_conf: Path = Path(etcfiles.HOST_RESOLV_CONF)
    host_hosts: Path = Path("/etc/hosts")


def load_host_resolv_conf(path: Path) -> etcfiles.ResolvConf:
    """The host's resolv.conf; systemd-resolved's full file when the host's names only its 127.0.0.53 stub."""
    try:
        rc = etcfiles.parse_resolv_conf(path.read_text(), str(path))
    except OSError:
        return etcfiles.ResolvConf(source=str(path))
    if rc.only_loopback() and str(path) == etcfiles.HOST_RESOLV_CONF:
        with contextlib.suppress(OSError):
            alt = Path(etcfiles.SYSTEMD_RESOLV_CONF)
            return etcfiles.parse_resolv_conf(alt.read_text(), str(alt))
    return rc


def container_dns(host: dict[str, Any]) -> DnsSettings:
    return DnsSettings(tuple(host.get("Dns") or ()), tuple(host.get("DnsSearch") or ()),
                       tuple(host.get("DnsOptions") or ()))


@dataclass
class _Served:
    server: wire.DnsServer
    udp: socket.socket | None
    tcp: socket.socket | None
    task: asyncio.Task[None] | None = None


class ContainerDns:
    """The runner's name-resolution hooks (``prepare`` in a worker thread; the others on the event loop, except
    ``release``, which any thread may call)."""

    def __init__(self, networks: NetworkView, containers: ContainerNames, paths: ContainerPaths,
                 options: DnsOptions | None = None) -> None:
        self.networks = networks
        self.containers = containers
        self.paths = paths
        self.options = options or DnsOptions()
        self._served: dict[str, _Served] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        networks.watch(self.endpoints_changed)

    # --- files ------------------------------------------------------------------------------------------------

    def _host_gateway(self, endpoints: Sequence[dict[str, Any]]) -> list[str]:
        """``host-gateway``: --host-gateway-ip, else the container's own gateway, else the default bridge's."""
        if self.options.host_gateway_ip:
            return [self.options.host_gateway_ip]
        for ep in endpoints:
            if ep.get("Gateway") and not ep.get("Internal"):
                return [str(ep["Gateway"])]
        with contextlib.suppress(BerthError, KeyError, IndexError, TypeError):
            gw = self.networks.inspect("bridge")["IPAM"]["Config"][0].get("Gateway")
            if gw:
                return [str(gw)]
        return []

    def write_files(self, cid: str, doc: dict[str, Any], endpoints: Sequence[dict[str, Any]]) -> list[
            etcfiles.Upstream] | None:
        """Rewrite the container's hosts and resolv.conf; the embedded server's upstreams when it needs one."""
        host = doc["HostConfig"]
        config = doc["Config"]
        mode = str(host.get("NetworkMode") or "bridge")
        if mode.startswith("container:"):  # Docker shares the other container's files; berth copies them
            with contextlib.suppress(BerthError, OSError):
                other = self.containers.resolve(mode[len("container:"):])[0]
                _write(self.paths.hosts(cid), self.paths.hosts(other).read_text())
                _write(self.paths.resolv_conf(cid), self.paths.resolv_conf(other).read_text())
                return None
        extra = etcfiles.resolve_extra_hosts(list(host.get("ExtraHosts") or []), self._host_gateway(endpoints))
        dns = container_dns(host).or_defaults(self.options.defaults)
        host_rc = load_host_resolv_conf(self.options.host_resolv_conf)
        upstreams: list[etcfiles.Upstream] | None = None
        if mode == "host":
            hosts = _read(self.options.host_hosts) + "".join(f"{ip}\t{name}\n" for name, ip in extra)
            resolv = (etcfiles.legacy_resolv_conf(host_rc, dns).content if dns != DnsSettings()
                      else _read(self.options.host_resolv_conf))
        else:
            addresses, aliases = [], []
            for ep in endpoints:
                if ep.get("IPAddress"):
                    addresses.append(str(ep["IPAddress"]))
                    aliases += [a for a in ep.get("Aliases") or [] if a not in aliases]
            hosts = etcfiles.hosts_file(str(config.get("Hostname") or cid[:12]), addresses,
                                        domainname=str(config.get("Domainname") or ""), extra=extra, aliases=aliases)
            if any(ep.get("UserDefined") for ep in endpoints):
                result = etcfiles.internal_resolv_conf(host_rc, dns)
                upstreams = list(result.upstreams)
                resolv = result.content
            else:
                resolv = etcfiles.legacy_resolv_conf(host_rc, dns).content
        # written in place, never renamed over: a running container has these very inodes bind-mounted
        _write(self.paths.hosts(cid), hosts)
        _write(self.paths.resolv_conf(cid), resolv)
        return upstreams

    # --- the runner's hooks -------------------------------------------------------------------------------------

    def prepare(self, cid: str, doc: dict[str, Any], netns: str | None) -> None:
        """Worker thread, after the namespace was built and before the spec is written."""
        endpoints = self.networks.endpoints(cid) if netns else []
        upstreams = self.write_files(cid, doc, endpoints)
        self.release(cid)
        if upstreams is None or netns is None:
            return
        internal = all(ep.get("Internal") for ep in endpoints if ep.get("UserDefined"))
        udp, tcp = netlink.run_in_netns(Path(netns), _bind_in_netns)
        server = wire.DnsServer(self._lookup_for(cid), [(u.address.partition("%")[0], DNS_PORT) for u in upstreams],
                                internal=internal)
        self._served[cid] = _Served(server, udp, tcp)

    def endpoints_changed(self, cid: str) -> None:
        """Worker thread, container lock held: a running container joined or left a network (hot plug)."""
        sandbox = self.networks.sandbox(cid)
        if sandbox is None:
            return
        _cid, _name, doc = self.containers.resolve(cid)
        endpoints = self.networks.endpoints(cid)
        upstreams = self.write_files(cid, doc, endpoints)
        if upstreams is None:
            self.release(cid)
            return
        forward = [(u.address.partition("%")[0], DNS_PORT) for u in upstreams]
        internal = all(ep.get("Internal") for ep in endpoints if ep.get("UserDefined"))
        served = self._served.get(cid)
        if served is not None:  # the sockets stay; where unknown names go follows the networks
            served.server.upstreams, served.server.internal = forward, internal
            return
        loop = self._loop
        if loop is None or loop.is_closed():
            log.warning("container %s: embedded DNS not started: no event loop yet", cid[:12])
            return
        udp, tcp = netlink.run_in_netns(sandbox, _bind_in_netns)
        served = _Served(wire.DnsServer(self._lookup_for(cid), forward, internal=internal), udp, tcp)
        self._served[cid] = served
        try:
            loop.call_soon_threadsafe(self._serve_later, cid, served)
        except RuntimeError:  # the loop closed meanwhile (daemon shutdown)
            self._served.pop(cid, None)
            _close_sockets(served)

    def _serve_later(self, cid: str, served: _Served) -> None:
        if self._served.get(cid) is served and served.task is None:
            served.task = asyncio.create_task(self._serve(cid, served))

    def starting(self, doc: dict[str, Any]) -> None:
        pass

    def started(self, cid: str, doc: dict[str, Any], pid: int, restored: bool) -> None:
        """Event loop: serve the sockets ``prepare`` bound; for a container found running after a daemon restart,
        bind them again first."""
        self._loop = asyncio.get_running_loop()
        served = self._served.get(cid)
        if served is not None and served.task is None:
            served.task = asyncio.create_task(self._serve(cid, served))
        elif served is None and pid > 0:
            task = asyncio.create_task(self._restore(cid, doc))
            self._served[cid] = _Served(wire.DnsServer(self._lookup_for(cid)), None, None, task)

    def stopped(self, cid: str) -> None:
        self.release(cid)

    def release(self, cid: str) -> None:
        """The container's namespace goes: close its server (from any thread)."""
        served = self._served.pop(cid, None)
        if served is None:
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(lambda: loop.create_task(_close(served)))
                return
        _close_sockets(served)

    def close(self) -> None:
        for cid in list(self._served):
            self.release(cid)

    async def _serve(self, cid: str, served: _Served) -> None:
        try:
            assert served.udp is not None and served.tcp is not None
            await served.server.serve(served.udp, served.tcp)
        except (OSError, AssertionError) as e:
            log.warning("container %s: embedded DNS not served: %s", cid[:12], e)
            _close_sockets(served)

    async def _restore(self, cid: str, doc: dict[str, Any]) -> None:
        """After a daemon restart: the files stay as they are; the sockets died with the old daemon."""
        try:
            endpoints = await asyncio.to_thread(self.networks.endpoints, cid)
            user = [ep for ep in endpoints if ep.get("UserDefined")]
            sandbox = await asyncio.to_thread(self.networks.sandbox, cid)
            if not user or sandbox is None:
                self._served.pop(cid, None)
                return
            host_rc = await asyncio.to_thread(load_host_resolv_conf, self.options.host_resolv_conf)
            dns = container_dns(doc["HostConfig"]).or_defaults(self.options.defaults)
            upstreams = etcfiles.internal_resolv_conf(host_rc, dns).upstreams
            udp, tcp = await asyncio.to_thread(netlink.run_in_netns, sandbox, _bind_in_netns)
            served = self._served.get(cid)
            if served is None or served.task is not asyncio.current_task():
                udp.close()
                tcp.close()
                return
            served.server = wire.DnsServer(self._lookup_for(cid),
                                           [(u.address.partition("%")[0], DNS_PORT) for u in upstreams],
                                           internal=all(ep.get("Internal") for ep in user))
            served.udp, served.tcp = udp, tcp
            await self._serve(cid, served)
        except (BerthError, OSError) as e:
            log.warning("container %s: embedded DNS not restored: %s", cid[:12], e)

    # --- answers ------------------------------------------------------------------------------------------------

    def _lookup_for(self, cid: str) -> Callable[[str, int], Sequence[str] | None]:
        def lookup(name: str, qtype: int) -> Sequence[str] | None:
            return self.lookup(cid, name, qtype)
        return lookup

    def lookup(self, cid: str, name: str, qtype: int) -> Sequence[str] | None:
        """Container ``cid``'s question: addresses (A, shuffled like Docker's), NODATA for AAAA of a known name,
        the ``name.network`` of a container address (PTR), or None to forward."""
        if qtype == wire.TYPE_PTR:
            ip = wire.address_of_reverse(name)
            return self._reverse(cid, ip) if ip else None
        ips = self._addresses(cid, name)
        if not ips:
            return None
        if qtype == wire.TYPE_AAAA:
            return [ip for ip in ips if ":" in ip]
        found = [ip for ip in ips if ":" not in ip]
        random.shuffle(found)
        return found

    def _addresses(self, cid: str, name: str) -> list[str]:
        if not name:
            return []
        ips = self.networks.resolve(cid, name)
        if ips or "." not in name:
            return ips
        for ep in self.networks.endpoints(cid):
            net = str(ep.get("Network") or "").lower()
            if ep.get("UserDefined") and net and name.endswith("." + net):
                ips = self.networks.resolve(cid, name[: -len(net) - 1])
                if ips:
                    return ips
        return []

    def _reverse(self, cid: str, ip: str) -> list[str] | None:
        """The ``name.network`` of the container that has ``ip`` on a network shared with ``cid``."""
        db = self.networks.db
        with contextlib.suppress(ValueError):
            ipaddress.ip_address(ip)
            for mine in db.attachments_of(cid):
                try:
                    net = db.get(mine.network_id)
                except NotFound:
                    continue
                if net["Name"] in ("bridge", "host", "none"):
                    continue
                for a in db.attachments_to(mine.network_id):
                    if a.active and a.ip == ip:
                        with contextlib.suppress(NotFound):
                            return [f"{self.containers.resolve(a.container_id)[1]}.{net['Name']}"]
        return None


def _bind_in_netns() -> tuple[socket.socket, socket.socket]:
    udp, tcp = wire.bind_sockets(etcfiles.INTERNAL_NAMESERVER, DNS_PORT)
    tcp.listen(64)  # connections made before the event loop serves the socket wait in the backlog
    return udp, tcp


async def _close(served: _Served) -> None:
    if served.task is not None and not served.task.done():
        served.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await served.task
    await served.server.close()
    _close_sockets(served)


def _close_sockets(served: _Served) -> None:
    for s in (served.udp, served.tcp):
        if s is not None:
            with contextlib.suppress(OSError):
                s.close()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
