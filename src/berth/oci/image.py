"""Image documents: config parsing/validation, chain IDs, and manifest/index parsing with type-confusion checks."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from berth.errors import InvalidArgument
from berth.oci import media
from berth.oci.descriptor import Descriptor
from berth.oci.digest import Digest

MAX_MANIFEST_SIZE = 4 * 1024 * 1024


def chain_ids(diff_ids: Sequence[Digest]) -> list[Digest]:
    """ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)) (OCI image spec)."""
    out: list[Digest] = []
    for d in diff_ids:
        if not out:
            out.append(d)
        else:
            out.append(Digest("sha256", hashlib.sha256(f"{out[-1]} {d}".encode()).hexdigest()))
    return out


@dataclass(frozen=True)
class ImageConfig:
    """A parsed image config blob; ``raw`` keeps the exact bytes, whose digest is the image ID."""

    raw: bytes
    doc: dict[str, Any]
    diff_ids: tuple[Digest, ...]

    @classmethod
    def parse(cls, raw: bytes) -> ImageConfig:
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise InvalidArgument(f"invalid image config: {e}") from None
        if not isinstance(doc, dict):
            raise InvalidArgument("invalid image config: not a JSON object")
        rootfs = doc.get("rootfs")
        if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
            raise InvalidArgument("invalid image config: rootfs.type must be \"layers\"")
        ids = rootfs.get("diff_ids")
        if ids is None:
            ids = []
        if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
            raise InvalidArgument("invalid image config: rootfs.diff_ids must be a list of digests")
        cfg = doc.get("config")
        if cfg is not None and not isinstance(cfg, dict):
            raise InvalidArgument("invalid image config: config must be an object")
        return cls(raw, doc, tuple(Digest.parse(x) for x in ids))

    @property
    def id(self) -> Digest:
        return Digest.of_bytes(self.raw)

    @property
    def config(self) -> dict[str, Any]:
        cfg = self.doc.get("config")
        return cfg if isinstance(cfg, dict) else {}

    @property
    def history(self) -> list[dict[str, Any]]:
        h = self.doc.get("history")
        return [x for x in h if isinstance(x, dict)] if isinstance(h, list) else []

    @property
    def chain_ids(self) -> list[Digest]:
        return chain_ids(self.diff_ids)


@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI or Docker schema 2)."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @classmethod
    def parse(cls, raw: bytes, content_type: str | None = None) -> Manifest:
        doc = _load_document(raw)
        if "manifests" in doc:
            raise InvalidArgument("invalid manifest: document has both manifests and config/layers")
        mt = doc.get("mediaType") or content_type or media.OCI_MANIFEST
        if content_type and doc.get("mediaType") and doc["mediaType"] != content_type:
            raise InvalidArgument("invalid manifest: mediaType does not match Content-Type")
        if mt not in media.MANIFESTS:
            raise InvalidArgument(f"unsupported manifest media type: {mt}")
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise InvalidArgument("invalid manifest: layers must be a list")
        return cls(mt, Descriptor.from_json(doc.get("config")), tuple(Descriptor.from_json(x) for x in layers))

    def to_json(self) -> dict[str, Any]:
        return {
            "schemaVersion": 2,
            "mediaType": self.media_type,
            "config": self.config.to_json(),
            "layers": [x.to_json() for x in self.layers],
        }


@dataclass(frozen=True)
class Index:
    """An image index / manifest list."""

    media_type: str
    manifests: tuple[Descriptor, ...]

    @classmethod
    def parse(cls, raw: bytes, content_type: str | None = None) -> Index:
        doc = _load_document(raw)
        if "layers" in doc or "config" in doc:
            raise InvalidArgument("invalid index: document has both manifests and config/layers")
        mt = doc.get("mediaType") or content_type or media.OCI_INDEX
        ms = doc.get("manifests")
        if not isinstance(ms, list):
            raise InvalidArgument("invalid index: manifests must be a list")
        return cls(mt, tuple(Descriptor.from_json(x) for x in ms))


def _load_document(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_MANIFEST_SIZE:
        raise InvalidArgument("manifest too large")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"invalid manifest: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("invalid manifest: not a JSON object")
    return doc
