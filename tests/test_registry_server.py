"""berth's registry server end to end: skopeo in and out byte-identical, catalog, GC (also while serving),
upload session expiry, the read-only view of berthd's image store, and ``berth registry serve|gc``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from berth.content.store import ContentStore
from berth.metadata.images import ImageDB
from berth.oci.digest import Digest
from berth.registry.gc import collect
from berth.registry.server import RegistryServer, RunningRegistry, ServerConfig
from berth.registry.storage import FilesystemDriver, ImageStoreView
from berth.testing.servers import berth_registry

FIXTURE = Path("/work/shared/fixtures/multilayer-oci.tar")
BERTH = Path(sys.executable).parent / "berth"
needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None,
                                  reason="skopeo is not installed (apt-get install skopeo)")


def _fixture_blobs(tmp: Path) -> tuple[Path, str]:
    """The fixture unpacked under ``tmp``: (its directory, the manifest digest its index names)."""
    out = tmp / "fixture"
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(out, filter="data")
    index = json.loads((out / "index.json").read_text())
    return out, str(index["manifests"][0]["digest"])


def _skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def fs_registry(tmp_path: Path) -> Iterator[tuple[RunningRegistry, FilesystemDriver]]:
    driver = FilesystemDriver(tmp_path / "root")
    with RunningRegistry(RegistryServer(driver, config=ServerConfig(upload_ttl_s=0.5))) as reg:
        yield reg, driver


def _push_fixture(reg: RunningRegistry, ref: str) -> None:
    r = _skopeo("copy", "--dest-tls-verify=false", f"oci-archive:{FIXTURE}", f"docker://127.0.0.1:{reg.port}/{ref}")
    assert r.returncode == 0, r.stderr


@needs_skopeo
def test_skopeo_round_trip_is_byte_identical(fs_registry: tuple[RunningRegistry, FilesystemDriver],
                                             tmp_path: Path) -> None:
    reg, _ = fs_registry
    _push_fixture(reg, "x:1")
    out = tmp_path / "out"
    r = _skopeo("copy", "--src-tls-verify=false", f"docker://127.0.0.1:{reg.port}/x:1", f"oci:{out}:1")
    assert r.returncode == 0, r.stderr
    src, manifest = _fixture_blobs(tmp_path)
    assert json.loads((out / "index.json").read_text())["manifests"][0]["digest"] == manifest
    src_blobs = {p.name: p.read_bytes() for p in (src / "blobs" / "sha256").iterdir()}
    out_blobs = {p.name: p.read_bytes() for p in (out / "blobs" / "sha256").iterdir()}
    assert out_blobs == src_blobs
    got = requests.get(f"{reg.url}/v2/x/manifests/1", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
                       timeout=10)
    assert got.content == src_blobs[manifest.split(":")[1]]
    assert got.headers["Docker-Content-Digest"] == manifest


@needs_skopeo
def test_catalog_lists_pushed_repositories(fs_registry: tuple[RunningRegistry, FilesystemDriver]) -> None:
    reg, _ = fs_registry
    _push_fixture(reg, "team/app:1")
    _push_fixture(reg, "other:2")  # blobs come from team/app by cross-repository mount
    assert requests.get(f"{reg.url}/v2/_catalog", timeout=10).json() == {"repositories": ["other", "team/app"]}
    assert requests.get(f"{reg.url}/v2/other/tags/list", timeout=10).json() == {"name": "other", "tags": ["2"]}


@needs_skopeo
def test_gc_removes_only_what_nothing_references(fs_registry: tuple[RunningRegistry, FilesystemDriver],
                                                 tmp_path: Path) -> None:
    reg, driver = fs_registry
    _push_fixture(reg, "keep:1")
    src, _ = _fixture_blobs(tmp_path)
    kept = {Digest.parse(f"sha256:{p.name}") for p in (src / "blobs" / "sha256").iterdir()}
    # an orphan layer (pushed, never referenced) and an image whose manifest is then deleted
    orphan = b"orphan layer " * 100
    r = requests.post(f"{reg.url}/v2/junk/blobs/uploads/", params={"digest": str(Digest.of_bytes(orphan))},
                      data=orphan, timeout=10)
    assert r.status_code == 201
    config = b'{"rootfs":{"type":"layers","diff_ids":[]}}'
    requests.post(f"{reg.url}/v2/junk/blobs/uploads/", params={"digest": str(Digest.of_bytes(config))},
                  data=config, timeout=10)
    doc = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                 "digest": str(Digest.of_bytes(config)), "size": len(config)},
                      "layers": []}).encode()
    r = requests.put(f"{reg.url}/v2/junk/manifests/gone", data=doc,
                     headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, timeout=10)
    assert r.status_code == 201
    assert requests.delete(f"{reg.url}/v2/junk/manifests/{Digest.of_bytes(doc)}", timeout=10).status_code == 202

    # within the grace period nothing goes; a dry run deletes nothing
    assert collect(driver).blobs_removed == ()
    dry = collect(driver, dry_run=True, grace_s=0)
    assert set(dry.blobs_removed) == {Digest.of_bytes(orphan), Digest.of_bytes(config), Digest.of_bytes(doc)}
    assert driver.blob_size(Digest.of_bytes(orphan)) == len(orphan)

    report = collect(driver, grace_s=0)
    assert set(report.blobs_removed) == set(dry.blobs_removed)
    assert {b.digest for b in driver.walk_blobs()} == kept
    assert requests.head(f"{reg.url}/v2/junk/blobs/{Digest.of_bytes(orphan)}", timeout=10).status_code == 404
    out = tmp_path / "out"
    cp = _skopeo("copy", "--src-tls-verify=false", f"docker://127.0.0.1:{reg.port}/keep:1", f"oci:{out}:1")
    assert cp.returncode == 0, cp.stderr


def test_gc_waits_for_writers_and_writers_wait_for_gc(fs_registry: tuple[RunningRegistry, FilesystemDriver]) -> None:
    reg, driver = fs_registry
    data = b"pushed while a sweep runs"
    loc = requests.post(f"{reg.url}/v2/w/blobs/uploads/", timeout=10).headers["Location"]
    done: list[int] = []
    with driver.exclusive():
        t = threading.Thread(target=lambda: done.append(requests.put(
            reg.url + loc, params={"digest": str(Digest.of_bytes(data))}, data=data, timeout=30).status_code))
        t.start()
        time.sleep(0.3)
        assert done == []  # the commit waits for the sweep
    t.join(10)
    assert done == [201]
    assert collect(driver, grace_s=60).blobs_removed == ()  # fresh and unreferenced: kept by the grace period


def test_upload_sessions_expire(fs_registry: tuple[RunningRegistry, FilesystemDriver]) -> None:
    reg, driver = fs_registry
    r = requests.post(f"{reg.url}/v2/slow/blobs/uploads/", timeout=10)
    loc = reg.url + r.headers["Location"]
    assert requests.get(loc, timeout=10).status_code == 204
    time.sleep(0.7)
    r = requests.patch(loc, data=b"late", timeout=10)
    assert r.status_code == 404 and r.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
    requests.post(f"{reg.url}/v2/slow/blobs/uploads/", timeout=10)
    deadline = time.monotonic() + 5
    while driver.uploads() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert driver.uploads() == []  # the purge loop removed the abandoned session too


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    """A berthd-shaped data root holding the fixture image, tagged busybox:latest (no unpacking needed)."""
    root = tmp_path / "data"
    src, manifest = _fixture_blobs(tmp_path)
    content = ContentStore(root / "content")
    for blob in (src / "blobs" / "sha256").iterdir():
        content.put(blob.read_bytes(), Digest.parse(f"sha256:{blob.name}"))
    config = json.loads(content.read(Digest.parse(manifest)))["config"]["digest"]
    db = ImageDB(root / "berth.db")
    db.put_image(config, manifest, "application/vnd.oci.image.manifest.v1+json",
                 ["docker.io/library/busybox:latest", "localhost:5000/team/app:v2"], [])
    db.close()
    return root


@needs_skopeo
def test_read_only_view_of_the_image_store(data_root: Path, tmp_path: Path) -> None:
    view = ImageStoreView.open(data_root)
    with RunningRegistry(RegistryServer(view)) as reg:
        assert requests.get(f"{reg.url}/v2/_catalog", timeout=10).json() == {"repositories": ["busybox", "team/app"]}
        assert requests.get(f"{reg.url}/v2/team/app/tags/list", timeout=10).json()["tags"] == ["v2"]
        out = tmp_path / "out"
        cp = _skopeo("copy", "--src-tls-verify=false", f"docker://127.0.0.1:{reg.port}/busybox:latest",
                     f"oci:{out}:1")
        assert cp.returncode == 0, cp.stderr
        src, manifest = _fixture_blobs(tmp_path / "again")
        assert {p.name for p in (out / "blobs" / "sha256").iterdir()} == \
            {p.name for p in (src / "blobs" / "sha256").iterdir()}
        r = requests.get(f"{reg.url}/v2/library/busybox/manifests/latest", timeout=10)
        assert r.status_code == 200 and r.headers["Docker-Content-Digest"] == manifest
        for method, path in (("POST", "/v2/busybox/blobs/uploads/"), ("DELETE", f"/v2/busybox/manifests/{manifest}"),
                             ("PUT", "/v2/busybox/manifests/new")):
            r = requests.request(method, reg.url + path, data=b"{}", timeout=10)
            assert r.status_code == 403 and r.json()["errors"][0]["code"] == "DENIED", (method, path)
        cp = _skopeo("copy", "--dest-tls-verify=false", f"oci-archive:{FIXTURE}",
                     f"docker://127.0.0.1:{reg.port}/pushed:1")
        assert cp.returncode != 0 and "denied" in cp.stderr.lower()
    # nothing was copied: the content store is all there is
    assert not (data_root / "registry").exists()


def test_berth_registry_serve_and_gc_commands(tmp_path: Path) -> None:
    with berth_registry(BERTH, tmp_path) as reg:
        r = requests.get(f"{reg.url}/v2/", timeout=10)
        assert r.status_code == 200 and r.headers["Docker-Distribution-API-Version"] == "registry/2.0"
        data = b"cli blob"
        r = requests.post(f"{reg.url}/v2/c/blobs/uploads/", params={"digest": str(Digest.of_bytes(data))},
                          data=data, timeout=10)
        assert r.status_code == 201
    root = tmp_path / "root"
    gc = subprocess.run([str(BERTH), "registry", "gc", "--root", str(root), "--dry-run", "--grace", "0"],
                        capture_output=True, text=True, timeout=60)
    assert gc.returncode == 0, gc.stderr
    assert f"would delete blob {Digest.of_bytes(data)}" in gc.stdout
    gc = subprocess.run([str(BERTH), "registry", "gc", "--root", str(root), "--grace", "0"],
                        capture_output=True, text=True, timeout=60)
    assert gc.returncode == 0 and "1 blobs deleted" in gc.stdout, gc.stdout + gc.stderr
    assert list(FilesystemDriver(root).walk_blobs()) == []
