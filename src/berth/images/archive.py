"""``docker load`` and ``docker save``: Docker image archives and OCI image-layout archives.

Load streams the archive once: every regular file member goes into the content store (members named
``blobs/<alg>/<hex>`` or ``<hex>.json`` are verified against their names), then the index (``manifest.json`` or
``index.json``) read at the end says which blobs form which image. Member names are only ever dictionary keys:
nothing from the archive is written to a path. Still, like Docker's untar, member names and link targets that
climb out of the archive (``../``) are refused, and manifest.json paths are clamped to the archive root. Every
descriptor's size and digest must match the blob the archive carries, and only blobs the archive carries count.

Save writes the layout Docker 25+ writes (readable by old and new Docker, skopeo and berth): ``blobs/sha256/``
with uncompressed layers, ``index.json``, ``oci-layout``, ``manifest.json`` and ``repositories``.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from berth.errors import InvalidArgument, NotFound
from berth.images.store import ImageStore, Lease
from berth.layers.compression import detect, open_decompressed
from berth.oci import media
from berth.oci.descriptor import Descriptor
from berth.oci.digest import Digest, is_hex_id
from berth.oci.image import ImageConfig, Index, Manifest
from berth.oci.reference import Reference, parse, parse_tagged
from berth.snapshots.base import Kind

_META_FILES = {"manifest.json", "index.json", "oci-layout", "repositories"}
_MAX_META = 8 * 1024 * 1024
_MAX_LINK_HOPS = 16
_MAX_INDEX_DEPTH = 4


@dataclass(frozen=True)
class LoadedImage:
    image_id: str
    tags: tuple[Reference, ...]
    untagged: tuple[tuple[str, str], ...]   # (tag, image id it was moved away from)


class _Archive:
    """What one pass over the archive found: blobs by member name, small metadata files, links."""

    def __init__(self) -> None:
        self.blobs: dict[str, tuple[Digest, int]] = {}
        self.meta: dict[str, bytes] = {}
        self.links: dict[str, str] = {}

    def add_blob(self, name: str, found: tuple[Digest, int]) -> None:
        self.links.pop(name, None)  # a later member of the same name replaces an earlier one, as on disk
        self.blobs[name] = found

    def add_link(self, name: str, target: str) -> None:
        self.blobs.pop(name, None)
        self.links[name] = target

    def carried(self) -> dict[Digest, int]:
        """The blobs this archive holds, with their sizes (what descriptors may point to)."""
        return dict(self.blobs.values())

    def resolve(self, name: str) -> str:
        key = _path(name)
        for _ in range(_MAX_LINK_HOPS):
            if key not in self.links:
                return key
            key = self.links[key]
        raise InvalidArgument(f"invalid archive: too many levels of links at {name}")

    def blob(self, name: str) -> tuple[Digest, int]:
        key = self.resolve(name)
        found = self.blobs.get(key)
        if found is None:
            raise InvalidArgument(f"invalid archive: {name} not found in archive")
        return found


def _inside(path: str) -> str | None:
    """``path`` relative to the archive root, or None when it climbs out (absolute paths start at the root)."""
    clean = posixpath.normpath(path)
    if clean == ".." or clean.startswith("../"):
        return None
    return clean.lstrip("/")


def _member(name: str) -> str:
    key = _inside(name)
    if key is None:
        raise InvalidArgument(f'invalid archive: invalid member name "{name}": it is outside of the archive')
    return key


def _path(text: str) -> str:
    """A path from manifest.json, clamped to the archive root like Docker's FollowSymlinkInScope."""
    return posixpath.normpath("/" + text).lstrip("/")


def _expected_digest(name: str) -> Digest | None:
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == "blobs":
        try:
            return Digest(parts[1], parts[2])
        except InvalidArgument:
            raise InvalidArgument(f"invalid archive: bad blob name {name}") from None
    if len(parts) == 1 and name.endswith(".json") and is_hex_id(name[:-5], 64):
        return Digest("sha256", name[:-5])
    return None


def load(store: ImageStore, stream: BinaryIO, progress: Callable[[str], None] | None = None) -> list[LoadedImage]:
    """Load every image in a Docker or OCI archive; nothing is tagged unless the whole archive is good."""
    say = progress or (lambda _m: None)
    with store.lease() as lease:
        archive = _read_archive(store, lease, open_decompressed(stream))
        if "manifest.json" in archive.meta:
            plans = _plan_docker(store, archive)
        elif "index.json" in archive.meta:
            plans = _plan_oci(store, archive)
        else:
            raise InvalidArgument("invalid archive: no manifest.json or index.json found"
                                  " (is this an image archive made by docker save?)")
        if not plans:
            raise InvalidArgument("invalid archive: it contains no images")
        for plan in plans:
            say(f"Loading {plan.config.id.short}")
            _check_reused_layers(store, plan)
            store.unpack(lease, list(plan.layers), plan.config.diff_ids)
        out = []
        for plan in plans:
            manifest = ImageStore.manifest_for(plan.config.raw, list(plan.layers))
            store.put_bytes(lease, manifest)
            moved = store.commit_image(manifest, plan.config, list(plan.tags))
            out.append(LoadedImage(str(plan.config.id), plan.tags,
                                   tuple((t, prev) for t, prev in moved if prev)))
        return out


@dataclass(frozen=True)
class _Plan:
    config: ImageConfig
    layers: tuple[Descriptor, ...]
    tags: tuple[Reference, ...]


def _check_reused_layers(store: ImageStore, plan: _Plan) -> None:
    check_reused_layers(store, plan.config, plan.layers)


def check_reused_layers(store: ImageStore, config: ImageConfig, layers: Sequence[Descriptor]) -> None:
    """A layer whose snapshot exists is not extracted again, so hash its blob here: the stored manifest must
    not pair a diff ID with other content (``docker save`` and push would hand that content out). Used by load
    and by pull."""
    for i, (layer, diff_id, chain) in enumerate(zip(layers, config.diff_ids, config.chain_ids, strict=True)):
        if layer.digest == diff_id or not _committed(store, str(chain)):
            continue
        hasher = diff_id.hasher()
        with store.content.open(layer.digest) as raw, open_decompressed(raw) as stream:
            while chunk := stream.read(1 << 20):
                hasher.update(chunk)
        actual = Digest.from_hasher(hasher)
        if actual != diff_id:
            raise InvalidArgument(f"invalid diffID for layer {i}: calculated {actual}, expected {diff_id}")


def _committed(store: ImageStore, name: str) -> bool:
    try:
        return store.snapshotter.stat(name).kind is Kind.COMMITTED
    except NotFound:
        return False


def _read_archive(store: ImageStore, lease: Lease, stream: BinaryIO) -> _Archive:
    archive = _Archive()
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                name = _member(member.name)
                if member.issym():
                    target = _inside(posixpath.join(posixpath.dirname(name), member.linkname))
                    if target is None:
                        raise InvalidArgument(
                            f'invalid archive: invalid symlink "{member.name}" -> "{member.linkname}"'
                        )
                    archive.add_link(name, target)
                elif member.islnk():
                    target = _inside(member.linkname)
                    if target is None:
                        raise InvalidArgument(
                            f'invalid archive: invalid hardlink "{member.name}" -> "{member.linkname}"'
                        )
                    archive.add_link(name, target)
                elif member.isfile():
                    f = tar.extractfile(member)
                    assert f is not None
                    if name in _META_FILES:
                        if member.size > _MAX_META:
                            raise InvalidArgument(f"invalid archive: {name} is too large")
                        archive.meta[name] = f.read()
                    elif posixpath.basename(name) in ("json", "VERSION") and name.count("/") == 1:
                        continue  # legacy v1 metadata, not needed
                    else:
                        archive.add_blob(name, store.put_blob(lease, f, _expected_digest(name), member.size))
    except tarfile.ReadError as e:
        raise InvalidArgument(f"invalid archive: {_tar_reason(e)}") from None
    except EOFError:
        raise InvalidArgument("invalid archive: unexpected EOF") from None
    return archive


def _tar_reason(e: Exception) -> str:
    text = str(e)
    if "empty file" in text:
        return "unexpected EOF (empty archive)"
    if "unexpected end" in text or "truncated" in text:
        return "unexpected EOF"
    return text or "not a tar archive"


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"invalid archive: {what}: {e}") from None


def _plan_docker(store: ImageStore, archive: _Archive) -> list[_Plan]:
    doc = _json(archive.meta["manifest.json"], "manifest.json")
    if not isinstance(doc, list):
        raise InvalidArgument("invalid archive: manifest.json must be a list")
    plans = []
    for entry in doc:
        if not isinstance(entry, dict):
            raise InvalidArgument("invalid archive: manifest.json entries must be objects")
        if not isinstance(entry.get("Config"), str):
            raise InvalidArgument("invalid archive: manifest.json entry without Config")
        layer_names = _strings(entry.get("Layers"), "Layers")
        tags = tuple(_parse_tag(t) for t in _strings(entry.get("RepoTags"), "RepoTags"))
        config = _config(store, *archive.blob(entry["Config"]))
        if len(layer_names) != len(config.diff_ids):
            raise InvalidArgument("invalid manifest, layers length mismatch: expected "
                                  f"{len(config.diff_ids)}, got {len(layer_names)}")
        layers = tuple(store.layer_descriptor(*archive.blob(n)) for n in layer_names)
        plans.append(_Plan(config, layers, tags))
    return plans


def _strings(value: Any, field: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise InvalidArgument(f"invalid archive: manifest.json {field} must be a list of strings")
    return value


def _config(store: ImageStore, digest: Digest, size: int) -> ImageConfig:
    if size > _MAX_META:
        raise InvalidArgument(f"invalid archive: image config {digest} is too large")
    return ImageConfig.parse(store.content.read(digest))


def _parse_tag(text: str) -> Reference:
    ref = parse(text)
    if ref.digest is not None:
        raise InvalidArgument(f'invalid tag "{text}"')
    return ref.with_default_tag()


def _plan_oci(store: ImageStore, archive: _Archive) -> list[_Plan]:
    index = Index.parse(archive.meta["index.json"])
    carried = archive.carried()
    plans: list[_Plan] = []
    for desc in index.manifests:
        name = desc.annotations.get("io.containerd.image.name") or desc.annotations.get(
            "org.opencontainers.image.ref.name")
        tag = _oci_tag(name)
        plans.extend(_plan_oci_descriptor(store, carried, desc, (tag,) if tag else (), depth=0))
    return plans


def _oci_tag(name: str | None) -> Reference | None:
    if not name or not any(c in name for c in "/:@"):
        return None  # a bare tag (ref.name "1.0") with no repository cannot name a local image
    return _parse_tag(name)


def _check_carried(carried: dict[Digest, int], desc: Descriptor, what: str) -> None:
    """The archive must hold the blob, at the size its descriptor claims (its digest was checked on the way in)."""
    size = carried.get(desc.digest)
    if size is None:
        raise InvalidArgument(f"invalid archive: {what} {desc.digest} not found in archive")
    if size != desc.size:
        raise InvalidArgument(f"invalid archive: {what} {desc.digest} has size {size}, its descriptor says {desc.size}")


def _plan_oci_descriptor(
    store: ImageStore, carried: dict[Digest, int], desc: Descriptor, tags: tuple[Reference, ...], depth: int
) -> list[_Plan]:
    if depth > _MAX_INDEX_DEPTH:
        raise InvalidArgument("invalid archive: image index nested too deep")
    if desc.media_type in media.INDEXES:
        _check_carried(carried, desc, "index")
        sub = Index.parse(store.content.read(desc.digest))
        chosen = [m for m in sub.manifests if _is_linux_amd64(m)] or list(sub.manifests[:1])
        return [p for m in chosen[:1] for p in _plan_oci_descriptor(store, carried, m, tags, depth + 1)]
    _check_carried(carried, desc, "manifest")
    man = Manifest.parse(store.content.read(desc.digest))
    _check_carried(carried, man.config, "config")
    config = _config(store, man.config.digest, man.config.size)
    if len(man.layers) != len(config.diff_ids):
        raise InvalidArgument("invalid manifest, layers length mismatch: expected "
                              f"{len(config.diff_ids)}, got {len(man.layers)}")
    for layer in man.layers:
        _check_carried(carried, layer, "layer")
    return [_Plan(config, man.layers, tags)]


def _is_linux_amd64(desc: Descriptor) -> bool:
    p = desc.platform or {}
    return p.get("os") == "linux" and p.get("architecture") == "amd64"


# --- save ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SaveItem:
    image_id: str
    tags: tuple[Reference, ...]     # the tags to record (all tags when saved by ID, else the ones named)


def save(store: ImageStore, items: Iterable[SaveItem], out: BinaryIO) -> None:
    """Write the images as one archive (Docker 25+ layout, uncompressed layers) to ``out``, streamed."""
    now = time.time()
    written: set[str] = set()
    manifest_json: list[dict[str, Any]] = []
    index: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        _dir(tar, "blobs", now)
        _dir(tar, "blobs/sha256", now)
        for item in items:
            rec = store.db.get(item.image_id)
            config = store.config(rec.id)
            stored = store.manifest(rec)
            cfg_path = f"blobs/sha256/{config.id.hex}"
            if cfg_path not in written:
                _file(tar, cfg_path, config.raw, now)
                written.add(cfg_path)
            layer_descs = []
            layer_paths = []
            for desc, diff_id in zip(stored.layers, config.diff_ids, strict=True):
                path = f"blobs/sha256/{diff_id.hex}"
                size = store.db.layer_size(str(diff_id))
                if path not in written:
                    size = _write_layer(store, tar, path, desc, size, now)
                    written.add(path)
                layer_paths.append(path)
                layer_descs.append(Descriptor(media.OCI_LAYER, diff_id, size or 0))
            man_bytes = ImageStore.manifest_for(config.raw, layer_descs)
            man_digest = Digest.of_bytes(man_bytes)
            man_path = f"blobs/sha256/{man_digest.hex}"
            if man_path not in written:
                _file(tar, man_path, man_bytes, now)
                written.add(man_path)
            tag_names = [t.familiar() for t in item.tags]
            manifest_json.append({"Config": cfg_path, "RepoTags": tag_names or None, "Layers": layer_paths})
            top = str(config.diff_ids[-1].hex) if config.diff_ids else config.id.hex
            for t in item.tags:
                repositories.setdefault(t.familiar_name, {})[t.tag or "latest"] = top
            named: tuple[Reference | None, ...] = item.tags or (None,)
            for ref in named:
                ann = {} if ref is None else {"io.containerd.image.name": str(ref),
                                              "org.opencontainers.image.ref.name": ref.tag or ""}
                index.append(Descriptor(media.OCI_MANIFEST, man_digest, len(man_bytes), ann).to_json())
        _file(tar, "index.json", json.dumps({"schemaVersion": 2, "mediaType": media.OCI_INDEX,
                                             "manifests": index}).encode(), now)
        _file(tar, "manifest.json", json.dumps(manifest_json).encode(), now)
        _file(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}', now)
        if repositories:
            _file(tar, "repositories", json.dumps(repositories).encode(), now)


def _dir(tar: tarfile.TarFile, name: str, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = int(mtime)
    tar.addfile(info)


def _file(tar: tarfile.TarFile, name: str, data: bytes, mtime: float) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = int(mtime)
    tar.addfile(info, io.BytesIO(data))


def _write_layer(store: ImageStore, tar: tarfile.TarFile, path: str, desc: Descriptor, size: int | None,
                 mtime: float) -> int:
    with store.content.open(desc.digest) as raw:
        kind = detect(raw.read(8))
    if kind == "none":
        size = desc.size
    if size is None:
        size = _measure(store, desc.digest)
    info = tarfile.TarInfo(path)
    info.size = size
    info.mode = 0o644
    info.mtime = int(mtime)
    with store.content.open(desc.digest) as raw, open_decompressed(raw) as stream:
        tar.addfile(info, stream)
    return size


def _measure(store: ImageStore, digest: Digest) -> int:
    total = 0
    with store.content.open(digest) as raw, open_decompressed(raw) as stream:
        while chunk := stream.read(1 << 20):
            total += len(chunk)
    return total


def parse_save_names(store: ImageStore, names: list[str]) -> list[SaveItem]:
    """Docker's rules: a name with a tag saves that tag; an ID saves the image with all its tags."""
    items: dict[str, list[Reference]] = {}
    for name in names:
        rec = store.resolve(name)
        tags = items.setdefault(rec.id, [])
        ref: Reference | None
        try:
            ref = parse(name)
        except InvalidArgument:
            ref = None
        is_id = name.startswith("sha256:") or rec.id.startswith("sha256:" + name) or ref is None
        if ref is not None and not is_id and ref.digest is None:
            tagged = ref.with_default_tag()
            if str(tagged) in rec.tags and tagged not in tags:
                tags.append(tagged)
        elif is_id:
            for t in rec.tags:
                r = parse_tagged(t)
                if r not in tags:
                    tags.append(r)
    return [SaveItem(i, tuple(t)) for i, t in items.items()]
