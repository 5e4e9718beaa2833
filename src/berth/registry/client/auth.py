"""Registry authentication: WWW-Authenticate challenges, Basic credentials, and Bearer tokens (Docker Hub's dance).

A registry answers 401 with one or more challenges. ``Basic`` means: send the credentials on every request.
``Bearer realm=…,service=…,scope=…`` means: fetch a token from ``realm`` (with Basic credentials, an identity
token's OAuth2 refresh grant, or anonymously) and send it as ``Authorization: Bearer``. Tokens are cached per
(realm, service, scope) until they expire, and dropped when the registry refuses them.

Also here: which registries may be spoken to over plain HTTP (loopback and ``--insecure-registry`` entries).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from berth.errors import InvalidArgument, Unauthorized
from berth.registry import protocol
from berth.registry.protocol import Challenge

# Docker's floor for a token's lifetime when the server says less (or nothing).
MIN_TOKEN_LIFETIME_S = 60
_MAX_TOKEN_BODY = 1 << 20


@dataclass(frozen=True)
class Credentials:
    """What a user gave for one registry: user/password, or an identity (refresh) token, or a registry token."""

    username: str = ""
    password: str = ""
    identity_token: str = ""
    registry_token: str = ""

    @property
    def anonymous(self) -> bool:
        return not (self.username or self.password or self.identity_token or self.registry_token)

    def basic(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


ANONYMOUS = Credentials()


def parse_challenges(headers: Iterable[str]) -> list[Challenge]:
    """Every challenge in all the ``WWW-Authenticate`` header values (a registry may send several headers)."""
    return [c for header in headers for c in protocol.parse_challenges(header)]


def repository_scope(repo_path: str, actions: Iterable[str]) -> str:
    return str(protocol.Scope.repository(repo_path, *actions))


def merge_scopes(*groups: Iterable[str]) -> tuple[str, ...]:
    """Scopes as a sorted tuple without duplicates; ``repository:x:pull`` and ``…:push`` merge to ``pull,push``."""
    actions: dict[str, list[str]] = {}
    for group in groups:
        for scope in group:
            for one in scope.split(" "):
                if not one:
                    continue
                kind_name, _, acts = one.rpartition(":")
                bucket = actions.setdefault(kind_name or one, [])
                for a in acts.split(",") if kind_name else []:
                    if a and a not in bucket:
                        bucket.append(a)
    return tuple(sorted(f"{k}:{','.join(sorted(v))}" if v else k for k, v in actions.items()))


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float


# (method, url, headers, body) → (status, headers as (name, value) pairs, body); the token fetch goes through the
# transport so it shares its TLS policy and timeouts
Fetch = Callable[[str, str, dict[str, str], bytes | None], tuple[int, list[tuple[str, str]], bytes]]


class Authenticator:
    """Turns challenges into Authorization headers for one registry host; thread-safe, tokens cached."""

    def __init__(self, credentials: Credentials, fetch: Fetch, user_agent: str = "berth") -> None:
        self.credentials = credentials
        self._fetch = fetch
        self._user_agent = user_agent
        self._lock = threading.Lock()
        self._challenge: Challenge | None = None
        self._tokens: dict[tuple[str, str, tuple[str, ...]], _Token] = {}
        self.refresh_token = ""   # an identity token handed out by the token server (``docker login`` keeps it)

    @property
    def challenged(self) -> bool:
        return self._challenge is not None

    @property
    def scheme(self) -> str:
        """The scheme the registry asked for (``basic``, ``bearer``), ``""`` before any challenge."""
        return self._challenge.scheme.lower() if self._challenge is not None else ""

    def header(self, scopes: tuple[str, ...]) -> str | None:
        """The Authorization value for a request needing ``scopes``, once a challenge is known (else None)."""
        with self._lock:
            challenge = self._challenge
        if challenge is None:
            return None
        if challenge.scheme.lower() == "basic":
            if self.credentials.anonymous or not self.credentials.username:
                return None
            return self.credentials.basic()
        if self.credentials.registry_token:
            return f"Bearer {self.credentials.registry_token}"
        return f"Bearer {self._token(challenge, scopes)}"

    def on_unauthorized(self, www_authenticate: list[str], sent: str | None) -> bool:
        """Learn from a 401; True when one retry with a fresh header may help (first challenge, a refused token,
        or a changed challenge). Refused Basic credentials under the same challenge are final."""
        chosen = _pick(parse_challenges(www_authenticate))
        if chosen is None:
            return False
        with self._lock:
            known, self._challenge = self._challenge, chosen
            if sent is not None and sent.startswith("Bearer "):
                stale = sent[len("Bearer "):]
                self._tokens = {k: v for k, v in self._tokens.items() if v.value != stale}
                return not self.credentials.registry_token
        return sent is None or known != chosen

    def _token(self, challenge: Challenge, scopes: tuple[str, ...]) -> str:
        realm = challenge.params.get("realm", "")
        if not realm:
            raise Unauthorized("authentication required: the registry's Bearer challenge names no realm")
        service = challenge.params.get("service", "")
        wanted = merge_scopes(scopes, [challenge.params["scope"]] if challenge.params.get("scope") else [])
        key = (realm, service, wanted)
        with self._lock:
            cached = self._tokens.get(key)
            if cached is not None and cached.expires_at > time.time():
                return cached.value
        token = self._fetch_token(realm, service, wanted)
        with self._lock:
            self._tokens[key] = token
        return token.value

    def _fetch_token(self, realm: str, service: str, scopes: tuple[str, ...]) -> _Token:
        parsed = urllib.parse.urlsplit(realm)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise Unauthorized(f"authentication required: invalid token realm {realm!r}")
        creds = self.credentials
        headers = {"User-Agent": self._user_agent}
        refresh = creds.identity_token or self.refresh_token
        if refresh:
            # OAuth2 refresh grant with the identity token docker login stored (distribution's token auth)
            form = {"grant_type": "refresh_token", "refresh_token": refresh, "client_id": "berth",
                    "scope": " ".join(scopes)}
            if service:
                form["service"] = service
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            status, _hdrs, body = self._fetch("POST", realm, headers, urllib.parse.urlencode(form).encode())
        else:
            query = [("scope", s) for s in scopes]
            if service:
                query.insert(0, ("service", service))
            if creds.username:
                query.append(("account", creds.username))
                headers["Authorization"] = creds.basic()
            sep = "&" if parsed.query else "?"
            url = realm + (sep + urllib.parse.urlencode(query) if query else "")
            status, _hdrs, body = self._fetch("GET", url, headers, None)
        if status == 401 or status == 403:
            raise Unauthorized(_token_error(status, body, realm))
        if status != 200:
            raise Unauthorized(f"token request to {realm} failed: {status} {_server_message(body)}".rstrip())
        return _parse_token(body, realm, self)


def _pick(challenges: list[Challenge]) -> Challenge | None:
    """Bearer when offered (what Docker prefers), else Basic; unknown schemes are ignored."""
    for scheme in ("bearer", "basic"):
        for c in challenges:
            if c.scheme.lower() == scheme:
                return c
    return None


def _parse_token(body: bytes, realm: str, auth: Authenticator) -> _Token:
    if len(body) > _MAX_TOKEN_BODY:
        raise Unauthorized(f"token response from {realm} is too large")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Unauthorized(f"token response from {realm} is not JSON") from None
    if not isinstance(doc, dict):
        raise Unauthorized(f"token response from {realm} is not a JSON object")
    value = doc.get("token") or doc.get("access_token")
    if not isinstance(value, str) or not value:
        raise Unauthorized(f"token response from {realm} has no token")
    lifetime = doc.get("expires_in")
    seconds = lifetime if isinstance(lifetime, int) and lifetime > MIN_TOKEN_LIFETIME_S else MIN_TOKEN_LIFETIME_S
    refresh = doc.get("refresh_token")
    if isinstance(refresh, str) and refresh:
        auth.refresh_token = refresh
    # a little early: the token must still be good when the request that carries it arrives
    return _Token(value, time.time() + seconds - 5)


def _server_message(body: bytes) -> str:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(doc, dict):
        errs = doc.get("errors")
        if isinstance(errs, list) and errs and isinstance(errs[0], dict):
            return str(errs[0].get("message") or errs[0].get("code") or "")
        for key in ("details", "message", "error"):
            if isinstance(doc.get(key), str):
                return str(doc[key])
    return ""


def _token_error(status: int, body: bytes, realm: str) -> str:
    message = _server_message(body)
    return f"unauthorized: {message}" if message else f"unauthorized: incorrect username or password ({realm})"


# --- plain HTTP policy ---------------------------------------------------------------------------------------


def _host_only(hostport: str) -> str:
    if hostport.startswith("["):
        return hostport[1:].split("]", 1)[0]
    return hostport.rsplit(":", 1)[0] if hostport.count(":") == 1 else hostport


class InsecurePolicy:
    """Which registries may be reached over plain HTTP: loopback always, others only when configured
    (``--insecure-registry host[:port]`` or a CIDR), like dockerd."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self.hosts: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            entry = entry.strip()
            if "://" in entry:
                raise InvalidArgument(f"insecure registry {entry} should not contain '://'")
            if "/" in entry:
                try:
                    self.networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    raise InvalidArgument(f"invalid insecure registry {entry!r}") from None
            elif entry:
                self.hosts.add(entry.lower())

    def allows_http(self, hostport: str) -> bool:
        host = _host_only(hostport).lower()
        if host == "localhost" or hostport.lower() in self.hosts or host in self.hosts:
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return ip.is_loopback or any(ip in net for net in self.networks)
