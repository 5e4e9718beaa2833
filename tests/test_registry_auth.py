"""berth's registry server behind htpasswd Basic auth and behind its token server (security.md §4.3 server cases)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import requests

from berth.registry.auth import (
    BasicAuth,
    FailureLimiter,
    Htpasswd,
    TokenAuth,
    TokenIssuer,
    TokenServer,
)
from berth.registry.protocol import Scope, parse_challenges
from berth.registry.server import RegistryServer, RunningRegistry
from berth.registry.storage import MemoryDriver

FIXTURE = Path("/work/shared/fixtures/multilayer-oci.tar")
SERVICE = "berth-test"
ISSUER = "berth-test-issuer"


def _htpasswd(tmp: Path) -> Path:
    """alice:s3cret in Debian htpasswd's format ($2y$); written by htpasswd itself when installed."""
    path = tmp / "htpasswd"
    if shutil.which("htpasswd"):
        subprocess.run(["htpasswd", "-cbB", str(path), "alice", "s3cret"], check=True, capture_output=True)
    else:
        hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(5)).decode().replace("$2b$", "$2y$", 1)
        path.write_text(f"alice:{hashed}\n")
    return path


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _code(resp: requests.Response) -> str:
    return str(resp.json()["errors"][0]["code"])


@pytest.fixture
def basic(tmp_path: Path) -> Iterator[RunningRegistry]:
    auth = BasicAuth(Htpasswd.load(_htpasswd(tmp_path)), realm="berth-test",
                     limiter=FailureLimiter(limit=5, window_s=60))
    with RunningRegistry(RegistryServer(MemoryDriver(), auth)) as reg:
        yield reg


@pytest.fixture
def token(tmp_path: Path) -> Iterator[tuple[RunningRegistry, TokenIssuer]]:
    issuer = TokenIssuer(ISSUER, SERVICE)
    users = Htpasswd.load(_htpasswd(tmp_path))
    server = RegistryServer(MemoryDriver(), None, TokenServer(issuer, users))
    with RunningRegistry(server) as reg:
        server.authorizer = TokenAuth(issuer, f"{reg.url}/token")
        yield reg, issuer


# --- Basic -----------------------------------------------------------------------------------------------


def test_basic_challenge_and_login(basic: RunningRegistry) -> None:
    r = requests.get(basic.url + "/v2/", timeout=10)
    assert r.status_code == 401
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert r.headers["WWW-Authenticate"] == 'Basic realm="berth-test"'
    assert _code(r) == "UNAUTHORIZED"
    r = requests.get(basic.url + "/v2/", headers={"Authorization": _basic("alice", "wrong")}, timeout=10)
    assert r.status_code == 401
    r = requests.get(basic.url + "/v2/", headers={"Authorization": _basic("mallory", "s3cret")}, timeout=10)
    assert r.status_code == 401
    r = requests.get(basic.url + "/v2/", headers={"Authorization": _basic("alice", "s3cret")}, timeout=10)
    assert r.status_code == 200


def test_basic_failures_are_rate_limited(basic: RunningRegistry) -> None:
    for _ in range(5):
        r = requests.get(basic.url + "/v2/", headers={"Authorization": _basic("alice", "guess")}, timeout=10)
        assert r.status_code == 401
    r = requests.get(basic.url + "/v2/", headers={"Authorization": _basic("alice", "s3cret")}, timeout=10)
    assert r.status_code == 429 and _code(r) == "TOOMANYREQUESTS"


def test_htpasswd_checks() -> None:
    users = Htpasswd({"alice": bcrypt.hashpw(b"pw", bcrypt.gensalt(4))})
    assert users.check("alice", "pw")
    assert not users.check("alice", "PW")
    assert not users.check("nobody", "pw")  # still runs bcrypt (against a dummy hash): no timing oracle


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed (apt-get install skopeo)")
def test_skopeo_push_with_basic_credentials(basic: RunningRegistry, tmp_path: Path) -> None:
    dest = f"docker://127.0.0.1:{basic.port}/auth/app:1"
    r = subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci-archive:{FIXTURE}", dest],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "authentication required" in r.stderr.lower() + r.stdout.lower()
    r = subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", "alice:s3cret",
                        f"oci-archive:{FIXTURE}", dest], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


# --- tokens ----------------------------------------------------------------------------------------------


def _fetch_token(reg: RunningRegistry, scope: str | None, auth: str | None = _basic("alice", "s3cret")) -> str:
    params = {"service": SERVICE}
    if scope:
        params["scope"] = scope
    r = requests.get(reg.url + "/token", params=params, headers={"Authorization": auth} if auth else {}, timeout=10)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["token"] == doc["access_token"] and doc["expires_in"] >= 60 and doc["issued_at"]
    return str(doc["token"])


def _bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def test_token_flow(token: tuple[RunningRegistry, TokenIssuer]) -> None:
    reg, _ = token
    r = requests.get(reg.url + "/v2/x/tags/list", timeout=10)
    assert r.status_code == 401 and _code(r) == "UNAUTHORIZED"
    [challenge] = parse_challenges(r.headers["WWW-Authenticate"])
    assert challenge.scheme == "Bearer"
    assert challenge.params == {"realm": f"{reg.url}/token", "service": SERVICE, "scope": "repository:x:pull"}
    tok = _fetch_token(reg, challenge.params["scope"])
    r = requests.get(reg.url + "/v2/x/tags/list", headers=_bearer(tok), timeout=10)
    assert r.status_code == 404 and _code(r) == "NAME_UNKNOWN"  # authorised; the repository is just empty
    assert requests.get(reg.url + "/v2/", headers=_bearer(tok), timeout=10).status_code == 200


def test_token_endpoint_refuses_a_wrong_password(token: tuple[RunningRegistry, TokenIssuer]) -> None:
    reg, _ = token
    r = requests.get(reg.url + "/token", params={"service": SERVICE, "scope": "repository:x:pull"},
                     headers={"Authorization": _basic("alice", "nope")}, timeout=10)
    assert r.status_code == 401
    r = requests.post(reg.url + "/token", data={"grant_type": "password", "username": "alice", "password": "s3cret",
                                                "service": SERVICE, "scope": "repository:x:pull"}, timeout=10)
    assert r.status_code == 200 and r.json()["access_token"]


def test_anonymous_token_grants_nothing(token: tuple[RunningRegistry, TokenIssuer]) -> None:
    reg, _ = token
    tok = _fetch_token(reg, "repository:x:pull", auth=None)
    r = requests.get(reg.url + "/v2/x/tags/list", headers=_bearer(tok), timeout=10)
    assert r.status_code == 401 and 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]


def _forged(claims: dict[str, object], alg: str = "none") -> str:
    def enc(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{enc({'alg': alg, 'typ': 'JWT'})}.{enc(claims)}.{'' if alg == 'none' else 'c2ln'}"


def test_bad_tokens_are_refused(token: tuple[RunningRegistry, TokenIssuer]) -> None:
    reg, issuer = token
    access = [Scope.repository("x", "pull")]
    now = time.time()
    claims = {"iss": ISSUER, "aud": SERVICE, "sub": "alice", "exp": int(now) + 300, "nbf": int(now) - 1,
              "access": [{"type": "repository", "name": "x", "actions": ["pull"]}]}
    bad = {
        "missing": None,
        "garbage": "not.a.token",
        "expired": issuer.issue("alice", access, now=now - 1000),
        "not yet valid": issuer.issue("alice", access, now=now + 1000),
        "wrong audience": TokenIssuer(ISSUER, "other-service", key=issuer._key).issue("alice", access),
        "wrong issuer": TokenIssuer("someone-else", SERVICE, key=issuer._key).issue("alice", access),
        "bad signature": TokenIssuer(ISSUER, SERVICE).issue("alice", access),
        "alg none": _forged(claims, "none"),
        "alg HS256": _forged(claims, "HS256"),
    }
    for why, tok in bad.items():
        r = requests.get(reg.url + "/v2/x/tags/list", headers=_bearer(tok) if tok else {}, timeout=10)
        assert r.status_code == 401, why
        assert r.headers["WWW-Authenticate"].startswith("Bearer "), why
        assert _code(r) == "UNAUTHORIZED", why
    good = issuer.issue("alice", access)
    assert requests.get(reg.url + "/v2/x/tags/list", headers=_bearer(good), timeout=10).status_code == 404


def test_scope_is_per_repository_and_action(token: tuple[RunningRegistry, TokenIssuer]) -> None:
    reg, _ = token
    tok_a = _fetch_token(reg, "repository:a:pull")
    r = requests.get(reg.url + "/v2/b/tags/list", headers=_bearer(tok_a), timeout=10)
    assert r.status_code == 401
    [challenge] = parse_challenges(r.headers["WWW-Authenticate"])
    assert challenge.params["scope"] == "repository:b:pull" and challenge.params["error"] == "insufficient_scope"
    r = requests.post(reg.url + "/v2/a/blobs/uploads/", headers=_bearer(tok_a), timeout=10)
    assert r.status_code == 401
    assert parse_challenges(r.headers["WWW-Authenticate"])[0].params["scope"] == "repository:a:pull,push"
    tok_push = _fetch_token(reg, "repository:a:pull,push")
    assert requests.post(reg.url + "/v2/a/blobs/uploads/", headers=_bearer(tok_push), timeout=10).status_code == 202


def test_catalog_needs_the_catalog_scope(token: tuple[RunningRegistry, TokenIssuer]) -> None:
    reg, _ = token
    tok = _fetch_token(reg, "repository:a:pull")
    r = requests.get(reg.url + "/v2/_catalog", headers=_bearer(tok), timeout=10)
    assert r.status_code == 401
    assert parse_challenges(r.headers["WWW-Authenticate"])[0].params["scope"] == "registry:catalog:*"
    tok = _fetch_token(reg, "registry:catalog:*")
    r = requests.get(reg.url + "/v2/_catalog", headers=_bearer(tok), timeout=10)
    assert r.status_code == 200 and r.json() == {"repositories": []}


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed (apt-get install skopeo)")
def test_skopeo_through_the_token_server(token: tuple[RunningRegistry, TokenIssuer], tmp_path: Path) -> None:
    reg, _ = token
    dest = f"docker://127.0.0.1:{reg.port}/tok/app:1"
    r = subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", "alice:s3cret",
                        f"oci-archive:{FIXTURE}", dest], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["skopeo", "inspect", "--tls-verify=false", "--creds", "alice:s3cret", "--raw", dest],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["schemaVersion"] == 2
