"""OCI content descriptors: a media type, a digest and a size, validated when built."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from berth.errors import InvalidArgument
from berth.oci.digest import Digest

MAX_SIZE = 1 << 62


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    platform: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or not 0 <= self.size < MAX_SIZE:
            raise InvalidArgument(f"invalid descriptor size: {self.size!r}")

    @classmethod
    def from_json(cls, doc: Any) -> Descriptor:
        if not isinstance(doc, dict):
            raise InvalidArgument("invalid descriptor: not an object")
        mt, dg, size = doc.get("mediaType"), doc.get("digest"), doc.get("size")
        if not isinstance(mt, str) or not isinstance(dg, str) or not isinstance(size, int):
            raise InvalidArgument("invalid descriptor: mediaType, digest and size are required")
        ann = doc.get("annotations") or {}
        if not isinstance(ann, dict):
            raise InvalidArgument("invalid descriptor: annotations must be an object")
        plat = doc.get("platform")
        return cls(mt, Digest.parse(dg), size, {str(k): str(v) for k, v in ann.items()},
                   plat if isinstance(plat, dict) else None)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform:
            out["platform"] = dict(self.platform)
        return out
