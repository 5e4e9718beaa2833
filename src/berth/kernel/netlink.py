"""rtnetlink through pyroute2, typed and thin: bridges, veth pairs, addresses, routes, link state, network namespaces.

The only module that talks netlink. A :class:`Netlink` is one rtnetlink socket, bound for life to the network
namespace of the thread that opened it; :func:`new_netns` and :func:`open_netns` open one inside a container's
namespace from a short-lived thread that entered it, so the caller's threads never change namespace.
pyroute2 is imported on first use (its import costs ~125 ms). Errors come out as ``OSError`` with the kernel's errno.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from berth.kernel import ns

T = TypeVar("T")


def _iproute() -> Any:
    from pyroute2 import IPRoute

    return IPRoute()


def _oserror(e: BaseException) -> OSError:
    """pyroute2's NetlinkError as OSError (it carries the errno as ``code``)."""
    code = getattr(e, "code", None)
    if isinstance(e, OSError):
        return e
    if isinstance(code, int) and code > 0:
        return OSError(code, f"netlink: {os.strerror(code)}")
    return OSError(errno.EIO, f"netlink: {e}")


class Netlink:
    """One rtnetlink socket in one network namespace; methods are serialized (pyroute2 sockets are not shareable)."""

    def __init__(self, ipr: Any) -> None:
        self._ipr = ipr
        self._lock = threading.Lock()

    @classmethod
    def here(cls) -> Netlink:
        """A socket in the calling thread's network namespace."""
        return cls(_iproute())

    def close(self) -> None:
        with self._lock, contextlib.suppress(Exception):
            self._ipr.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, fn: Callable[[Any], T]) -> T:
        with self._lock:
            try:
                return fn(self._ipr)
            except Exception as e:
                raise _oserror(e) from None

    # --- links --------------------------------------------------------------------------------------------

    def index(self, name: str) -> int | None:
        """The link's ifindex, or None when there is no such link."""
        found = self._call(lambda ipr: ipr.link_lookup(ifname=name))
        return int(found[0]) if found else None

    def _need(self, name: str) -> int:
        idx = self.index(name)
        if idx is None:
            raise OSError(errno.ENODEV, f"no such network interface: {name}")
        return idx

    def link_names(self) -> list[str]:
        return self._call(lambda ipr: [str(m.get_attr("IFLA_IFNAME")) for m in ipr.get_links()])

    def add_bridge(self, name: str) -> None:
        """Create a bridge (EEXIST when it is there already)."""
        self._call(lambda ipr: ipr.link("add", ifname=name, kind="bridge"))

    def add_veth(self, name: str, peer: str, *, peer_netns_fd: int, peer_mac: str | None = None) -> None:
        """A veth pair: ``name`` here, ``peer`` created straight inside the namespace behind ``peer_netns_fd``."""
        spec: dict[str, Any] = {"ifname": peer, "net_ns_fd": peer_netns_fd}
        if peer_mac:
            spec["address"] = peer_mac
        self._call(lambda ipr: ipr.link("add", ifname=name, kind="veth", peer=spec))

    def set_master(self, name: str, bridge: str) -> None:
        idx, master = self._need(name), self._need(bridge)
        self._call(lambda ipr: ipr.link("set", index=idx, master=master))

    def up(self, name: str) -> None:
        idx = self._need(name)
        self._call(lambda ipr: ipr.link("set", index=idx, state="up"))

    def delete_link(self, name: str) -> bool:
        """Remove a link (its veth peer goes with it); False when it did not exist."""
        idx = self.index(name)
        if idx is None:
            return False
        try:
            self._call(lambda ipr: ipr.link("del", index=idx))
        except OSError as e:
            if e.errno == errno.ENODEV:
                return False
            raise
        return True

    # --- addresses and routes -------------------------------------------------------------------------------

    def add_address(self, name: str, address: ipaddress.IPv4Interface) -> None:
        """Add an IPv4 address (EEXIST when it is there already)."""
        idx = self._need(name)
        self._call(lambda ipr: ipr.addr("add", index=idx, address=str(address.ip),
                                        prefixlen=address.network.prefixlen))

    def addresses(self, name: str) -> list[ipaddress.IPv4Interface]:
        idx = self._need(name)
        msgs = self._call(lambda ipr: ipr.get_addr(family=2, index=idx))
        return [ipaddress.IPv4Interface(f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}") for m in msgs]

    def add_default_route(self, gateway: ipaddress.IPv4Address) -> None:
        self._call(lambda ipr: ipr.route("add", dst="0.0.0.0/0", gateway=str(gateway)))

    def ipv4_networks(self) -> list[ipaddress.IPv4Network]:
        """Every IPv4 network this namespace routes or has an address in (default routes excluded)."""
        def read(ipr: Any) -> list[ipaddress.IPv4Network]:
            out = []
            for r in ipr.get_routes(family=2):
                dst, plen = r.get_attr("RTA_DST"), r["dst_len"]
                if dst and plen and r.get_attr("RTA_TABLE") in (None, 254):
                    out.append(ipaddress.IPv4Network(f"{dst}/{plen}", strict=False))
            for a in ipr.get_addr(family=2):
                addr = a.get_attr("IFA_ADDRESS")
                if addr and not addr.startswith("127."):
                    out.append(ipaddress.IPv4Network(f"{addr}/{a['prefixlen']}", strict=False))
            return out
        return self._call(read)


# --- sysctls ------------------------------------------------------------------------------------------------------


def set_interface_sysctl(family: str, name: str, key: str, value: str) -> None:
    """``net.<family>.conf.<name>.<key> = value`` for one interface of the calling thread's namespace."""
    if "/" in name or name in (".", "..") or "/" in key:
        raise OSError(errno.EINVAL, f"invalid interface sysctl {name}.{key}")
    with open(f"/proc/sys/net/{family}/conf/{name}/{key}", "w") as f:
        f.write(value)


def ensure_ipv4_forwarding(path: str = "/proc/sys/net/ipv4/ip_forward") -> bool:
    """``net.ipv4.ip_forward = 1`` (host-wide, as dockerd sets it): containers' traffic out of their bridge is
    routed by the host. True when it was off and is now on."""
    with open(path, encoding="ascii") as f:
        if f.read().strip() == "1":
            return False
    with open(path, "w", encoding="ascii") as f:
        f.write("1")
    return True


def set_bridge_port(name: str, key: str, value: str) -> None:
    """A bridge port attribute from sysfs (``hairpin_mode`` ...)."""
    if "/" in name or "/" in key:
        raise OSError(errno.EINVAL, f"invalid bridge port attribute {name}.{key}")
    with open(f"/sys/class/net/{name}/brport/{key}", "w") as f:
        f.write(value)


# --- network namespaces ------------------------------------------------------------------------------------------


def _in_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a fresh thread that is thrown away after, so namespace changes never leak into a pool."""
    result: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as e:
            failure.append(e)

    t = threading.Thread(target=run, name="berth-netns")
    t.start()
    t.join()
    if failure:
        raise failure[0]
    return result[0]


def prepare_netns_dir(path: Path) -> None:
    """The directory for namespace files. No self-bind like iproute2's /run/netns: nothing stays mounted under
    the exec root while no container runs, and the runtimes drop their copies of these mounts with the old root."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)


def new_netns(path: Path) -> Netlink:
    """Create a network namespace kept alive by a bind mount at ``path``; returns a socket inside it with lo up."""
    def make() -> Netlink:
        ns.unshare(ns.CLONE_NEWNET)
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        os.close(fd)
        try:
            ns.bind("/proc/thread-self/ns/net", str(path), recursive=False)
        except OSError:
            with contextlib.suppress(OSError):
                path.unlink()
            raise
        loopback_up()
        return Netlink.here()
    return _in_thread(make)


def loopback_up() -> None:
    """Bring ``lo`` of the calling thread's network namespace up: two ioctls, a tenth of a netlink round trip
    through pyroute2 (it runs on every container start)."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock.fileno(), siocgifflags, req))[1]
        fcntl.ioctl(sock.fileno(), siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def open_netns(path: Path) -> Netlink:
    """A socket inside the network namespace behind ``path`` (a namespace file or /proc/PID/ns/net)."""
    def enter() -> Netlink:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ns.setns(fd, ns.CLONE_NEWNET)
        finally:
            os.close(fd)
        return Netlink.here()
    return _in_thread(enter)


def run_in_netns(path: Path, fn: Callable[[], T]) -> T:
    """Call ``fn`` in a thread that joined the network namespace behind ``path`` (for sockets and sysctls)."""
    def enter() -> T:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ns.setns(fd, ns.CLONE_NEWNET)
        finally:
            os.close(fd)
        return fn()
    return _in_thread(enter)


def remove_netns(path: Path) -> None:
    """Unmount and delete a namespace file (the namespace dies with its last user); missing is fine."""
    with contextlib.suppress(OSError):
        ns.unmount_detach(str(path))
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
