"""Who may do what on berth's registry server: htpasswd Basic auth and a built-in token server.

* ``Anonymous``  — everything allowed (the default, like a bare ``docker-registry``).
* ``BasicAuth``  — an htpasswd file of bcrypt entries as Debian's ``htpasswd -B`` writes them; a valid user may
  do everything; 401 + ``WWW-Authenticate: Basic realm=...`` otherwise.
* ``TokenAuth``  — distribution's token flow: 401 + ``Bearer realm,service,scope`` challenge; the client fetches
  a JWT from ``TokenServer`` (served by the registry itself at ``/token``) and retries. Tokens are ES256 JWTs
  signed with a key held by the server (``cryptography``); claims iss/aud/exp/nbf/iat/jti/access are checked,
  and ``alg`` must be ES256 (``none``/HS* are refused).

Failed credentials are counted per client address; past the limit the answer is 429 TOOMANYREQUESTS.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from berth.errors import InvalidArgument
from berth.registry.protocol import Challenge, ErrorCode, RegistryError, Scope, parse_scopes

log = logging.getLogger("berth.registry.auth")

TOKEN_PATH = "/token"
DEFAULT_TOKEN_TTL = 300
_LEEWAY_S = 30  # clock skew allowed on exp/nbf, as distribution allows
# bcrypt of a random password, compared against when the user is unknown so that timing does not tell
_DUMMY_HASH = b"$2b$05$ejCugeKijtM9MEhhqmDJieJ4wkHmbb94WXNlNp4Y5uwO5mzui287S"


@dataclass(frozen=True)
class Identity:
    """An authenticated caller and what it may do (``everything`` for Basic users and anonymous mode)."""

    subject: str
    grants: tuple[Scope, ...] = ()
    everything: bool = False

    def allows(self, scope: Scope) -> bool:
        return self.everything or any(g.covers(scope) for g in self.grants)


class Challenged(RegistryError):
    """401 UNAUTHORIZED with the challenge the client must answer."""

    def __init__(self, challenge: Challenge, message: str = "authentication required", detail: Any = None) -> None:
        super().__init__(ErrorCode.UNAUTHORIZED, message, detail)
        self.challenge = challenge


class Authorizer(Protocol):
    """Checks a request's ``Authorization`` against the scopes it needs; raises ``RegistryError``/``Challenged``."""

    def authorize(self, authorization: str | None, needed: Sequence[Scope], peer: str) -> Identity: ...


class FailureLimiter:
    """Counts failed credentials per client address in a sliding window; past ``limit`` → 429."""

    def __init__(self, limit: int = 20, window_s: float = 60.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._lock = threading.Lock()
        self._failures: dict[str, list[float]] = {}

    def check(self, peer: str) -> None:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._failures.get(peer, []) if now - t < self.window_s]
            self._failures[peer] = recent
            if len(recent) >= self.limit:
                raise RegistryError(ErrorCode.TOOMANYREQUESTS, "too many failed authentication attempts")

    def failed(self, peer: str) -> None:
        with self._lock:
            self._failures.setdefault(peer, []).append(time.monotonic())


class Anonymous:
    """No authentication: every caller may do everything."""

    def authorize(self, authorization: str | None, needed: Sequence[Scope], peer: str) -> Identity:
        return Identity("", (), everything=True)


# --- htpasswd ------------------------------------------------------------------------------------------


class Htpasswd:
    """Users and bcrypt hashes from an htpasswd file (``$2y$``/``$2a$``/``$2b$``; other schemes never match)."""

    def __init__(self, entries: Mapping[str, bytes]) -> None:
        self._entries = dict(entries)

    @classmethod
    def load(cls, path: Path) -> Htpasswd:
        entries: dict[str, bytes] = {}
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, hashed = line.partition(":")
            if not sep or not user:
                raise InvalidArgument(f"{path}:{number}: not a user:hash line")
            if not hashed.startswith(("$2y$", "$2a$", "$2b$")):
                log.warning("%s:%d: user %s has a non-bcrypt hash; only bcrypt is supported", path, number, user)
                continue
            entries[user] = hashed.encode()
        return cls(entries)

    def check(self, user: str, password: str) -> bool:
        import bcrypt

        hashed = self._entries.get(user)
        ok = bcrypt.checkpw(password.encode(), hashed if hashed is not None else _DUMMY_HASH)
        return ok and hashed is not None


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """(user, password) from a ``Basic`` Authorization header, or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


class BasicAuth:
    """htpasswd users may do everything; everyone else gets a Basic challenge."""

    def __init__(self, htpasswd: Htpasswd, realm: str = "berth-registry",
                 limiter: FailureLimiter | None = None) -> None:
        self.htpasswd = htpasswd
        self.realm = realm
        self.limiter = limiter or FailureLimiter()

    def authorize(self, authorization: str | None, needed: Sequence[Scope], peer: str) -> Identity:
        self.limiter.check(peer)
        challenge = Challenge("Basic", {"realm": self.realm})
        creds = basic_credentials(authorization)
        if creds is None or not creds[0]:
            raise Challenged(challenge)
        if not self.htpasswd.check(*creds):
            self.limiter.failed(peer)
            raise Challenged(challenge, "authentication required", "invalid username or password")
        return Identity(creds[0], (), everything=True)


# --- JWT -------------------------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenError(Exception):
    """A bearer token that must not be honoured; the message says why."""


class TokenIssuer:
    """Signs and verifies the registry's JWTs (ES256 over P-256)."""

    def __init__(self, issuer: str, service: str, ttl_s: int = DEFAULT_TOKEN_TTL, key: Any = None) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        self.issuer = issuer
        self.service = service
        self.ttl_s = max(60, ttl_s)  # the spec: expires_in is never below 60
        self._key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
        der = self._key.public_key().public_bytes(serialization.Encoding.DER,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)
        # libtrust's key ID, which distribution matches against a token's kid
        b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
        self.kid = ":".join(b32[i:i + 4] for i in range(0, 48, 4))

    def issue(self, subject: str, access: Sequence[Scope], now: float | None = None) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        now = time.time() if now is None else now
        header = {"typ": "JWT", "alg": "ES256", "kid": self.kid}
        claims = {
            "iss": self.issuer, "sub": subject, "aud": self.service,
            "exp": int(now) + self.ttl_s, "nbf": int(now) - 1, "iat": int(now), "jti": secrets.token_hex(16),
            "access": [{"type": s.type, "name": s.name, "actions": list(s.actions)} for s in access],
        }
        signing_input = (_b64url(json.dumps(header, separators=(",", ":")).encode()) + "."
                         + _b64url(json.dumps(claims, separators=(",", ":")).encode()))
        r, s = decode_dss_signature(self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def verify(self, token: str, now: float | None = None) -> dict[str, Any]:
        """The claims of a token this issuer signed for this service, still valid; ``TokenError`` otherwise."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

        parts = token.split(".")
        if len(parts) != 3:
            raise TokenError("malformed token")
        try:
            header = json.loads(_unb64url(parts[0]))
            claims = json.loads(_unb64url(parts[1]))
            signature = _unb64url(parts[2])
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise TokenError("malformed token") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise TokenError("malformed token")
        if header.get("alg") != "ES256":
            raise TokenError(f"unsupported signing algorithm {header.get('alg')!r}")
        if len(signature) != 64:
            raise TokenError("invalid token signature")
        r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        try:
            self._key.public_key().verify(encode_dss_signature(r, s), f"{parts[0]}.{parts[1]}".encode(),
                                          ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise TokenError("invalid token signature") from None
        now = time.time() if now is None else now
        if not hmac.compare_digest(str(claims.get("iss", "")), self.issuer):
            raise TokenError("token issuer does not match")
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if not any(isinstance(a, str) and hmac.compare_digest(a, self.service) for a in auds):
            raise TokenError("token audience does not match")
        exp, nbf = claims.get("exp"), claims.get("nbf")
        if not isinstance(exp, int | float) or now > exp + _LEEWAY_S:
            raise TokenError("token has expired")
        if isinstance(nbf, int | float) and now < nbf - _LEEWAY_S:
            raise TokenError("token is not valid yet")
        return claims


def _grants(claims: Mapping[str, Any]) -> tuple[Scope, ...]:
    out = []
    for item in claims.get("access") or []:
        if isinstance(item, dict) and isinstance(item.get("type"), str) and isinstance(item.get("name"), str):
            actions = item.get("actions") or []
            out.append(Scope(item["type"], item["name"], tuple(str(a) for a in actions if isinstance(a, str))))
    return tuple(out)


class TokenAuth:
    """Bearer tokens from ``issuer``; the challenge sends clients to ``realm``."""

    def __init__(self, issuer: TokenIssuer, realm: str, limiter: FailureLimiter | None = None) -> None:
        self.issuer = issuer
        self.realm = realm
        self.limiter = limiter or FailureLimiter()

    def _challenge(self, needed: Sequence[Scope], error: str | None = None) -> Challenge:
        params = {"realm": self.realm, "service": self.issuer.service}
        if needed:
            params["scope"] = " ".join(str(s) for s in needed)
        if error:
            params["error"] = error
        return Challenge("Bearer", params)

    def authorize(self, authorization: str | None, needed: Sequence[Scope], peer: str) -> Identity:
        self.limiter.check(peer)
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Challenged(self._challenge(needed))
        try:
            claims = self.issuer.verify(token.strip())
        except TokenError as err:
            self.limiter.failed(peer)
            raise Challenged(self._challenge(needed, "invalid_token"), "authentication required",
                             str(err)) from None
        identity = Identity(str(claims.get("sub", "")), _grants(claims))
        missing = [s for s in needed if not identity.allows(s)]
        if missing:
            detail = [{"Type": s.type, "Name": s.name, "Action": a} for s in missing for a in s.actions]
            raise Challenged(self._challenge(needed, "insufficient_scope"), "authentication required", detail)
        return identity


@dataclass
class TokenServer:
    """The realm endpoint: ``GET /token?service=&scope=`` (Basic creds optional) and OAuth2's password grant.

    htpasswd users get every action they ask for; anonymous callers get ``pull`` only if ``anonymous_pull``,
    else nothing (their token then fails the registry's scope check). Wrong credentials: 401.
    """

    issuer: TokenIssuer
    htpasswd: Htpasswd | None = None
    anonymous_pull: bool = False
    limiter: FailureLimiter = field(default_factory=FailureLimiter)

    def grant(self, user: str | None, requested: Sequence[Scope]) -> list[Scope]:
        """The part of ``requested`` this caller gets (``user`` None: anonymous)."""
        out = []
        for scope in requested:
            if user is not None or self.htpasswd is None:
                allowed = set(scope.actions) & {"pull", "push", "delete", "*"}
            elif self.anonymous_pull and scope.type == "repository":
                allowed = set(scope.actions) & {"pull"}
            else:
                allowed = set()
            if allowed:
                out.append(Scope(scope.type, scope.name, tuple(a for a in scope.actions if a in allowed)))
        return out

    def token(self, authorization: str | None, query: Mapping[str, list[str]], peer: str,
              form: Mapping[str, list[str]] | None = None) -> tuple[int, dict[str, Any]]:
        """The (status, JSON body) answer to a token request."""
        try:
            self.limiter.check(peer)
        except RegistryError as err:
            return err.status, {"errors": [err.to_json()]}
        params = form if form is not None else query
        user: str | None = None
        if form is not None:
            grant_type = (form.get("grant_type") or [""])[-1]
            if grant_type != "password":
                return 400, {"error": "unsupported_grant_type"}
            creds: tuple[str, str] | None = ((form.get("username") or [""])[-1], (form.get("password") or [""])[-1])
        else:
            creds = basic_credentials(authorization)
        if creds is not None:
            if self.htpasswd is not None and not self.htpasswd.check(*creds):
                self.limiter.failed(peer)
                denied = RegistryError(ErrorCode.UNAUTHORIZED, "authentication required",
                                       "invalid username or password")
                return 401, {"errors": [denied.to_json()], "details": "incorrect username or password"}
            user = creds[0]
        service = (params.get("service") or [""])[-1]
        if service and not hmac.compare_digest(service, self.issuer.service):
            return 400, {"errors": [{"code": "UNSUPPORTED", "message": f"unknown service {service!r}"}]}
        try:
            requested = parse_scopes(params.get("scope") or [])
        except InvalidArgument as err:
            return 400, {"errors": [{"code": "UNSUPPORTED", "message": str(err)}]}
        now = time.time()
        token = self.issuer.issue(user or "", self.grant(user, requested), now)
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return 200, {"token": token, "access_token": token, "expires_in": self.issuer.ttl_s, "issued_at": issued}
