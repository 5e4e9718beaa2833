"""The distribution (OCI registry) wire protocol, shared by berth's registry server and client.

One route table (``ROUTES``: the ``/v2/`` paths, matched by the server, built by the client with ``path_for``),
one error-code table (``ErrorCode``: OCI/distribution codes with their HTTP status and wording), the name and tag
grammars, header names, the scope grammar of token auth, and the ``WWW-Authenticate`` challenge format.
Imports only the standard library and ``berth.oci``/``berth.errors``.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from berth.errors import BerthError, InvalidArgument
from berth.oci import media

# --- headers ---------------------------------------------------------------------------------------------

API_VERSION_HEADER = "Docker-Distribution-API-Version"
API_VERSION = "registry/2.0"
CONTENT_DIGEST = "Docker-Content-Digest"
UPLOAD_UUID = "Docker-Upload-UUID"
OCI_SUBJECT = "OCI-Subject"
OCI_FILTERS_APPLIED = "OCI-Filters-Applied"
OCI_CHUNK_MIN_LENGTH = "OCI-Chunk-Min-Length"
OCI_TAG = "OCI-Tag"
WWW_AUTHENTICATE = "WWW-Authenticate"

# --- media types the registry itself deals in ------------------------------------------------------------

OCTET_STREAM = "application/octet-stream"
JSON_TYPE = "application/json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
IMAGE_MANIFESTS = media.MANIFESTS
INDEX_MANIFESTS = media.INDEXES
MANIFEST_TYPES = IMAGE_MANIFESTS | INDEX_MANIFESTS

MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # distribution's limit; bigger PUTs get 413

# --- grammars --------------------------------------------------------------------------------------------

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_PATTERN = rf"{_COMPONENT}(?:/{_COMPONENT})*"
TAG_PATTERN = r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"
DIGEST_PATTERN = r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+"
NAME_RE = re.compile(rf"^{NAME_PATTERN}$")
TAG_RE = re.compile(rf"^{TAG_PATTERN}$")
DIGEST_RE = re.compile(rf"^{DIGEST_PATTERN}$")
MAX_NAME_LENGTH = 255  # clients cap host+name at 255; the server caps the name alone


def valid_name(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and NAME_RE.match(name) is not None


def valid_tag(tag: str) -> bool:
    return TAG_RE.match(tag) is not None


# --- errors ----------------------------------------------------------------------------------------------


class ErrorCode(enum.Enum):
    """Error codes of the distribution spec (plus distribution's extras), each with its HTTP status and message."""

    BLOB_UNKNOWN = (404, "blob unknown to registry")
    BLOB_UPLOAD_INVALID = (400, "blob upload invalid")
    BLOB_UPLOAD_UNKNOWN = (404, "blob upload unknown to registry")
    DIGEST_INVALID = (400, "provided digest did not match uploaded content")
    MANIFEST_BLOB_UNKNOWN = (400, "manifest references a manifest or blob unknown to registry")
    MANIFEST_INVALID = (400, "manifest invalid")
    MANIFEST_UNKNOWN = (404, "manifest unknown")
    NAME_INVALID = (400, "invalid repository name")
    NAME_UNKNOWN = (404, "repository name not known to registry")
    SIZE_INVALID = (400, "provided length did not match content length")
    TAG_INVALID = (400, "manifest tag did not match URI")
    UNAUTHORIZED = (401, "authentication required")
    DENIED = (403, "requested access to the resource is denied")
    UNSUPPORTED = (405, "The operation is unsupported.")
    TOOMANYREQUESTS = (429, "too many requests")
    PAGINATION_NUMBER_INVALID = (400, "invalid number of results requested")
    RANGE_INVALID = (416, "invalid content range")
    UNKNOWN = (500, "unknown error")

    @property
    def status(self) -> int:
        return int(self.value[0])

    @property
    def message(self) -> str:
        return str(self.value[1])

    @classmethod
    def lookup(cls, name: str) -> ErrorCode:
        return cls.__members__.get(name, cls.UNKNOWN)


class RegistryError(BerthError):
    """One distribution error: a code, a message, an optional detail, and the HTTP status it is sent with."""

    def __init__(self, code: ErrorCode, message: str | None = None, detail: Any = None,
                 status: int | None = None) -> None:
        super().__init__(message or code.message)
        self.code = code
        self.detail = detail
        self.status = status if status is not None else code.status

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code.name, "message": self.message}
        if self.detail is not None:
            out["detail"] = self.detail
        return out


def error_body(errors: Iterable[RegistryError]) -> bytes:
    """The spec's error document: ``{"errors":[{"code","message","detail"}]}``."""
    return json.dumps({"errors": [e.to_json() for e in errors]}, separators=(",", ":")).encode()


def parse_error_body(status: int, body: bytes) -> list[RegistryError]:
    """Errors from a response body; a body that is not the spec's document gives one ``UNKNOWN`` with the text."""
    try:
        doc = json.loads(body)
        items = doc.get("errors") if isinstance(doc, dict) else None
    except (ValueError, UnicodeDecodeError):
        items = None
    if not isinstance(items, list) or not items:
        text = body.decode("utf-8", "replace").strip()[:200]
        return [RegistryError(ErrorCode.UNKNOWN, text or f"HTTP status {status}", status=status)]
    out = []
    for item in items:
        if isinstance(item, dict):
            code = ErrorCode.lookup(str(item.get("code", "")))
            out.append(RegistryError(code, str(item.get("message") or code.message), item.get("detail"),
                                     status=status))
    return out


# --- routes ----------------------------------------------------------------------------------------------


class Route(enum.Enum):
    """The registry's endpoints: (allowed methods, path template). ``{name}`` may contain slashes."""

    BASE = (("GET", "HEAD"), "/v2/")
    CATALOG = (("GET",), "/v2/_catalog")
    TAGS = (("GET",), "/v2/{name}/tags/list")
    MANIFEST = (("GET", "HEAD", "PUT", "DELETE"), "/v2/{name}/manifests/{reference}")
    BLOB = (("GET", "HEAD", "DELETE"), "/v2/{name}/blobs/{digest}")
    UPLOADS = (("POST",), "/v2/{name}/blobs/uploads/")
    UPLOAD = (("GET", "PATCH", "PUT", "DELETE"), "/v2/{name}/blobs/uploads/{uuid}")
    REFERRERS = (("GET",), "/v2/{name}/referrers/{digest}")

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(self.value[0])

    @property
    def template(self) -> str:
        return str(self.value[1])


# order matters: uploads before blobs, so "blobs/uploads/x" is never read as a blob digest
_MATCHERS: tuple[tuple[Route, re.Pattern[str]], ...] = (
    (Route.BASE, re.compile(r"^/v2/?$")),
    (Route.CATALOG, re.compile(r"^/v2/_catalog$")),
    (Route.TAGS, re.compile(r"^/v2/(?P<name>.+)/tags/list$")),
    (Route.MANIFEST, re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)$")),
    (Route.UPLOADS, re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/?$")),
    (Route.UPLOAD, re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/(?P<uuid>[^/]+)$")),
    (Route.BLOB, re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)$")),
    (Route.REFERRERS, re.compile(r"^/v2/(?P<name>.+)/referrers/(?P<digest>[^/]+)$")),
)


def match(path: str) -> tuple[Route, dict[str, str]] | None:
    """The route a (percent-decoded) path names and its parameters; ``name`` is not validated here."""
    for route, pattern in _MATCHERS:
        m = pattern.match(path)
        if m:
            return route, m.groupdict()
    return None


def path_for(route: Route, **params: str) -> str:
    """Build a route's path; ``name`` keeps its slashes, digests their colon; the rest is percent-quoted."""
    out = route.template
    for key, value in params.items():
        out = out.replace("{" + key + "}", quote(value, safe="/" if key == "name" else ":"))
    if "{" in out:
        raise InvalidArgument(f"missing parameter for {route.name}: {out}")
    return out


def next_link(path: str, params: Mapping[str, str]) -> str:
    """The RFC 5988 ``Link`` header value pointing at the next page."""
    query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    return f'<{path}?{query}>; rel="next"'


# --- token-auth scopes -----------------------------------------------------------------------------------

PULL, PUSH, DELETE = "pull", "push", "delete"


@dataclass(frozen=True)
class Scope:
    """``repository:<name>:<action>[,<action>]`` or ``registry:catalog:*`` (distribution's scope grammar)."""

    type: str
    name: str
    actions: tuple[str, ...] = field(default=())

    @classmethod
    def parse(cls, text: str) -> Scope:
        # the name may contain ":" (a registry host with a port); type is the first field, actions the last
        kind, sep, rest = text.partition(":")
        name, sep2, actions = rest.rpartition(":")
        if not sep or not sep2 or not kind or not name:
            raise InvalidArgument(f"invalid scope: {text!r}")
        return cls(kind, name, tuple(a for a in actions.split(",") if a))

    @classmethod
    def repository(cls, name: str, *actions: str) -> Scope:
        return cls("repository", name, tuple(actions))

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"

    def covers(self, other: Scope) -> bool:
        """Whether this grant allows every action ``other`` asks for (``*`` allows all)."""
        if (self.type, self.name) != (other.type, other.name):
            return False
        return "*" in self.actions or set(other.actions) <= set(self.actions)


CATALOG_SCOPE = Scope("registry", "catalog", ("*",))


def parse_scopes(values: Iterable[str]) -> list[Scope]:
    """Scopes from ``scope`` query values, each of which may hold several separated by spaces."""
    return [Scope.parse(part) for value in values for part in value.split() if part]


# --- challenges ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """One ``WWW-Authenticate`` challenge: a scheme (``Bearer``/``Basic``) and its parameters."""

    scheme: str
    params: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        parts = ",".join(f'{k}="{_quote_param(v)}"' for k, v in self.params.items())
        return f"{self.scheme} {parts}" if parts else self.scheme


def _quote_param(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAM = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TOKEN}))\s*')


def parse_challenges(header: str) -> list[Challenge]:
    """Every challenge in a ``WWW-Authenticate`` value; quoted parameters may hold commas."""
    out: list[Challenge] = []
    pos = 0
    text = header.strip()
    while pos < len(text):
        m = re.compile(rf"\s*,?\s*({_TOKEN})").match(text, pos)
        if not m:
            break
        scheme = m.group(1)
        pos = m.end()
        params: dict[str, str] = {}
        while True:
            p = _PARAM.match(text, pos)
            if not p:
                break
            params[p.group(1).lower()] = re.sub(r"\\(.)", r"\1", p.group(2)) if p.group(2) is not None \
                else p.group(3)
            pos = p.end()
            if pos < len(text) and text[pos] == ",":
                pos += 1
        out.append(Challenge(scheme, params))
    return out
