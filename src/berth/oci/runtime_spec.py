"""The subset of the OCI runtime spec (config.json) berth reads and writes, as validated frozen values.

``Spec.from_json`` accepts what runc accepts for these fields and refuses malformed documents with
``InvalidArgument`` naming the field; unknown fields are ignored (like runc). ``Spec.to_json`` writes a
document runc and crun read unchanged. ``linux.resources`` and ``linux.seccomp`` pass through as dicts:
their consumers (cgroups, seccomp) own their validation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from berth.errors import InvalidArgument

OCI_VERSION = "1.0.2"

NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")
CAP_SET_NAMES = ("bounding", "effective", "permitted", "inheritable", "ambient")
PROPAGATIONS = ("", "private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable", "runbindable")
DEVICE_TYPES = ("c", "b", "u", "p")


def _obj(doc: Any, where: str) -> dict[str, Any]:
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise InvalidArgument(f"invalid runtime spec: {where} must be an object")
    return doc


def _str(doc: Mapping[str, Any], key: str, where: str, default: str = "") -> str:
    v = doc.get(key, default)
    if v is None:
        return default
    if not isinstance(v, str):
        raise InvalidArgument(f"invalid runtime spec: {where}.{key} must be a string")
    return v


def _int(doc: Mapping[str, Any], key: str, where: str, default: int | None = None) -> int | None:
    v = doc.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int):
        raise InvalidArgument(f"invalid runtime spec: {where}.{key} must be an integer")
    return v


def _bool(doc: Mapping[str, Any], key: str, where: str) -> bool:
    v = doc.get(key, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise InvalidArgument(f"invalid runtime spec: {where}.{key} must be a boolean")
    return v


def _strs(doc: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    v = doc.get(key)
    if v is None:
        return ()
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise InvalidArgument(f"invalid runtime spec: {where}.{key} must be a list of strings")
    return tuple(v)


def _list(doc: Mapping[str, Any], key: str, where: str) -> list[Any]:
    v = doc.get(key)
    if v is None:
        return []
    if not isinstance(v, list):
        raise InvalidArgument(f"invalid runtime spec: {where}.{key} must be a list")
    return v


@dataclass(frozen=True)
class User:
    """Numeric identity of the container process (names are resolved by whoever writes the spec)."""

    uid: int = 0
    gid: int = 0
    additional_gids: tuple[int, ...] = ()
    umask: int | None = None

    def __post_init__(self) -> None:
        for v in (self.uid, self.gid, *self.additional_gids):
            if not 0 <= v < 2**32 - 1:
                raise InvalidArgument(f"invalid runtime spec: uid/gid {v} out of range")

    @classmethod
    def from_dict(cls, doc: Any) -> User:
        d = _obj(doc, "process.user")
        gids = d.get("additionalGids") or []
        if not isinstance(gids, list) or not all(isinstance(g, int) and not isinstance(g, bool) for g in gids):
            raise InvalidArgument("invalid runtime spec: process.user.additionalGids must be a list of integers")
        return cls(
            _int(d, "uid", "process.user", 0) or 0,
            _int(d, "gid", "process.user", 0) or 0,
            tuple(gids),
            _int(d, "umask", "process.user"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"uid": self.uid, "gid": self.gid}
        if self.additional_gids:
            out["additionalGids"] = list(self.additional_gids)
        if self.umask is not None:
            out["umask"] = self.umask
        return out


@dataclass(frozen=True)
class Capabilities:
    """The five capability sets as names (``CAP_CHOWN``); absent sets are empty."""

    bounding: tuple[str, ...] = ()
    effective: tuple[str, ...] = ()
    permitted: tuple[str, ...] = ()
    inheritable: tuple[str, ...] = ()
    ambient: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, doc: Any) -> Capabilities:
        d = _obj(doc, "process.capabilities")
        return cls(*(_strs(d, name, "process.capabilities") for name in CAP_SET_NAMES))

    def to_dict(self) -> dict[str, list[str]]:
        return {name: list(getattr(self, name)) for name in CAP_SET_NAMES if getattr(self, name)}


@dataclass(frozen=True)
class Rlimit:
    """One ``setrlimit`` entry: ``type`` is the name (``RLIMIT_NOFILE``)."""

    type: str
    soft: int
    hard: int

    def __post_init__(self) -> None:
        if not self.type.startswith("RLIMIT_"):
            raise InvalidArgument(f"invalid runtime spec: unknown rlimit type {self.type!r}")
        if self.soft < 0 or self.hard < 0:
            raise InvalidArgument(f"invalid runtime spec: rlimit {self.type} must not be negative")

    @classmethod
    def from_dict(cls, doc: Any) -> Rlimit:
        d = _obj(doc, "process.rlimits[]")
        return cls(
            _str(d, "type", "process.rlimits[]"),
            _int(d, "soft", "process.rlimits[]", 0) or 0,
            _int(d, "hard", "process.rlimits[]", 0) or 0,
        )

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "hard": self.hard, "soft": self.soft}


@dataclass(frozen=True)
class Process:
    """What to run in the container and with which privileges."""

    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    cwd: str = "/"
    terminal: bool = False
    user: User = field(default_factory=User)
    capabilities: Capabilities | None = None
    rlimits: tuple[Rlimit, ...] = ()
    no_new_privileges: bool = False
    oom_score_adj: int | None = None

    def __post_init__(self) -> None:
        if not self.args:
            raise InvalidArgument("invalid runtime spec: process.args must not be empty")
        if not self.cwd.startswith("/"):
            raise InvalidArgument("invalid runtime spec: process.cwd must be an absolute path")
        for e in self.env:
            if "=" not in e:
                raise InvalidArgument(f"invalid runtime spec: process.env entry {e!r} must be KEY=VALUE")
        if self.oom_score_adj is not None and not -1000 <= self.oom_score_adj <= 1000:
            raise InvalidArgument("invalid runtime spec: process.oomScoreAdj must be within [-1000, 1000]")

    @classmethod
    def from_dict(cls, doc: Any) -> Process:
        d = _obj(doc, "process")
        caps = d.get("capabilities")
        return cls(
            args=_strs(d, "args", "process"),
            env=_strs(d, "env", "process"),
            cwd=_str(d, "cwd", "process", "/") or "/",
            terminal=_bool(d, "terminal", "process"),
            user=User.from_dict(d.get("user")),
            capabilities=None if caps is None else Capabilities.from_dict(caps),
            rlimits=tuple(Rlimit.from_dict(r) for r in _list(d, "rlimits", "process")),
            no_new_privileges=_bool(d, "noNewPrivileges", "process"),
            oom_score_adj=_int(d, "oomScoreAdj", "process"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "terminal": self.terminal,
            "user": self.user.to_dict(),
            "args": list(self.args),
            "env": list(self.env),
            "cwd": self.cwd,
        }
        if self.capabilities is not None:
            out["capabilities"] = self.capabilities.to_dict()
        if self.rlimits:
            out["rlimits"] = [r.to_dict() for r in self.rlimits]
        out["noNewPrivileges"] = self.no_new_privileges
        if self.oom_score_adj is not None:
            out["oomScoreAdj"] = self.oom_score_adj
        return out

    def env_map(self) -> dict[str, str]:
        """The environment as a dict, later duplicates winning (like execve's consumers see it)."""
        out: dict[str, str] = {}
        for e in self.env:
            k, _, v = e.partition("=")
            out[k] = v
        return out


@dataclass(frozen=True)
class Root:
    """The root filesystem: ``path`` is relative to the bundle or absolute."""

    path: str = "rootfs"
    readonly: bool = False

    def __post_init__(self) -> None:
        if not self.path:
            raise InvalidArgument("invalid runtime spec: root.path must not be empty")

    @classmethod
    def from_dict(cls, doc: Any) -> Root:
        d = _obj(doc, "root")
        return cls(_str(d, "path", "root", "rootfs"), _bool(d, "readonly", "root"))

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "readonly": self.readonly}


@dataclass(frozen=True)
class Mount:
    """One entry of ``mounts``: ``destination`` is a path inside the container."""

    destination: str
    type: str = ""
    source: str = ""
    options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.destination.startswith("/"):
            raise InvalidArgument(f"invalid runtime spec: mount destination {self.destination!r} must be absolute")
        if "\0" in self.destination or "\0" in self.source:
            raise InvalidArgument("invalid runtime spec: mount paths must not contain NUL")

    @property
    def is_bind(self) -> bool:
        return self.type == "bind" or any(o in ("bind", "rbind") for o in self.options)

    @classmethod
    def from_dict(cls, doc: Any) -> Mount:
        d = _obj(doc, "mounts[]")
        return cls(
            _str(d, "destination", "mounts[]"),
            _str(d, "type", "mounts[]"),
            _str(d, "source", "mounts[]"),
            _strs(d, "options", "mounts[]"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"destination": self.destination, "type": self.type, "source": self.source}
        if self.options:
            out["options"] = list(self.options)
        return out


@dataclass(frozen=True)
class Namespace:
    """A namespace to create (no ``path``) or to join (``path`` to an nsfs file)."""

    type: str
    path: str = ""

    def __post_init__(self) -> None:
        if self.type not in NAMESPACE_TYPES:
            raise InvalidArgument(f"invalid runtime spec: unknown namespace type {self.type!r}")

    @classmethod
    def from_dict(cls, doc: Any) -> Namespace:
        d = _obj(doc, "linux.namespaces[]")
        return cls(_str(d, "type", "linux.namespaces[]"), _str(d, "path", "linux.namespaces[]"))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "path": self.path} if self.path else {"type": self.type}


@dataclass(frozen=True)
class Device:
    """A device node to create in the container's /dev."""

    path: str
    type: str
    major: int = 0
    minor: int = 0
    file_mode: int | None = None
    uid: int | None = None
    gid: int | None = None

    def __post_init__(self) -> None:
        if not self.path.startswith("/dev/"):
            raise InvalidArgument(f"invalid runtime spec: device path {self.path!r} must be under /dev")
        if self.type not in DEVICE_TYPES:
            raise InvalidArgument(f"invalid runtime spec: device type {self.type!r} must be one of c, b, u, p")

    @classmethod
    def from_dict(cls, doc: Any) -> Device:
        d = _obj(doc, "linux.devices[]")
        w = "linux.devices[]"
        return cls(
            _str(d, "path", w),
            _str(d, "type", w),
            _int(d, "major", w, 0) or 0,
            _int(d, "minor", w, 0) or 0,
            _int(d, "fileMode", w),
            _int(d, "uid", w),
            _int(d, "gid", w),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "type": self.type, "major": self.major, "minor": self.minor}
        for key, v in (("fileMode", self.file_mode), ("uid", self.uid), ("gid", self.gid)):
            if v is not None:
                out[key] = v
        return out


@dataclass(frozen=True)
class Linux:
    """The ``linux`` section."""

    namespaces: tuple[Namespace, ...] = ()
    resources: dict[str, Any] | None = None
    cgroups_path: str = ""
    devices: tuple[Device, ...] = ()
    masked_paths: tuple[str, ...] = ()
    readonly_paths: tuple[str, ...] = ()
    seccomp: dict[str, Any] | None = None
    sysctl: dict[str, str] = field(default_factory=dict)
    rootfs_propagation: str = ""

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for ns in self.namespaces:
            if ns.type in seen:
                raise InvalidArgument(f"invalid runtime spec: duplicate namespace {ns.type!r}")
            seen.add(ns.type)
        if self.rootfs_propagation not in PROPAGATIONS:
            raise InvalidArgument(f"invalid runtime spec: unknown rootfsPropagation {self.rootfs_propagation!r}")
        for p in (*self.masked_paths, *self.readonly_paths):
            if not p.startswith("/"):
                raise InvalidArgument(f"invalid runtime spec: masked/readonly path {p!r} must be absolute")
        if "uts" not in seen and "kernel.hostname" in self.sysctl:
            raise InvalidArgument("invalid runtime spec: sysctl kernel.hostname needs a private uts namespace")

    def namespace(self, kind: str) -> Namespace | None:
        return next((ns for ns in self.namespaces if ns.type == kind), None)

    @classmethod
    def from_dict(cls, doc: Any) -> Linux:
        d = _obj(doc, "linux")
        sysctl = _obj(d.get("sysctl"), "linux.sysctl")
        if not all(isinstance(v, str) for v in sysctl.values()):
            raise InvalidArgument("invalid runtime spec: linux.sysctl values must be strings")
        resources = d.get("resources")
        seccomp = d.get("seccomp")
        return cls(
            namespaces=tuple(Namespace.from_dict(n) for n in _list(d, "namespaces", "linux")),
            resources=None if resources is None else _obj(resources, "linux.resources"),
            cgroups_path=_str(d, "cgroupsPath", "linux"),
            devices=tuple(Device.from_dict(x) for x in _list(d, "devices", "linux")),
            masked_paths=_strs(d, "maskedPaths", "linux"),
            readonly_paths=_strs(d, "readonlyPaths", "linux"),
            seccomp=None if seccomp is None else _obj(seccomp, "linux.seccomp"),
            sysctl=dict(sysctl),
            rootfs_propagation=_str(d, "rootfsPropagation", "linux"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"namespaces": [n.to_dict() for n in self.namespaces]}
        if self.resources is not None:
            out["resources"] = self.resources
        if self.cgroups_path:
            out["cgroupsPath"] = self.cgroups_path
        if self.devices:
            out["devices"] = [x.to_dict() for x in self.devices]
        out["maskedPaths"] = list(self.masked_paths)
        out["readonlyPaths"] = list(self.readonly_paths)
        if self.seccomp is not None:
            out["seccomp"] = self.seccomp
        if self.sysctl:
            out["sysctl"] = dict(self.sysctl)
        if self.rootfs_propagation:
            out["rootfsPropagation"] = self.rootfs_propagation
        return out


@dataclass(frozen=True)
class Spec:
    """A whole config.json (the parts berth uses)."""

    process: Process
    root: Root = field(default_factory=Root)
    hostname: str = ""
    mounts: tuple[Mount, ...] = ()
    linux: Linux = field(default_factory=Linux)
    oci_version: str = OCI_VERSION
    annotations: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hostname and self.linux.namespace("uts") is None:
            raise InvalidArgument("invalid runtime spec: hostname needs a private uts namespace")
        if len(self.hostname) > 64:
            raise InvalidArgument("invalid runtime spec: hostname longer than 64 bytes")

    @classmethod
    def from_dict(cls, doc: Any) -> Spec:
        d = _obj(doc, "config")
        if "process" not in d:
            raise InvalidArgument("invalid runtime spec: process is required")
        annotations = _obj(d.get("annotations"), "annotations")
        return cls(
            process=Process.from_dict(d["process"]),
            root=Root.from_dict(d.get("root")),
            hostname=_str(d, "hostname", "config"),
            mounts=tuple(Mount.from_dict(m) for m in _list(d, "mounts", "config")),
            linux=Linux.from_dict(d.get("linux")),
            oci_version=_str(d, "ociVersion", "config", OCI_VERSION) or OCI_VERSION,
            annotations={str(k): str(v) for k, v in annotations.items()},
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Spec:
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"invalid runtime spec: {e}") from None
        return cls.from_dict(doc)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ociVersion": self.oci_version,
            "process": self.process.to_dict(),
            "root": self.root.to_dict(),
        }
        if self.hostname:
            out["hostname"] = self.hostname
        out["mounts"] = [m.to_dict() for m in self.mounts]
        out["linux"] = self.linux.to_dict()
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)


def env_list(env: Mapping[str, str] | Sequence[str]) -> tuple[str, ...]:
    """``KEY=VALUE`` strings from a mapping or pass a list through."""
    if isinstance(env, Mapping):
        return tuple(f"{k}={v}" for k, v in env.items())
    return tuple(env)
