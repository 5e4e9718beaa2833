"""A pytest port of the OCI distribution-spec conformance checklist (shared/reference/security.md §4.1/§4.2).

Runs against berth's registry server on the filesystem driver and on the in-memory driver, and, in the same run,
against Debian's ``docker-registry`` 2.8.2 on 127.0.0.1 (skipped with a reason when the binary is missing).
Where distribution 2.8 answers differently but within the spec (referrers API, ``?tag=``), the test says so.
The storage-driver tests at the end run the same checks on each driver directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from berth.errors import Conflict, InvalidArgument, NotFound
from berth.oci.digest import Digest
from berth.registry.server import RegistryServer, RunningRegistry, ServerConfig
from berth.registry.storage import FilesystemDriver, MemoryDriver, StorageDriver
from berth.testing import servers

DISTRIBUTION = servers.DISTRIBUTION
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
EMPTY_SHA256 = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Target:
    kind: str          # "berth-fs", "berth-memory", "distribution"
    url: str
    session: requests.Session

    @property
    def berth(self) -> bool:
        return self.kind.startswith("berth")

    def req(self, method: str, path: str, **kwargs: object) -> requests.Response:
        url = path if path.startswith("http") else self.url + path
        return self.session.request(method, url, allow_redirects=False, timeout=30, **kwargs)  # type: ignore[arg-type]

    def repo(self) -> str:
        return f"conf/{secrets.token_hex(4)}"

    def location(self, resp: requests.Response) -> str:
        loc = resp.headers["Location"]
        return loc if loc.startswith("http") else self.url + loc

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = _digest(data)
        r = self.req("POST", f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, data=data,
                     headers={"Content-Type": "application/octet-stream"})
        if r.status_code == 202:  # a registry may refuse monolithic POST and open a session instead
            r = self.req("PUT", self.location(r), params={"digest": digest}, data=data)
        assert r.status_code == 201, r.text
        return digest

    def push_image(self, repo: str, tag: str | None = None, layers: int = 1,
                   media_type: str = OCI_MANIFEST) -> tuple[str, bytes]:
        config = json.dumps({"architecture": "amd64", "os": "linux", "salt": secrets.token_hex(8),
                             "rootfs": {"type": "layers", "diff_ids": []}}).encode()
        descs = []
        for _ in range(layers):
            layer = secrets.token_bytes(512)
            descs.append({"mediaType": OCI_LAYER if media_type == OCI_MANIFEST else
                          "application/vnd.docker.image.rootfs.diff.tar.gzip",
                          "digest": self.push_blob(repo, layer), "size": len(layer)})
        config_type = OCI_CONFIG if media_type == OCI_MANIFEST else "application/vnd.docker.container.image.v1+json"
        manifest = json.dumps({"schemaVersion": 2, "mediaType": media_type,
                               "config": {"mediaType": config_type, "digest": self.push_blob(repo, config),
                                          "size": len(config)},
                               "layers": descs}, indent=2).encode()
        ref = tag or _digest(manifest)
        r = self.req("PUT", f"/v2/{repo}/manifests/{ref}", data=manifest, headers={"Content-Type": media_type})
        assert r.status_code == 201, r.text
        assert r.headers["Docker-Content-Digest"] == _digest(manifest)
        return _digest(manifest), manifest


def _error_code(resp: requests.Response) -> str:
    return str(resp.json()["errors"][0]["code"])


@contextlib.contextmanager
def _distribution(tmp: Path) -> Iterator[str]:
    """Debian's docker-registry on a free loopback port, storage under ``tmp``; stopped by PID at the end."""
    with servers.distribution(tmp) as reg:
        deadline = time.monotonic() + 20
        while requests.get(reg.url + "/v2/", timeout=2).status_code != 200:  # listening is not serving yet
            assert time.monotonic() < deadline, "docker-registry does not answer /v2/"
            time.sleep(0.05)
        yield reg.url


@pytest.fixture(scope="module", params=["berth-fs", "berth-memory", "distribution"])
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    kind = request.param
    tmp = tmp_path_factory.mktemp(kind)
    session = requests.Session()
    if kind == "distribution":
        if not os.access(DISTRIBUTION, os.X_OK):
            pytest.skip("Debian's docker-registry is not installed (apt-get install docker-registry)")
        with _distribution(tmp) as url:
            yield Target(kind, url, session)
        return
    driver: StorageDriver = FilesystemDriver(tmp / "root") if kind == "berth-fs" else MemoryDriver()
    with RunningRegistry(RegistryServer(driver, config=ServerConfig(catalog_max=50))) as reg:
        yield Target(kind, reg.url, session)
    session.close()


# --- ping ----------------------------------------------------------------------------------------------------


def test_ping(target: Target) -> None:
    r = target.req("GET", "/v2/")
    assert r.status_code == 200
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"


# --- blobs ---------------------------------------------------------------------------------------------------


def test_blob_post_only_monolithic(target: Target) -> None:
    repo, data = target.repo(), secrets.token_bytes(1000)
    digest = _digest(data)
    r = target.req("POST", f"/v2/{repo}/blobs/uploads/", params={"digest": digest}, data=data)
    assert r.status_code in (201, 202)
    if r.status_code == 201:
        assert r.headers["Location"]
        r = target.req("GET", f"/v2/{repo}/blobs/{digest}")
        assert r.status_code == 200 and r.content == data
        assert r.headers["Docker-Content-Digest"] == digest


def test_blob_post_put_and_head_get(target: Target) -> None:
    repo, data = target.repo(), secrets.token_bytes(3000)
    digest = _digest(data)
    r = target.req("POST", f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202
    assert r.headers["Location"] and r.headers.get("Docker-Upload-UUID")
    r = target.req("PUT", target.location(r), params={"digest": digest}, data=data,
                   headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 201
    assert r.headers["Docker-Content-Digest"] == digest
    assert r.headers["Location"].endswith(f"/v2/{repo}/blobs/{digest}")
    head = target.req("HEAD", f"/v2/{repo}/blobs/{digest}")
    assert head.status_code == 200
    assert int(head.headers["Content-Length"]) == len(data)
    assert head.headers["Docker-Content-Digest"] == digest
    got = target.req("GET", f"/v2/{repo}/blobs/{digest}")
    assert got.status_code == 200 and got.content == data


def test_blob_patch_chunked(target: Target) -> None:
    repo, data = target.repo(), secrets.token_bytes(5000)
    digest = _digest(data)
    chunks = [data[:2000], data[2000:4000], data[4000:]]
    r = target.req("POST", f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202
    loc = target.location(r)
    r = target.req("PATCH", loc, data=chunks[0], headers={"Content-Type": "application/octet-stream",
                                                         "Content-Range": "0-1999"})
    assert r.status_code == 202
    assert r.headers["Range"] == "0-1999"
    loc = target.location(r)
    status = target.req("GET", loc)
    assert status.status_code == 204
    assert status.headers["Range"] == "0-1999" and status.headers["Location"]
    if target.berth:
        # out of order: skips bytes 2000-3999 (distribution 2.8 ignores Content-Range and would append it)
        bad = target.req("PATCH", loc, data=chunks[2], headers={"Content-Type": "application/octet-stream",
                                                                "Content-Range": "4000-4999"})
        assert bad.status_code == 416
    r = target.req("PATCH", loc, data=chunks[1], headers={"Content-Type": "application/octet-stream",
                                                         "Content-Range": "2000-3999"})
    assert r.status_code == 202
    loc = target.location(r)
    if target.berth:
        # a retry of the previous chunk
        again = target.req("PATCH", loc, data=chunks[1], headers={"Content-Type": "application/octet-stream",
                                                                  "Content-Range": "2000-3999"})
        assert again.status_code == 416
    r = target.req("PATCH", loc, data=chunks[2], headers={"Content-Type": "application/octet-stream",
                                                         "Content-Range": "4000-4999"})
    assert r.status_code == 202
    r = target.req("PUT", target.location(r), params={"digest": digest})
    assert r.status_code == 201
    assert target.req("GET", f"/v2/{repo}/blobs/{digest}").content == data


def test_blob_patch_stream(target: Target) -> None:
    repo, data = target.repo(), secrets.token_bytes(300_000)
    digest = _digest(data)
    loc = target.location(target.req("POST", f"/v2/{repo}/blobs/uploads/"))

    def gen() -> Iterator[bytes]:
        for i in range(0, len(data), 65536):
            yield data[i:i + 65536]

    r = target.req("PATCH", loc, data=gen(), headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 202
    assert r.headers["Range"] == f"0-{len(data) - 1}"
    r = target.req("PUT", target.location(r), params={"digest": digest})
    assert r.status_code == 201
    assert target.req("GET", f"/v2/{repo}/blobs/{digest}").content == data


def test_blob_post_cancel(target: Target) -> None:
    repo = target.repo()
    loc = target.location(target.req("POST", f"/v2/{repo}/blobs/uploads/"))
    assert target.req("DELETE", loc).status_code == 204
    r = target.req("GET", loc)
    assert r.status_code == 404 and _error_code(r) == "BLOB_UPLOAD_UNKNOWN"


def test_blob_mount(target: Target) -> None:
    source, dest = target.repo(), target.repo()
    data = secrets.token_bytes(700)
    digest = target.push_blob(source, data)
    assert target.req("HEAD", f"/v2/{dest}/blobs/{digest}").status_code == 404  # not there until mounted
    r = target.req("POST", f"/v2/{dest}/blobs/uploads/", params={"mount": digest, "from": source})
    assert r.status_code == 201
    assert r.headers["Docker-Content-Digest"] == digest
    assert target.req("GET", f"/v2/{dest}/blobs/{digest}").content == data


def test_blob_mount_without_from_or_missing_blob_opens_a_session(target: Target) -> None:
    repo = target.repo()
    digest = target.push_blob(repo, b"mount me")
    r = target.req("POST", f"/v2/{target.repo()}/blobs/uploads/", params={"mount": digest})
    assert r.status_code == 202 and r.headers["Location"]
    missing = _digest(secrets.token_bytes(10))
    r = target.req("POST", f"/v2/{target.repo()}/blobs/uploads/", params={"mount": missing, "from": repo})
    assert r.status_code == 202 and r.headers["Location"]


def test_blob_range_requests(target: Target) -> None:
    repo, data = target.repo(), bytes(range(256)) * 4
    digest = target.push_blob(repo, data)
    r = target.req("GET", f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=10-19"})
    if target.kind == "distribution" and r.status_code == 307:
        pytest.skip("distribution redirects blob GETs (storage middleware)")
    assert r.status_code == 206
    assert r.content == data[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    r = target.req("GET", f"/v2/{repo}/blobs/{digest}", headers={"Range": "bytes=1000-"})
    assert r.status_code == 206 and r.content == data[1000:]
    if not target.berth:
        return  # distribution 2.8 sends a 416 whose Content-Length is the blob's: a broken response
    r = target.req("GET", f"/v2/{repo}/blobs/{digest}", headers={"Range": f"bytes={len(data) + 5}-"})
    assert r.status_code == 416
    assert r.headers["Content-Range"] == f"bytes */{len(data)}"


def test_blob_get_missing(target: Target) -> None:
    repo = target.repo()
    missing = _digest(secrets.token_bytes(8))
    assert target.req("HEAD", f"/v2/{repo}/blobs/{missing}").status_code == 404
    r = target.req("GET", f"/v2/{repo}/blobs/{missing}")
    assert r.status_code == 404 and _error_code(r) == "BLOB_UNKNOWN"


def test_blob_invalid_digest_format(target: Target) -> None:
    r = target.req("GET", f"/v2/{target.repo()}/blobs/sha256:not-hex")
    assert r.status_code in (400, 404)
    if target.berth:
        assert r.status_code == 400 and _error_code(r) == "DIGEST_INVALID"


def test_blob_delete(target: Target) -> None:
    repo = target.repo()
    digest = target.push_blob(repo, secrets.token_bytes(64))
    assert target.req("DELETE", f"/v2/{repo}/blobs/{digest}").status_code == 202
    r = target.req("GET", f"/v2/{repo}/blobs/{digest}")
    assert r.status_code == 404


def test_blob_digest_mismatch_is_digest_invalid(target: Target) -> None:
    repo = target.repo()
    loc = target.location(target.req("POST", f"/v2/{repo}/blobs/uploads/"))
    wrong = _digest(b"something else")
    r = target.req("PUT", loc, params={"digest": wrong}, data=b"these bytes")
    assert r.status_code == 400 and _error_code(r) == "DIGEST_INVALID"
    assert target.req("HEAD", f"/v2/{repo}/blobs/{wrong}").status_code == 404


def test_empty_blob(target: Target) -> None:
    repo = target.repo()
    assert target.push_blob(repo, b"") == EMPTY_SHA256
    r = target.req("HEAD", f"/v2/{repo}/blobs/{EMPTY_SHA256}")
    assert r.status_code == 200 and r.headers["Content-Length"] == "0"


def test_patch_after_put_is_upload_unknown(target: Target) -> None:
    repo, data = target.repo(), b"once"
    loc = target.location(target.req("POST", f"/v2/{repo}/blobs/uploads/"))
    assert target.req("PUT", loc, params={"digest": _digest(data)}, data=data).status_code == 201
    r = target.req("PATCH", loc, data=b"more", headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 404 and _error_code(r) == "BLOB_UPLOAD_UNKNOWN"


def test_blob_of_another_repo_is_not_served(target: Target) -> None:
    digest = target.push_blob(target.repo(), secrets.token_bytes(32))
    assert target.req("GET", f"/v2/{target.repo()}/blobs/{digest}").status_code == 404


def test_concurrent_put_of_the_same_blob(target: Target) -> None:
    repo, data = target.repo(), secrets.token_bytes(200_000)
    statuses: list[int] = []

    def push() -> None:
        with requests.Session() as s:
            r = s.post(f"{target.url}/v2/{repo}/blobs/uploads/", allow_redirects=False, timeout=30)
            loc = r.headers["Location"]
            loc = loc if loc.startswith("http") else target.url + loc
            statuses.append(s.put(loc, params={"digest": _digest(data)}, data=data, timeout=30).status_code)

    threads = [threading.Thread(target=push) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [201] * 4
    assert target.req("GET", f"/v2/{repo}/blobs/{_digest(data)}").content == data


def test_sha512_blob(target: Target) -> None:
    repo, data = target.repo(), secrets.token_bytes(100)
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    loc = target.location(target.req("POST", f"/v2/{repo}/blobs/uploads/"))
    r = target.req("PUT", loc, params={"digest": digest}, data=data)
    assert r.status_code == 201, r.text
    assert target.req("GET", f"/v2/{repo}/blobs/{digest}").content == data


def test_path_traversal_in_name(target: Target) -> None:
    for name in ("a/%2e%2e/b", "a/%2E%2E/b", "UPPER/case", "a//b"):
        r = target.req("GET", f"/v2/{name}/tags/list")
        assert r.status_code in (400, 404) or (r.status_code == 301 and not target.berth), name
        if target.berth:
            assert r.status_code == 400 and _error_code(r) == "NAME_INVALID", name


# --- manifests -----------------------------------------------------------------------------------------------


def test_manifest_put_by_tag_and_get_byte_exact(target: Target) -> None:
    repo = target.repo()
    digest, manifest = target.push_image(repo, "v1")
    for ref in ("v1", digest):
        head = target.req("HEAD", f"/v2/{repo}/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
        assert head.status_code == 200
        assert head.headers["Docker-Content-Digest"] == digest
        assert head.headers["Content-Type"] == OCI_MANIFEST
        assert int(head.headers["Content-Length"]) == len(manifest)
        got = target.req("GET", f"/v2/{repo}/manifests/{ref}", headers={"Accept": OCI_MANIFEST})
        assert got.status_code == 200 and got.content == manifest


def test_manifest_put_by_digest(target: Target) -> None:
    repo = target.repo()
    digest, manifest = target.push_image(repo, None)
    assert target.req("GET", f"/v2/{repo}/manifests/{digest}", headers={"Accept": OCI_MANIFEST}).content == manifest


def test_docker_schema2_manifest(target: Target) -> None:
    repo = target.repo()
    digest, _ = target.push_image(repo, "d", media_type=DOCKER_MANIFEST)
    r = target.req("GET", f"/v2/{repo}/manifests/d", headers={"Accept": DOCKER_MANIFEST})
    assert r.headers["Content-Type"] == DOCKER_MANIFEST and r.headers["Docker-Content-Digest"] == digest


def test_manifest_with_no_layers(target: Target) -> None:
    repo = target.repo()
    target.push_image(repo, "empty", layers=0)


def test_manifest_put_with_tag_parameters(target: Target) -> None:
    repo = target.repo()
    digest, manifest = target.push_image(repo, None)
    r = target.req("PUT", f"/v2/{repo}/manifests/{digest}", params=[("tag", "a"), ("tag", "b")], data=manifest,
                   headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201
    if not target.berth:
        pytest.skip("distribution 2.8 ignores ?tag= (OCI distribution-spec 1.1 feature)")
    assert r.headers["OCI-Tag"] == "a, b"
    assert target.req("GET", f"/v2/{repo}/tags/list").json()["tags"] == ["a", "b"]


def test_manifest_missing(target: Target) -> None:
    repo = target.repo()
    target.push_image(repo, "here")
    for ref in ("nothere", _digest(b"nothing")):
        assert target.req("HEAD", f"/v2/{repo}/manifests/{ref}").status_code == 404
        r = target.req("GET", f"/v2/{repo}/manifests/{ref}")
        assert r.status_code == 404 and _error_code(r) == "MANIFEST_UNKNOWN"


def test_manifest_media_type_must_match_content_type(target: Target) -> None:
    """CVE-2021-41190: a document whose mediaType disagrees with its Content-Type is refused."""
    repo = target.repo()
    _, manifest = target.push_image(repo, None)
    r = target.req("PUT", f"/v2/{repo}/manifests/confused", data=manifest, headers={"Content-Type": OCI_INDEX})
    assert r.status_code == 400 and _error_code(r) == "MANIFEST_INVALID"


def test_manifest_referencing_a_missing_blob(target: Target) -> None:
    repo = target.repo()
    config = target.push_blob(repo, b"{}")
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 2},
                           "layers": [{"mediaType": OCI_LAYER, "digest": _digest(b"absent"), "size": 6}]}).encode()
    r = target.req("PUT", f"/v2/{repo}/manifests/broken", data=manifest, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 400 and _error_code(r) == "MANIFEST_BLOB_UNKNOWN"


def test_manifest_digest_must_match_reference(target: Target) -> None:
    repo = target.repo()
    _, manifest = target.push_image(repo, None)
    r = target.req("PUT", f"/v2/{repo}/manifests/{_digest(b'other')}", data=manifest,
                   headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 400 and _error_code(r) == "DIGEST_INVALID"


def test_manifest_too_large(target: Target) -> None:
    repo = target.repo()
    config = target.push_blob(repo, b"{}")
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 2}, "layers": [],
           "annotations": {"pad": "x" * (4 * 1024 * 1024 + 10)}}
    r = target.req("PUT", f"/v2/{repo}/manifests/big", data=json.dumps(doc).encode(),
                   headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code in (400, 413)
    if target.berth:
        assert r.status_code == 413
    assert target.req("GET", f"/v2/{repo}/manifests/big").status_code == 404


def test_index_and_nested_index(target: Target) -> None:
    repo = target.repo()
    d1, m1 = target.push_image(repo, None)
    d2, m2 = target.push_image(repo, None)
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": d1, "size": len(m1), "platform": {"architecture": "amd64",
                                                                                 "os": "linux"}},
        {"mediaType": OCI_MANIFEST, "digest": d2, "size": len(m2), "platform": {"architecture": "arm64",
                                                                                 "os": "linux"}},
    ]}).encode()
    r = target.req("PUT", f"/v2/{repo}/manifests/multi", data=index, headers={"Content-Type": OCI_INDEX})
    assert r.status_code == 201, r.text
    nested = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_INDEX, "digest": _digest(index), "size": len(index)}]}).encode()
    r = target.req("PUT", f"/v2/{repo}/manifests/nested", data=nested, headers={"Content-Type": OCI_INDEX})
    assert r.status_code == 201, r.text
    got = target.req("GET", f"/v2/{repo}/manifests/multi", headers={"Accept": OCI_INDEX})
    assert got.content == index and got.headers["Content-Type"] == OCI_INDEX
    empty = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
    assert target.req("PUT", f"/v2/{repo}/manifests/none", data=empty,
                      headers={"Content-Type": OCI_INDEX}).status_code == 201


def test_index_referencing_a_missing_manifest(target: Target) -> None:
    repo = target.repo()
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": _digest(b"nope"), "size": 4}]}).encode()
    r = target.req("PUT", f"/v2/{repo}/manifests/sparse", data=index, headers={"Content-Type": OCI_INDEX})
    assert r.status_code == 400 and _error_code(r) == "MANIFEST_BLOB_UNKNOWN"


def test_manifest_delete_by_digest(target: Target) -> None:
    repo = target.repo()
    digest, _ = target.push_image(repo, "gone")
    target.push_image(repo, "stays")
    assert target.req("DELETE", f"/v2/{repo}/manifests/{digest}").status_code == 202
    assert target.req("GET", f"/v2/{repo}/manifests/{digest}").status_code == 404
    assert target.req("GET", f"/v2/{repo}/manifests/gone").status_code == 404
    assert target.req("GET", f"/v2/{repo}/tags/list").json()["tags"] == ["stays"]


def test_tag_delete(target: Target) -> None:
    repo = target.repo()
    digest, _ = target.push_image(repo, "t1")
    r = target.req("DELETE", f"/v2/{repo}/manifests/t1")
    assert r.status_code in (202, 400, 405)
    if r.status_code == 202:
        assert target.req("GET", f"/v2/{repo}/manifests/t1").status_code == 404
        assert target.req("GET", f"/v2/{repo}/manifests/{digest}").status_code == 200


# --- discovery -----------------------------------------------------------------------------------------------


def test_tags_list_and_pagination(target: Target) -> None:
    repo = target.repo()
    _, manifest = target.push_image(repo, "c")
    for tag in ("a", "d", "b"):
        r = target.req("PUT", f"/v2/{repo}/manifests/{tag}", data=manifest, headers={"Content-Type": OCI_MANIFEST})
        assert r.status_code == 201
    r = target.req("GET", f"/v2/{repo}/tags/list")
    assert r.status_code == 200 and r.json()["name"] == repo
    if not target.berth:
        assert sorted(r.json()["tags"]) == ["a", "b", "c", "d"]
        pytest.skip("distribution 2.8 lists tags in directory order, so n/last pages are not lexical")
    assert r.json()["tags"] == ["a", "b", "c", "d"]
    r = target.req("GET", f"/v2/{repo}/tags/list", params={"n": "2"})
    assert r.json()["tags"] == ["a", "b"]
    assert "rel=\"next\"" in r.headers["Link"]
    r = target.req("GET", f"/v2/{repo}/tags/list", params={"n": "2", "last": "b"})
    assert r.json()["tags"] == ["c", "d"]
    r = target.req("GET", f"/v2/{repo}/tags/list", params={"last": "c"})
    assert r.json()["tags"] == ["d"]


def test_tags_list_unknown_repository(target: Target) -> None:
    r = target.req("GET", f"/v2/{target.repo()}/tags/list")
    assert r.status_code == 404 and _error_code(r) == "NAME_UNKNOWN"


def test_catalog(target: Target) -> None:
    repos = sorted(f"cat{secrets.token_hex(3)}/r{i}" for i in range(3))
    for repo in repos:
        target.push_image(repo, "x")
    listed = target.req("GET", "/v2/_catalog", params={"n": "1000" if not target.berth else "50"})
    assert listed.status_code == 200
    assert set(repos) <= set(listed.json()["repositories"])
    r = target.req("GET", "/v2/_catalog", params={"n": "2", "last": repos[0]})
    assert r.json()["repositories"][:2] == sorted(x for x in listed.json()["repositories"] if x > repos[0])[:2]
    assert "Link" in r.headers
    if target.berth:  # CVE-2023-2253: a negative n or a page past catalog.maxentries is refused, not served
        r = target.req("GET", "/v2/_catalog", params={"n": "-1"})
        assert r.status_code == 400 and _error_code(r) == "PAGINATION_NUMBER_INVALID"
        r = target.req("GET", "/v2/_catalog", params={"n": "51"})
        assert r.status_code == 400 and _error_code(r) == "PAGINATION_NUMBER_INVALID"


def _push_artifact(target: Target, repo: str, subject: tuple[str, bytes], artifact_type: str) -> str:
    empty = target.push_blob(repo, b"{}")
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
           "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
           "layers": [], "subject": {"mediaType": OCI_MANIFEST, "digest": subject[0], "size": len(subject[1])},
           "annotations": {"org.example.kind": artifact_type}}
    data = json.dumps(doc).encode()
    r = target.req("PUT", f"/v2/{repo}/manifests/{_digest(data)}", data=data, headers={"Content-Type": OCI_MANIFEST})
    assert r.status_code == 201, r.text
    if target.berth:
        assert r.headers["OCI-Subject"] == subject[0]
    return _digest(data)


def test_referrers(target: Target) -> None:
    repo = target.repo()
    subject = target.push_image(repo, "subject")
    if target.req("GET", f"/v2/{repo}/referrers/{subject[0]}").status_code == 404 and not target.berth:
        pytest.skip("distribution 2.8 has no referrers API (OCI distribution-spec 1.1)")
    sig = _push_artifact(target, repo, subject, "application/example.signature")
    sbom = _push_artifact(target, repo, subject, "application/example.sbom")
    r = target.req("GET", f"/v2/{repo}/referrers/{subject[0]}")
    assert r.status_code == 200 and r.headers["Content-Type"] == OCI_INDEX
    found = {m["digest"]: m for m in r.json()["manifests"]}
    assert set(found) == {sig, sbom}
    assert found[sig]["artifactType"] == "application/example.signature"
    assert found[sig]["annotations"] == {"org.example.kind": "application/example.signature"}
    r = target.req("GET", f"/v2/{repo}/referrers/{subject[0]}", params={"artifactType": "application/example.sbom"})
    assert [m["digest"] for m in r.json()["manifests"]] == [sbom]
    assert r.headers["OCI-Filters-Applied"] == "artifactType"
    r = target.req("GET", f"/v2/{repo}/referrers/{_digest(b'unknown')}")
    assert r.status_code == 200 and r.json()["manifests"] == []


def test_referrer_with_missing_subject_is_accepted(target: Target) -> None:
    repo = target.repo()
    if not target.berth:
        pytest.skip("distribution 2.8 predates subject/referrers")
    ghost = (_digest(b"ghost subject"), b"ghost subject")
    digest = _push_artifact(target, repo, ghost, "application/example.signature")
    r = target.req("GET", f"/v2/{repo}/referrers/{ghost[0]}")
    assert [m["digest"] for m in r.json()["manifests"]] == [digest]


# --- the storage-driver interface, directly ----------------------------------------------------------------


@pytest.fixture(params=["fs", "memory"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> StorageDriver:
    return FilesystemDriver(tmp_path / "root") if request.param == "fs" else MemoryDriver()


def test_driver_uploads_blobs_links(driver: StorageDriver) -> None:
    uuid = driver.start_upload("a/b")
    w = driver.upload_writer("a/b", uuid, 0)
    w.write(b"hello ")
    w.close()
    with pytest.raises(Conflict):
        driver.upload_writer("a/b", uuid, 3)
    with pytest.raises(NotFound):
        driver.upload_state("other", uuid)
    w = driver.upload_writer("a/b", uuid, 6)
    w.write(b"world")
    w.close()
    assert driver.upload_state("a/b", uuid).size == 11
    digest = Digest.of_bytes(b"hello world")
    with pytest.raises(InvalidArgument):
        driver.commit_upload("a/b", driver.start_upload("a/b"), digest)
    assert driver.commit_upload("a/b", uuid, digest) == digest
    assert driver.has_link("a/b", digest) and not driver.has_link("c", digest)
    with driver.open_blob(digest) as f:
        assert f.read() == b"hello world"
    assert driver.blob_size(digest) == 11
    assert driver.repositories() == ["a/b"]
    driver.unlink_blob("a/b", digest)
    assert not driver.has_link("a/b", digest)
    assert [u.uuid for u in driver.uploads()] != [uuid]


def test_driver_manifests_tags_referrers(driver: StorageDriver) -> None:
    data = b'{"schemaVersion":2}'
    digest = driver.put_manifest("r", data, OCI_MANIFEST)
    driver.set_tag("r", "latest", digest)
    ref = driver.put_manifest("r", b'{"ref":1}', OCI_MANIFEST, subject=digest)
    assert driver.resolve_tag("r", "latest") == digest
    assert driver.get_manifest("r", digest).data == data
    assert driver.get_manifest("r", digest).media_type == OCI_MANIFEST
    assert driver.referrers("r", digest) == [ref]
    assert driver.tags("r") == ["latest"]
    with pytest.raises(NotFound):
        driver.get_manifest("other", digest)
    with pytest.raises(InvalidArgument):
        driver.set_tag("r", "bad tag", digest)
    with pytest.raises(InvalidArgument):
        driver.tags("../escape")
    driver.delete_manifest("r", ref)
    assert driver.referrers("r", digest) == []
    driver.delete_manifest("r", digest)
    assert driver.tags("r") == []
    with pytest.raises(NotFound):
        driver.resolve_tag("r", "latest")
