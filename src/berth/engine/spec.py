"""A container's OCI runtime spec, generated from its Docker document (moby ``daemon/oci_linux.go`` createSpec).

:func:`container_spec` starts from Docker's defaults (:func:`berth.runtime.spec.default_spec`) and applies the
container's ``Config`` and ``HostConfig``: command and environment, the user resolved from the image's own
/etc/passwd and /etc/group, namespaces, capabilities, seccomp, mounts (defaults, network files, binds, tmpfs,
init), devices, cgroup resources, sysctls and rlimits. Bad input raises ``InvalidArgument`` with Docker's (or
runc's) wording; Docker features berth does not have yet raise ``NotImplementedYet``.

A container's mount points (binds, volumes, ``--mount``, ``--volumes-from``, image volumes) are decided once, at
create, by :func:`plan_mounts` and recorded in its document (``MountPoints``); the spec mounts what was recorded.

Effects, like Docker's at the same point: the working directory is created inside the rootfs if missing (in-root
resolution, never outside it) and a missing host source of a legacy ``Binds`` entry is created on the host.
The network namespace is the one the network layer prepared (berth.engine.networks), or a private one without it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berth.engine.containers import ContainerPaths
from berth.errors import InvalidArgument, NotImplementedYet, Unavailable
from berth.kernel import caps as kcaps
from berth.kernel.cgroups import Resources
from berth.oci.runtime_spec import Device, Mount, Namespace, Rlimit, Spec
from berth.runtime import seccomp_profile
from berth.runtime import spec as rspec
from berth.runtime.users import ExecUser, ensure_dir, resolve_user

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INIT_IN_CONTAINER = "/sbin/docker-init"
NETWORK_FILES = (("/etc/resolv.conf", "resolv_conf"), ("/etc/hostname", "hostname"), ("/etc/hosts", "hosts"))
# moby keeps these rw under --read-only (they are fresh per container anyway)
RW_UNDER_READONLY = frozenset({"/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue"})
PROPAGATIONS = frozenset({"shared", "rshared", "slave", "rslave", "private", "rprivate"})
# go-units ulimitNameMapping ("as" is disabled there too)
ULIMITS = frozenset({"core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc",
                     "rss", "rtprio", "rttime", "sigpending", "stack"})
RLIM_INFINITY = 2**64 - 1
IPC_SYSCTLS = frozenset({"kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                         "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"})
# moby/sys/mount flags: MergeTmpfsOptions keeps the last of each flag/"no"-flag pair
MOUNT_FLAGS = frozenset({"defaults", "ro", "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "sync", "async",
                         "dirsync", "remount", "mand", "nomand", "atime", "noatime", "diratime", "nodiratime", "bind",
                         "rbind", "unbindable", "runbindable", "private", "rprivate", "shared", "rshared", "slave",
                         "rslave", "relatime", "norelatime", "strictatime", "nostrictatime"})
TMPFS_DATA = frozenset({"size", "mode", "uid", "gid", "nr_inodes", "nr_blocks", "mpol"})
GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
CPUSET_RE = re.compile(r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$")
DEVICE_RULE_RE = re.compile(r"^([acb]) ([0-9]+|\*):([0-9]+|\*) ([rwm]{1,3})$")
VOLUME_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
# runc GetDevices skips these directories of /dev, and /dev/console
HOST_DEV_SKIP = frozenset({"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"})
MAX_SECCOMP_FILE = 1024 * 1024
NANO_CPU_PERIOD = 100_000  # microseconds: moby's period for --cpus


# --- small readers of the (client-supplied, so untrusted) document ------------------------------------------------


def _int(host: Mapping[str, Any], key: str, default: int = 0) -> int:
    v = host.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidArgument(f"invalid {key}: {v!r} is not an integer")
    return v


def _str(doc: Mapping[str, Any], key: str) -> str:
    v = doc.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise InvalidArgument(f"invalid {key}: {v!r} is not a string")
    return v


def _strs(doc: Mapping[str, Any], key: str) -> list[str]:
    v = doc.get(key)
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise InvalidArgument(f"invalid {key}: must be a list of strings")
    return list(v)


def _dicts(doc: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    v = doc.get(key)
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, dict) for x in v):
        raise InvalidArgument(f"invalid {key}: must be a list of objects")
    return list(v)


def _str_map(doc: Mapping[str, Any], key: str) -> dict[str, str]:
    v = doc.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
        raise InvalidArgument(f"invalid {key}: must be an object of strings")
    return dict(v)


# --- security options ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecurityOptions:
    """``HostConfig.SecurityOpt`` parsed: ``seccomp`` is "" (Docker's default), "unconfined" or a JSON profile."""

    no_new_privileges: bool = False
    seccomp: str = ""


def parse_security_opts(opts: Sequence[str]) -> SecurityOptions:
    """moby ``parseSecurityOpt``: label and apparmor options are accepted and ignored (no LSM here)."""
    nnp, seccomp = False, ""
    for opt in opts:
        if opt == "no-new-privileges":
            nnp = True
            continue
        if opt == "disable":
            continue
        if "=" in opt:
            key, _, value = opt.partition("=")
        elif ":" in opt:
            key, _, value = opt.partition(":")
        else:
            raise InvalidArgument(f"invalid --security-opt 1: {json.dumps(opt)}")
        if key in ("label", "apparmor"):
            continue
        if key == "seccomp":
            seccomp = value
        elif key == "no-new-privileges":
            if value in GO_TRUE:
                nnp = True
            elif value in GO_FALSE:
                nnp = False
            else:
                raise InvalidArgument(f"invalid --security-opt 2: {json.dumps(opt)}")
        else:
            raise InvalidArgument(f"invalid --security-opt 2: {json.dumps(opt)}")
    return SecurityOptions(nnp, seccomp)


def _seccomp(value: str, cap_names: Iterable[str]) -> dict[str, Any] | None:
    """The ``linux.seccomp`` section: Docker's default, none, or a profile given inline (what the docker CLI sends)."""
    caps = list(cap_names)
    if value in ("", "builtin"):
        return seccomp_profile.docker_default(kcaps.parse_caps(caps))
    if value == "unconfined":
        return None
    text = value
    if value.startswith("/"):  # a path on the daemon's host, for API clients that do not inline the profile
        try:
            fd = os.open(value, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as e:
            raise InvalidArgument(f"opening seccomp profile ({value}) failed: {e.strerror}") from None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise InvalidArgument(f"opening seccomp profile ({value}) failed: not a regular file")
            text = f.read(MAX_SECCOMP_FILE).decode("utf-8", errors="replace")
    try:
        profile = json.loads(text)
    except ValueError as e:
        raise InvalidArgument(f"Decoding seccomp profile failed: {e}") from None
    if not isinstance(profile, dict):
        raise InvalidArgument("Decoding seccomp profile failed: the profile must be a JSON object")
    return seccomp_profile.render(profile, caps)


# --- capabilities -------------------------------------------------------------------------------------------------


def _normalize_caps(names: Sequence[str]) -> list[str]:
    out = []
    for raw in names:
        name = raw.strip().upper()
        if name != "ALL" and not name.startswith("CAP_"):
            name = "CAP_" + name
        if name != "ALL" and name not in kcaps.CAPS:
            raise InvalidArgument(f'unknown capability: "{name}"')
        out.append(name)
    return out


def all_capabilities() -> list[str]:
    """Every capability the running kernel knows and the daemon may hand on (its bounding set: a daemon in a
    container or a VM without, say, CAP_SYS_RESOURCE cannot give it, and asking for it fails the start), by name."""
    top = kcaps.last_cap()
    bounding = kcaps.current()["CapBnd"]
    return [kcaps.NAMES[n] for n in sorted(kcaps.NAMES) if n <= top and bounding >> n & 1]


def capabilities(cap_add: Sequence[str], cap_drop: Sequence[str], privileged: bool) -> list[str]:
    """moby ``caps.TweakCapabilities``: Docker's 14, minus drops, plus adds; ``ALL`` on either side."""
    if privileged:
        return all_capabilities()
    basics = sorted(kcaps.DOCKER_DEFAULT)
    if not cap_add and not cap_drop:
        return basics
    drop, add = _normalize_caps(cap_drop), _normalize_caps(cap_add)
    if "ALL" in add:
        caps = [c for c in all_capabilities() if c not in drop]
    elif "ALL" in drop:
        caps = list(add)
    else:
        caps = [c for c in basics if c not in drop] + add
    return sorted(set(caps) - {"ALL"}, key=kcaps.CAPS.__getitem__)


# --- namespaces ---------------------------------------------------------------------------------------------------


def _container_mode(mode: str, what: str) -> None:
    if mode.startswith("container:"):
        raise NotImplementedYet(f"joining another container's {what} namespace is not supported yet")


def namespaces(host: Mapping[str, Any], netns: str | None = None) -> tuple[Namespace, ...]:
    """Which namespaces the container gets (Docker's order), from the four modes and CgroupnsMode; ``netns`` is
    the network namespace file that the network layer prepared (bridge, none and ``container:`` modes)."""
    net, ipc, pid, uts = (_str(host, k) for k in ("NetworkMode", "IpcMode", "PidMode", "UTSMode"))
    for mode, what in ((net, "network"), (ipc, "ipc"), (pid, "pid")):
        if not (what == "network" and netns):
            _container_mode(mode, what)
    userns = _str(host, "UsernsMode")
    if userns not in ("", "host"):
        raise NotImplementedYet("user namespaces are not supported yet")
    out = []
    if pid != "host":
        out.append(Namespace("pid"))
    if net != "host":
        out.append(Namespace("network", netns or ""))
    if ipc != "host":
        out.append(Namespace("ipc"))
    if uts != "host":
        out.append(Namespace("uts"))
    out.append(Namespace("mount"))
    cgroupns = _str(host, "CgroupnsMode")
    if cgroupns not in ("", "host", "private"):
        raise InvalidArgument(f"invalid cgroup namespace mode: {cgroupns}")
    if cgroupns == "private" or (cgroupns == "" and rspec.cgroup_v2_host()):
        out.append(Namespace("cgroup"))
    return tuple(out)


# --- environment --------------------------------------------------------------------------------------------------


def environment(config: Mapping[str, Any], user: ExecUser) -> tuple[str, ...]:
    """moby ``CreateDaemonEnvironment`` (PATH, HOSTNAME, TERM under a tty, then Config.Env), plus HOME like runc."""
    env: dict[str, str] = {"PATH": DEFAULT_PATH, "HOSTNAME": _str(config, "Hostname")}
    if config.get("Tty"):
        env["TERM"] = "xterm"
    for item in _strs(config, "Env"):
        key, sep, value = item.partition("=")
        if not key:
            raise InvalidArgument(f"invalid environment variable: {item}")
        if sep:
            env[key] = value
        else:
            env.pop(key, None)  # a bare name unsets (ReplaceOrAppendEnvValues)
    env.setdefault("HOME", user.home or "/")
    return tuple(f"{k}={v}" for k, v in env.items())


def working_dir(config: Mapping[str, Any]) -> str:
    wd = _str(config, "WorkingDir")
    if not wd:
        return "/"
    if not wd.startswith("/"):
        raise InvalidArgument(f"the working directory '{wd}' is invalid, it needs to be an absolute path")
    if "\0" in wd:
        raise InvalidArgument(f"the working directory '{wd}' is invalid")
    clean = posixpath.normpath(wd).replace("//", "/")
    parts = clean.split("/")
    if len(parts) > 3 and parts[1] == "proc" and (parts[2] in ("self", "thread-self") or parts[2].isdigit()):
        # per-process /proc entries hold magic links (fd/, cwd, root): a cwd there can leave the container
        raise InvalidArgument(f"the working directory '{wd}' is invalid: it is inside a process's /proc directory")
    return clean


# --- mounts -------------------------------------------------------------------------------------------------------


def merge_tmpfs_options(options: Sequence[str]) -> list[str]:
    """moby/sys/mount ``MergeTmpfsOptions``: the last of each flag pair and of each ``key=value`` wins."""
    out: list[str] = []
    seen_flags: set[str] = set()
    seen_data: set[str] = set()
    for option in reversed(options):
        if option == "defaults":
            continue
        if option in MOUNT_FLAGS:
            base = option.removeprefix("no")
            if base not in seen_flags:
                seen_flags.add(base)
                out.insert(0, option)
            continue
        key, sep, _ = option.partition("=")
        if not sep or key not in TMPFS_DATA:
            raise InvalidArgument(f'Invalid tmpfs option ["{option}"]' if not sep else
                                  f'Invalid tmpfs option ["{key}" "{option[len(key) + 1:]}"]')
        if key not in seen_data:
            seen_data.add(key)
            out.insert(0, option)
    return out


def _tmpfs(dest: str, data: str) -> Mount:
    opts = ["noexec", "nosuid", "nodev", "rprivate", *(o for o in data.split(",") if o)]
    return Mount(dest, "tmpfs", "tmpfs", tuple(merge_tmpfs_options(opts)))


def _check_destination(dest: str, spec_text: str, kind: str = "bind") -> str:
    prefix = f"invalid volume specification: '{spec_text}': " if spec_text else ""
    if not dest.startswith("/"):
        raise InvalidArgument(f"{prefix}invalid mount config for type \"{kind}\": invalid mount path: '{dest}' "
                              "mount path must be absolute")
    clean = posixpath.normpath(dest).replace("//", "/")
    if clean == "/":
        raise InvalidArgument(f"{prefix}invalid mount config for type \"{kind}\": invalid specification: "
                              "destination can't be '/'")
    return clean


def _bind_options(readonly: bool, propagation: str, recursive: bool = True) -> tuple[str, ...]:
    opts = ["rbind" if recursive else "bind"]
    if readonly:
        opts.append("ro")
    opts.append(propagation or "rprivate")
    return tuple(opts)


def parse_bind(raw: str) -> Mount:
    """One legacy ``Binds`` entry ``src:dst[:opts]`` (moby's linux parser); named volumes are not there yet."""
    parts = raw.split(":")
    if not parts[0] or len(parts) > 3:
        raise InvalidArgument(f"invalid volume specification: '{raw}'")
    if len(parts) == 1:
        _check_destination(parts[0], raw)
        raise NotImplementedYet("named volumes are not supported yet")
    src, dst = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else ""
    if len(parts) == 2 and _valid_mode(dst):
        raise InvalidArgument(f"invalid volume specification: '{raw}'")
    dest = _check_destination(dst, raw)
    readonly, propagation = False, ""
    if mode:
        if not _valid_mode(mode):
            raise InvalidArgument(f"invalid mode: {mode}")
        for m in mode.split(","):
            if m in ("ro", "rw"):
                readonly = m == "ro"
            elif m in PROPAGATIONS:
                propagation = m
    if not src.startswith("/"):
        if not VOLUME_NAME_RE.match(src):
            raise InvalidArgument(
                f'"{src}" includes invalid characters for a local volume name, only "[a-zA-Z0-9][a-zA-Z0-9_.-]" '
                "are allowed. If you intended to pass a host directory, use absolute path")
        raise NotImplementedYet("named volumes are not supported yet")
    if "nocopy" in mode.split(","):
        raise InvalidArgument(f"invalid mode: {mode}")
    return Mount(dest, "bind", posixpath.normpath(src), _bind_options(readonly, propagation))


def _valid_mode(mode: str) -> bool:
    """moby linuxValidMountMode: at most one of rw/ro, z/Z, a propagation, nocopy; consistency modes ignored."""
    counts = {"rw": 0, "label": 0, "prop": 0, "copy": 0}
    for m in mode.split(","):
        if m in ("ro", "rw"):
            counts["rw"] += 1
        elif m in ("z", "Z"):
            counts["label"] += 1
        elif m in PROPAGATIONS:
            counts["prop"] += 1
        elif m == "nocopy":
            counts["copy"] += 1
        elif m not in ("consistent", "cached", "delegated"):
            return False
    return all(n <= 1 for n in counts.values())


def _size_text(size: int) -> str:
    for suffix, divisor in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
        if size % divisor == 0:
            return f"{size // divisor}{suffix}"
    return str(size)


def parse_mount(m: Mapping[str, Any]) -> Mount:
    """One ``HostConfig.Mounts`` entry of type bind or tmpfs; volumes need the engine (:func:`plan_mounts`)."""
    if _str(m, "Type") == "volume":
        raise NotImplementedYet("named volumes are not supported yet")
    return spec_mount(mount_point_from_api(m))


def user_mounts(host: Mapping[str, Any]) -> list[Mount]:
    """Binds, Mounts and Tmpfs as spec mounts, parents before children (moby sorts by depth)."""
    out: list[Mount] = []
    for raw in _strs(host, "Binds"):
        out.append(parse_bind(raw))
    for entry in _dicts(host, "Mounts"):
        out.append(parse_mount(entry))
    for dest, data in _str_map(host, "Tmpfs").items():
        out.append(_tmpfs(_check_destination(dest, "", "tmpfs"), data))
    seen: set[str] = set()
    for m in out:
        if m.destination in seen:
            raise InvalidArgument(f"Duplicate mount point: {m.destination}")
        seen.add(m.destination)
    return sorted(out, key=lambda m: len(m.destination.rstrip("/").split("/")))


def create_bind_sources(mounts: Iterable[Mount]) -> None:
    """Make missing bind sources on the host (legacy Binds and CreateMountpoint do, as in Docker)."""
    for m in mounts:
        if m.type == "bind" and not os.path.exists(m.source):
            os.makedirs(m.source, 0o755, exist_ok=True)


# --- mount points: a container's mounts as decided at create (moby daemon/volumes.go registerMountPoints) -------


@dataclass(frozen=True)
class MountPoint:
    """One of a container's mounts as Docker records it (inspect ``Mounts``), decided at create.

    ``type`` is bind, volume or tmpfs. A volume's ``name`` is "" until the engine makes the anonymous volume, and its
    ``source`` is the volume's directory once the volume exists. ``no_copy`` keeps an empty volume from being filled
    from the image; ``create_source`` (legacy ``Binds``, ``CreateMountpoint``) makes a missing host directory;
    ``anonymous`` marks a volume made for this mount without a name (``rm -v`` removes it).
    ``driver_options`` and ``labels`` are what ``VolumeOptions`` asks a volume created for this mount to have.
    """

    type: str
    destination: str
    source: str = ""
    name: str = ""
    driver: str = ""
    mode: str = ""
    rw: bool = True
    propagation: str = ""
    no_copy: bool = False
    recursive: bool = True
    tmpfs_options: str = ""
    create_source: bool = False
    anonymous: bool = False
    driver_options: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.type not in ("bind", "volume", "tmpfs") or not self.destination.startswith("/"):
            raise InvalidArgument(f"invalid mount point: {self.type} on {self.destination!r}")

    def api(self) -> dict[str, Any]:
        """Docker's ``types.MountPoint`` (Name and Driver only for volumes)."""
        out: dict[str, Any] = {"Type": self.type}
        if self.type == "volume":
            out["Name"] = self.name
        out["Source"] = self.source
        out["Destination"] = self.destination
        if self.type == "volume":
            out["Driver"] = self.driver
        out.update({"Mode": self.mode, "RW": self.rw, "Propagation": self.propagation})
        return out

    def record(self) -> dict[str, Any]:
        """The form kept in the container's document (``MountPoints``): the API shape plus berth's fields."""
        return {**self.api(), "NoCopy": self.no_copy, "Recursive": self.recursive, "TmpfsOptions": self.tmpfs_options,
                "CreateSource": self.create_source, "Anonymous": self.anonymous}

    @classmethod
    def from_record(cls, r: Mapping[str, Any]) -> MountPoint:
        return cls(str(r["Type"]), str(r["Destination"]), str(r.get("Source") or ""), str(r.get("Name") or ""),
                   str(r.get("Driver") or ""), str(r.get("Mode") or ""), bool(r.get("RW", True)),
                   str(r.get("Propagation") or ""), bool(r.get("NoCopy")), bool(r.get("Recursive", True)),
                   str(r.get("TmpfsOptions") or ""), bool(r.get("CreateSource")), bool(r.get("Anonymous")))


def bind_mount_point(raw: str, volume_driver: str = "") -> MountPoint:
    """One legacy ``Binds`` entry (moby linuxParser.ParseMountRaw): ``/host:/dst``, ``name:/dst`` or ``/dst``,
    each with an optional ``:mode`` (ro|rw, z|Z, a propagation, nocopy)."""
    parts = raw.split(":")
    if not parts[0] or len(parts) > 3:
        raise InvalidArgument(f"invalid volume specification: '{raw}'")
    src, dst, mode = "", parts[0], ""
    if len(parts) == 2:
        if _valid_mode(parts[1]):
            raise InvalidArgument(f"invalid volume specification: '{raw}'")
        src, dst = parts
    elif len(parts) == 3:
        src, dst, mode = parts
    if mode and not _valid_mode(mode):
        raise InvalidArgument(f"invalid mode: {mode}")
    kind = "bind" if src.startswith("/") else "volume"
    dest = _check_destination(dst, raw, kind)
    modes = mode.split(",") if mode else []
    readonly = "ro" in modes
    propagation = next((m for m in modes if m in PROPAGATIONS), "")

    def bad(msg: str) -> InvalidArgument:
        return InvalidArgument(f"invalid volume specification: '{raw}': invalid mount config for type "
                               f"\"{kind}\": {msg}")

    if kind == "bind":
        if "nocopy" in modes:
            raise bad("field VolumeOptions must not be specified")
        return MountPoint("bind", dest, posixpath.normpath(src), mode=mode, rw=not readonly,
                          propagation=propagation or "rprivate", create_source=True)
    if src and not VOLUME_NAME_RE.match(src):
        raise InvalidArgument(
            f'"{src}" includes invalid characters for a local volume name, only "[a-zA-Z0-9][a-zA-Z0-9_.-]" '
            "are allowed. If you intended to pass a host directory, use absolute path")
    if propagation:
        raise bad("field BindOptions must not be specified")
    driver = volume_driver or "local"
    # moby setBindModeIfNull: a local volume named in Binds shows Mode "z" when no mode was given
    return MountPoint("volume", dest, name=src, driver=driver, mode=mode or ("z" if driver == "local" else ""),
                      rw=not readonly, no_copy="nocopy" in modes)


def mount_point_from_api(m: Mapping[str, Any]) -> MountPoint:
    """One ``HostConfig.Mounts`` entry (moby linuxParser.ParseMountSpec; ``validateMountConfig`` wording)."""
    kind = _str(m, "Type")
    target = _str(m, "Target")
    source = _str(m, "Source")
    readonly = bool(m.get("ReadOnly"))

    def bad(msg: str) -> InvalidArgument:
        return InvalidArgument(f'invalid mount config for type "{kind}": {msg}')

    if kind not in ("bind", "tmpfs", "volume"):
        raise bad("mount type unknown")
    if not target:
        raise bad("field Target must not be empty")
    dest = _check_destination(target, "", kind)
    for key, allowed in (("VolumeOptions", "volume"), ("BindOptions", "bind"), ("TmpfsOptions", "tmpfs")):
        if m.get(key) and kind != allowed:
            raise bad(f"field {key} must not be specified")
    if kind == "volume":
        vopts = m.get("VolumeOptions") or {}
        if not isinstance(vopts, dict):
            raise bad("VolumeOptions must be an object")
        driver_cfg = vopts.get("DriverConfig") or {}
        if not isinstance(driver_cfg, dict):
            raise bad("VolumeOptions.DriverConfig must be an object")
        if vopts.get("Subpath"):
            raise NotImplementedYet("volume subpaths are not supported yet")
        driver = _str(driver_cfg, "Name") or "local"
        return MountPoint("volume", dest, name=source, driver=driver, mode="z" if driver == "local" else "",
                          rw=not readonly, no_copy=bool(vopts.get("NoCopy")),
                          driver_options=tuple(sorted(_str_map(driver_cfg, "Options").items())),
                          labels=tuple(sorted(_str_map(vopts, "Labels").items())))
    if kind == "bind":
        if not source:
            raise bad("field Source must not be empty")
        if not source.startswith("/"):
            raise bad(f"invalid mount path: '{source}' mount path must be absolute")
        opts = m.get("BindOptions") or {}
        if not isinstance(opts, dict):
            raise bad("BindOptions must be an object")
        propagation = _str(opts, "Propagation")
        if propagation and propagation not in PROPAGATIONS:
            raise bad(f"invalid propagation mode: {propagation}")
        src = posixpath.normpath(source)
        create = bool(opts.get("CreateMountpoint"))
        if not create and not os.path.exists(src):
            raise bad(f"bind source path does not exist: {source}")
        return MountPoint("bind", dest, src, rw=not readonly, propagation=propagation or "rprivate",
                          recursive=not opts.get("NonRecursive"), create_source=create)
    if source:
        raise bad("field Source must not be specified")
    topts = m.get("TmpfsOptions") or {}
    if not isinstance(topts, dict):
        raise bad("TmpfsOptions must be an object")
    raw: list[str] = ["ro"] if readonly else []
    mode, size = _int(topts, "Mode"), _int(topts, "SizeBytes")
    if mode < 0 or size < 0:
        raise bad("invalid tmpfs size or mode")
    if mode:
        raw.append(f"mode={mode:o}")
    if size:
        raw.append(f"size={_size_text(size)}")
    for opt in topts.get("Options") or []:
        if not isinstance(opt, list) or not all(isinstance(x, str) for x in opt):
            raise bad("TmpfsOptions.Options must be a list of string lists")
        raw.append("=".join(opt))
    data = ",".join(raw)
    _tmpfs(dest, data)  # checks the options now
    return MountPoint("tmpfs", dest, rw=not readonly, tmpfs_options=data)


def parse_volumes_from(spec_text: str) -> tuple[str, str]:
    """``container[:ro|rw]`` (moby ParseVolumesFrom): the container and the mode."""
    if not spec_text:
        raise InvalidArgument("volumes-from specification cannot be an empty string")
    ref, _, mode = spec_text.partition(":")
    if not mode:
        return ref, "rw"
    modes = mode.split(",")
    if not _valid_mode(mode) or any(m in PROPAGATIONS or m == "nocopy" for m in modes):
        raise InvalidArgument(f"invalid mode: {mode}")
    return ref, mode


def plan_mounts(config: Mapping[str, Any], host: Mapping[str, Any],
                volumes_from: Callable[[str], Sequence[MountPoint]]) -> list[MountPoint]:
    """A new container's mount points: ``VolumesFrom`` (overridden by the container's own mounts), ``Binds``,
    ``Mounts``, then an anonymous volume for each image (or ``-v /path``) volume not mounted otherwise.

    ``volumes_from(ref)`` returns another container's mount points. Pure: makes no volume and touches no file.
    """
    points: dict[str, MountPoint] = {}
    for item in _strs(host, "VolumesFrom"):
        ref, mode = parse_volumes_from(item)
        readonly = "ro" in mode.split(",")
        for mp in volumes_from(ref):
            if mp.type != "tmpfs":
                # moby copies neither the mode string nor the copy-up flag of the other container's mount
                points[mp.destination] = dataclasses.replace(mp, rw=mp.rw and not readonly, no_copy=True, mode="")
    tmpfs = {_check_destination(d, "", "tmpfs") for d in _str_map(host, "Tmpfs")}
    own: set[str] = set()
    volume_driver = _str(host, "VolumeDriver")
    for raw in _strs(host, "Binds"):
        mp = bind_mount_point(raw, volume_driver)
        if mp.destination in own or mp.destination in tmpfs:
            raise InvalidArgument(f"Duplicate mount point: {mp.destination}")
        own.add(mp.destination)
        points[mp.destination] = mp
    for entry in _dicts(host, "Mounts"):
        mp = mount_point_from_api(entry)
        if mp.destination in own or mp.destination in tmpfs:
            raise InvalidArgument(f"Duplicate mount point: {mp.destination}")
        own.add(mp.destination)
        points[mp.destination] = mp
    image_volumes = config.get("Volumes") or {}
    if not isinstance(image_volumes, dict):
        raise InvalidArgument("invalid Volumes: must be an object")
    for dest in sorted(image_volumes):
        clean = _check_destination(str(dest), "", "volume")
        if clean not in points and clean not in tmpfs:
            points[clean] = MountPoint("volume", clean, driver=volume_driver or "local")
    return sorted(points.values(), key=lambda p: len(p.destination.rstrip("/").split("/")))


def spec_mount(mp: MountPoint) -> Mount:
    """The OCI mount for a recorded mount point (a volume is a bind of its directory)."""
    if mp.type == "tmpfs":
        return _tmpfs(mp.destination, mp.tmpfs_options)
    if not mp.source:
        raise InvalidArgument(f"mount point {mp.destination} has no source: its volume was not created")
    return Mount(mp.destination, "bind", mp.source, _bind_options(not mp.rw, mp.propagation, mp.recursive))


def recorded_mounts(records: Sequence[Mapping[str, Any]], host: Mapping[str, Any]) -> list[Mount]:
    """User mounts from the mount points recorded at create plus ``Tmpfs``, parents before children."""
    out = [spec_mount(MountPoint.from_record(r)) for r in records]
    for dest, data in _str_map(host, "Tmpfs").items():
        out.append(_tmpfs(_check_destination(dest, "", "tmpfs"), data))
    return sorted(out, key=lambda m: len(m.destination.rstrip("/").split("/")))


def _without(options: Sequence[str], drop: str) -> tuple[str, ...]:
    return tuple(o for o in options if o != drop)


def mounts(host: Mapping[str, Any], cid: str, paths: ContainerPaths, users: Sequence[Mount],
           init: Mount | None) -> tuple[Mount, ...]:
    """Docker's mount table: defaults (minus what the user overrides), network files, user mounts, init."""
    readonly = bool(host.get("ReadonlyRootfs"))
    privileged = bool(host.get("Privileged"))
    ipc = _str(host, "IpcMode")
    shm_size = _int(host, "ShmSize") or rspec.DEFAULT_SHM_SIZE
    if shm_size < 0:
        raise InvalidArgument("SHM size can not be less than 0")
    taken = {m.destination for m in users}
    out: list[Mount] = []
    for m in rspec.default_mounts(shm_size):
        if m.destination in taken or ("/dev" in taken and m.destination.startswith("/dev/")):
            continue
        if m.destination == "/dev/shm":
            if ipc == "none":
                continue
            if ipc == "host":
                m = Mount("/dev/shm", "bind", "/dev/shm", ("rbind", "nosuid", "noexec", "nodev", "rprivate"))
        if readonly and m.destination not in RW_UNDER_READONLY and "ro" not in m.options:
            m = dataclasses.replace(m, options=(*m.options, "ro"))
        if privileged and (m.destination == "/sys" or m.type == "cgroup"):
            m = dataclasses.replace(m, options=_without(m.options, "ro"))
        out.append(m)
    network = []
    for dest, attr in NETWORK_FILES:
        src = getattr(paths, attr)(cid)
        if dest not in taken and os.path.exists(src):
            network.append(Mount(dest, "bind", os.fspath(src), _bind_options(readonly, "rprivate")))
    out += sorted([*network, *users], key=lambda m: len(m.destination.rstrip("/").split("/")))
    if init is not None:
        out.append(init)
    return tuple(out)


# --- devices ------------------------------------------------------------------------------------------------------


def _device_of(path: str, dest: str) -> Device | None:
    st = os.stat(path)
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        return None
    return Device(dest, kind, os.major(st.st_rdev), os.minor(st.st_rdev), st.st_mode & 0o777, st.st_uid, st.st_gid)


def devices_from_path(on_host: str, in_container: str) -> list[Device]:
    """moby ``DevicesFromPath``: one device node, or every node below a directory."""
    dest = in_container or on_host
    if not dest.startswith("/dev/"):
        raise InvalidArgument(f"invalid device path in container: {dest}: berth creates device nodes under /dev only")
    what = f'error gathering device information while adding custom device "{on_host}"'
    try:
        resolved = os.path.realpath(on_host, strict=True)
        dev = _device_of(resolved, dest)
    except OSError as e:
        raise InvalidArgument(f"{what}: {e.strerror.lower() if e.strerror else e}") from None
    if dev is not None:
        return [dev]
    if not os.path.isdir(resolved):
        raise InvalidArgument(f"{what}: not a device node")
    out = []
    for top, dirs, files in os.walk(resolved):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(top, name)
            rel = os.path.relpath(full, resolved)
            try:
                d = _device_of(full, posixpath.join(dest, rel))
            except OSError:
                continue
            if d is not None:
                out.append(d)
    return out


def host_devices(dev_root: str = "/dev") -> list[Device]:
    """runc ``GetDevices``: every char/block node under /dev (privileged containers get them all)."""
    out: list[Device] = []
    for top, dirs, files in os.walk(dev_root):
        dirs[:] = sorted(d for d in dirs if d not in HOST_DEV_SKIP)
        for name in sorted(files):
            if top == dev_root and name == "console":
                continue
            full = os.path.join(top, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            kind = "c" if stat.S_ISCHR(st.st_mode) else "b" if stat.S_ISBLK(st.st_mode) else ""
            if kind:
                dest = "/dev/" + os.path.relpath(full, dev_root)
                out.append(Device(dest, kind, os.major(st.st_rdev), os.minor(st.st_rdev), st.st_mode & 0o777,
                                  st.st_uid, st.st_gid))
    return out


def _cgroup_rule(rule: str) -> dict[str, Any]:
    m = DEVICE_RULE_RE.match(rule)
    if m is None:
        raise InvalidArgument(f"invalid device cgroup rule format: '{rule}'")
    kind, major, minor, access = m.groups()
    out: dict[str, Any] = {"allow": True, "type": kind, "access": access}
    if major != "*":
        out["major"] = int(major)
    if minor != "*":
        out["minor"] = int(minor)
    return out


def devices(host: Mapping[str, Any]) -> tuple[list[Device], list[dict[str, Any]]]:
    """Device nodes to create and the device cgroup rules (privileged: every host device, everything allowed)."""
    privileged = bool(host.get("Privileged"))
    nodes: list[Device] = host_devices() if privileged else []
    rules: list[dict[str, Any]] = ([{"allow": True, "access": "rwm"}] if privileged
                                   else [dict(r) for r in rspec.DEFAULT_DEVICE_RULES])
    for mapping in _dicts(host, "Devices"):
        on_host = _str(mapping, "PathOnHost")
        in_container = _str(mapping, "PathInContainer") or on_host
        perms = _str(mapping, "CgroupPermissions") or "rwm"
        if len(perms) > 3 or any(c not in "rwm" for c in perms):
            raise InvalidArgument(f"invalid device mode: {perms}")
        if privileged and on_host == in_container:
            continue  # already there with every host device
        found = devices_from_path(on_host, in_container)
        nodes += found
        if not privileged:
            rules += [{"allow": True, "type": d.type, "major": d.major, "minor": d.minor, "access": perms}
                      for d in found]
    if not privileged:
        rules += [_cgroup_rule(r) for r in _strs(host, "DeviceCgroupRules")]
    unique: dict[str, Device] = {}
    for d in nodes:
        unique.setdefault(d.path, d)
    return list(unique.values()), rules


# --- resources, sysctls, rlimits ----------------------------------------------------------------------------------


def resources(host: Mapping[str, Any], device_rules: list[dict[str, Any]]) -> dict[str, Any]:
    """HostConfig resources in OCI ``linux.resources`` form (what ``cgroups.Resources.from_oci`` reads)."""
    memory, swap, reservation = _int(host, "Memory"), _int(host, "MemorySwap"), _int(host, "MemoryReservation")
    if (memory < 0 and memory != -1) or 0 < memory < 6 * 1024 * 1024:
        raise InvalidArgument("Minimum memory limit allowed is 6MB")
    if memory <= 0 and swap > 0:
        raise InvalidArgument("You should always set the Memory limit when using Memoryswap limit, see usage")
    if 0 < reservation < 6 * 1024 * 1024:
        raise InvalidArgument("Minimum memory reservation allowed is 6MB")
    if memory > 0 and reservation > memory:
        raise InvalidArgument("Minimum memory limit can not be less than memory reservation limit, see usage")
    if memory > 0 and swap == 0:
        swap = memory * 2  # Docker's default: as much swap as memory
    mem: dict[str, Any] = {}
    if memory:
        mem["limit"] = memory
    if reservation:
        mem["reservation"] = reservation
    if swap:
        mem["swap"] = swap
    swappiness = host.get("MemorySwappiness")
    if swappiness is not None and _int(host, "MemorySwappiness") != -1:
        if not 0 <= swappiness <= 100:
            raise InvalidArgument(f"Invalid value: {swappiness}, valid memory swappiness range is 0-100")
        mem["swappiness"] = swappiness
    if host.get("OomKillDisable"):
        mem["disableOOMKiller"] = True

    cpu: dict[str, Any] = {}
    nano, period, quota, shares = (_int(host, k) for k in ("NanoCpus", "CpuPeriod", "CpuQuota", "CpuShares"))
    if nano and period:
        raise InvalidArgument("Conflicting options: Nano CPUs and CPU Period cannot both be set")
    if nano and quota:
        raise InvalidArgument("Conflicting options: Nano CPUs and CPU Quota cannot both be set")
    ncpu = len(os.sched_getaffinity(0))
    if nano < 0 or nano > ncpu * 10**9:
        raise InvalidArgument(f"Range of CPUs is from 0.01 to {ncpu}.00, as there are only {ncpu} CPUs available")
    if shares < 0:
        raise InvalidArgument(f"invalid CPU shares ({shares}): value must be a positive integer")
    if shares:
        cpu["shares"] = shares
    if nano:
        cpu["period"] = NANO_CPU_PERIOD
        cpu["quota"] = nano * NANO_CPU_PERIOD // 10**9
    if period:
        cpu["period"] = period
    if quota:
        cpu["quota"] = quota
    for key, field in (("CpusetCpus", "cpus"), ("CpusetMems", "mems")):
        value = _str(host, key)
        if value:
            if not CPUSET_RE.match(value):
                raise InvalidArgument(f"Invalid value {value} for cpuset {field}")
            cpu[field] = value

    out: dict[str, Any] = {"devices": device_rules}
    if mem:
        out["memory"] = mem
    if cpu:
        out["cpu"] = cpu
    if host.get("PidsLimit") is not None:
        limit = _int(host, "PidsLimit")
        out["pids"] = {"limit": limit if limit > 0 else -1}
    weight = _int(host, "BlkioWeight")
    if weight:
        if not 10 <= weight <= 1000:
            raise InvalidArgument("Range of blkio weight is from 10 to 1000")
        out["blockIO"] = {"weight": weight}
    Resources.from_oci(out)  # the cgroup layer's own checks, raised now rather than at start
    return out


def sysctls(host: Mapping[str, Any], config: Mapping[str, Any], ns_types: set[str]) -> dict[str, str]:
    """Docker's netns defaults, the container's Domainname, then HostConfig.Sysctls (runc's validator)."""
    out: dict[str, str] = {}
    if "network" in ns_types:
        out.update(rspec.NETNS_SYSCTLS)
    domain = _str(config, "Domainname")
    if domain and "uts" in ns_types:
        out["kernel.domainname"] = domain
    for key, value in _str_map(host, "Sysctls").items():
        if key in IPC_SYSCTLS or key.startswith("fs.mqueue."):
            if "ipc" not in ns_types:
                raise InvalidArgument(f'sysctl "{key}" is not allowed in the hosts ipc namespace')
        elif key.startswith("net."):
            if "network" not in ns_types:
                raise InvalidArgument(f'sysctl "{key}" is not allowed in the hosts network namespace')
        elif key == "kernel.hostname":
            raise InvalidArgument('sysctl "kernel.hostname" is not allowed; the OCI hostname field should be used '
                                  "instead")
        elif not (key == "kernel.domainname" and "uts" in ns_types):
            raise InvalidArgument(f'sysctl "{key}" is not in a separate kernel namespace')
        if "/" in key or ".." in key or "\0" in value:
            raise InvalidArgument(f'sysctl "{key}" is not in a separate kernel namespace')
        out[key] = value
    return out


def rlimits(host: Mapping[str, Any]) -> tuple[Rlimit, ...]:
    """``Ulimits`` [{Name, Soft, Hard}] as RLIMIT_* entries; -1 means unlimited (go-units)."""
    found: dict[str, Rlimit] = {}
    for u in _dicts(host, "Ulimits"):
        name = _str(u, "Name")
        if name not in ULIMITS:
            raise InvalidArgument(f"invalid ulimit type: {name}")
        soft, hard = _int(u, "Soft"), _int(u, "Hard")
        for v in (soft, hard):
            if v < -1:
                raise InvalidArgument(f"invalid ulimit argument: {name}={soft}:{hard}")
        s = RLIM_INFINITY if soft == -1 else soft
        h = RLIM_INFINITY if hard == -1 else hard
        if s > h:
            raise InvalidArgument(f"ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}")
        found[name] = Rlimit(f"RLIMIT_{name.upper()}", s, h)
    return tuple(found.values())


# --- the whole spec -----------------------------------------------------------------------------------------------


def _cgroups_path(host: Mapping[str, Any], cgroup_parent: str, cid: str) -> str:
    parent = _str(host, "CgroupParent") or cgroup_parent
    clean = posixpath.normpath("/" + parent).strip("/")  # clamps ".." at the cgroup root
    return f"{clean}/{cid}" if clean else cid


def _init_mount(host: Mapping[str, Any], init_path: str | None) -> Mount | None:
    if not host.get("Init"):
        return None
    if not init_path:
        raise Unavailable("failed to find init binary: no docker-init binary is configured for this daemon")
    return Mount(INIT_IN_CONTAINER, "bind", init_path, ("bind", "ro"))


def container_spec(
    cid: str,
    doc: dict[str, Any],
    rootfs: Path,
    paths: ContainerPaths,
    *,
    cgroup_parent: str = "berth",
    init_path: str | None = None,
    netns: str | None = None,
) -> Spec:
    """The OCI spec to run container ``cid`` (its document ``doc``) on the mounted ``rootfs``.

    Reads the image's /etc/passwd and /etc/group inside ``rootfs`` and creates the working directory there if
    missing. ``init_path`` is the host's static docker-init (tini) for ``HostConfig.Init``.
    """
    config = doc.get("Config") or {}
    host = doc.get("HostConfig") or {}
    if not isinstance(config, dict) or not isinstance(host, dict):
        raise InvalidArgument("invalid container document: Config and HostConfig must be objects")
    args = _strs(config, "Entrypoint") + _strs(config, "Cmd")
    if not args:
        raise InvalidArgument("no command specified")
    privileged = bool(host.get("Privileged"))
    security = parse_security_opts(_strs(host, "SecurityOpt"))
    cap_names = capabilities(_strs(host, "CapAdd"), _strs(host, "CapDrop"), privileged)
    ns = namespaces(host, netns)
    ns_types = {n.type for n in ns}
    hostname = _str(config, "Hostname") if "uts" in ns_types else ""
    if len(hostname) > 64:
        raise InvalidArgument(f"invalid hostname format: {hostname}")
    user = resolve_user(rootfs, _str(config, "User"), _strs(host, "GroupAdd"))
    cwd = working_dir(config)
    init = _init_mount(host, init_path)
    if init is not None:
        args = [INIT_IN_CONTAINER, "--", *args]
    recorded = doc.get("MountPoints")
    users = recorded_mounts(recorded, host) if isinstance(recorded, list) else user_mounts(host)
    all_mounts = mounts(host, cid, paths, users, init)
    nodes, rules = devices(host)
    res = resources(host, rules)
    if privileged:
        masked: tuple[str, ...] = ()
        ro_paths: tuple[str, ...] = ()
    else:
        masked = tuple(_strs(host, "MaskedPaths")) if host.get("MaskedPaths") is not None else rspec.masked_paths()
        ro_paths = (tuple(_strs(host, "ReadonlyPaths")) if host.get("ReadonlyPaths") is not None
                    else rspec.READONLY_PATHS)
    seccomp = None if privileged else _seccomp(security.seccomp, cap_names)
    oom = _int(host, "OomScoreAdj")
    if not -1000 <= oom <= 1000:
        raise InvalidArgument(f"Invalid value {oom}, range for oom score adj is [-1000, 1000]")

    base = rspec.default_spec(
        args,
        hostname=hostname,
        env=environment(config, user),
        cwd=cwd,
        user=(user.uid, user.gid),
        additional_gids=user.additional_gids,
        terminal=bool(config.get("Tty")),
        rootfs=os.fspath(rootfs),
        readonly_rootfs=bool(host.get("ReadonlyRootfs")),
        caps=cap_names,
        cgroups_path=_cgroups_path(host, cgroup_parent, cid),
        resources=res,
        seccomp=False,
        no_new_privileges=security.no_new_privileges,
    )
    process = dataclasses.replace(base.process, rlimits=rlimits(host), oom_score_adj=oom)
    linux = dataclasses.replace(
        base.linux,
        namespaces=ns,
        devices=tuple(nodes),
        masked_paths=masked,
        readonly_paths=ro_paths,
        seccomp=seccomp,
        sysctl=sysctls(host, config, ns_types),
    )
    spec = dataclasses.replace(base, process=process, mounts=all_mounts, linux=linux)
    # effects last, once everything is known to be valid
    ensure_dir(rootfs, cwd)
    create_bind_sources(all_mounts)
    return spec
