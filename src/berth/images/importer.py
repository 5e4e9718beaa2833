"""``docker import``: a root filesystem tar (plain or compressed) becomes a one-layer image."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, BinaryIO

from berth.images.changes import apply_changes
from berth.images.store import ImageStore
from berth.oci.image import ImageConfig
from berth.oci.reference import Reference
from berth.units import now_rfc3339


@dataclass(frozen=True)
class Imported:
    image_id: str
    untagged: tuple[tuple[str, str], ...]


def import_rootfs(store: ImageStore, stream: BinaryIO, tags: list[Reference], *, changes: list[str] | None = None,
                  message: str = "", source: str = "-", base_config: dict[str, Any] | None = None,
                  created_by: str = "") -> Imported:
    created = now_rfc3339()
    with store.lease() as lease:
        digest, size = store.put_blob(lease, stream)
        diff_id = store.extract_unknown(lease, digest, None)
        history: dict[str, Any] = {"created": created, "comment": message or f"Imported from {source}"}
        if created_by:
            history["created_by"] = created_by
        doc: dict[str, Any] = {
            "architecture": "amd64",
            "config": apply_changes(base_config or {}, changes or []),
            "created": created,
            "history": [history],
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [str(diff_id)]},
        }
        if message:
            doc["comment"] = message
        raw = json.dumps(doc, separators=(",", ":")).encode()
        config = ImageConfig.parse(raw)
        store.put_bytes(lease, raw)
        manifest = ImageStore.manifest_for(raw, [store.layer_descriptor(digest, size)])
        store.put_bytes(lease, manifest)
        moved = store.commit_image(manifest, config, tags)
    return Imported(str(config.id), tuple((t, p) for t, p in moved if p))
