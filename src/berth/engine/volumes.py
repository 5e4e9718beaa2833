"""Docker's volume semantics: create, inspect, list, remove, prune, ``system df``, and what containers need.

A volume is a record (``berth.metadata.volumes``) plus the local driver's directory (``berth.volumes.store``).
It is in use while a container record mounts it: the reference count is read from the containers' recorded
``MountPoints``, never stored. For containers this service

- decides and records their mount points at create (:meth:`VolumeService.attach`), making named volumes that do
  not exist yet and anonymous ones (image ``VOLUME``s, ``-v /path``), under one lock with ``remove`` so a volume
  cannot disappear between being chosen and being recorded;
- mounts ``type``/``device`` volumes and fills empty volumes from the image at start (:meth:`prepare`), unmounts
  them when no running container uses them any more (:meth:`release`);
- removes a container's anonymous volumes with ``rm -v`` and ``--rm`` (:meth:`detach`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from berth.engine.spec import MountPoint, plan_mounts
from berth.errors import BerthError, Conflict, InternalError, InvalidArgument, NotFound
from berth.metadata.volumes import VolumeDB, VolumeRecord
from berth.volumes.store import DRIVER, LocalDriver, needs_mount, validate_name, validate_options

log = logging.getLogger("berth.engine")

ANONYMOUS_LABEL = "com.docker.volume.anonymous"
LIST_FILTERS = frozenset({"dangling", "name", "driver", "label"})
PRUNE_FILTERS = frozenset({"label", "label!", "all"})
ACTIVE = frozenset({"running", "paused", "restarting"})

Resolve = Callable[[str], tuple[str, str, dict[str, Any]]]


class ContainerRecords(Protocol):
    """The container records (``berth.metadata.containers.ContainerDB``): id, name, document."""

    def all(self) -> list[tuple[str, str, dict[str, Any]]]: ...


class EventSink(Protocol):
    def publish(self, type: str, action: str, actor_id: str, attributes: Mapping[str, str] | None = None) -> object: ...


def _go_bool(key: str, values: list[str]) -> bool:
    """moby filters ``GetBoolOrDefault``."""
    value = values[-1]
    if value.lower() == "true" or value == "1":
        return True
    if value.lower() == "false" or value == "0":
        return False
    raise InvalidArgument(f"invalid filter '{key}=[{' '.join(values)}]'")


def _label_match(labels: Mapping[str, str], f: str) -> bool:
    key, eq, value = f.partition("=")
    return key in labels and (not eq or labels[key] == value)


def _name_match(pattern: str, name: str) -> bool:
    """moby ``Args.Match``: equal, or the value as a regular expression found in the name."""
    if pattern == name:
        return True
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return False


def _rfc3339(ts: float) -> str:
    text = datetime.fromtimestamp(int(ts)).astimezone().isoformat(timespec="seconds")
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _mount_names(doc: Mapping[str, Any]) -> list[str]:
    return [str(r.get("Name")) for r in doc.get("MountPoints") or [] if r.get("Type") == "volume" and r.get("Name")]


class VolumeService:
    def __init__(self, db: VolumeDB, driver: LocalDriver, containers: ContainerRecords, events: EventSink) -> None:
        self.db = db
        self.driver = driver
        self.containers = containers
        self.events = events
        # create, remove and a container's attach exclude each other: "in use" is decided under it
        self._lock = threading.RLock()
        # volumes chosen by a container create whose record is not written yet: they count as in use
        self._pending: dict[str, set[str]] = {}
        self._fill_locks: dict[str, threading.Lock] = {}
        # volumes of containers between prepare and release (their record may not say "running" yet)
        self._started: dict[str, set[str]] = {}
        # names of volumes with mount options: only these need work when a container stops
        self._mountable = {r.name for r in db.all() if needs_mount(r.options)}

    # --- the API verbs -----------------------------------------------------------------------------

    def create(self, name: str = "", driver: str = "", options: Mapping[str, str] | None = None,
               labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        """``POST /volumes/create``: an existing volume of that name is returned as it is (Docker's rule)."""
        rec = self._create(name, driver, options or {}, labels or {})
        return self.api(rec)

    def _create(self, name: str, driver: str, options: Mapping[str, str], labels: Mapping[str, str]
                ) -> VolumeRecord:
        anonymous = not name
        if anonymous:
            name = secrets.token_hex(32)
            labels = {**labels, ANONYMOUS_LABEL: ""}
        driver = driver or DRIVER
        if driver != DRIVER:
            raise NotFound(f'create {name}: error looking up volume plugin {driver}: plugin "{driver}" not found')
        try:
            validate_name(name)
            validate_options(options)
        except InvalidArgument as e:
            raise InvalidArgument(f"create {name}: {e}") from None
        with self._lock:
            existing = self.db.get(name)
            if existing is not None:
                return existing
            rec = VolumeRecord(name, driver, time.time(), dict(labels), dict(options), anonymous)
            self.db.insert(rec)
            try:
                self.driver.create(name, options)
            except BaseException:
                self.db.delete(name)
                raise
            if needs_mount(options):
                self._mountable.add(name)
        self.events.publish("volume", "create", name, {"driver": driver})
        return rec

    def _get(self, name: str) -> VolumeRecord:
        rec = self.db.get(name) if name else None
        if rec is None:
            raise NotFound(f"get {name}: no such volume")
        return rec

    def inspect(self, name: str) -> dict[str, Any]:
        return self.api(self._get(name))

    def api(self, rec: VolumeRecord) -> dict[str, Any]:
        """Docker's ``volume.Volume``."""
        return {
            "CreatedAt": _rfc3339(rec.created),
            "Driver": rec.driver,
            "Labels": dict(rec.labels),
            "Mountpoint": str(self.driver.path(rec.name)),
            "Name": rec.name,
            "Options": dict(rec.options) or None,
            "Scope": "local",
        }

    def list_volumes(self, filters: Mapping[str, list[str]] | None = None) -> dict[str, Any]:
        """``GET /volumes``: filters dangling, name (regexp), driver and label (all must match)."""
        filters = filters or {}
        for key in filters:
            if key not in LIST_FILTERS:
                raise InvalidArgument(f"invalid filter '{key}'")
        dangling = _go_bool("dangling", filters["dangling"]) if filters.get("dangling") else None
        refs = self.references() if dangling is not None else {}
        out = []
        for rec in self.db.all():
            if filters.get("name") and not any(_name_match(p, rec.name) for p in filters["name"]):
                continue
            if filters.get("driver") and rec.driver not in filters["driver"]:
                continue
            if not all(_label_match(rec.labels, f) for f in filters.get("label", [])):
                continue
            if dangling is not None and bool(refs.get(rec.name)) == dangling:
                continue
            out.append(self.api(rec))
        return {"Volumes": out, "Warnings": None}

    def remove(self, name: str, force: bool = False) -> None:
        """``DELETE /volumes/{name}``: 409 while a container uses it (even with ``force``, as in Docker)."""
        with self._lock:
            rec = self.db.get(name) if name else None
            if rec is None:
                if force:
                    return
                raise NotFound(f"get {name}: no such volume")
            users = self.users(name)
            if users:
                raise Conflict(f"remove {name}: volume is in use - [{', '.join(users)}]")
            self._destroy(rec)

    def _destroy(self, rec: VolumeRecord) -> None:
        self.db.delete(rec.name)
        self._mountable.discard(rec.name)
        try:
            self.driver.remove(rec.name)
        except OSError as e:
            raise InternalError(f"remove {rec.name}: error removing volume path: {e}") from None
        self.events.publish("volume", "destroy", rec.name, {"driver": rec.driver})

    def prune(self, filters: Mapping[str, list[str]] | None = None) -> dict[str, Any]:
        """``POST /volumes/prune``: unused local volumes without options; only anonymous ones unless ``all``."""
        filters = filters or {}
        for key in filters:
            if key not in PRUNE_FILTERS:
                raise InvalidArgument(f"invalid filter '{key}'")
        all_values = filters.get("all") or []
        if len(all_values) > 1:
            raise InvalidArgument(f"invalid filter 'all=[{' '.join(all_values)}]': only one value is expected")
        everything = False
        if all_values:
            try:
                everything = _go_bool("all", all_values)
            except InvalidArgument:
                raise InvalidArgument(f'invalid filter \'all\': strconv.ParseBool: parsing "{all_values[0]}": '
                                      "invalid syntax") from None
        deleted: list[str] = []
        reclaimed = 0
        with self._lock:
            refs = self.references()
            for rec in self.db.all():
                if rec.driver != DRIVER or rec.options or refs.get(rec.name):
                    continue
                if not everything and not rec.anonymous:
                    continue
                if not all(_label_match(rec.labels, f) for f in filters.get("label", [])):
                    continue
                if any(_label_match(rec.labels, f) for f in filters.get("label!", [])):
                    continue
                size = self.driver.size(rec.name)
                try:
                    self._destroy(rec)
                except BerthError as e:
                    log.warning("prune: could not remove volume %s: %s", rec.name, e)
                    continue
                reclaimed += max(size, 0)
                deleted.append(rec.name)
        self.events.publish("volume", "prune", "", {"reclaimed": str(reclaimed)})
        return {"VolumesDeleted": deleted, "SpaceReclaimed": reclaimed}

    def disk_usage(self) -> list[dict[str, Any]]:
        """The ``Volumes`` of ``GET /system/df``: local volumes without options, with ``UsageData``."""
        refs = self.references()
        out = []
        for rec in self.db.all():
            if rec.driver != DRIVER or rec.options:
                continue
            item = self.api(rec)
            item["UsageData"] = {"Size": self.driver.size(rec.name), "RefCount": len(refs.get(rec.name, ()))}
            out.append(item)
        return out

    # --- references ----------------------------------------------------------------------------------

    def references(self) -> dict[str, list[str]]:
        """Volume name → IDs of the containers that mount it (recorded, or being created now)."""
        out: dict[str, list[str]] = {}
        for cid, _name, doc in self.containers.all():
            for name in dict.fromkeys(_mount_names(doc)):
                out.setdefault(name, []).append(cid)
        for cid, names in list(self._pending.items()):
            for name in names:
                users = out.setdefault(name, [])
                if cid not in users:
                    users.append(cid)
        return out

    def users(self, name: str) -> list[str]:
        return self.references().get(name, [])

    # --- containers: create, start, stop, remove ------------------------------------------------------

    def attach(self, cid: str, config: Mapping[str, Any], host: Mapping[str, Any],
               resolve: Resolve) -> list[dict[str, Any]]:
        """The mount points of a container being created, as recorded in its document (``MountPoints``).

        Makes the named volumes that do not exist and the anonymous ones; they count as used by ``cid`` until
        :meth:`settled` (call it once the container record is written, or the create failed).
        """
        def volumes_from(ref: str) -> list[MountPoint]:
            try:
                _other, _name, doc = resolve(ref)
            except NotFound as e:
                raise InvalidArgument(str(e)) from None
            return [MountPoint.from_record(r) for r in doc.get("MountPoints") or []]

        plan = plan_mounts(config, host, volumes_from)
        made: list[str] = []
        out: list[MountPoint] = []
        with self._lock:
            try:
                for mp in plan:
                    if mp.type == "volume":
                        existed = bool(mp.name) and self.db.get(mp.name) is not None
                        rec = self._create(mp.name, mp.driver, dict(mp.driver_options), dict(mp.labels))
                        if not existed:
                            made.append(rec.name)
                        self._pending.setdefault(cid, set()).add(rec.name)
                        mp = dataclasses.replace(mp, name=rec.name, driver=rec.driver,
                                                 source=str(self.driver.path(rec.name)),
                                                 anonymous=mp.anonymous or not mp.name)
                    out.append(mp)
            except BaseException:
                self._pending.pop(cid, None)
                for name in made:
                    if name not in self.references():
                        with contextlib.suppress(BerthError, OSError):
                            self._destroy(self._get(name))
                raise
        return [mp.record() for mp in out]

    def settled(self, cid: str) -> None:
        """The create of ``cid`` is over: its record now says which volumes it uses (or it failed)."""
        with self._lock:
            self._pending.pop(cid, None)

    def detach(self, cid: str, records: list[dict[str, Any]]) -> list[str]:
        """After ``rm -v`` (or ``--rm``) of ``cid``, whose record is gone: remove the anonymous volumes it made,
        unless another container (``--volumes-from``) still uses them. Returns the names removed."""
        removed = []
        for r in records:
            if r.get("Type") != "volume" or not r.get("Anonymous") or not r.get("Name"):
                continue
            name = str(r["Name"])
            with self._lock:
                rec = self.db.get(name)
                if rec is None or self.users(name):
                    continue
                try:
                    self._destroy(rec)
                    removed.append(name)
                except BerthError as e:
                    log.warning("could not remove volume %s of container %s: %s", name, cid[:12], e)
        return removed

    def _fill_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._fill_locks.setdefault(name, threading.Lock())

    def prepare(self, cid: str, doc: Mapping[str, Any], rootfs: Path) -> None:
        """At start, before the spec: mount each volume that has mount options and fill each empty volume from the
        image's directory at its destination (content, owners, modes), unless the mount says ``nocopy``."""
        records = [r for r in doc.get("MountPoints") or [] if r.get("Type") == "volume"]
        if records:
            with self._lock:
                self._started[cid] = {str(r.get("Name")) for r in records}
        for r in records:
            name, dest = str(r.get("Name") or ""), str(r["Destination"])
            rec = self._get(name)
            with self._fill_lock(name):
                self.driver.mount(name, rec.options)
                if not r.get("NoCopy") and self.driver.is_empty(name):
                    try:
                        self.driver.fill(name, rootfs, dest)
                    except OSError as e:
                        raise InternalError(f"failed to copy the image's {dest} into volume {name}: {e}") from None
            self.events.publish("volume", "mount", name, {
                "container": cid, "destination": dest, "driver": rec.driver,
                "propagation": str(r.get("Propagation") or ""), "read/write": str(bool(r.get("RW", True))).lower()})

    def release(self, cid: str) -> None:
        """A container stopped: unmount volumes with mount options that no running container uses any more."""
        with self._lock:
            self._started.pop(cid, None)
            in_use: set[str] = set().union(*self._started.values())
        if not self._mountable:
            return
        for other, _name, doc in self.containers.all():
            if other != cid and (doc.get("State") or {}).get("Status") in ACTIVE:
                in_use.update(_mount_names(doc))
        for name in sorted(self._mountable - in_use):
            with self._fill_lock(name):
                try:
                    self.driver.unmount(name)
                except BerthError as e:
                    log.warning("could not unmount volume %s: %s", name, e)
