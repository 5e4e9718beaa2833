"""Pull, push and login through berthd against Debian's docker-registry (and small hostile registries of our own).

The real docker CLI, docker-py and skopeo are the judges: push a loaded fixture, remove it, pull it back and get
the same image ID; skopeo reads what berth pushed; bad registries give clear errors and leave nothing behind.
Everything listens on 127.0.0.1 ports picked here; nothing leaves the machine.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from berth.errors import Unauthorized
from berth.registry.client.auth import Credentials, InsecurePolicy, merge_scopes, parse_challenges
from berth.registry.client.push import gzip_parallel
from berth.registry.client.transport import Transport
from berth.testing.daemon import BerthDaemon, running
from berth.testing.rootfs import FIXTURES
from berth.testing.servers import DISTRIBUTION, ServerProcess, distribution
from berth.testing.waiting import free_port

REGISTRY_BIN = DISTRIBUTION
SKOPEO = "/usr/bin/skopeo"
MULTILAYER_ID = None  # filled from the loaded image

needs_registry = pytest.mark.skipif(not os.path.exists(REGISTRY_BIN),
                                    reason="Debian's docker-registry is not installed (apt docker-registry)")


def bcrypt_hash(password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))


Registry = ServerProcess


def start_registry(base: Path, htpasswd: dict[str, str] | None = None) -> Registry:
    """Debian's docker-registry on a free loopback port, storage under ``base``, with htpasswd users if given."""
    base.mkdir(parents=True, exist_ok=True)
    users = None
    if htpasswd:
        users = base / "htpasswd"
        users.write_text("".join(f"{u}:{bcrypt_hash(p)}\n" for u, p in htpasswd.items()))
    return distribution(base, htpasswd=users)


@pytest.fixture(scope="module")
def daemon() -> Iterator[BerthDaemon]:
    with running(BerthDaemon()) as d:
        yield d


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    if not os.path.exists(REGISTRY_BIN):
        pytest.skip("Debian's docker-registry is not installed")
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def loaded(daemon: BerthDaemon) -> str:
    """The multilayer fixture loaded from its docker-save archive (uncompressed layers); its image ID."""
    if daemon.docker("image", "inspect", "berth-fixture/multilayer:1.0", check=False).returncode != 0:
        daemon.docker("load", "-i", str(FIXTURES / "multilayer-docker-save.tar"))
    return daemon.docker("image", "inspect", "-f", "{{.Id}}", "berth-fixture/multilayer:1.0").stdout.strip()


def image_id(daemon: BerthDaemon, name: str) -> str:
    return daemon.docker("image", "inspect", "-f", "{{.Id}}", name).stdout.strip()


# --- units: challenges, scopes, gzip, plain-HTTP policy -----------------------------------------------------


def test_challenges_with_quoted_commas_and_several_schemes() -> None:
    got = parse_challenges(['Bearer realm="https://auth.example/token",service="reg.example",'
                            'scope="repository:a/b:pull,push", Basic realm="x, y"', 'Basic realm="second"'])
    assert [(c.scheme.lower(), c.params) for c in got] == [
        ("bearer", {"realm": "https://auth.example/token", "service": "reg.example",
                    "scope": "repository:a/b:pull,push"}),
        ("basic", {"realm": "x, y"}),
        ("basic", {"realm": "second"}),
    ]
    assert merge_scopes(["repository:a:pull"], ["repository:a:push", "repository:b:pull"]) == (
        "repository:a:pull,push", "repository:b:pull")


def test_gzip_parallel_is_valid_and_deterministic() -> None:
    import gzip
    import io
    data = os.urandom(300_000) + b"a" * 3_000_000 + os.urandom(1000)
    outs = []
    for threads in (1, 3):
        buf = io.BytesIO()
        gzip_parallel(io.BytesIO(data), buf.write, block=256 * 1024, threads=threads)
        outs.append(buf.getvalue())
    assert outs[0] == outs[1]
    assert gzip.decompress(outs[0]) == data
    empty = io.BytesIO()
    gzip_parallel(io.BytesIO(b""), empty.write)
    assert gzip.decompress(empty.getvalue()) == b""


def test_plain_http_only_for_loopback_and_insecure() -> None:
    policy = InsecurePolicy(["reg.internal:5000", "10.1.0.0/16"])
    assert policy.allows_http("localhost:5000") and policy.allows_http("127.0.0.5:80")
    assert policy.allows_http("[::1]:5000") and policy.allows_http("reg.internal:5000")
    assert policy.allows_http("10.1.2.3:5000")
    assert not policy.allows_http("registry-1.docker.io") and not policy.allows_http("10.2.0.1:5000")


def test_unreachable_registry_names_the_request() -> None:
    port = free_port()  # nothing listens there
    t = Transport(f"127.0.0.1:{port}")
    with pytest.raises(Exception) as info:
        t.ping()
    assert f'"http://127.0.0.1:{port}/v2/"' in str(info.value) and "connection refused" in str(info.value)


# --- the docker CLI through berthd against docker-registry ----------------------------------------------------


@pytest.mark.root
@pytest.mark.docker_cli
@needs_registry
def test_push_rmi_pull_same_image_id(daemon: BerthDaemon, registry: Registry, loaded: str) -> None:
    name = f"{registry.addr}/fixture/multilayer:1.0"
    daemon.docker("tag", "berth-fixture/multilayer:1.0", name)
    out = daemon.docker("push", name).stdout
    assert "The push refers to repository" in out and "digest: sha256:" in out, out
    again = daemon.docker("push", name).stdout
    assert "Layer already exists" in again, again
    daemon.docker("rmi", name)
    pulled = daemon.docker("pull", name).stdout
    assert "Digest: sha256:" in pulled, pulled
    assert image_id(daemon, name) == loaded
    # a clean store: remove every tag, then pull for real
    daemon.docker("rmi", "-f", loaded)
    pulled = daemon.docker("pull", name).stdout
    assert "Pull complete" in pulled and f"Downloaded newer image for {name}" in pulled, pulled
    assert image_id(daemon, name) == loaded
    digests = daemon.docker("image", "inspect", "-f", "{{json .RepoDigests}}", name).stdout
    assert f"{registry.addr}/fixture/multilayer@sha256:" in digests
    run = daemon.docker("run", "--rm", name, "cat", "/etc/motd", check=False)
    assert run.returncode == 0 or "No such file" in run.stderr, run


@pytest.mark.root
@needs_registry
def test_skopeo_reads_what_berth_pushed(daemon: BerthDaemon, registry: Registry, loaded: str,
                                         tmp_path: Path) -> None:
    if not os.path.exists(SKOPEO):
        pytest.skip("skopeo is not installed")
    name = f"{registry.addr}/fixture/skopeo:1"
    daemon.docker("tag", "berth-fixture/multilayer:1.0", name)
    daemon.docker("push", name)
    inspect = subprocess.run([SKOPEO, "inspect", "--tls-verify=false", f"docker://{name}"], capture_output=True,
                             text=True, timeout=60)
    assert inspect.returncode == 0, inspect.stderr
    assert len(json.loads(inspect.stdout)["Layers"]) >= 2
    copy = subprocess.run([SKOPEO, "copy", "--src-tls-verify=false", f"docker://{name}",
                           f"oci:{tmp_path / 'layout'}:x"], capture_output=True, text=True, timeout=120)
    assert copy.returncode == 0, copy.stderr


@pytest.mark.root
@needs_registry
def test_docker_py_pull_and_push(daemon: BerthDaemon, registry: Registry, loaded: str) -> None:
    client = daemon.client()
    image = client.images.get("berth-fixture/multilayer:1.0")
    repo = f"{registry.addr}/dockerpy/multi"
    image.tag(repo, "v1")
    lines = list(client.images.push(repo, tag="v1", stream=True, decode=True))
    assert any("aux" in line for line in lines), lines
    assert not any("error" in line for line in lines), lines
    pulled = client.images.pull(repo, tag="v1")
    assert pulled.id == loaded


@pytest.mark.root
@needs_registry
def test_pull_of_oci_fixture_pushed_by_skopeo(daemon: BerthDaemon, registry: Registry) -> None:
    """gzip layers in an OCI manifest, written by another tool; pushed back by berth byte-exact."""
    if not os.path.exists(SKOPEO):
        pytest.skip("skopeo is not installed")
    name = f"{registry.addr}/oci/multilayer:1.0"
    copy = subprocess.run([SKOPEO, "copy", "--dest-tls-verify=false",
                           f"docker-archive:{FIXTURES / 'multilayer-docker-save.tar'}", f"docker://{name}",
                           "--format", "oci"], capture_output=True, text=True, timeout=120)
    assert copy.returncode == 0, copy.stderr
    out = daemon.docker("pull", name).stdout
    digest = next(line.split()[-1] for line in out.splitlines() if line.startswith("Digest:"))
    other = f"{registry.addr}/oci/copy:1.0"
    daemon.docker("tag", name, other)
    pushed = daemon.docker("push", other).stdout
    assert f"digest: {digest}" in pushed, pushed   # the same manifest bytes: same digest
    assert "Mounted from oci/multilayer" in pushed or "Layer already exists" in pushed, pushed


# --- login ---------------------------------------------------------------------------------------------------


@pytest.mark.root
@needs_registry
def test_login_logout_with_htpasswd(daemon: BerthDaemon, tmp_path: Path, loaded: str) -> None:
    reg = start_registry(tmp_path / "auth-registry", htpasswd={"alice": "s3cret"})
    try:
        name = f"{reg.addr}/private/img:1"
        daemon.docker("tag", "berth-fixture/multilayer:1.0", name)
        denied = daemon.docker("push", name, check=False, input="")
        assert denied.returncode != 0 and "no basic auth credentials" in denied.stderr, denied
        bad = daemon.docker("login", "-u", "alice", "--password-stdin", reg.addr, input="wrong\n", check=False)
        assert bad.returncode != 0 and "401 Unauthorized" in bad.stderr, bad
        ok = daemon.docker("login", "-u", "alice", "--password-stdin", reg.addr, input="s3cret\n")
        assert "Login Succeeded" in ok.stdout
        daemon.docker("push", name)
        daemon.docker("rmi", name)
        daemon.docker("pull", name)
        daemon.docker("logout", reg.addr)
        daemon.docker("rmi", name)
        denied = daemon.docker("pull", name, check=False, input="")
        assert denied.returncode != 0 and "no basic auth credentials" in denied.stderr, denied
    finally:
        reg.stop()


# --- a registry that plays Docker Hub's token dance ------------------------------------------------------------


class TokenServer:
    """A token realm on its own port: Basic credentials (or anonymous) in, a JWT-shaped opaque token out."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users
        self.tokens: dict[str, tuple[str, list[str]]] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                from urllib.parse import parse_qs, urlsplit
                q = parse_qs(urlsplit(self.path).query)
                outer.requests.append(self.path)
                user = ""
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    user, _, pw = base64.b64decode(header[6:]).decode().partition(":")
                    if outer.users.get(user) != pw:
                        body = json.dumps({"details": "incorrect username or password"}).encode()
                        self.send_response(401)
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                        return
                token = hashlib.sha256(os.urandom(16)).hexdigest()
                outer.tokens[token] = (user, q.get("scope", []))
                body = json.dumps({"token": token, "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.realm = f"http://127.0.0.1:{self.port}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ProxyRegistry:
    """A front for docker-registry that demands Bearer tokens from ``TokenServer`` (Docker Hub's shape), and can
    misbehave on purpose (``mangle`` rewrites a response)."""

    def __init__(self, backend: str, tokens: TokenServer | None,
                 mangle: Callable[[str, str, int, dict[str, str], bytes], tuple[int, dict[str, str], bytes]]
                 | None = None) -> None:
        self.backend = backend
        outer = self
        self.tokens = tokens
        self.mangle = mangle

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                if outer.tokens is not None:
                    header = self.headers.get("Authorization", "")
                    token = header[7:] if header.startswith("Bearer ") else ""
                    if token not in outer.tokens.tokens:
                        body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
                        name = self.path.split("/")[2] if self.path.count("/") > 3 else ""
                        scope = f',scope="repository:{name}:pull"' if name else ""
                        self.send_response(401)
                        self.send_header("WWW-Authenticate",
                                         f'Bearer realm="{outer.tokens.realm}",service="berth-test"{scope}')
                        self.send_header("Content-Length", str(len(body)))
                        self.end_headers()
                        self.wfile.write(body)
                        return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                conn = http.client.HTTPConnection(outer.backend, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("authorization", "host")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
                out_headers = {k: v for k, v in resp.getheaders()
                               if k.lower() not in ("content-length", "transfer-encoding", "connection")}
                conn.close()
                if outer.mangle is not None:
                    status, out_headers, data = outer.mangle(self.command, self.path, status, out_headers, data)
                self.send_response(status)
                for k, v in out_headers.items():
                    if k.lower() == "location" and v.startswith(f"http://{outer.backend}"):
                        v = v.replace(outer.backend, f"127.0.0.1:{outer.port}")
                    self.send_header(k, v)
                if self.command != "HEAD" or "content-length" not in {k.lower() for k in out_headers}:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.addr = f"127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.root
@needs_registry
def test_token_flow_pull_push_and_wrong_password(daemon: BerthDaemon, registry: Registry, loaded: str) -> None:
    tokens = TokenServer({"bob": "hunter2"})
    proxy = ProxyRegistry(registry.addr, tokens)
    try:
        name = f"{proxy.addr}/hub/img:1"
        daemon.docker("tag", "berth-fixture/multilayer:1.0", name)
        bad = daemon.docker("login", "-u", "bob", "--password-stdin", proxy.addr, input="nope\n", check=False)
        assert bad.returncode != 0 and "incorrect username or password" in bad.stderr, bad
        daemon.docker("login", "-u", "bob", "--password-stdin", proxy.addr, input="hunter2\n")
        daemon.docker("push", name)
        daemon.docker("rmi", name)
        daemon.docker("pull", name)
        assert image_id(daemon, name) == loaded
        assert any("scope=repository%3Ahub%2Fimg%3Apull%2Cpush" in r or "repository%3Ahub%2Fimg" in r
                   for r in tokens.requests), tokens.requests
        daemon.docker("logout", proxy.addr)
    finally:
        proxy.stop()
        tokens.stop()


def test_transport_token_is_cached_and_refreshed_on_401(tmp_path: Path) -> None:
    tokens = TokenServer({"u": "p"})

    class Tiny(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            header = self.headers.get("Authorization", "")
            ok = header.startswith("Bearer ") and header[7:] in tokens.tokens
            if ok and self.path.endswith("/revoke"):
                tokens.tokens.pop(header[7:])
            body = b"{}"
            self.send_response(200 if ok else 401)
            if not ok:
                self.send_header("WWW-Authenticate", f'Bearer realm="{tokens.realm}",service="svc"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Tiny)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        t = Transport(f"127.0.0.1:{server.server_address[1]}", Credentials("u", "p"))
        for _ in range(3):
            with t.request("GET", "/v2/x/tags/list", scopes=("repository:x:pull",)) as r:
                r.read()
        assert len(tokens.requests) == 1  # cached
        with t.request("GET", "/v2/x/revoke", scopes=("repository:x:pull",)) as r:
            r.read()
        with t.request("GET", "/v2/x/tags/list", scopes=("repository:x:pull",)) as r:
            r.read()
        assert len(tokens.requests) == 2  # refreshed after the 401
        wrong = Transport(f"127.0.0.1:{server.server_address[1]}", Credentials("u", "bad"))
        with pytest.raises(Unauthorized, match="incorrect username or password"):
            wrong.login()
    finally:
        server.shutdown()
        server.server_close()
        tokens.stop()


# --- bad input: each a clear error, nothing tagged, no bad blob kept ------------------------------------------


def _blobs(daemon: BerthDaemon) -> set[str]:
    root = daemon.data_root / "content" / "blobs" / "sha256"
    return {p.name for p in root.iterdir()} if root.exists() else set()


@pytest.fixture
def pushed(daemon: BerthDaemon, registry: Registry, loaded: str) -> str:
    name = f"{registry.addr}/bad/base:1"
    daemon.docker("tag", "berth-fixture/multilayer:1.0", name)
    daemon.docker("push", name)
    return name


def _mangled_pull(daemon: BerthDaemon, registry: Registry, mangle: Any) -> subprocess.CompletedProcess[str]:
    proxy = ProxyRegistry(registry.addr, None, mangle)
    try:
        daemon.docker("rmi", "-f", f"{proxy.addr}/bad/base:1", check=False)
        return daemon.docker("pull", f"{proxy.addr}/bad/base:1", check=False)
    finally:
        proxy.stop()


@pytest.mark.root
@needs_registry
@pytest.mark.parametrize("case", ["digest-mismatch", "truncated", "missing-blob", "malformed-manifest",
                                  "oversized-manifest", "type-confused", "schema1"])
def test_bad_registry_answers(daemon: BerthDaemon, registry: Registry, pushed: str, case: str) -> None:
    # start from nothing: the pushed image's blobs are gone from berth's store
    daemon.docker("rmi", "-f", image_id(daemon, pushed), check=False)
    daemon.docker("image", "prune", "-f", check=False)
    before = _blobs(daemon)

    def mangle(method: str, path: str, status: int, headers: dict[str, str], body: bytes) -> Any:
        is_layer = "/blobs/" in path and method == "GET" and len(body) > 2000
        if case == "digest-mismatch" and is_layer:
            body = body[:-10] + b"0123456789"
        elif case == "truncated" and "/blobs/" in path and method == "GET":
            body = body[: len(body) // 2]  # every answer short, resumed ones too: the pull must give up
        elif case == "missing-blob" and is_layer:
            status, body = 404, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}'
        elif "/manifests/" in path and method == "GET":
            headers = {k: v for k, v in headers.items() if k.lower() != "docker-content-digest"}
            if case == "malformed-manifest":
                body = b"{not json"
            elif case == "oversized-manifest":
                body = b" " * (5 * 1024 * 1024) + body
            elif case == "type-confused":
                doc = json.loads(body)
                doc["manifests"] = []
                body = json.dumps(doc).encode()
            elif case == "schema1":
                body = json.dumps({"schemaVersion": 1, "name": "bad/base", "tag": "1", "fsLayers": []}).encode()
                headers["Content-Type"] = "application/vnd.docker.distribution.manifest.v1+prettyjws"
        return status, headers, body

    result = _mangled_pull(daemon, registry, mangle)
    assert result.returncode != 0, result
    expected = {
        "digest-mismatch": "verification failed",
        "truncated": "unexpected EOF",
        "missing-blob": "blob unknown to registry",
        "malformed-manifest": "invalid manifest",
        "oversized-manifest": "too large",
        "type-confused": "invalid manifest",
        "schema1": "schema 1",
    }[case]
    assert expected in result.stderr + result.stdout, result
    tags = daemon.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout
    assert "bad/base" not in tags.replace(registry.addr, ""), tags
    # what stays is verified content only (a later pull reuses it); nothing is stored under a wrong name
    for name in _blobs(daemon) - before:
        data = (daemon.data_root / "content" / "blobs" / "sha256" / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == name


@pytest.mark.root
def test_pull_from_closed_port_names_registry(daemon: BerthDaemon) -> None:
    port = free_port()
    result = daemon.docker("pull", f"127.0.0.1:{port}/x/y:1", check=False)
    assert result.returncode != 0
    assert f"127.0.0.1:{port}" in result.stderr and "connection refused" in result.stderr, result


@pytest.mark.root
@needs_registry
def test_pull_missing_tag_says_manifest_unknown(daemon: BerthDaemon, registry: Registry) -> None:
    result = daemon.docker("pull", f"{registry.addr}/nothing/here:1", check=False)
    assert result.returncode != 0 and "manifest unknown" in result.stderr, result


@pytest.mark.root
@needs_registry
def test_interrupted_download_resumes_with_range(daemon: BerthDaemon, registry: Registry, pushed: str) -> None:
    daemon.docker("rmi", "-f", image_id(daemon, pushed), check=False)
    daemon.docker("image", "prune", "-f", check=False)
    ranges: list[str] = []
    cut: set[str] = set()

    class Flaky(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            conn = http.client.HTTPConnection(registry.addr, timeout=60)
            fwd = {k: v for k, v in self.headers.items() if k.lower() != "host"}
            conn.request("GET", self.path, headers=fwd)
            resp = conn.getresponse()
            data = resp.read()
            if self.headers.get("Range"):
                ranges.append(self.headers["Range"])
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("connection", "transfer-encoding"):
                    self.send_header(k, v)
            self.end_headers()
            if "/blobs/" in self.path and len(data) > 2000 and self.path not in cut and resp.status == 200:
                cut.add(self.path)
                self.wfile.write(data[: len(data) // 3])
                self.wfile.flush()
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(data)

        do_HEAD = do_GET

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        name = f"127.0.0.1:{server.server_address[1]}/bad/base:1"
        out = daemon.docker("pull", name).stdout
        assert "Downloaded newer image" in out, out
        assert cut and ranges and all(r.startswith("bytes=") for r in ranges), (cut, ranges)
    finally:
        server.shutdown()
        server.server_close()


def test_registry_tools_present_note() -> None:
    """Not a check of berth: says which differential tools this run had (shown with -rA)."""
    assert shutil.which("python3") is not None


@pytest.mark.root
@needs_registry
def test_berth_cli_login_push_pull_logout(daemon: BerthDaemon, tmp_path: Path, loaded: str) -> None:
    reg = start_registry(tmp_path / "cli-registry", htpasswd={"carol": "pw"})
    env = {**os.environ, "BERTH_HOST": daemon.host, "DOCKER_CONFIG": str(tmp_path / "cfg")}
    berth = [sys.executable, "-c", "import sys; from berth.cli.main import main; sys.exit(main())"]

    def run(*args: str, input: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([*berth, *args], input=input, capture_output=True, text=True, env=env, timeout=60)

    try:
        name = f"{reg.addr}/cli/img:2"
        daemon.docker("tag", "berth-fixture/multilayer:1.0", name)
        bad = run("login", "-u", "carol", "--password-stdin", reg.addr, input="nope\n")
        assert bad.returncode != 0 and "401 Unauthorized" in bad.stderr, bad
        ok = run("login", "-u", "carol", "--password-stdin", reg.addr, input="pw\n")
        assert ok.returncode == 0 and "Login Succeeded" in ok.stdout, ok
        stored = json.loads((tmp_path / "cfg" / "config.json").read_text())
        assert base64.b64decode(stored["auths"][reg.addr]["auth"]) == b"carol:pw"
        pushed = run("push", name)
        assert pushed.returncode == 0 and "digest: sha256:" in pushed.stdout, pushed
        daemon.docker("rmi", name)
        pulled = run("pull", name)
        assert pulled.returncode == 0 and pulled.stdout.rstrip().endswith(name), pulled
        assert image_id(daemon, name) == loaded
        out = run("logout", reg.addr)
        assert out.returncode == 0 and f"Removing login credentials for {reg.addr}" in out.stdout, out
        assert reg.addr not in json.loads((tmp_path / "cfg" / "config.json").read_text()).get("auths", {})
    finally:
        reg.stop()


@pytest.mark.root
@needs_registry
def test_concurrent_pulls_fetch_each_blob_once(daemon: BerthDaemon, registry: Registry, pushed: str) -> None:
    daemon.docker("rmi", "-f", image_id(daemon, pushed), check=False)
    daemon.docker("image", "prune", "-f", check=False)
    gets: list[str] = []

    def count(method: str, path: str, status: int, headers: dict[str, str], body: bytes) -> Any:
        if method == "GET" and "/blobs/" in path:
            gets.append(path)
            time.sleep(0.3)  # keep the first download in flight while the other pull asks
        return status, headers, body

    proxy = ProxyRegistry(registry.addr, None, count)
    try:
        name = f"{proxy.addr}/bad/base:1"
        results: list[subprocess.CompletedProcess[str]] = []
        threads = [threading.Thread(target=lambda: results.append(daemon.docker("pull", name, check=False)))
                   for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(r.returncode == 0 for r in results), results
        assert len(gets) == len(set(gets)), gets
    finally:
        proxy.stop()


def test_authorization_dropped_on_cross_host_redirect() -> None:
    seen: dict[str, str | None] = {}

    def server(name: str, redirect_to: str | None) -> http.server.ThreadingHTTPServer:
        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                auth = self.headers.get("Authorization")
                if name == "a" and auth is None:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="a"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                seen[name] = auth
                if redirect_to and "/blobs/" in self.path:
                    self.send_response(307)
                    self.send_header("Location", f"http://{redirect_to}/storage/blob")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=s.serve_forever, daemon=True).start()
        return s

    b = server("b", None)
    a = server("a", f"localhost:{b.server_address[1]}")  # another host name: credentials must not follow
    try:
        t = Transport(f"127.0.0.1:{a.server_address[1]}", Credentials("u", "p"))
        with t.request("GET", f"/v2/x/blobs/sha256:{'0' * 64}", scopes=("repository:x:pull",)) as r:
            assert r.read() == b"ok"
        assert seen["a"] is not None and seen["a"].startswith("Basic ")
        assert seen["b"] is None
    finally:
        a.shutdown()
        a.server_close()
        b.shutdown()
        b.server_close()


@pytest.mark.root
@needs_registry
def test_sigkill_mid_pull_then_the_next_pull_resumes(registry: Registry, tmp_path: Path) -> None:
    """SIGKILL of berthd while a layer is half downloaded: the partial download stays under ingest/ (never
    addressable), and the next pull after the restart asks only for the rest of it (Range) and completes."""
    d = BerthDaemon()
    d.start()
    try:
        d.docker("load", "-i", str(FIXTURES / "multilayer-docker-save.tar"))
        name = f"{registry.addr}/resume/base:1"
        d.docker("tag", "berth-fixture/multilayer:1.0", name)
        d.docker("push", name)
        d.docker("rmi", "-f", image_id(d, name))
        d.docker("image", "prune", "-a", "-f")
        halfway = threading.Event()
        release = threading.Event()
        ranges: list[str] = []
        stalled: list[str] = []

        class Stalling(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                conn = http.client.HTTPConnection(registry.addr, timeout=60)
                fwd = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request(self.command, self.path, headers=fwd)
                resp = conn.getresponse()
                data = resp.read()
                if self.headers.get("Range"):
                    ranges.append(f"{self.path} {self.headers['Range']}")
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding"):
                        self.send_header(k, v)
                self.end_headers()
                if self.command == "GET" and "/blobs/" in self.path and len(data) > 2000 and not stalled:
                    stalled.append(self.path)
                    self.wfile.write(data[: len(data) // 3])
                    self.wfile.flush()
                    halfway.set()
                    release.wait(60)  # berthd is killed meanwhile
                    self.close_connection = True
                    return
                if self.command == "GET":
                    self.wfile.write(data)

            do_HEAD = do_GET

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stalling)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            via = f"127.0.0.1:{server.server_address[1]}/resume/base:1"
            pull = subprocess.Popen(["docker", "pull", via], env=d.docker_env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            try:
                assert halfway.wait(60)
                time.sleep(0.5)  # the third that was sent reaches the partial file
                d.kill()
            finally:
                pull.kill()
                pull.wait()
            partials = list((d.data_root / "content" / "ingest").glob("*.partial"))
            assert len(partials) == 1 and partials[0].stat().st_size > 0, partials
            kept = partials[0].stat().st_size
            digest = "sha256:" + partials[0].name.split("-", 1)[1].removesuffix(".partial")
            release.set()
            d.start()
            assert d.docker("image", "inspect", via, check=False).returncode != 0  # nothing tagged by the first
            out = d.docker("pull", via).stdout
            assert "Downloaded newer image" in out, out
            assert f"{stalled[0]} bytes={kept}-" in ranges and digest in stalled[0], (ranges, kept, stalled)
            assert not list((d.data_root / "content" / "ingest").glob("*.partial"))
            assert d.docker("run", "--rm", via, "true").returncode == 0
        finally:
            release.set()
            server.shutdown()
            server.server_close()
    finally:
        d.stop()
