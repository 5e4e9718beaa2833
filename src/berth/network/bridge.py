"""The bridge driver: a network's Linux bridge, and a container endpoint (a veth pair) plugged into it.

A sandbox is a persistent network namespace file (``<exec-root>/netns/<container id>``) that the engine creates
before the container's spec is written; endpoints are added to it (eth0, eth1, ...) at start or on
``network connect``, and the whole sandbox goes away when the container stops. One netlink socket in the host
namespace serves every call; a socket inside the sandbox is opened per setup.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from berth.kernel import netlink

REAP_DELAY_S = 1.0


@dataclass(frozen=True)
class Endpoint:
    """What to plug in: ``host_if`` on ``bridge`` here, ``ifname`` with ``address`` inside the sandbox."""

    bridge: str
    host_if: str
    ifname: str
    address: ipaddress.IPv4Interface
    mac: str
    gateway: ipaddress.IPv4Address | None  # None: no default route (internal networks, second endpoints)


class BridgeDriver:
    """Bridges and endpoints on this host; thread-safe."""

    def __init__(self) -> None:
        self._host: netlink.Netlink | None = None
        self._lock = threading.Lock()
        self._doomed: queue.SimpleQueue[tuple[float, str] | None] = queue.SimpleQueue()
        self._reaper: threading.Thread | None = None

    @property
    def host(self) -> netlink.Netlink:
        with self._lock:
            if self._host is None:
                self._host = netlink.Netlink.here()
            return self._host

    def close(self) -> None:
        if self._reaper is not None:
            self._doomed.put(None)
            self._reaper.join(10)
            self._reaper = None
        with self._lock:
            if self._host is not None:
                self._host.close()
                self._host = None

    # --- bridges ------------------------------------------------------------------------------------------

    def ensure_bridge(self, name: str, gateway: ipaddress.IPv4Interface | None) -> None:
        """The bridge exists, carries ``gateway`` and is up; localhost may be DNATed to its containers."""
        host = self.host
        if host.index(name) is None:
            try:
                host.add_bridge(name)
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
        if gateway is not None and gateway not in host.addresses(name):
            try:
                host.add_address(name, gateway)
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
        host.up(name)
        # published ports answer on 127.0.0.1: the kernel must route a loopback source out of the bridge
        netlink.set_interface_sysctl("ipv4", name, "route_localnet", "1")

    def link_exists(self, name: str) -> bool:
        """Whether the host has an interface of that name (of any kind)."""
        return self.host.index(name) is not None

    def remove_bridge(self, name: str) -> None:
        self.host.delete_link(name)

    def used_networks(self) -> list[ipaddress.IPv4Network]:
        """The host's routed and addressed IPv4 networks, for choosing a free subnet."""
        return self.host.ipv4_networks()

    # --- sandboxes and endpoints ----------------------------------------------------------------------------

    def create_sandbox(self, path: Path, endpoints: list[Endpoint]) -> None:
        """A new network namespace at ``path`` with lo up and ``endpoints`` plugged in."""
        inside = netlink.new_netns(path)
        try:
            self._plug(path, inside, endpoints)
        except BaseException:
            inside.close()
            netlink.remove_netns(path)
            raise
        inside.close()

    def remove_sandbox(self, path: Path, host_ifs: list[str]) -> None:
        """Drop the namespace now: the kernel destroys it, veth pairs included, in batches off this thread
        (deleting each veth here costs 10-40 ms of RCU grace periods under the rtnl lock). A namespace that
        something still holds (a socket inside it) would keep its veths: a reaper deletes those a moment later."""
        netlink.remove_netns(path)
        if not host_ifs:
            return
        with self._lock:
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name="berth-veth-reaper", daemon=True)
                self._reaper.start()
        for name in host_ifs:
            self._doomed.put((time.monotonic() + REAP_DELAY_S, name))

    def _reap(self) -> None:
        while (item := self._doomed.get()) is not None:
            deadline, name = item
            time.sleep(max(0.0, deadline - time.monotonic()))
            if self.host.index(name) is not None:
                self.detach(name)

    def attach(self, sandbox: Path, endpoints: list[Endpoint]) -> None:
        """Hot-plug ``endpoints`` into an existing sandbox (``network connect``)."""
        with netlink.open_netns(sandbox) as inside:
            self._plug(sandbox, inside, endpoints)

    def _plug(self, sandbox: Path, inside: netlink.Netlink, endpoints: list[Endpoint]) -> None:
        """veth pairs on their bridges, then addresses and the default route inside."""
        if not endpoints:
            return
        host = self.host
        fd = os.open(sandbox, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for ep in endpoints:
                host.add_veth(ep.host_if, ep.ifname, peer_netns_fd=fd, peer_mac=ep.mac)
                host.set_master(ep.host_if, ep.bridge)
                host.up(ep.host_if)
                # a container reaching a port that it publishes itself comes back through its own port
                with contextlib.suppress(OSError):
                    netlink.set_bridge_port(ep.host_if, "hairpin_mode", "1")
            for ep in endpoints:
                inside.add_address(ep.ifname, ep.address)
                inside.up(ep.ifname)
            for ep in endpoints:
                if ep.gateway is not None:
                    with contextlib.suppress(FileExistsError):
                        inside.add_default_route(ep.gateway)
                    break
        except BaseException:
            for ep in endpoints:
                with contextlib.suppress(OSError):
                    host.delete_link(ep.host_if)
            raise
        finally:
            os.close(fd)

    def detach(self, host_if: str) -> None:
        """Unplug one endpoint (the veth peer inside the sandbox goes with it)."""
        if host_if:
            with contextlib.suppress(OSError):
                self.host.delete_link(host_if)

    def link_names(self) -> list[str]:
        return self.host.link_names()
