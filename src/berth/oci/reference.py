"""Image references (``[domain/]path[:tag][@digest]``) parsed and normalized like Docker's distribution/reference.

``busybox`` normalizes to ``docker.io/library/busybox:latest``; ``familiar`` turns it back into ``busybox:latest``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from berth.errors import InvalidArgument
from berth.oci.digest import Digest

DEFAULT_DOMAIN = "docker.io"
LEGACY_DOMAIN = "index.docker.io"
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_PATH = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DOMAIN = re.compile(
    r"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*"
    r"|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$"
)
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_MAX_NAME = 255


def _invalid(detail: str = "") -> InvalidArgument:
    return InvalidArgument("invalid reference format" + (f": {detail}" if detail else ""))


@dataclass(frozen=True)
class Reference:
    """A normalized reference: ``domain`` and ``path`` always set, ``tag`` and/or ``digest`` optional."""

    domain: str
    path: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def name(self) -> str:
        """The full repository name, e.g. ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The repository as Docker prints it, e.g. ``busybox`` or ``localhost:5000/app``."""
        if self.domain == DEFAULT_DOMAIN:
            path = self.path
            if path.startswith(OFFICIAL_PREFIX) and path.count("/") == 1:
                path = path[len(OFFICIAL_PREFIX):]
            return path
        return self.name

    def with_default_tag(self) -> Reference:
        """``busybox`` → ``busybox:latest``; references with a tag or digest are unchanged."""
        if self.tag is None and self.digest is None:
            return Reference(self.domain, self.path, DEFAULT_TAG, None)
        return self

    def with_tag(self, tag: str) -> Reference:
        if not _TAG.match(tag):
            raise _invalid()
        return Reference(self.domain, self.path, tag, None)

    def __str__(self) -> str:
        return self._render(self.name)

    def familiar(self) -> str:
        """Docker's short display form: ``busybox:latest``."""
        return self._render(self.familiar_name)

    def _render(self, name: str) -> str:
        out = name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out


def parse(text: str) -> Reference:
    """Parse and normalize a reference; raises ``InvalidArgument`` with Docker's wording."""
    if not text or text != text.strip():
        raise _invalid()
    remainder = text
    digest: Digest | None = None
    if "@" in remainder:
        remainder, _, dtext = remainder.partition("@")
        try:
            digest = Digest.parse(dtext)
        except InvalidArgument:
            raise _invalid() from None
    tag: str | None = None
    slash = remainder.rfind("/")
    colon = remainder.rfind(":")
    if colon > slash:
        remainder, tag = remainder[:colon], remainder[colon + 1:]
        if not _TAG.match(tag):
            raise _invalid()
    if not remainder:
        raise _invalid()
    if len(remainder) > _MAX_NAME:
        raise _invalid("repository name must not be more than 255 characters")
    domain, path = _split_domain(remainder)
    if not _DOMAIN.match(domain):
        raise _invalid()
    if not _PATH.match(path):
        if _PATH.match(path.lower()):
            raise _invalid(f"repository name ({path}) must be lowercase")
        raise _invalid()
    return Reference(domain, path, tag, digest)


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and (("." in first or ":" in first) or first == "localhost" or first.lower() != first):
        domain, path = first, rest
    else:
        domain, path = DEFAULT_DOMAIN, name
    if domain == LEGACY_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in path:
        path = OFFICIAL_PREFIX + path
    return domain, path


def parse_tagged(text: str) -> Reference:
    """Parse and apply the default tag (``busybox`` → ``busybox:latest``)."""
    return parse(text).with_default_tag()


def parse_target(repo: str, tag: str = "") -> Reference:
    """``repo`` plus an optional separate ``tag`` (``docker import REPO TAG``, ``docker commit``) as a tagged
    reference, ``latest`` by default; a digest, or a tag given twice, is ``invalid reference format``."""
    ref = parse(repo)
    if ref.digest is not None or (tag and ref.tag is not None):
        raise _invalid()
    return ref.with_tag(tag) if tag else ref.with_default_tag()
