"""Docker's image semantics over the image store: list/inspect/history shapes, tag/rmi rules, prune, load/save.

Methods block (disk and extraction work); the API calls them in worker threads. Events go to the event bus.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from berth.errors import Conflict, InvalidArgument, NoSuchImage, NotFound
from berth.images import archive
from berth.images.importer import import_rootfs
from berth.images.store import ImageStore
from berth.metadata.images import ImageRecord
from berth.oci.digest import is_hex_id
from berth.oci.reference import parse, parse_tagged, parse_target

log = logging.getLogger(__name__)

ZERO_TIME = "0001-01-01T00:00:00Z"
IMAGE_FILTERS = {"dangling", "label", "before", "since", "reference", "until"}

_CONFIG_DEFAULTS: dict[str, Any] = {
    "Hostname": "", "Domainname": "", "User": "", "AttachStdin": False, "AttachStdout": False,
    "AttachStderr": False, "Tty": False, "OpenStdin": False, "StdinOnce": False, "Env": None, "Cmd": None,
    "Image": "", "Volumes": None, "WorkingDir": "", "Entrypoint": None, "OnBuild": None, "Labels": None,
}


class EventSink(Protocol):
    def publish(self, type: str, action: str, actor_id: str,
                attributes: Mapping[str, str] | None = None) -> object: ...


Emit = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class _Row:
    rec: ImageRecord
    created: int
    labels: dict[str, str]
    size: int


class ImageService:
    def __init__(self, store: ImageStore, events: EventSink, scratch: Path, bootstrap_cache: Path) -> None:
        self.store = store
        self.events = events
        self._scratch = scratch
        self._bootstrap_cache = bootstrap_cache
        self._bootstrap_locks: dict[str, threading.Lock] = {}
        # containers created from an image: (container id, has a live process); wired by the daemon
        self.image_users: Callable[[str], list[tuple[str, bool]]] = lambda _image_id: []
        # images running builds stand on (engine/build.py): prune and a rmi cascade leave them
        self.held: Callable[[], frozenset[str]] = frozenset

    def count(self) -> int:
        return self.store.db.count()

    def startup(self) -> None:
        """Drop leftovers of a crash: ingest files, half-extracted snapshots, unreferenced blobs."""
        self.store.content.clean_ingest()
        self.store.snapshotter.cleanup()
        self.store.reset_scratch()
        result = self.store.collect_garbage()
        if result.blobs_removed or result.snapshots_removed:
            log.info("garbage collected %d blobs and %d snapshots (%d bytes)", result.blobs_removed,
                     result.snapshots_removed, result.bytes_reclaimed)

    # --- reads -------------------------------------------------------------------------------------

    def _rows(self) -> list[_Row]:
        rows = []
        for rec in self.store.db.all():
            try:
                cfg = self.store.config(rec.id)
            except (NotFound, InvalidArgument) as e:
                log.warning("image %s: unreadable config: %s", rec.id, e)
                continue
            labels = cfg.config.get("Labels") or {}
            rows.append(_Row(rec, _unix(cfg.doc.get("created")), labels if isinstance(labels, dict) else {},
                             self.store.image_size(rec.id)))
        return rows

    def list_images(self, filters: dict[str, list[str]] | None = None, all: bool = False,
             digests: bool = False) -> list[dict[str, Any]]:
        rows = self._filter(self._rows(), filters or {})
        if not all:  # a build's intermediate images (untagged, with a child) show only with -a, as in Docker
            parents = self.store.db.parents()
            rows = [r for r in rows if r.rec.tags or r.rec.id not in parents]
        # the zero-layer base a scratch stage builds on (engine/build.py) is berth's artifact, never listed
        rows = [r for r in rows if r.rec.tags or self.store.config(r.rec.id).diff_ids]
        rows.sort(key=lambda r: r.created, reverse=True)
        return [self._summary(r) for r in rows]

    def _summary(self, r: _Row, containers: int = -1, shared: int = -1) -> dict[str, Any]:
        return {
            "Id": r.rec.id, "ParentId": r.rec.parent, "RepoTags": [parse_tagged(t).familiar() for t in r.rec.tags],
            "RepoDigests": [parse(d).familiar() for d in r.rec.repo_digests], "Created": r.created,
            "Size": r.size, "SharedSize": shared, "Labels": r.labels or {}, "Containers": containers,
        }

    def _filter(self, rows: list[_Row], filters: dict[str, list[str]]) -> list[_Row]:
        for key in filters:
            if key not in IMAGE_FILTERS:
                raise InvalidArgument(f"invalid filter '{key}'")
        if "dangling" in filters:
            vals = {v.lower() for v in filters["dangling"]}
            if not vals <= {"true", "false", "1", "0"}:
                raise InvalidArgument(f"invalid filter 'dangling={filters['dangling'][0]}'")
            want = bool(vals & {"true", "1"})
            parents = self.store.db.parents()
            rows = [r for r in rows if (not r.rec.tags and r.rec.id not in parents) == want]
        if "label" in filters:
            rows = [r for r in rows if all(_label_match(r.labels, f) for f in filters["label"])]
        if "before" in filters:
            limit = min(self._created_of(v) for v in filters["before"])
            rows = [r for r in rows if r.created < limit]
        if "since" in filters:
            limit = max(self._created_of(v) for v in filters["since"])
            rows = [r for r in rows if r.created > limit]
        if "until" in filters:
            until = min(_parse_until(v) for v in filters["until"])
            rows = [r for r in rows if r.created < until]
        if "reference" in filters:
            rows = [r for r in rows if any(_ref_match(r.rec.tags, p) for p in filters["reference"])]
        return rows

    def _created_of(self, name: str) -> int:
        return _unix(self.store.config(self.store.resolve(name).id).doc.get("created"))

    def inspect(self, name: str) -> dict[str, Any]:
        rec = self.store.resolve(name)
        cfg = self.store.config(rec.id)
        doc = cfg.doc
        config = {**_CONFIG_DEFAULTS, **cfg.config}
        history = cfg.history
        return {
            "Id": rec.id,
            "RepoTags": [parse_tagged(t).familiar() for t in rec.tags],
            "RepoDigests": [parse(d).familiar() for d in rec.repo_digests],
            "Parent": rec.parent,
            "Comment": doc.get("comment") or (history[-1].get("comment", "") if history else ""),
            "Created": doc.get("created") or ZERO_TIME,
            "Container": "",
            "ContainerConfig": dict(_CONFIG_DEFAULTS),
            "DockerVersion": doc.get("docker_version", ""),
            "Author": doc.get("author", ""),
            "Config": config,
            "Architecture": doc.get("architecture", "amd64"),
            **({"Variant": doc["variant"]} if doc.get("variant") else {}),
            "Os": doc.get("os", "linux"),
            "Size": self.store.image_size(rec.id),
            "GraphDriver": {"Name": self.store.snapshotter.name, "Data": None},
            "RootFS": {"Type": "layers", "Layers": [str(d) for d in cfg.diff_ids]},
            "Metadata": {"LastTagTime": _rfc3339(rec.last_tag_time) if rec.last_tag_time else ZERO_TIME},
        }

    def history(self, name: str) -> list[dict[str, Any]]:
        rec = self.store.resolve(name)
        cfg = self.store.config(rec.id)
        sizes = [self.store.db.layer_size(str(d)) or 0 for d in cfg.diff_ids]
        entries = cfg.history or [{"created": cfg.doc.get("created"), "created_by": ""} for _ in cfg.diff_ids]
        out: list[dict[str, Any]] = []
        layer = 0
        for h in entries:
            empty = bool(h.get("empty_layer"))
            size = 0 if empty or layer >= len(sizes) else sizes[layer]
            if not empty:
                layer += 1
            out.append({"Id": "<missing>", "Created": _unix(h.get("created")), "CreatedBy": h.get("created_by", ""),
                        "Tags": None, "Size": size, "Comment": h.get("comment", "")})
        out.reverse()
        if out:
            out[0]["Id"] = rec.id
            out[0]["Tags"] = [parse_tagged(t).familiar() for t in rec.tags] or None
        return out

    # --- tags and removal --------------------------------------------------------------------------

    def tag(self, name: str, repo: str, tag: str | None) -> None:
        rec = self.store.resolve(name)
        if not repo:
            raise InvalidArgument("repository name must have at least one component")
        ref = parse(repo)
        if ref.digest is not None or (ref.tag is not None and tag):
            raise InvalidArgument("invalid reference format")
        target = ref.with_tag(tag) if tag else ref.with_default_tag()
        if is_hex_id(target.familiar_name, 64):
            raise InvalidArgument("invalid repository name (" + target.familiar_name + "), cannot specify "
                                  "64-byte hexadecimal strings")
        prev = self.store.db.set_tag(str(target), rec.id)
        self.events.publish("image", "tag", rec.id, {"name": target.familiar()})
        if prev:
            self.events.publish("image", "untag", prev, {"name": prev})

    def remove(self, name: str, force: bool = False, noprune: bool = False) -> list[dict[str, str]]:
        rec = self.store.resolve(name)
        out: list[dict[str, str]] = []
        by_ref = self._matching_ref(rec, name)
        if by_ref is not None and (len(rec.tags) + len(rec.repo_digests) > 1):
            self._untag(rec, by_ref, out)
            return out
        short = rec.id[7:19]
        users = self.image_users(rec.id)
        running = [cid for cid, live in users if live]
        if running and (by_ref is None or force):
            raise Conflict(
                f"conflict: unable to delete {short} (cannot be forced) - image is being used by "
                f"running container {running[0][:12]}"
            )
        if users and not force:
            if by_ref is not None:
                raise Conflict(
                    f'conflict: unable to remove repository reference "{parse(name).familiar()}" '
                    f"(must force) - container {users[0][0][:12]} is using its referenced image {short}"
                )
            raise Conflict(
                f"conflict: unable to delete {short} (must be forced) - image is being used by stopped "
                f"container {users[0][0][:12]}"
            )
        if by_ref is None and len(rec.tags) > 1 and not force:
            raise Conflict(
                f"conflict: unable to delete {short} (must be forced) - image is referenced in multiple repositories"
            )
        if users:  # forced, but still in use: untag only, the image stays (dangling) for its containers
            for t in rec.tags:
                self._untag(rec, t, out)
            return out
        if self.store.db.children(rec.id):
            if by_ref is None:
                raise Conflict(f"conflict: unable to delete {short} (cannot be forced) - image has dependent "
                               "child images")
            for t in rec.tags:  # Docker untags an image that still has children and keeps it
                self._untag(rec, t, out)
            return out
        self._delete(rec, out, noprune)
        self.store.collect_garbage()
        return out

    def _delete(self, rec: ImageRecord, out: list[dict[str, str]], noprune: bool = False) -> None:
        """Delete an image, then each untagged, unused parent it leaves childless (unless ``noprune``)."""
        while True:
            for t in rec.tags:
                self._untag(rec, t, out)
            for d in rec.repo_digests:
                self._untag(rec, d, out)
            self.store.db.delete_image(rec.id)
            out.append({"Deleted": rec.id})
            self.events.publish("image", "delete", rec.id, {"name": rec.id})
            if noprune or not rec.parent:
                return
            try:
                parent = self.store.db.get(rec.parent)
            except NotFound:
                return
            if parent.tags or parent.repo_digests or self.store.db.children(parent.id) \
                    or self.image_users(parent.id) or parent.id in self.held():
                return
            rec = parent

    def _matching_ref(self, rec: ImageRecord, name: str) -> str | None:
        try:
            ref = parse(name)
        except InvalidArgument:
            return None
        full = str(ref) if ref.digest else str(ref.with_default_tag())
        return full if full in rec.tags or full in rec.repo_digests else None

    def _untag(self, rec: ImageRecord, ref: str, out: list[dict[str, str]]) -> None:
        self.store.db.remove_tag(ref)
        shown = parse(ref).familiar()
        out.append({"Untagged": shown})
        self.events.publish("image", "untag", rec.id, {"name": rec.id})

    def prune(self, filters: dict[str, list[str]]) -> dict[str, Any]:
        filters = dict(filters)
        dangling = filters.pop("dangling", ["true"])
        only_dangling = {v.lower() for v in dangling} & {"true", "1"} != set()
        for key in filters:
            if key not in {"label", "label!", "until"}:
                raise InvalidArgument(f"invalid filter '{key}'")
        held = self.held()
        rows = [r for r in self._rows() if not self.image_users(r.rec.id) and r.rec.id not in held]
        if only_dangling:
            rows = [r for r in rows if not r.rec.tags]
        if "until" in filters:
            limit = min(_parse_until(v) for v in filters["until"])
            rows = [r for r in rows if r.created < limit]
        if "label" in filters:
            rows = [r for r in rows if all(_label_match(r.labels, f) for f in filters["label"])]
        if "label!" in filters:
            rows = [r for r in rows if not any(_label_match(r.labels, f) for f in filters["label!"])]
        deleted: list[dict[str, str]] = []
        gone: set[str] = set()
        for r in sorted(rows, key=lambda r: r.rec.added_at, reverse=True):  # children before their parents
            if r.rec.id in gone or self.store.db.children(r.rec.id):
                continue
            mark = len(deleted)
            self._delete(r.rec, deleted)
            gone |= {d["Deleted"] for d in deleted[mark:] if "Deleted" in d}
        reclaimed = self.store.collect_garbage().bytes_reclaimed
        if deleted:
            self.events.publish("image", "prune", "", {"reclaimed": str(reclaimed)})
        return {"ImagesDeleted": deleted or None, "SpaceReclaimed": reclaimed}

    def disk_usage(self) -> dict[str, Any]:
        rows = self._rows()
        users: dict[str, int] = {}
        for r in rows:
            for d in self.store.config(r.rec.id).diff_ids:
                users[str(d)] = users.get(str(d), 0) + 1
        images = []
        for r in rows:
            shared = sum(self.store.db.layer_size(str(d)) or 0 for d in self.store.config(r.rec.id).diff_ids
                         if users[str(d)] > 1)
            images.append(self._summary(r, containers=0, shared=shared))
        layers = sum(self.store.db.layer_size(d) or 0 for d in users)
        return {"LayersSize": layers, "Images": images}

    # --- load / save / import ------------------------------------------------------------------------

    def load(self, stream: BinaryIO, emit: Emit, quiet: bool = True) -> None:
        def progress(msg: str) -> None:
            if not quiet:
                emit({"status": msg})
        loaded = archive.load(self.store, stream, progress)
        for img in loaded:
            for old_tag, old_id in img.untagged:
                emit({"stream": f"The image {parse_tagged(old_tag).familiar()} already exists, renaming the old "
                               f"one with ID {old_id} to empty string\n"})
                self.events.publish("image", "untag", old_id, {"name": old_id})
            if img.tags:
                for t in img.tags:
                    emit({"stream": f"Loaded image: {t.familiar()}\n"})
                    self.events.publish("image", "load", img.image_id, {"name": t.familiar()})
            else:
                emit({"stream": f"Loaded image ID: {img.image_id}\n"})
                self.events.publish("image", "load", img.image_id, {"name": img.image_id})

    def save(self, names: list[str], out: BinaryIO) -> None:
        items = archive.parse_save_names(self.store, names)
        archive.save(self.store, items, out)
        for item in items:
            self.events.publish("image", "save", item.image_id,
                                {"name": item.tags[0].familiar() if item.tags else item.image_id})

    def check_exists(self, names: list[str]) -> None:
        """Resolve every name before a streamed response starts, so a typo is a clean 404."""
        if not names:
            raise InvalidArgument("no image names given")
        for n in names:
            self.store.resolve(n)

    def import_(self, stream: BinaryIO, repo: str, tag: str, changes: list[str], message: str,
                source: str) -> str:
        tags = [parse_target(repo, tag)] if repo else []
        result = import_rootfs(self.store, stream, tags, changes=changes, message=message, source=source)
        for old_tag, old_id in result.untagged:
            self.events.publish("image", "untag", old_id, {"name": parse_tagged(old_tag).familiar()})
        self.events.publish("image", "import", result.image_id, {"name": result.image_id})
        return result.image_id

    def bootstrap(self, name: str, emit: Emit) -> str:
        from berth.images import bootstrap
        recipe = bootstrap.recipe_for(name)
        # one build per recipe at a time: a second caller finds the tag the first one made
        with self._bootstrap_locks.setdefault(recipe.ref, threading.Lock()):
            return self._bootstrap(recipe, emit)

    def _bootstrap(self, recipe: Any, emit: Emit) -> str:
        from berth.images import bootstrap
        refs = [parse_tagged(recipe.ref), *(parse_tagged(a) for a in recipe.aliases)]
        existing = {self.store.db.by_tag(str(r)) for r in refs}
        if len(existing) == 1 and None not in existing:
            image_id = existing.pop()
            assert image_id is not None
            emit({"status": f"Status: Image is up to date for {refs[0].familiar()}"})
            return image_id
        self._bootstrap_cache.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.TemporaryFile(dir=self._scratch) as tmp:
            bootstrap.build_rootfs_tar(recipe, self._bootstrap_cache, tmp,
                                       lambda msg: emit({"status": msg}))
            tmp.seek(0)
            emit({"status": f"Importing root filesystem as {refs[0].familiar()}"})
            result = import_rootfs(self.store, tmp, refs, base_config=recipe.config,
                                   message=recipe.history_comment, source="bootstrap")
        for r in refs:
            self.events.publish("image", "tag", result.image_id, {"name": r.familiar()})
        emit({"status": f"Digest: {result.image_id}"})
        emit({"status": f"Status: Bootstrapped image {refs[0].familiar()}"})
        return result.image_id


def _unix(created: Any) -> int:
    if not isinstance(created, str) or not created:
        return 0
    text = re.sub(r"(\.\d{6})\d+", r"\1", created.replace("Z", "+00:00"))
    try:
        return int(datetime.fromisoformat(text).timestamp())
    except ValueError:
        return 0


def _rfc3339(ts: float) -> str:
    """Go's RFC3339Nano in UTC, as dockerd writes times (``2024-01-02T03:04:05.123456789Z``)."""
    whole = int(ts)
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{int((ts - whole) * 1e9):09d}Z"


def _label_match(labels: dict[str, str], f: str) -> bool:
    key, eq, value = f.partition("=")
    if key not in labels:
        return False
    return not eq or labels[key] == value


def _ref_match(tags: tuple[str, ...], pattern: str) -> bool:
    for t in tags:
        ref = parse_tagged(t)
        for candidate in (ref.familiar(), ref.familiar_name, str(ref), ref.name):
            if fnmatch.fnmatchcase(candidate, pattern):
                return True
    return False


def _parse_until(value: str) -> float:
    m = re.fullmatch(r"(\d+)(?:\.(\d+))?", value)
    if m:
        return float(value)
    d = re.fullmatch(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)", value)
    if d:
        mult = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}[d.group(2)]
        return time.time() - float(d.group(1)) * mult
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise InvalidArgument(f"invalid filter 'until={value}'") from None


__all__ = ["ImageService", "NoSuchImage"]
