"""Docker's container semantics that need no running process: create, inspect, list, rename, remove, prune.

A container is a record in the metadata DB (its JSON document), an active snapshot keyed by its ID on top of its
image's layers, and a directory under ``<data-root>/containers/<id>/`` (owned by ``ContainerPaths``) for the files
the engine writes for it (hostname, hosts, resolv.conf, logs).
"""

from __future__ import annotations

import contextlib
import enum
import re
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from berth.errors import Conflict, InvalidArgument, NoSuchImage, NotFound
from berth.images.store import ImageStore
from berth.metadata.containers import ContainerDB
from berth.network import etcfiles
from berth.oci.digest import is_hex_id
from berth.oci.reference import parse_tagged
from berth.runtime import jsonlog, oci_cli
from berth.snapshots.base import Kind, Snapshotter
from berth.units import human_duration, now_rfc3339

ZERO_TIME = "0001-01-01T00:00:00Z"
NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
LOG_DRIVERS = {"json-file", "local", "none"}
RESTART_POLICIES = {"", "no", "always", "unless-stopped", "on-failure"}
HEALTH_ON_FAILURE_LABEL = "berth.health-on-failure"
HEALTH_ON_FAILURE_ACTIONS = {"", "none", "kill", "restart", "stop"}
CONTAINER_FILTERS = {
    "id",
    "name",
    "label",
    "status",
    "ancestor",
    "exited",
    "before",
    "since",
    "health",
    "network",
    "volume",
    "publish",
    "expose",
    "is-task",
}
STATUSES = {"created", "restarting", "running", "removing", "paused", "exited", "dead"}


class State(enum.Enum):
    """A container's lifecycle state, with the transitions Docker allows beside it."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    REMOVING = "removing"
    EXITED = "exited"
    DEAD = "dead"

    def can_start(self) -> bool:
        return self in (State.CREATED, State.EXITED)

    def is_active(self) -> bool:
        """Has a live process (running, paused or between restarts)."""
        return self in (State.RUNNING, State.PAUSED, State.RESTARTING)

    def can_remove(self, force: bool) -> bool:
        return force or not self.is_active()


class EventSink(Protocol):
    def publish(self, type: str, action: str, actor_id: str, attributes: Mapping[str, str] | None = None) -> object: ...


class VolumeHooks(Protocol):
    """The volume service (berth.engine.volumes): a container's mount points at create, its volumes at removal."""

    def attach(self, cid: str, config: dict[str, Any], host: dict[str, Any],
               resolve: Callable[[str], tuple[str, str, dict[str, Any]]]) -> list[dict[str, Any]]: ...
    def settled(self, cid: str) -> None: ...
    def detach(self, cid: str, records: list[dict[str, Any]]) -> list[str]: ...


class NetworkRecords(Protocol):
    """The network service (berth.engine.networks): a container's networks at create, in inspect and list."""

    def validate_create(self, host: dict[str, Any], config: dict[str, Any], networking: dict[str, Any]) -> None: ...
    def created(self, cid: str, host: dict[str, Any], networking: dict[str, Any]) -> None: ...
    def forget(self, cid: str) -> None: ...
    def settings(self, cid: str, name: str, doc: dict[str, Any]) -> dict[str, Any]: ...
    def summary(self, cid: str, name: str, doc: dict[str, Any]) -> dict[str, Any]: ...
    def network_names(self, cid: str) -> list[str]: ...


@dataclass(frozen=True)
class ContainerPaths:
    """The per-container directory and the files in it (this class owns ``<data-root>/containers/``)."""

    root: Path

    def dir(self, cid: str) -> Path:
        return self.root / cid

    def hostname(self, cid: str) -> Path:
        return self.dir(cid) / "hostname"

    def hosts(self, cid: str) -> Path:
        return self.dir(cid) / "hosts"

    def resolv_conf(self, cid: str) -> Path:
        return self.dir(cid) / "resolv.conf"

    def log(self, cid: str) -> Path:
        return self.dir(cid) / f"{cid}-json.log"


def _unix(text: str) -> float:
    if not text or text.startswith("0001-"):
        return 0.0
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class ContainerService:
    def __init__(
        self, db: ContainerDB, images: ImageStore, snapshotter: Snapshotter, events: EventSink, paths: ContainerPaths
    ) -> None:
        self.db = db
        self.images = images
        self.snapshotter = snapshotter
        self.events = events
        self.paths = paths
        self._lock = threading.Lock()
        # told (from a worker thread) when a container record is gone, e.g. to wake `wait?condition=removed`
        self.on_destroy: Callable[[str], None] = lambda _cid: None
        # the container's execs that have not ended (inspect ``ExecIDs``); the exec service lives in memory
        self.exec_ids: Callable[[str], list[str]] = lambda _cid: []
        # OCI runtimes by name (HostConfig.Runtime) -> binary; the daemon adds its configured ones
        self.runtimes: dict[str, str] = dict(oci_cli.RUNTIMES)
        self.default_runtime = oci_cli.LIBRARY
        # decides mount points and makes volumes at create (set by the daemon; without it, mounts are read at start)
        self.volumes: VolumeHooks | None = None
        # checks and records a container's networks, reports its NetworkSettings (set by the daemon)
        self.networks: NetworkRecords | None = None

    # --- resolution -------------------------------------------------------------------------------

    def resolve(self, ref: str) -> tuple[str, str, dict[str, Any]]:
        """Exact ID, then exact name, then unique ID prefix (Docker's order); 404 ``No such container``."""
        name = ref.lstrip("/")
        if is_hex_id(ref, 64):
            try:
                n, doc = self.db.get(ref)
                return ref, n, doc
            except NotFound:
                pass
        by_name = self.db.id_by_name(name) if name else None
        if by_name:
            n, doc = self.db.get(by_name)
            return by_name, n, doc
        if ref and is_hex_id(ref):
            ids = self.db.ids_with_prefix(ref)
            if len(ids) > 1:
                raise InvalidArgument(f"multiple IDs found with provided prefix: {ref}")
            if ids:
                n, doc = self.db.get(ids[0])
                return ids[0], n, doc
        raise NotFound(f"No such container: {ref}")

    def is_running(self, cid: str) -> bool:
        try:
            _, doc = self.db.get(cid)
        except NotFound:
            return False
        return State(doc["State"]["Status"]).is_active()

    def counts(self) -> dict[str, int]:
        """For ``/info``: containers in all, running, paused and stopped."""
        states = [doc["State"]["Status"] for _, _, doc in self.db.all()]
        running = states.count("running") + states.count("restarting")
        paused = states.count("paused")
        return {
            "containers": len(states),
            "running": running,
            "paused": paused,
            "stopped": len(states) - running - paused,
        }

    def image_users(self, image_id: str) -> list[tuple[str, bool]]:
        """Containers created from ``image_id``: (id, has a live process)."""
        return [
            (cid, State(doc["State"]["Status"]).is_active())
            for cid, _, doc in self.db.all()
            if doc.get("Image") == image_id
        ]

    def runtime_name(self, name: Any) -> str:
        """HostConfig.Runtime checked against the known runtimes; empty means the daemon's default."""
        if not name:
            return self.default_runtime
        if not isinstance(name, str) or name not in self.runtimes:
            raise InvalidArgument(f"unknown or invalid runtime name: {name}")
        return name

    # --- create ------------------------------------------------------------------------------------

    def create(self, name: str | None, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise InvalidArgument("config cannot be empty in order to create a container")
        if name:
            if not NAME_RE.match(name):
                raise InvalidArgument(f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
            name = name.lstrip("/")
        host = _dict(body.get("HostConfig"), "HostConfig")
        image_name = body.get("Image")
        if not isinstance(image_name, str) or not image_name:
            raise InvalidArgument("config cannot be empty in order to create a container")
        try:
            rec = self.images.resolve(image_name)
        except NoSuchImage:
            shown = image_name
            with contextlib.suppress(InvalidArgument):
                shown = parse_tagged(image_name).familiar()
            raise NoSuchImage(shown) from None
        image_cfg = self.images.config(rec.id)
        warnings: list[str] = []
        config = merge_config(body, image_cfg.config)
        host_config = normalize_host_config(host)
        validate(config, host_config)
        etcfiles.check_host_config(host_config)  # --add-host, --dns, --dns-search, --dns-option
        if self.networks is not None:
            self.networks.validate_create(host_config, config, _dict(body.get("NetworkingConfig"), "NetworkingConfig"))
        host_config["Runtime"] = self.runtime_name(host.get("Runtime"))
        cid = secrets.token_hex(32)
        if not config.get("Hostname"):
            config["Hostname"] = cid[:12]
        created = now_rfc3339()
        cmd = (config.get("Entrypoint") or []) + (config.get("Cmd") or [])
        doc: dict[str, Any] = {
            "Id": cid,
            "Created": created,
            "Path": cmd[0],
            "Args": cmd[1:],
            "Image": rec.id,
            "Config": config,
            "HostConfig": host_config,
            "NetworkingConfig": _dict(body.get("NetworkingConfig"), "NetworkingConfig"),
            "State": _initial_state(),
            "RestartCount": 0,
        }
        if self.volumes is not None:
            doc["MountPoints"] = self.volumes.attach(cid, config, host_config, self.resolve)
            doc["Mounts"] = [{k: r[k] for k in _MOUNT_API_KEYS if k in r} for r in doc["MountPoints"]]
        try:
            with self._lock:
                final_name = name or self._generate_name()
                self.db.insert(cid, final_name, time.time(), doc)
        except BaseException:
            self._detach_volumes(cid, doc)
            raise
        finally:
            if self.volumes is not None:
                self.volumes.settled(cid)
        try:
            parent = str(image_cfg.chain_ids[-1]) if image_cfg.diff_ids else None
            self.snapshotter.prepare(cid, parent)
            self._write_files(cid, config)
            if self.networks is not None:
                self.networks.created(cid, host_config, doc["NetworkingConfig"])
        except BaseException:
            self.db.delete(cid)
            if self.networks is not None:
                self.networks.forget(cid)
            self._drop_files(cid)
            self._detach_volumes(cid, doc)
            raise
        self.events.publish("container", "create", cid, self.attributes(final_name, doc))
        return {"Id": cid, "Warnings": warnings}

    def _generate_name(self) -> str:
        for _ in range(100):
            candidate = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_SURNAMES)}"
            if self.db.id_by_name(candidate) is None:
                return candidate
        return f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_SURNAMES)}{secrets.randbelow(10000)}"

    def _write_files(self, cid: str, config: dict[str, Any]) -> None:
        d = self.paths.dir(cid)
        d.mkdir(parents=True, mode=0o710)
        hostname = str(config.get("Hostname"))
        self.paths.hostname(cid).write_text(hostname + "\n")
        self.paths.hosts(cid).write_text(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::\tip6-localnet\n"
            "ff00::\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
        )
        self.paths.resolv_conf(cid).write_text(_host_resolv_conf())

    def _drop_files(self, cid: str) -> None:
        shutil.rmtree(self.paths.dir(cid), ignore_errors=True)

    @staticmethod
    def attributes(name: str, doc: dict[str, Any]) -> dict[str, str]:
        attrs = {str(k): str(v) for k, v in (doc["Config"].get("Labels") or {}).items()}
        attrs["image"] = str(doc["Config"].get("Image", ""))
        attrs["name"] = name
        return attrs

    # --- reads -------------------------------------------------------------------------------------

    def inspect(self, ref: str) -> dict[str, Any]:
        cid, name, doc = self.resolve(ref)
        out = self._inspect_doc(cid, name, doc)
        if self.networks is not None:
            out["NetworkSettings"] = self.networks.settings(cid, name, doc)
        if doc.get("Warnings"):  # berth's own field: the published-port check's findings (engine.portcheck)
            out["Warnings"] = list(doc["Warnings"])
        return out

    def _inspect_doc(self, cid: str, name: str, doc: dict[str, Any]) -> dict[str, Any]:
        mode = doc["HostConfig"].get("NetworkMode") or "bridge"
        ports = {p: None for p in (doc["Config"].get("ExposedPorts") or {})}
        return {
            "Id": cid,
            "Created": doc["Created"],
            "Path": doc["Path"],
            "Args": doc["Args"],
            "State": doc["State"],
            "Image": doc["Image"],
            "ResolvConfPath": str(self.paths.resolv_conf(cid)),
            "HostnamePath": str(self.paths.hostname(cid)),
            "HostsPath": str(self.paths.hosts(cid)),
            "LogPath": str(self.paths.log(cid)),
            "Name": "/" + name,
            "RestartCount": doc.get("RestartCount", 0),
            "Driver": self.snapshotter.name,
            "Platform": "linux",
            "MountLabel": "",
            "ProcessLabel": "",
            "AppArmorProfile": "",
            "ExecIDs": self.exec_ids(cid) or None,
            "HostConfig": doc["HostConfig"],
            "GraphDriver": {"Name": self.snapshotter.name, "Data": None},
            "Mounts": doc.get("Mounts", []),
            "Config": doc["Config"],
            "NetworkSettings": {
                "Bridge": "",
                "SandboxID": "",
                "SandboxKey": "",
                "HairpinMode": False,
                "LinkLocalIPv6Address": "",
                "LinkLocalIPv6PrefixLen": 0,
                "Ports": ports,
                "SecondaryIPAddresses": None,
                "SecondaryIPv6Addresses": None,
                "EndpointID": "",
                "Gateway": "",
                "GlobalIPv6Address": "",
                "GlobalIPv6PrefixLen": 0,
                "IPAddress": "",
                "IPPrefixLen": 0,
                "IPv6Gateway": "",
                "MacAddress": "",
                "Networks": {} if mode == "none" else {mode: _endpoint(cid)},
            },
        }

    def list_containers(
        self,
        include_stopped: bool = False,
        limit: int = -1,
        size: bool = False,
        filters: dict[str, list[str]] | None = None,
    ) -> list[dict[str, Any]]:
        filters = filters or {}
        for key in filters:
            if key not in CONTAINER_FILTERS:
                raise InvalidArgument(f"invalid filter '{key}'")
        for s in filters.get("status", []):
            if s not in STATUSES:
                raise InvalidArgument(f"invalid filter 'status={s}'")
        rows = self.db.all()
        if not include_stopped and not filters.get("status") and limit <= 0:
            rows = [r for r in rows if State(r[2]["State"]["Status"]).is_active()]
        rows = self._filter(rows, filters)
        if limit > 0:
            rows = rows[:limit]
        return [self._summary(cid, name, doc, size) for cid, name, doc in rows]

    def _filter(
        self, rows: list[tuple[str, str, dict[str, Any]]], filters: dict[str, list[str]]
    ) -> list[tuple[str, str, dict[str, Any]]]:
        def keep(cid: str, name: str, doc: dict[str, Any]) -> bool:
            state = doc["State"]
            labels = doc["Config"].get("Labels") or {}
            checks: dict[str, Any] = {
                "id": lambda v: cid.startswith(v),
                "name": lambda v: re.search(v, "/" + name) is not None,
                "label": lambda v: _label_match(labels, v),
                "status": lambda v: state["Status"] == v,
                "ancestor": lambda v: self._is_ancestor(doc, v),
                "exited": lambda v: state["Status"] == "exited" and str(state["ExitCode"]) == v,
                "health": lambda v: (state.get("Health") or {}).get("Status", "none") == v,
                "network": lambda v: v in {doc["HostConfig"].get("NetworkMode") or "bridge",
                                           *(self.networks.network_names(cid) if self.networks else ())},
                "volume": lambda v: any(v in (m.get("Name"), m.get("Source"), m.get("Destination"))
                                        for m in doc.get("Mounts") or []),
            }
            for key, values in filters.items():
                if key == "label":
                    if not all(bool(checks[key](v)) for v in values):
                        return False
                elif key in checks and not any(bool(checks[key](v)) for v in values):
                    return False
            return True

        out = [r for r in rows if keep(*r)]
        for key, op in (("before", "lt"), ("since", "gt")):
            for v in filters.get(key, []):
                _, _, ref_doc = self.resolve(v)
                t = _unix(ref_doc["Created"])
                out = [r for r in out if (_unix(r[2]["Created"]) < t if op == "lt" else _unix(r[2]["Created"]) > t)]
        return out

    def _is_ancestor(self, doc: dict[str, Any], image: str) -> bool:
        try:
            return bool(self.images.resolve(image).id == doc["Image"])
        except (NotFound, InvalidArgument):
            return False

    def _summary(self, cid: str, name: str, doc: dict[str, Any], size: bool) -> dict[str, Any]:
        mode = doc["HostConfig"].get("NetworkMode") or "bridge"
        config = doc["Config"]
        out: dict[str, Any] = {
            "Id": cid,
            "Names": ["/" + name],
            "Image": config.get("Image", ""),
            "ImageID": doc["Image"],
            "Command": " ".join([doc["Path"], *doc["Args"]]),
            "Created": int(_unix(doc["Created"])),
            "Ports": [
                {"PrivatePort": int(p.split("/")[0]), "Type": p.split("/")[1]}
                for p in (config.get("ExposedPorts") or {})
                if p.split("/")[0].isdigit()
            ],
            "Labels": config.get("Labels") or {},
            "State": doc["State"]["Status"],
            "Status": status_text(doc["State"]),
            "HostConfig": {"NetworkMode": mode},
            "NetworkSettings": {"Networks": {} if mode == "none" else {mode: _endpoint(cid)}},
            "Mounts": doc.get("Mounts", []),
        }
        if self.networks is not None:
            out.update(self.networks.summary(cid, name, doc))
        if size:
            try:
                out["SizeRw"] = self.snapshotter.usage(cid)
            except NotFound:
                out["SizeRw"] = 0
            out["SizeRootFs"] = out["SizeRw"] + self.images.image_size(doc["Image"])
        return out

    # --- changes -----------------------------------------------------------------------------------

    def rename(self, ref: str, new_name: str) -> None:
        cid, old, doc = self.resolve(ref)
        if not new_name or not NAME_RE.match(new_name):
            raise InvalidArgument(f"Invalid container name ({new_name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed")
        new_name = new_name.lstrip("/")
        if new_name == old:
            raise Conflict("Renaming a container with the same name as its current name")
        self.db.rename(cid, new_name)
        attrs = self.attributes(new_name, doc)
        attrs["oldName"] = "/" + old
        self.events.publish("container", "rename", cid, attrs)

    def remove(self, ref: str, force: bool = False, volumes: bool = False) -> None:
        cid, name, doc = self.resolve(ref)
        state = State(doc["State"]["Status"])
        if not state.can_remove(force):
            raise Conflict(
                f'cannot remove container "/{name}": container is running: stop the container before '
                "removing or force remove"
            )
        if state.is_active():
            raise Conflict(f'cannot remove container "/{name}": the container is still running')
        self._destroy(cid, name, doc, volumes)

    def _detach_volumes(self, cid: str, doc: dict[str, Any]) -> None:
        """Remove the anonymous volumes the (now gone) container made, unless another container uses them."""
        if self.volumes is not None and doc.get("MountPoints"):
            self.volumes.detach(cid, doc["MountPoints"])

    def _destroy(self, cid: str, name: str, doc: dict[str, Any], volumes: bool = False) -> None:
        # the record goes first, so `wait?condition=removed` is answered without waiting for the disk work;
        # a crash before the cleanup below leaves orphans that reap_orphans removes at the next start
        self.db.delete(cid)
        if volumes:  # before the waiters hear of the removal: `run --rm` returns with its volumes gone (moby)
            self._detach_volumes(cid, doc)
        self.on_destroy(cid)
        if self.networks is not None:
            with contextlib.suppress(Exception):  # the record is gone already; leftovers are reaped at start
                self.networks.forget(cid)
        self.events.publish("container", "destroy", cid, self.attributes(name, doc))
        with contextlib.suppress(NotFound):
            self.snapshotter.remove(cid)
        self._drop_files(cid)

    def reap_orphans(self, known: set[str]) -> None:
        """Remove container snapshots and directories that no record owns (a crash in the middle of ``rm``)."""
        for info in list(self.snapshotter.walk()):
            if info.kind == Kind.ACTIVE and is_hex_id(info.key, 64) and info.key not in known:
                with contextlib.suppress(NotFound, Conflict):
                    self.snapshotter.remove(info.key)
        if self.paths.root.is_dir():
            for d in self.paths.root.iterdir():
                if is_hex_id(d.name, 64) and d.name not in known:
                    shutil.rmtree(d, ignore_errors=True)

    def prune(self, filters: dict[str, list[str]]) -> dict[str, Any]:
        for key in filters:
            if key not in {"until", "label", "label!"}:
                raise InvalidArgument(f"invalid filter '{key}'")
        deleted: list[str] = []
        reclaimed = 0
        for cid, name, doc in self.db.all():
            if State(doc["State"]["Status"]).is_active():
                continue
            labels = doc["Config"].get("Labels") or {}
            if not all(_label_match(labels, v) for v in filters.get("label", [])):
                continue
            if any(_label_match(labels, v) for v in filters.get("label!", [])):
                continue
            if "until" in filters and _unix(doc["Created"]) >= _until(filters["until"][0]):
                continue
            with contextlib.suppress(NotFound):
                reclaimed += self.snapshotter.usage(cid)
            self._destroy(cid, name, doc)
            deleted.append(cid)
        if deleted:
            self.events.publish("container", "prune", "", {"reclaimed": str(reclaimed)})
        return {"ContainersDeleted": deleted or None, "SpaceReclaimed": reclaimed}


# --- pure helpers ------------------------------------------------------------------------------------


def _dict(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"invalid {what}: must be an object")
    return value


def _initial_state() -> dict[str, Any]:
    return {
        "Status": "created",
        "Running": False,
        "Paused": False,
        "Restarting": False,
        "OOMKilled": False,
        "Dead": False,
        "Pid": 0,
        "ExitCode": 0,
        "Error": "",
        "StartedAt": ZERO_TIME,
        "FinishedAt": ZERO_TIME,
    }


def _endpoint(cid: str) -> dict[str, Any]:
    return {
        "IPAMConfig": None,
        "Links": None,
        "Aliases": None,
        "MacAddress": "",
        "DriverOpts": None,
        "NetworkID": "",
        "EndpointID": "",
        "Gateway": "",
        "IPAddress": "",
        "IPPrefixLen": 0,
        "IPv6Gateway": "",
        "GlobalIPv6Address": "",
        "GlobalIPv6PrefixLen": 0,
        "DNSNames": None,
    }


def merge_config(body: dict[str, Any], image: dict[str, Any]) -> dict[str, Any]:
    """The container's Config: the request's fields over the image's defaults, with Docker's Cmd/Entrypoint rule."""
    keys = (
        "Hostname",
        "Domainname",
        "User",
        "AttachStdin",
        "AttachStdout",
        "AttachStderr",
        "ExposedPorts",
        "Tty",
        "OpenStdin",
        "StdinOnce",
        "Env",
        "Cmd",
        "Healthcheck",
        "ArgsEscaped",
        "Image",
        "Volumes",
        "WorkingDir",
        "Entrypoint",
        "NetworkDisabled",
        "MacAddress",
        "OnBuild",
        "Labels",
        "StopSignal",
        "StopTimeout",
        "Shell",
    )
    out: dict[str, Any] = {k: body[k] for k in keys if k in body}
    for flag in ("AttachStdin", "AttachStdout", "AttachStderr", "Tty", "OpenStdin", "StdinOnce"):
        out[flag] = bool(out.get(flag))
    entrypoint = body.get("Entrypoint")
    cmd = body.get("Cmd")
    if entrypoint is not None:
        out["Entrypoint"] = [e for e in entrypoint if e] or None
        out["Cmd"] = cmd or None
    else:
        out["Entrypoint"] = image.get("Entrypoint")
        out["Cmd"] = cmd if cmd else image.get("Cmd")
    env: dict[str, str] = {}
    for item in list(image.get("Env") or []) + list(body.get("Env") or []):
        if not isinstance(item, str):
            raise InvalidArgument(f"invalid environment variable: {item!r}")
        k, _, _ = item.partition("=")
        env[k] = item
    out["Env"] = list(env.values()) or None
    out["WorkingDir"] = body.get("WorkingDir") or image.get("WorkingDir") or ""
    out["User"] = body.get("User") or image.get("User") or ""
    out["Labels"] = {**(image.get("Labels") or {}), **(body.get("Labels") or {})}
    out["ExposedPorts"] = {**(image.get("ExposedPorts") or {}), **(body.get("ExposedPorts") or {})} or None
    out["Volumes"] = {**(image.get("Volumes") or {}), **(body.get("Volumes") or {})} or None
    if not body.get("StopSignal") and image.get("StopSignal"):
        out["StopSignal"] = image["StopSignal"]
    if not body.get("Healthcheck") and image.get("Healthcheck"):
        out["Healthcheck"] = image["Healthcheck"]
    out.setdefault("OnBuild", None)
    out.setdefault("Domainname", "")
    out.setdefault("Hostname", "")
    return out


_MOUNT_API_KEYS = ("Type", "Name", "Source", "Destination", "Driver", "Mode", "RW", "Propagation")

_HOST_DEFAULTS: dict[str, Any] = {
    "Binds": None,
    "ContainerIDFile": "",
    "LogConfig": {"Type": "json-file", "Config": {}},
    "NetworkMode": "bridge",
    "PortBindings": {},
    "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
    "AutoRemove": False,
    "VolumeDriver": "",
    "VolumesFrom": None,
    "ConsoleSize": [0, 0],
    "CapAdd": None,
    "CapDrop": None,
    "CgroupnsMode": "host",
    "Dns": [],
    "DnsOptions": [],
    "DnsSearch": [],
    "ExtraHosts": None,
    "GroupAdd": None,
    "IpcMode": "private",
    "Cgroup": "",
    "Links": None,
    "OomScoreAdj": 0,
    "PidMode": "",
    "Privileged": False,
    "PublishAllPorts": False,
    "ReadonlyRootfs": False,
    "SecurityOpt": None,
    "UTSMode": "",
    "UsernsMode": "",
    "ShmSize": 67108864,
    "Runtime": "berth",
    "Isolation": "",
    "CpuShares": 0,
    "Memory": 0,
    "NanoCpus": 0,
    "CgroupParent": "",
    "CpuPeriod": 0,
    "CpuQuota": 0,
    "CpusetCpus": "",
    "CpusetMems": "",
    "Devices": [],
    "MemoryReservation": 0,
    "MemorySwap": 0,
    "MemorySwappiness": None,
    "OomKillDisable": None,
    "PidsLimit": None,
    "Ulimits": None,
    "Init": None,
    "Tmpfs": None,
    "Sysctls": None,
    "MaskedPaths": None,
    "ReadonlyPaths": None,
}


def normalize_host_config(host: dict[str, Any]) -> dict[str, Any]:
    out = dict(_HOST_DEFAULTS)
    out.update({k: v for k, v in host.items() if v is not None or k not in out})
    log = dict(out.get("LogConfig") or {})
    log["Type"] = log.get("Type") or "json-file"
    log["Config"] = log.get("Config") or {}
    out["LogConfig"] = log
    if out.get("NetworkMode") in ("", "default", None):
        out["NetworkMode"] = "bridge"
    policy = dict(out.get("RestartPolicy") or {})
    policy["Name"] = policy.get("Name") or "no"
    policy["MaximumRetryCount"] = int(policy.get("MaximumRetryCount") or 0)
    out["RestartPolicy"] = policy
    if not out.get("ShmSize"):
        out["ShmSize"] = 67108864
    return out


def validate(config: dict[str, Any], host: dict[str, Any]) -> None:
    """Docker's create-time checks: all 400s, raised before any state is written."""
    if not ((config.get("Entrypoint") or []) + (config.get("Cmd") or [])):
        raise InvalidArgument("no command specified")
    for item in config.get("Env") or []:
        if not item or item.startswith("="):
            raise InvalidArgument(f"invalid environment variable: {item}")
    policy = host["RestartPolicy"]
    if policy["Name"] not in RESTART_POLICIES:
        raise InvalidArgument(
            f"invalid restart policy: unknown policy '{policy['Name']}'; use one of 'no', "
            "'always', 'on-failure' or 'unless-stopped'"
        )
    if policy["MaximumRetryCount"] and policy["Name"] != "on-failure":
        raise InvalidArgument("invalid restart policy: maximum retry count can only be used with 'on-failure'")
    if policy["MaximumRetryCount"] < 0:
        raise InvalidArgument("invalid restart policy: maximum retry count cannot be negative")
    if host.get("AutoRemove") and policy["Name"] not in ("", "no"):
        raise InvalidArgument("can't create 'AutoRemove' container with restart policy")
    if config.get("StopSignal"):
        parse_signal(str(config["StopSignal"]))
    validate_healthcheck(config.get("Healthcheck"))
    for action in (host.get("HealthOnFailure"), (config.get("Labels") or {}).get(HEALTH_ON_FAILURE_LABEL)):
        if action is not None and action not in HEALTH_ON_FAILURE_ACTIONS:
            raise InvalidArgument(f"invalid health-on-failure action: {action!r}: use one of 'none', 'kill', "
                                  "'restart' or 'stop'")
    log_config = host["LogConfig"]
    if log_config["Type"] not in LOG_DRIVERS:
        raise InvalidArgument(f"logger: no log driver named '{log_config['Type']}' is registered")
    if log_config["Type"] != "none":
        jsonlog.parse_log_opts(log_config.get("Config") or {})
    oom = host.get("OomScoreAdj") or 0
    if not -1000 <= int(oom) <= 1000:
        raise InvalidArgument(f"Invalid value {oom}, range for oom score adj is [-1000, 1000]")
    if (host.get("CpuShares") or 0) < 0:
        raise InvalidArgument("invalid CPU shares (" + str(host["CpuShares"]) + "): value must be a positive integer")
    memory = host.get("Memory") or 0
    if 0 < memory < 6 * 1024 * 1024:
        raise InvalidArgument("Minimum memory limit allowed is 6MB")
    swappiness = host.get("MemorySwappiness")
    if swappiness is not None and swappiness != -1 and not 0 <= swappiness <= 100:
        raise InvalidArgument(f"Invalid value: {swappiness}, valid memory swappiness range is 0-100")
    for mode_key in ("IpcMode", "PidMode", "UTSMode"):
        mode = host.get(mode_key) or ""
        if mode not in ("", "host", "private", "shareable") and not mode.startswith("container:"):
            raise InvalidArgument(f"invalid {mode_key[:-4].upper()} mode: {mode}")
        if mode == "container:":
            raise InvalidArgument(f"invalid {mode_key[:-4].upper()} mode: {mode}")
    for m in host.get("Mounts") or []:
        target = (m or {}).get("Target", "")
        if not target.startswith("/"):
            raise InvalidArgument(
                f'invalid mount config for type "{m.get("Type")}": invalid mount path: '
                f"'{target}' mount path must be absolute"
            )


def validate_healthcheck(hc: Any) -> None:
    """moby's validateHealthCheck: durations of 0 mean the default, else at least 1ms; no negative retries."""
    if not hc:
        return
    if not isinstance(hc, dict):
        raise InvalidArgument("invalid JSON: Healthcheck must be an object")
    test = hc.get("Test") or []
    if not isinstance(test, list) or not all(isinstance(t, str) for t in test):
        raise InvalidArgument("invalid JSON: Healthcheck.Test must be a list of strings")
    for key in ("Interval", "Timeout", "StartPeriod", "StartInterval"):
        value = hc.get(key) or 0
        if not isinstance(value, int):
            raise InvalidArgument(f"invalid JSON: Healthcheck.{key} must be an integer")
        if value != 0 and value < 1_000_000:
            raise InvalidArgument(f"{key} in Healthcheck cannot be less than 1ms")
    retries = hc.get("Retries") or 0
    if not isinstance(retries, int):
        raise InvalidArgument("invalid JSON: Healthcheck.Retries must be an integer")
    if retries < 0:
        raise InvalidArgument("Retries in Healthcheck cannot be negative")


def parse_signal(text: str) -> int:
    """``SIGTERM``, ``TERM``, ``15`` → 15; InvalidArgument ``Invalid signal: X`` otherwise (Docker's wording)."""
    t = text.strip().upper()
    if t.isdigit():
        n = int(t)
        if 0 < n <= 64:
            return n
        raise InvalidArgument(f"Invalid signal: {text}")
    name = t if t.startswith("SIG") else "SIG" + t
    try:
        return int(signal.Signals[name])
    except KeyError:
        if name.startswith("SIGRTMIN+") and name[9:].isdigit():
            return int(signal.SIGRTMIN) + int(name[9:])
        raise InvalidArgument(f"Invalid signal: {text}") from None


def status_text(state: dict[str, Any], now: float | None = None) -> str:
    """The STATUS column: ``Created``, ``Up 2 minutes``, ``Exited (0) 5 seconds ago`` ..."""
    now = time.time() if now is None else now
    status = state["Status"]
    if status == "created":
        return "Created"
    if status in ("running", "paused"):
        text = "Up " + human_duration(now - _unix(state["StartedAt"]))
        health = (state.get("Health") or {}).get("Status")
        if status == "paused":
            text += " (Paused)"
        elif health:
            text += f" ({'health: starting' if health == 'starting' else health})"
        return text
    if status == "restarting":
        return f"Restarting ({state['ExitCode']}) {human_duration(now - _unix(state['FinishedAt']))} ago"
    if status == "removing":
        return "Removal In Progress"
    if status == "dead":
        return "Dead"
    finished = _unix(state["FinishedAt"])
    return (
        f"Exited ({state['ExitCode']}) {human_duration(now - finished)} ago"
        if finished
        else f"Exited ({state['ExitCode']})"
    )


def _label_match(labels: dict[str, str], f: str) -> bool:
    key, eq, value = f.partition("=")
    return key in labels and (not eq or labels[key] == value)


def _until(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _host_resolv_conf() -> str:
    """The host's resolv.conf with loopback name servers dropped (they mean nothing in a container netns)."""
    try:
        text = Path("/etc/resolv.conf").read_text()
    except OSError:
        text = ""
    lines = [ln for ln in text.splitlines() if not (ln.startswith("nameserver") and (" 127." in ln or " ::1" in ln))]
    return "\n".join(lines) + "\n"


_ADJECTIVES = (
    "admiring",
    "brave",
    "calm",
    "eager",
    "focused",
    "gallant",
    "happy",
    "jolly",
    "keen",
    "lucid",
    "modest",
    "nifty",
    "optimistic",
    "quirky",
    "relaxed",
    "serene",
    "tender",
    "upbeat",
    "vibrant",
    "wizardly",
    "youthful",
    "zealous",
)
_SURNAMES = (
    "archimedes",
    "babbage",
    "curie",
    "darwin",
    "euler",
    "franklin",
    "galileo",
    "hopper",
    "hypatia",
    "kepler",
    "lovelace",
    "meitner",
    "newton",
    "noether",
    "pasteur",
    "ritchie",
    "shannon",
    "turing",
    "wozniak",
    "yalow",
)

__all__ = ["ContainerPaths", "ContainerService", "State"]
