"""Content digests (``sha256:<hex>``): parsing, validation and hashing helpers."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from berth.errors import InvalidArgument

_GRAMMAR = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")
_HEX_LEN = {"sha256": 64, "sha512": 128}


@dataclass(frozen=True, order=True)
class Digest:
    """A verified-shape content digest; only sha256 and sha512 can be computed and so be trusted."""

    algorithm: str
    hex: str

    def __post_init__(self) -> None:
        want = _HEX_LEN.get(self.algorithm)
        if want is None:
            raise InvalidArgument(f"unsupported digest algorithm: {self.algorithm}")
        if len(self.hex) != want or not all(c in "0123456789abcdef" for c in self.hex):
            raise InvalidArgument(f"invalid checksum digest format: {self.algorithm}:{self.hex}")

    @classmethod
    def parse(cls, text: str) -> Digest:
        m = _GRAMMAR.match(text)
        if not m:
            raise InvalidArgument(f"invalid checksum digest format: {text}")
        return cls(m.group(1), m.group(2))

    @classmethod
    def of_bytes(cls, data: bytes) -> Digest:
        return cls("sha256", hashlib.sha256(data).hexdigest())

    @classmethod
    def from_hasher(cls, hasher: hashlib._Hash) -> Digest:
        return cls(hasher.name, hasher.hexdigest())

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)

    @property
    def short(self) -> str:
        """The 12-character short form used in tables and progress lines."""
        return self.hex[:12]

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


def is_hex_id(text: str, min_len: int = 1) -> bool:
    """True when ``text`` is a (possibly short) lowercase hex image or container ID."""
    return min_len <= len(text) <= 64 and all(c in "0123456789abcdef" for c in text)
