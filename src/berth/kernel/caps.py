"""Linux capabilities: names, the five sets of an OCI process, and the prctl/capset calls that apply them.

The runtime drops capabilities in runc's order (libcontainer ``finalizeNamespace``):
:func:`drop_bounding` first (needs CAP_SETPCAP), then ``set_keepcaps(True)`` so a uid change keeps the
permitted set, setgroups/setgid/setuid, ``set_keepcaps(False)``, and finally :func:`apply` for
effective/permitted/inheritable/ambient. A process that changes to a non-root uid without keepcaps loses
its permitted and effective sets, as execve(2) would for a non-root user anyway.
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

from berth.errors import InternalError, InvalidArgument

log = logging.getLogger(__name__)

CAPS: dict[str, int] = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_DAC_READ_SEARCH": 2,
    "CAP_FOWNER": 3,
    "CAP_FSETID": 4,
    "CAP_KILL": 5,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_SETPCAP": 8,
    "CAP_LINUX_IMMUTABLE": 9,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_IPC_LOCK": 14,
    "CAP_IPC_OWNER": 15,
    "CAP_SYS_MODULE": 16,
    "CAP_SYS_RAWIO": 17,
    "CAP_SYS_CHROOT": 18,
    "CAP_SYS_PTRACE": 19,
    "CAP_SYS_PACCT": 20,
    "CAP_SYS_ADMIN": 21,
    "CAP_SYS_BOOT": 22,
    "CAP_SYS_NICE": 23,
    "CAP_SYS_RESOURCE": 24,
    "CAP_SYS_TIME": 25,
    "CAP_SYS_TTY_CONFIG": 26,
    "CAP_MKNOD": 27,
    "CAP_LEASE": 28,
    "CAP_AUDIT_WRITE": 29,
    "CAP_AUDIT_CONTROL": 30,
    "CAP_SETFCAP": 31,
    "CAP_MAC_OVERRIDE": 32,
    "CAP_MAC_ADMIN": 33,
    "CAP_SYSLOG": 34,
    "CAP_WAKE_ALARM": 35,
    "CAP_BLOCK_SUSPEND": 36,
    "CAP_AUDIT_READ": 37,
    "CAP_PERFMON": 38,
    "CAP_BPF": 39,
    "CAP_CHECKPOINT_RESTORE": 40,
}
NAMES: dict[int, str] = {v: k for k, v in CAPS.items()}

DOCKER_DEFAULT: frozenset[str] = frozenset(
    {
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    }
)
"""Docker's 14 default capabilities (moby daemon/pkg/oci/caps/defaults.go)."""

PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_IS_SET = 1
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_SYS_CAPSET = {"x86_64": 126, "aarch64": 91}
_MACHINE = os.uname().machine


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.prctl.restype = ctypes.c_int
_libc.syscall.restype = ctypes.c_long


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    res = int(_libc.prctl(option, arg2, arg3, 0, 0))
    if res < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}, {arg2}): {os.strerror(err)}")
    return res


def parse_caps(names: Iterable[str]) -> set[int]:
    """Capability numbers for Docker-style names: ``NET_ADMIN``, ``cap_net_admin`` or ``ALL`` (every known cap)."""
    out: set[int] = set()
    for raw in names:
        name = raw.strip().upper()
        if name == "ALL":
            top = last_cap()
            out.update(n for n in CAPS.values() if n <= top)
            continue
        if not name.startswith("CAP_"):
            name = "CAP_" + name
        if name not in CAPS:
            # moby NormalizeLegacyCapabilities wording (Go %q quoting)
            raise InvalidArgument(f'unknown capability: "{name}"')
        out.add(CAPS[name])
    return out


def mask(caps: Iterable[int]) -> int:
    """The bit mask of a set of capability numbers, as /proc/<pid>/status prints it."""
    bits = 0
    for cap in caps:
        bits |= 1 << cap
    return bits


def last_cap() -> int:
    """The highest capability number the running kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read().strip())
    except OSError:
        return max(CAPS.values())


@dataclass(frozen=True)
class CapSets:
    """The five capability sets of an OCI ``process.capabilities`` block, as numbers."""

    bounding: frozenset[int] = frozenset()
    effective: frozenset[int] = frozenset()
    permitted: frozenset[int] = frozenset()
    inheritable: frozenset[int] = frozenset()
    ambient: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        for field in (self.bounding, self.effective, self.permitted, self.inheritable, self.ambient):
            for cap in field:
                if not 0 <= cap <= 63:
                    raise InvalidArgument(f"invalid capability number: {cap}")

    @classmethod
    def from_oci(cls, caps: dict[str, list[str]] | None) -> CapSets:
        """Sets from the spec; absent means none at all (runc), unknown or too-new names are skipped like runc."""
        if not caps:
            return cls()
        top = last_cap()

        def numbers(key: str) -> frozenset[int]:
            out: set[int] = set()
            for name in caps.get(key) or []:
                num = CAPS.get(name.upper())
                if num is None or num > top:
                    log.warning("ignoring unknown or unavailable capability %s", name)
                    continue
                out.add(num)
            return frozenset(out)

        return cls(
            bounding=numbers("bounding"),
            effective=numbers("effective"),
            permitted=numbers("permitted"),
            inheritable=numbers("inheritable"),
            ambient=numbers("ambient"),
        )

    @classmethod
    def docker_default(cls) -> CapSets:
        """Docker's 14 capabilities in bounding/effective/permitted, nothing inheritable or ambient."""
        default = frozenset(CAPS[n] for n in DOCKER_DEFAULT)
        return cls(bounding=default, effective=default, permitted=default)


def drop_bounding(keep: set[int]) -> None:
    """Drop every capability not in ``keep`` from the bounding set (needs CAP_SETPCAP)."""
    for cap in range(last_cap() + 1):
        if cap not in keep and _prctl(PR_CAPBSET_READ, cap) == 1:
            _prctl(PR_CAPBSET_DROP, cap)


def set_keepcaps(on: bool) -> None:
    """Keep (or not) the permitted set across a change from uid 0 to a non-zero uid."""
    _prctl(PR_SET_KEEPCAPS, 1 if on else 0)


def set_no_new_privs() -> None:
    """Make execve(2) never grant privileges (setuid bits, file caps); irreversible."""
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


def apply(sets: CapSets) -> None:
    """Set effective/permitted/inheritable with capset(2) v3, then clear and raise the ambient set."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    eff, prm, inh = mask(sets.effective), mask(sets.permitted), mask(sets.inheritable)
    for i in (0, 1):
        shift = 32 * i
        data[i].effective = (eff >> shift) & 0xFFFFFFFF
        data[i].permitted = (prm >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inh >> shift) & 0xFFFFFFFF
    nr = _SYS_CAPSET.get(_MACHINE)
    if nr is None:
        raise InternalError(f"capset: unsupported architecture {_MACHINE}")
    if _libc.syscall(ctypes.c_long(nr), ctypes.byref(header), ctypes.byref(data)) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    for cap in sorted(sets.ambient):
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)


def current() -> dict[str, int]:
    """This process's sets from /proc/self/status: keys CapInh, CapPrm, CapEff, CapBnd, CapAmb."""
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
                out[key] = int(value.strip(), 16)
    return out
