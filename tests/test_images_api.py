"""Images through the Engine API, driven by the real docker CLI and docker-py against a real berthd."""

from __future__ import annotations

import http.server
import io
import json
import os
import subprocess
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from berth.testing.rootfs import FIXTURES

pytestmark = [pytest.mark.root, pytest.mark.docker_cli]

MULTI = FIXTURES / "multilayer-docker-save.tar"
OCI = FIXTURES / "multilayer-oci.tar"
BUSYBOX = FIXTURES / "busybox-docker-save.tar"
MULTI_ID = "sha256:626be372821f11314d992e0ea4e16e1f6311496ea17610d41a4142451e8e11a5"
OCI_ID = "sha256:aed6cee837d96277486419d1594429c08c581f3456d37d4b291ee636a752f2ec"


def blobs(data_root: Path) -> set[str]:
    root = data_root / "content" / "blobs"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def test_docker_load_images_inspect_history(berthd: Any) -> None:
    out = berthd.docker("load", "-i", str(MULTI)).stdout
    assert "Loaded image: berth-fixture/multilayer:1.0" in out
    listing = berthd.docker("images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout
    assert f"berth-fixture/multilayer:1.0 {MULTI_ID}" in listing
    table = berthd.docker("images").stdout.splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert table[1].split()[:3] == ["berth-fixture/multilayer", "1.0", MULTI_ID[7:19]]
    info = json.loads(berthd.docker("image", "inspect", "berth-fixture/multilayer:1.0").stdout)[0]
    cfg = info["Config"]
    assert info["Id"] == MULTI_ID
    assert cfg["Env"] == ["PATH=/bin", "APP_MODE=test"]
    assert cfg["WorkingDir"] == "/srv"
    assert cfg["ExposedPorts"] == {"8080/tcp": {}}
    assert cfg["Volumes"] == {"/var/lib/appdata": {}}
    assert cfg["Labels"] == {"org.example.fixture": "multilayer"}
    assert cfg["Cmd"] == ["cat", "/srv/greeting.txt"]
    assert len(info["RootFS"]["Layers"]) == 5 and info["RootFS"]["Type"] == "layers"
    hist = berthd.docker("history", "--no-trunc", "berth-fixture/multilayer:1.0").stdout
    assert "mkdir -p /data/keep /data/gone /opt/app" in hist
    assert "CMD [\"cat\" \"/srv/greeting.txt\"]" in hist
    assert hist.splitlines()[1].startswith(MULTI_ID)
    assert "<missing>" in hist


def test_oci_archive_loads_with_its_config_digest_as_id(berthd: Any) -> None:
    out = berthd.docker("load", "-i", str(OCI)).stdout
    assert "Loaded image: berth-fixture/multilayer:1.0" in out
    info = json.loads(berthd.docker("image", "inspect", "berth-fixture/multilayer:1.0").stdout)[0]
    assert info["Id"] == OCI_ID


def test_load_from_stdin(berthd: Any) -> None:
    out = berthd.docker("load", input=BUSYBOX.read_bytes()).stdout
    assert "Loaded image: busybox:latest" in out


def test_save_then_load_into_a_fresh_daemon(berthd: Any, berthd_factory: Any, tmp_path: Path) -> None:
    berthd.docker("load", "-i", str(MULTI))
    saved = tmp_path / "saved.tar"
    berthd.docker("save", "-o", str(saved), "berth-fixture/multilayer:1.0")
    with tarfile.open(saved) as tar:
        names = set(tar.getnames())
    assert {"manifest.json", "index.json", "oci-layout", f"blobs/sha256/{MULTI_ID[7:]}"} <= names
    other = berthd_factory()
    assert "Loaded image: berth-fixture/multilayer:1.0" in other.docker("load", "-i", str(saved)).stdout
    info = json.loads(other.docker("image", "inspect", "berth-fixture/multilayer:1.0").stdout)[0]
    assert info["Id"] == MULTI_ID


def test_save_many_images(berthd: Any, tmp_path: Path) -> None:
    berthd.docker("load", "-i", str(MULTI))
    berthd.docker("load", "-i", str(BUSYBOX))
    saved = tmp_path / "two.tar"
    berthd.docker("save", "-o", str(saved), "berth-fixture/multilayer:1.0", "busybox")
    with tarfile.open(saved) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert sorted(t for m in manifest for t in m["RepoTags"]) == ["berth-fixture/multilayer:1.0", "busybox:latest"]


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_bad_archive_refused_and_nothing_changes(berthd: Any, tmp_path: Path, kind: str) -> None:
    berthd.docker("load", "-i", str(BUSYBOX))
    before_images = berthd.docker("images", "-q", "--no-trunc").stdout
    before_blobs = blobs(berthd.data_root)
    data = MULTI.read_bytes()
    bad = tmp_path / "bad.tar"
    bad.write_bytes(data[: len(data) * 2 // 3] if kind == "truncated" else os.urandom(100_000))
    res = berthd.docker("load", "-i", str(bad), check=False)
    assert res.returncode != 0
    assert "invalid archive" in res.stderr or "unexpected EOF" in res.stderr, res.stderr
    assert berthd.docker("images", "-q", "--no-trunc").stdout == before_images
    berthd.docker("image", "prune", "-f")  # runs GC
    assert blobs(berthd.data_root) == before_blobs


def _big_archive(path: Path, size: int) -> None:
    """A docker-save archive with one layer of ``size`` random bytes (random so it cannot compress)."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("big.bin")
        info.size = size
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    data = layer.getvalue()
    import hashlib
    diff = "sha256:" + hashlib.sha256(data).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode()
    cid = hashlib.sha256(config).hexdigest()
    with tarfile.open(path, "w") as tar:
        for name, blob in ((f"{diff[7:]}/layer.tar", data), (f"{cid}.json", config),
                           ("manifest.json", json.dumps([{"Config": f"{cid}.json", "RepoTags": ["big:1"],
                                                          "Layers": [f"{diff[7:]}/layer.tar"]}]).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


@pytest.mark.slow
def test_sigkill_during_load_leaves_no_partial_image(berthd: Any, tmp_path: Path) -> None:
    berthd.docker("load", "-i", str(BUSYBOX))
    before_blobs = blobs(berthd.data_root)
    big = tmp_path / "big.tar"
    _big_archive(big, 200 * 1024 * 1024)
    proc = subprocess.Popen(["/usr/local/bin/docker", "load", "-i", str(big)], env=berthd.docker_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ingest = berthd.data_root / "content" / "ingest"
    deadline = time.time() + 30
    while time.time() < deadline and not any(p.stat().st_size > 10_000_000 for p in _files(ingest)):
        time.sleep(0.01)
    berthd.kill()
    proc.communicate(timeout=30)
    berthd.restart()
    assert "big" not in berthd.docker("images").stdout
    assert blobs(berthd.data_root) == before_blobs
    assert list(_files(ingest)) == []


def _files(d: Path) -> list[Path]:
    return [p for p in d.rglob("*") if p.is_file()] if d.exists() else []


def test_errors_have_docker_wording(berthd: Any) -> None:
    res = berthd.docker("image", "inspect", "nosuch:1", check=False)
    assert res.returncode == 1 and "No such image: nosuch:1" in res.stderr
    res = berthd.docker("rmi", "nosuch", check=False)
    assert "No such image: nosuch" in res.stderr
    api = berthd.client().api
    r = api._get(api._url("/images/{0}/json", "Bad:Name"))
    assert r.status_code == 400 and r.headers["Content-Type"] == "application/json"
    assert "invalid reference format" in r.json()["message"]
    r = api._get(api._url("/images/{0}/json", "nosuch"))
    assert r.status_code == 404 and r.json() == {"message": "No such image: nosuch"}
    r = api._post(api._url("/images/{0}/tag", "nosuch"), params={"repo": "x"})
    assert r.status_code == 404
    res = berthd.docker("tag", "busybox", "UPPER:1", check=False)
    assert res.returncode != 0


def test_tag_and_rmi_rules(berthd: Any) -> None:
    berthd.docker("load", "-i", str(BUSYBOX))
    berthd.docker("tag", "busybox", "localhost:5000/box:v1")
    berthd.docker("tag", "busybox:latest", "mybox")
    ids = berthd.docker("images", "-q").stdout.split()
    assert len(set(ids)) == 1 and len(ids) == 3
    short = ids[0]
    res = berthd.docker("rmi", short, check=False)
    assert res.returncode == 1
    assert f"unable to delete {short} (must be forced) - image is referenced in multiple repositories" in res.stderr
    assert berthd.docker("rmi", "mybox").stdout.strip() == "Untagged: mybox:latest"
    out = berthd.docker("rmi", "-f", short).stdout
    assert "Untagged: busybox:latest" in out and "Untagged: localhost:5000/box:v1" in out and "Deleted: sha256:" in out
    assert berthd.docker("images", "-q").stdout.strip() == ""


def test_images_filters(berthd: Any) -> None:
    berthd.docker("load", "-i", str(BUSYBOX))
    berthd.docker("load", "-i", str(MULTI))
    def repos(*args: str) -> list[str]:
        return sorted(berthd.docker("images", "--format", "{{.Repository}}", *args).stdout.split())
    assert repos("--filter", "label=org.example.fixture=multilayer") == ["berth-fixture/multilayer"]
    assert repos("--filter", "reference=busy*") == ["busybox"]
    assert repos("--filter", "dangling=true") == []
    assert repos("--filter", "since=busybox") == ["berth-fixture/multilayer"]
    assert repos("--filter", "before=berth-fixture/multilayer:1.0") == ["busybox"]
    res = berthd.docker("images", "--filter", "bogus=1", check=False)
    assert res.returncode != 0 and "invalid filter 'bogus'" in res.stderr


def test_import_file_stdin_url_with_changes(berthd: Any, tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        for name, data in (("hello.txt", b"hi\n"), ("etc/motd", b"welcome\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = berthd.docker("import", "-c", "ENV A=1", "-c", 'CMD ["sh"]', "-m", "from a file", str(rootfs),
                        "imp:file").stdout
    assert out.strip().startswith("sha256:")
    info = json.loads(berthd.docker("image", "inspect", "imp:file").stdout)[0]
    assert info["Config"]["Env"] == ["A=1"] and info["Config"]["Cmd"] == ["sh"]
    assert info["Comment"] == "from a file"
    berthd.docker("import", "-", "imp:stdin", input=rootfs.read_bytes())
    with _serve(tmp_path) as port:
        berthd.docker("import", f"http://127.0.0.1:{port}/rootfs.tar", "imp:url")
    same = {json.loads(berthd.docker("image", "inspect", t).stdout)[0]["RootFS"]["Layers"][0]
            for t in ("imp:file", "imp:stdin", "imp:url")}
    assert len(same) == 1
    res = berthd.docker("import", "-c", "RUN echo", str(rootfs), check=False)
    assert res.returncode != 0 and "RUN is not a valid change command" in res.stderr


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _serve:
    def __init__(self, root: Path) -> None:
        self.root = root

    def __enter__(self) -> int:
        handler = lambda *a: _Quiet(*a, directory=str(self.root))  # noqa: E731
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return int(self.server.server_address[1])

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_prune_and_system_df(berthd: Any, tmp_path: Path) -> None:
    berthd.docker("load", "-i", str(BUSYBOX))
    berthd.docker("load", "-i", str(MULTI))
    df = berthd.docker("system", "df").stdout
    assert df.splitlines()[1].split()[:3] == ["Images", "2", "0"]
    berthd.docker("tag", "busybox", "spare:1")
    berthd.docker("rmi", "busybox")
    berthd.docker("rmi", "spare:1")
    out = berthd.docker("image", "prune", "-a", "-f").stdout
    assert "deleted: " + MULTI_ID in out and "untagged: berth-fixture/multilayer:1.0" in out
    assert berthd.docker("images", "-q").stdout.strip() == ""
    assert blobs(berthd.data_root) == set()


def test_docker_py(berthd: Any) -> None:
    client: docker.DockerClient = berthd.client()
    with BUSYBOX.open("rb") as f:
        images = client.images.load(f.read())
    assert [i.tags for i in images] == [["busybox:latest"]]
    img = client.images.get("busybox")
    assert img.tag("copy", "v2") is True
    assert sorted(client.images.get(img.id).tags) == ["busybox:latest", "copy:v2"]
    assert [i.id for i in client.images.list()] == [img.id]
    assert client.images.get(img.short_id.split(":")[1]).id == img.id
    assert img.history()[0]["Id"] == img.id
    data = b"".join(img.save())
    assert len(data) > 1_000_000
    client.images.remove("copy:v2")
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get("copy:v2")
    assert client.api.prune_images({"dangling": True})["SpaceReclaimed"] == 0


def test_events_for_image_actions(berthd: Any) -> None:
    since = int(time.time()) - 1
    berthd.docker("load", "-i", str(BUSYBOX))
    berthd.docker("tag", "busybox", "evt:1")
    berthd.docker("rmi", "evt:1")
    until = int(time.time()) + 1
    out = berthd.docker("events", "--since", str(since), "--until", str(until), "--format",
                        "{{.Type}} {{.Action}}").stdout.split("\n")
    assert "image load" in out and "image tag" in out and "image untag" in out
