"""``docker commit``: a new image whose top layer is what a container changed, on top of its image's layers.

The layer is the container's diff (``ArchiveService.write_layer``: the overlay upper dir or a tree compare) as an
uncompressed tar, so its blob digest is its diff ID. The config is the image's, with Docker's rule for ``Config``:
the request's config (or the container's), then the ``changes`` instructions, then whatever is still missing taken
from the container's config; a history entry records the commit. The container is frozen while its diff is read
unless ``pause=0``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import tarfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from berth.engine.archive import ArchiveService
from berth.engine.containers import ContainerService
from berth.errors import BerthError, Conflict, InvalidArgument, NotFound
from berth.images.changes import apply_changes
from berth.images.store import ImageStore
from berth.kernel import cgroups
from berth.oci import media
from berth.oci.descriptor import Descriptor
from berth.oci.image import ImageConfig
from berth.oci.reference import Reference, parse_target
from berth.runtime import linux
from berth.units import go_arch, now_rfc3339

log = logging.getLogger("berth.engine")

_DROPPED_KEYS = ("id", "parent", "container", "container_config", "docker_version")


def commit_config(requested: dict[str, Any] | None, changes: Sequence[str],
                  container: dict[str, Any]) -> dict[str, Any]:
    """The new image's ``config``: dockerd's ``BuildFromConfig`` then ``merge`` with the container's config."""
    new = apply_changes(copy.deepcopy(requested if requested is not None else container), changes)
    old = copy.deepcopy(container)
    if not new.get("User"):
        new["User"] = old.get("User") or ""
    new["ExposedPorts"] = {**(old.get("ExposedPorts") or {}), **(new.get("ExposedPorts") or {})} or None
    env = list(new.get("Env") or [])
    keys = {e.partition("=")[0] for e in env}
    env += [e for e in old.get("Env") or [] if e.partition("=")[0] not in keys]
    new["Env"] = env or None
    new["Labels"] = {**(old.get("Labels") or {}), **(new.get("Labels") or {})}
    if not new.get("Entrypoint"):
        if not new.get("Cmd"):
            new["Cmd"] = old.get("Cmd")
        if new.get("Entrypoint") is None:
            new["Entrypoint"] = old.get("Entrypoint")
    if not new.get("Healthcheck") and old.get("Healthcheck"):
        new["Healthcheck"] = old["Healthcheck"]
    if not new.get("WorkingDir"):
        new["WorkingDir"] = old.get("WorkingDir") or ""
    new["Volumes"] = {**(old.get("Volumes") or {}), **(new.get("Volumes") or {})} or None
    if not new.get("StopSignal") and old.get("StopSignal"):
        new["StopSignal"] = old["StopSignal"]
    return new


def _no_members(f: IO[bytes]) -> bool:
    with tarfile.open(fileobj=f, mode="r|") as tar:
        return tar.next() is None


class CommitService:
    """Makes images from containers (blocking; call from worker threads)."""

    def __init__(self, containers: ContainerService, store: ImageStore, archive: ArchiveService, scratch: Path,
                 runtime_root: Path) -> None:
        self.containers = containers
        self.store = store
        self.archive = archive
        self.scratch = scratch
        self.runtime_root = runtime_root

    @contextlib.contextmanager
    def _paused(self, cid: str, doc: dict[str, Any], pause: bool) -> Iterator[None]:
        """Freeze a running container's cgroup for the block (no state change: Docker's internal pause)."""
        group: cgroups.Cgroup | None = None
        if pause and doc["State"]["Status"] == "running":
            try:
                group = cgroups.open_cgroup(linux.state(cid, self.runtime_root).cgroup_path)
                group.freeze()
            except (OSError, BerthError) as e:
                log.warning("commit %s: could not pause the container: %s", cid[:12], e)
                group = None
        try:
            yield
        finally:
            if group is not None:
                try:
                    group.thaw()
                except (OSError, BerthError) as e:
                    log.warning("commit %s: could not unpause the container: %s", cid[:12], e)

    def make_image(self, base_id: str, config: dict[str, Any], history: dict[str, Any], *, cid: str | None = None,
                   author: str = "", comment: str = "", tags: Sequence[Reference] = (), parent: str = "",
                   cache_key: str | None = None, created: str = "",
                   history_entry: bool = True, skip_empty: bool = False,
                   ) -> tuple[ImageConfig, list[tuple[str, str | None]]]:
        """A new image on ``base_id``'s layers ("" = scratch): plus container ``cid``'s changes as one layer, or no
        new layer (``empty_layer`` history, a build's config-only step) when ``cid`` is None. Returns its config and
        the tags it took from other images. ``skip_empty``: a diff with nothing in it adds no layer (a build's
        ``RUN true``)."""
        if base_id:
            parent_cfg = self.store.config(base_id)
            parent_manifest = self.store.manifest(self.store.db.get(base_id))
            base_doc, base_history = parent_cfg.doc, list(parent_cfg.history)
            layers, media_type = list(parent_manifest.layers), parent_manifest.media_type
            diff_ids = [str(d) for d in parent_cfg.diff_ids]
        else:  # FROM scratch
            base_doc, base_history = {"architecture": go_arch(), "os": "linux"}, []
            layers, media_type, diff_ids = [], media.DOCKER_MANIFEST, []
        created = created or now_rfc3339()
        history = {"created": created, **history}
        self.scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        layer_file = self.scratch / f"commit-{uuid.uuid4().hex}.tar"
        try:
            if cid is not None:
                with open(layer_file, "w+b") as f:
                    diff_id = self.archive.write_layer(cid, f)
                    f.seek(0)
                    if skip_empty and _no_members(f):
                        cid = None  # dockerd's build steps: an empty diff is no layer, only history
                    else:
                        diff_ids.append(str(diff_id))
            if cid is None:
                history["empty_layer"] = True
            cfg_doc = {k: v for k, v in base_doc.items() if k not in _DROPPED_KEYS}
            cfg_doc.update({
                "created": created,
                "config": config,
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
                "history": [*base_history, history] if history_entry else base_history,
            })
            for key, value in (("author", author), ("comment", comment)):
                if value:
                    cfg_doc[key] = value
                else:
                    cfg_doc.pop(key, None)
            raw = json.dumps(cfg_doc, separators=(",", ":")).encode()
            image_cfg = ImageConfig.parse(raw)
            layer_type = media.DOCKER_LAYER if media_type == media.DOCKER_MANIFEST else media.OCI_LAYER
            with self.store.lease() as lease:
                if cid is not None:
                    with open(layer_file, "rb") as f:
                        digest, size = self.store.put_blob(lease, f, image_cfg.diff_ids[-1])
                    layers.append(Descriptor(layer_type, digest, size))
                self.store.put_bytes(lease, raw)
                manifest = ImageStore.manifest_for(raw, layers, media_type)
                self.store.put_bytes(lease, manifest)
                self.store.unpack(lease, layers, image_cfg.diff_ids)
                moved = self.store.commit_image(manifest, image_cfg, list(tags), media_type=media_type,
                                                parent=parent, cache_key=cache_key)
        finally:
            with contextlib.suppress(OSError):
                layer_file.unlink()
        return image_cfg, moved

    def commit(self, ref: str, *, repo: str = "", tag: str = "", comment: str = "", author: str = "",
               pause: bool = True, changes: Sequence[str] = (), config: Any = None) -> str:
        """``POST /commit``: the new image's ID (``sha256:...``)."""
        if config is not None and not isinstance(config, dict):
            raise InvalidArgument("invalid commit config: must be an object")
        cid, name, doc = self.containers.resolve(ref)
        if doc["State"]["Status"] in ("removing", "dead"):
            raise Conflict(f"cannot commit container {cid}: container is marked for removal")
        target = parse_target(repo, tag) if repo else None
        try:
            base = self.store.db.get(doc["Image"])
        except NotFound:
            raise Conflict(f"cannot commit container {cid}: its image {doc['Image']} is gone") from None
        new_config = commit_config(config, changes, doc["Config"])
        history: dict[str, Any] = {}
        if author:
            history["author"] = author
        created_by = " ".join(doc["Config"].get("Cmd") or [])
        if created_by:
            history["created_by"] = created_by
        if comment:
            history["comment"] = comment
        with self._paused(cid, doc, pause):
            image_cfg, moved = self.make_image(base.id, new_config, history, cid=cid, author=author, comment=comment,
                                               tags=[target] if target else [])
        image_id = str(image_cfg.id)
        events = self.containers.events
        for _tag, old_id in moved:
            if old_id:
                events.publish("image", "untag", old_id, {"name": old_id})
        if target is not None:
            events.publish("image", "tag", image_id, {"name": target.familiar()})
        events.publish("container", "commit", cid, {**self.containers.attributes(name, doc), "comment": comment,
                                                    "imageID": image_id,
                                                    "imageRef": target.familiar() if target else ""})
        return image_id
