"""Docker's default OCI spec for a container (moby ``oci.DefaultLinuxSpec`` + daemon defaults), as a value.

:func:`default_spec` returns what Docker would hand runc for ``docker run IMAGE ARGS`` with no security
options: the 14 default capabilities, private namespaces (cgroup namespace only on cgroup v2), the mounts,
masked and read-only paths and device rules of shared/reference/security.md §2, and the seccomp profile
equivalent to Docker's default. Users and groups are resolved from the image's own /etc/passwd and /etc/group,
read as data through in-root resolution, by ``berth.runtime.users`` (never the host's ``pwd``/``grp``).
"""

from __future__ import annotations

import glob
from collections.abc import Mapping, Sequence
from typing import Any

from berth.errors import InternalError
from berth.kernel import caps as kcaps
from berth.kernel import cgroups
from berth.oci.runtime_spec import Capabilities, Linux, Mount, Namespace, Process, Root, Spec, User, env_list
from berth.runtime import seccomp_profile

DEFAULT_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
DEFAULT_SHM_SIZE = 64 * 1024 * 1024

MASKED_PATHS = (
    "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/devices/virtual/powercap",
    "/sys/firmware",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# moby's DefaultLinuxSpec resources.devices: deny everything, then the nodes every container gets
DEFAULT_DEVICE_RULES: tuple[dict[str, Any], ...] = (
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
    {"allow": True, "type": "c", "major": 5, "minor": 1, "access": "rwm"},
    {"allow": False, "type": "c", "major": 10, "minor": 229, "access": "rwm"},
)

NETNS_SYSCTLS = {"net.ipv4.ip_unprivileged_port_start": "0", "net.ipv4.ping_group_range": "0 2147483647"}


def default_mounts(shm_size: int = DEFAULT_SHM_SIZE) -> tuple[Mount, ...]:
    return (
        Mount("/proc", "proc", "proc", ("nosuid", "noexec", "nodev")),
        Mount("/dev", "tmpfs", "tmpfs", ("nosuid", "strictatime", "mode=755", "size=65536k")),
        Mount("/dev/pts", "devpts", "devpts", ("nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620",
                                               "gid=5")),
        Mount("/sys", "sysfs", "sysfs", ("nosuid", "noexec", "nodev", "ro")),
        Mount("/sys/fs/cgroup", "cgroup", "cgroup", ("ro", "nosuid", "noexec", "nodev")),
        Mount("/dev/mqueue", "mqueue", "mqueue", ("nosuid", "noexec", "nodev")),
        Mount("/dev/shm", "tmpfs", "shm", ("nosuid", "noexec", "nodev", "mode=1777", f"size={shm_size}")),
    )


def masked_paths() -> tuple[str, ...]:
    """The fixed list plus every existing thermal_throttle directory (GHSA-6fw5-f8r9-fgfm)."""
    throttle = sorted(glob.glob("/sys/devices/system/cpu/cpu*/thermal_throttle"))
    return MASKED_PATHS + tuple(throttle)


def cgroup_v2_host() -> bool:
    """A pure cgroup v2 host (Docker uses a private cgroup namespace only there)."""
    try:
        return cgroups.detect() == "v2"
    except InternalError:  # no cgroup hierarchy mounted at all
        return False


def default_spec(
    args: Sequence[str],
    *,
    hostname: str = "",
    env: Mapping[str, str] | Sequence[str] = DEFAULT_ENV,
    cwd: str = "/",
    user: tuple[int, int] = (0, 0),
    additional_gids: Sequence[int] = (),
    terminal: bool = False,
    rootfs: str = "rootfs",
    readonly_rootfs: bool = False,
    caps: Sequence[str] | None = None,
    cgroups_path: str = "",
    cgroupns: bool | None = None,
    resources: dict[str, Any] | None = None,
    shm_size: int = DEFAULT_SHM_SIZE,
    seccomp: bool = True,
    no_new_privileges: bool = False,
    sysctl: Mapping[str, str] | None = None,
    extra_mounts: Sequence[Mount] = (),
) -> Spec:
    """Docker's default spec for running ``args``; ``caps`` names replace the 14 defaults when given."""
    cap_names = sorted(kcaps.DOCKER_DEFAULT if caps is None else {
        kcaps.NAMES[n] for n in kcaps.parse_caps(caps)})
    cap_set = tuple(cap_names)
    namespaces = [Namespace("pid"), Namespace("network"), Namespace("ipc"), Namespace("uts"), Namespace("mount")]
    if cgroup_v2_host() if cgroupns is None else cgroupns:
        namespaces.append(Namespace("cgroup"))
    res = dict(resources or {})
    res.setdefault("devices", [dict(r) for r in DEFAULT_DEVICE_RULES])
    mounts = list(default_mounts(shm_size))
    if readonly_rootfs:
        mounts = [m if m.destination in ("/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue") or "ro" in m.options
                  else Mount(m.destination, m.type, m.source, (*m.options, "ro")) for m in mounts]
    all_sysctl = dict(NETNS_SYSCTLS)
    all_sysctl.update(sysctl or {})
    return Spec(
        process=Process(
            args=tuple(args), env=env_list(env), cwd=cwd, terminal=terminal,
            user=User(user[0], user[1], tuple(additional_gids)),
            capabilities=Capabilities(bounding=cap_set, effective=cap_set, permitted=cap_set),
            no_new_privileges=no_new_privileges,
        ),
        root=Root(rootfs, readonly_rootfs),
        hostname=hostname,
        mounts=(*mounts, *extra_mounts),
        linux=Linux(
            namespaces=tuple(namespaces),
            resources=res,
            cgroups_path=cgroups_path,
            masked_paths=masked_paths(),
            readonly_paths=READONLY_PATHS,
            seccomp=seccomp_profile.docker_default(kcaps.parse_caps(cap_set)) if seccomp else None,
            sysctl=all_sysctl,
        ),
    )
