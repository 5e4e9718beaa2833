"""Docker's registry verbs over berth's registry client: pull, push, login (``POST /auth``), distribution inspect.

Credentials arrive per request in ``X-Registry-Auth`` (base64url JSON ``{username, password, serveraddress,
identitytoken}``); the daemon keeps none on disk. One transport per (registry, credentials) is kept so that
connections and Bearer tokens are reused across requests. Plain HTTP is allowed for loopback registries and the
daemon's ``--insecure-registry`` entries.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from berth.errors import InternalError, InvalidArgument, NotFound, Unauthorized
from berth.images.store import ImageStore
from berth.oci.digest import Digest
from berth.oci.reference import DEFAULT_DOMAIN, Reference, parse, parse_tagged
from berth.registry.client.auth import ANONYMOUS, Credentials, InsecurePolicy, repository_scope
from berth.registry.client.pull import MANIFEST_ACCEPT, InFlight, Platform, Puller
from berth.registry.client.push import Pusher
from berth.registry.client.transport import Transport
from berth.registry.protocol import Route, path_for

Emit = Callable[[dict[str, Any]], None]

_MAX_TRANSPORTS = 32
_HUB_ADDRESSES = {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}


class EventSink(Protocol):
    def publish(self, type: str, action: str, actor_id: str,
                attributes: Mapping[str, str] | None = None) -> object: ...


def decode_auth_header(value: str | None) -> Credentials:
    """``X-Registry-Auth``: base64url (padded or not) JSON; empty or ``{}`` is anonymous."""
    if not value or not value.strip():
        return ANONYMOUS
    text = value.strip()
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        doc = json.loads(raw) if raw.strip() else {}
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidArgument("invalid X-Registry-Auth header: not base64url-encoded JSON") from None
    return credentials_from(doc)


def credentials_from(doc: Any) -> Credentials:
    """An AuthConfig document (the X-Registry-Auth payload or the ``POST /auth`` body) as credentials."""
    if doc is None:
        return ANONYMOUS
    if not isinstance(doc, dict):
        raise InvalidArgument("invalid auth config: expected a JSON object")
    username = str(doc.get("username") or "")
    password = str(doc.get("password") or "")
    encoded = doc.get("auth")
    if not username and isinstance(encoded, str) and encoded:
        try:
            username, _, password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidArgument("invalid auth config: auth is not base64 user:password") from None
    return Credentials(username, password, str(doc.get("identitytoken") or ""), str(doc.get("registrytoken") or ""))


def registry_domain(server_address: str) -> str:
    """``https://index.docker.io/v1/``, ``http://localhost:5000`` or ``localhost:5000`` → the registry's domain."""
    text = server_address.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.split("/", 1)[0].lower()
    if not text or text in _HUB_ADDRESSES:
        return DEFAULT_DOMAIN
    return text


@contextlib.contextmanager
def _not_a_login_prompt() -> Iterator[None]:
    """A registry's refusal during pull/push is answered 500 like dockerd does: on a 401 the docker CLI would
    start an interactive login instead of showing the registry's message."""
    try:
        yield
    except Unauthorized as err:
        raise InternalError(str(err)) from None


class RegistryService:
    """Pull, push and login for the engine; blocking, so the API calls it in worker threads."""

    def __init__(self, store: ImageStore, events: EventSink, insecure_registries: Iterable[str] = ()) -> None:
        self.store = store
        self.events = events
        self.insecure = InsecurePolicy(insecure_registries)
        self.inflight = InFlight()
        self._lock = threading.Lock()
        self._transports: OrderedDict[tuple[str, Credentials], Transport] = OrderedDict()

    def transport(self, domain: str, credentials: Credentials) -> Transport:
        key = (domain, credentials)
        with self._lock:
            found = self._transports.get(key)
            if found is not None:
                self._transports.move_to_end(key)
                return found
            made = Transport(domain, credentials, self.insecure)
            self._transports[key] = made
            while len(self._transports) > _MAX_TRANSPORTS:
                _, old = self._transports.popitem(last=False)
                old.close()
            return made

    # --- pull -------------------------------------------------------------------------------------------

    def pull_reference(self, from_image: str, tag: str) -> Reference:
        """``fromImage`` and ``tag`` as the docker CLI and docker-py send them (the tag may be a digest)."""
        try:
            ref = parse(from_image)
        except InvalidArgument as err:
            raise InvalidArgument(f"invalid reference format: {from_image}: {err}") from None
        if tag:
            if ref.tag is not None or ref.digest is not None:
                if tag in (ref.tag, str(ref.digest)):
                    return ref
                raise InvalidArgument("invalid reference format")
            return parse(f"{ref.name}@{tag}") if ":" in tag else ref.with_tag(tag)
        return ref.with_default_tag()

    def pull(self, from_image: str, tag: str, auth: Credentials, platform: str, emit: Emit) -> str:
        """Pull into the image store; returns the image ID."""
        ref = self.pull_reference(from_image, tag)
        transport = self.transport(ref.domain, auth)
        with _not_a_login_prompt():
            result = Puller(self.store, transport, self.inflight, emit, Platform.parse(platform)).pull(ref)
        self.events.publish("image", "pull", ref.familiar(), {"name": ref.familiar()})
        return result.image_id

    # --- push -------------------------------------------------------------------------------------------

    def push(self, name: str, tag: str, auth: Credentials, emit: Emit) -> None:
        """Push one tag, or every tag of the repository when ``tag`` is empty (dockerd's rule)."""
        try:
            ref = parse(name)
        except InvalidArgument:
            raise InvalidArgument(f"invalid reference format: {name}") from None
        if ref.digest is not None:
            raise InvalidArgument("cannot push a digest reference")
        if tag:
            targets = [ref.with_tag(tag)]
        elif ref.tag is not None:
            targets = [ref]
        else:
            targets = sorted((parse_tagged(t) for rec in self.store.db.all() for t in rec.tags
                              if parse_tagged(t).name == ref.name), key=lambda r: r.tag or "")
        found: list[tuple[Reference, str]] = []
        for target in targets:
            image_id = self.store.db.by_tag(str(target))
            if image_id is not None:
                found.append((target, image_id))
        if not found:
            shown = ref.familiar_name if not tag and ref.tag is None else (targets[0].familiar() if targets
                                                                          else ref.familiar())
            raise NotFound(f"An image does not exist locally with the tag: {shown}")
        transport = self.transport(ref.domain, auth)
        for target, image_id in found:
            with _not_a_login_prompt():
                Pusher(self.store, transport, emit).push(target, image_id)
            self.events.publish("image", "push", target.familiar(), {"name": target.familiar()})

    # --- login / distribution -----------------------------------------------------------------------------

    def login(self, body: Any) -> dict[str, str]:
        """``POST /auth``: check the credentials against the registry's ``/v2/``."""
        if not isinstance(body, dict):
            raise InvalidArgument("invalid auth config: expected a JSON object")
        creds = credentials_from(body)
        domain = registry_domain(str(body.get("serveraddress") or ""))
        transport = Transport(domain, creds, self.insecure)
        try:
            transport.login()
        except Unauthorized:
            if transport.auth.scheme == "basic" and not creds.anonymous:
                # dockerd's wording for refused Basic credentials; a token server's own message is kept as is
                raise Unauthorized(f"login attempt to {transport.base}/v2/ failed with status: 401 Unauthorized") \
                    from None
            raise
        finally:
            transport.close()
        return {"Status": "Login Succeeded", "IdentityToken": transport.auth.refresh_token}

    def distribution(self, name: str, auth: Credentials) -> dict[str, Any]:
        """``GET /distribution/{name}/json``: the descriptor a reference resolves to, and its platforms."""
        ref = parse_tagged(name)
        transport = self.transport(ref.domain, auth)
        which = str(ref.digest) if ref.digest else ref.tag
        with transport.request("GET", path_for(Route.MANIFEST, name=ref.path, reference=str(which)),
                               scopes=(repository_scope(ref.path, ["pull"]),),
                               headers={"Accept": MANIFEST_ACCEPT}) as resp:
            raw = resp.read(4 * 1024 * 1024)
            mtype = resp.header("Content-Type").split(";")[0].strip()
        digest = Digest.of_bytes(raw)
        if ref.digest is not None and ref.digest != digest:
            raise InvalidArgument(f"manifest verification failed for digest {ref.digest}")
        try:
            doc = json.loads(raw)
        except ValueError:
            raise InvalidArgument(f"invalid manifest for {ref.familiar()}") from None
        platforms: list[dict[str, Any]] = []
        if isinstance(doc, dict) and isinstance(doc.get("manifests"), list):
            platforms = [m["platform"] for m in doc["manifests"] if isinstance(m, dict)
                         and isinstance(m.get("platform"), dict)]
        return {"Descriptor": {"mediaType": (doc.get("mediaType") if isinstance(doc, dict) else None) or mtype,
                               "digest": str(digest), "size": len(raw)},
                "Platforms": platforms}

    def close(self) -> None:
        with self._lock:
            transports = list(self._transports.values())
            self._transports.clear()
        for t in transports:
            t.close()
