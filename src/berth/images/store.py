"""The image store: images as manifests + configs in the content store, tags in SQLite, layers unpacked into snapshots.

An image is (manifest blob → config blob + layer blobs) in the content store, a row in the metadata DB, and one
committed snapshot per layer named by its chain ID. Writers hold a *lease* on the blobs and snapshots they create
until the image row is committed, so a concurrent garbage collection never takes them; a crash leaves only
unreferenced blobs and ``extract-*`` snapshots, which ``collect_garbage`` removes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from berth.content.store import ContentStore
from berth.errors import Conflict, InvalidArgument, NoSuchImage, NotFound
from berth.kernel.mount import mounted
from berth.layers.apply import apply_layer
from berth.layers.compression import detect
from berth.metadata.images import ImageDB, ImageRecord
from berth.oci import media
from berth.oci.descriptor import Descriptor
from berth.oci.digest import Digest, is_hex_id
from berth.oci.image import ImageConfig, Manifest
from berth.oci.reference import Reference, parse_tagged
from berth.snapshots.base import Kind, Snapshotter

log = logging.getLogger(__name__)

EXTRACT_PREFIX = "extract-"


@dataclass
class Lease:
    """Blobs and snapshots an in-flight operation has written but not yet referenced from an image."""

    blobs: set[Digest] = field(default_factory=set)
    snapshots: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class GCResult:
    blobs_removed: int
    snapshots_removed: int
    bytes_reclaimed: int


class ImageStore:
    """Resolves, stores, unpacks and collects images. Blocking; call from worker threads."""

    def __init__(self, content: ContentStore, snapshotter: Snapshotter, db: ImageDB, scratch: Path) -> None:
        self.content = content
        self.snapshotter = snapshotter
        self.db = db
        self._scratch = scratch
        self._leases: list[Lease] = []
        self._lock = threading.RLock()      # guards leases, and makes GC exclusive with image commits
        self._configs: dict[str, ImageConfig] = {}

    # --- resolution --------------------------------------------------------------------------------

    def resolve(self, name: str) -> ImageRecord:
        """Find an image by ``name[:tag]``, ``name@digest``, full or short ID; ``NoSuchImage`` otherwise."""
        image_id = self._resolve_id(name)
        if image_id is None:
            raise NoSuchImage(name)
        try:
            return self.db.get(image_id)
        except NotFound:
            raise NoSuchImage(name) from None

    def _resolve_id(self, name: str) -> str | None:
        if name.startswith("sha256:"):
            return self._by_prefix(name[len("sha256:"):], name)
        ref: Reference | None
        try:
            ref = parse_tagged(name)
        except InvalidArgument:
            ref = None
        if ref is not None:
            found = self.db.by_repo_digest(str(ref)) if ref.digest else self.db.by_tag(str(ref))
            if found:
                return found
            if ref.digest is not None and ref.tag is None:
                return None
        if is_hex_id(name, min_len=1):
            return self._by_prefix(name, name)
        if ref is None:
            raise InvalidArgument("invalid reference format")
        return None

    def _by_prefix(self, hexpart: str, shown: str) -> str | None:
        if not is_hex_id(hexpart):
            return None
        ids = self.db.ids_with_prefix(hexpart)
        if len(ids) > 1:
            raise InvalidArgument(f"{shown}: image ID prefix is ambiguous")
        return ids[0] if ids else None

    def config(self, image_id: str) -> ImageConfig:
        cfg = self._configs.get(image_id)
        if cfg is None:
            cfg = ImageConfig.parse(self.content.read(Digest.parse(image_id)))
            self._configs[image_id] = cfg
        return cfg

    def manifest(self, rec: ImageRecord) -> Manifest:
        return Manifest.parse(self.content.read(Digest.parse(rec.target_digest)))

    def image_size(self, image_id: str) -> int:
        return sum(self.db.layer_size(str(d)) or 0 for d in self.config(image_id).diff_ids)

    def tags_of(self, image_id: str) -> list[Reference]:
        return [parse_tagged(t) for t in self.db.get(image_id).tags]

    # --- writing -----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lease(self) -> Iterator[Lease]:
        lease = Lease()
        with self._lock:
            self._leases.append(lease)
        try:
            yield lease
        finally:
            with self._lock:
                self._leases.remove(lease)

    def put_blob(self, lease: Lease, stream: IO[bytes], expected: Digest | None = None,
                 expected_size: int | None = None) -> tuple[Digest, int]:
        """Copy a stream into the content store under ``lease``; returns its digest and size."""
        size = 0
        buf = memoryview(bytearray(1 << 20))  # one buffer for the whole blob: no 1 MiB allocation per read
        readinto = getattr(stream, "readinto", None)
        with self.content.writer(expected, expected_size) as w:
            while True:
                if readinto is not None:
                    n = readinto(buf)
                    chunk: bytes | memoryview = buf[:n] if n else b""
                else:
                    chunk = stream.read(len(buf))
                if not chunk:
                    break
                w.write(chunk)
                size += len(chunk)
            if expected is not None:
                lease.blobs.add(expected)
            digest = w.commit()
        lease.blobs.add(digest)
        return digest, size

    def put_bytes(self, lease: Lease, data: bytes) -> Digest:
        digest = Digest.of_bytes(data)
        lease.blobs.add(digest)
        return self.content.put(data, digest)

    def unpack(self, lease: Lease, layers: list[Descriptor], diff_ids: tuple[Digest, ...]) -> None:
        """Make sure a committed snapshot exists for every chain ID of the image, extracting missing layers."""
        if len(layers) != len(diff_ids):
            raise InvalidArgument("invalid manifest, layers length mismatch")
        from berth.oci.image import chain_ids
        chains = chain_ids(diff_ids)
        parent: str | None = None
        for i, (layer, chain) in enumerate(zip(layers, chains, strict=True)):
            name = str(chain)
            lease.snapshots.add(name)
            if not self._has_committed(name):
                result_diff = self._extract(layer.digest, name, parent)
                if result_diff != diff_ids[i]:
                    self._drop_snapshot(name)
                    raise InvalidArgument(
                        f"invalid diffID for layer {i}: calculated {result_diff}, expected {diff_ids[i]}")
            parent = name

    def extract_unknown(self, lease: Lease, blob: Digest, parent: str | None) -> Digest:
        """Extract a layer whose diff ID is not known beforehand (import); returns the diff ID."""
        key = f"{EXTRACT_PREFIX}{uuid.uuid4().hex}"
        lease.snapshots.add(key)
        diff_id, size = self._apply_into(key, blob, parent)
        from berth.oci.image import chain_ids
        name = str(chain_ids([diff_id])[0]) if parent is None else None
        if name is None:
            raise InvalidArgument("import onto a parent is not supported")
        lease.snapshots.add(name)
        self.db.record_layer_size(str(diff_id), size)
        self._commit_snapshot(name, key)
        return diff_id

    def _extract(self, blob: Digest, name: str, parent: str | None) -> Digest:
        key = f"{EXTRACT_PREFIX}{uuid.uuid4().hex}-{name}"
        diff_id, size = self._apply_into(key, blob, parent)
        self.db.record_layer_size(str(diff_id), size)
        self._commit_snapshot(name, key)
        return diff_id

    def _apply_into(self, key: str, blob: Digest, parent: str | None) -> tuple[Digest, int]:
        mounts = self.snapshotter.prepare(key, parent)
        target = self._scratch / uuid.uuid4().hex
        target.mkdir(parents=True)
        try:
            with mounted(mounts, target), self.content.open(blob) as raw:
                result = apply_layer(target, raw, verified=blob)
        except BaseException:
            self._drop_snapshot(key)
            raise
        finally:
            with contextlib.suppress(OSError):
                target.rmdir()
        return result.diff_id, result.size

    def _commit_snapshot(self, name: str, key: str) -> None:
        try:
            self.snapshotter.commit(name, key)
        except Conflict:
            # another load committed the same layer first; ours is redundant
            self._drop_snapshot(key)

    def _has_committed(self, name: str) -> bool:
        try:
            return self.snapshotter.stat(name).kind == Kind.COMMITTED
        except NotFound:
            return False

    def _drop_snapshot(self, key: str) -> None:
        try:
            self.snapshotter.remove(key)
        except (NotFound, Conflict) as e:
            log.warning("could not remove snapshot %s: %s", key, e)

    def commit_image(self, manifest: bytes, config: ImageConfig, tags: list[Reference],
                     repo_digests: list[str] | None = None,
                     media_type: str = media.OCI_MANIFEST, *, parent: str = "",
                     cache_key: str | None = None) -> list[tuple[str, str | None]]:
        """Record the image and its tags in one transaction (blobs and snapshots must already exist)."""
        with self._lock:
            return self.db.put_image(str(config.id), str(Digest.of_bytes(manifest)), media_type,
                                     [str(t) for t in tags], repo_digests or [], parent=parent, cache_key=cache_key)

    # --- garbage collection -----------------------------------------------------------------------

    def collect_garbage(self) -> GCResult:
        """Remove blobs and snapshots no image references (and no in-flight operation holds)."""
        with self._lock:
            leased_blobs = set().union(*(lease.blobs for lease in self._leases)) if self._leases else set()
            leased_snaps = set().union(*(lease.snapshots for lease in self._leases)) if self._leases else set()
            keep_blobs: set[Digest] = set(leased_blobs)
            keep_snaps: set[str] = set(leased_snaps)
            keep_diffs: set[str] = set()
            for rec in self.db.all():
                target = Digest.parse(rec.target_digest)
                keep_blobs.add(target)
                try:
                    man = Manifest.parse(self.content.read(target))
                except (NotFound, InvalidArgument) as e:
                    log.warning("image %s: unreadable manifest: %s", rec.id, e)
                    continue
                keep_blobs.add(man.config.digest)
                keep_blobs.update(layer.digest for layer in man.layers)
                try:
                    cfg = self.config(rec.id)
                except (NotFound, InvalidArgument):
                    continue
                keep_snaps.update(str(c) for c in cfg.chain_ids)
                keep_diffs.update(str(d) for d in cfg.diff_ids)
            reclaimed = 0
            blobs = 0
            for digest, size in list(self.content.walk()):
                if digest not in keep_blobs:
                    self.content.delete(digest)
                    self._configs.pop(str(digest), None)
                    reclaimed += size
                    blobs += 1
            snaps = self._collect_snapshots(keep_snaps)
            self.db.forget_layer_sizes(keep_diffs | {str(d) for d in leased_blobs})
        return GCResult(blobs, snaps, reclaimed)

    def _collect_snapshots(self, keep: set[str]) -> int:
        removed = 0
        progress = True
        while progress:
            progress = False
            infos = list(self.snapshotter.walk())
            parents = {i.parent for i in infos if i.parent}
            for info in infos:
                if info.key in keep or info.key in parents:
                    continue
                if info.kind != Kind.COMMITTED and not info.key.startswith(EXTRACT_PREFIX):
                    continue  # active snapshots belong to containers
                try:
                    self.snapshotter.remove(info.key)
                except (Conflict, NotFound):
                    continue
                removed += 1
                progress = True
        return removed

    def reset_scratch(self) -> None:
        """Remove leftover extraction mount points (daemon start; nothing is mounted there by then)."""
        if self._scratch.exists():
            for child in self._scratch.iterdir():
                if not os.path.ismount(child):
                    shutil.rmtree(child, ignore_errors=True)
        self._scratch.mkdir(parents=True, exist_ok=True, mode=0o700)

    def layer_descriptor(self, digest: Digest, size: int) -> Descriptor:
        """A layer descriptor whose media type matches the blob's compression."""
        with self.content.open(digest) as f:
            kind = detect(f.read(8))
        mt = {"gzip": media.OCI_LAYER_GZIP, "zstd": media.OCI_LAYER_ZSTD}.get(kind, media.OCI_LAYER)
        return Descriptor(mt, digest, size)

    @staticmethod
    def manifest_for(config_bytes: bytes, layers: list[Descriptor],
                     media_type: str = media.OCI_MANIFEST) -> bytes:
        config_type = media.OCI_CONFIG if media_type == media.OCI_MANIFEST else media.DOCKER_CONFIG
        doc = Manifest(media_type, Descriptor(config_type, Digest.of_bytes(config_bytes), len(config_bytes)),
                       tuple(layers)).to_json()
        return json.dumps(doc, separators=(",", ":")).encode()
