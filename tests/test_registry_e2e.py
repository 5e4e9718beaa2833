"""Issue 5's acceptance against berth's OWN registry server: the docker CLI through berthd pushes to and pulls
from ``berth registry serve`` (anonymous, htpasswd after ``docker login``, and its token server), the catalog
lists what was pushed, push/rmi/pull gives the same image ID, and an image that skopeo copied into the server
pulls and runs through berthd.

The registry runs as a subprocess (the real ``berth registry serve`` command) on a free 127.0.0.1 port with its
storage under the test's tmp_path; nothing leaves the machine.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import requests

from berth.errors import InvalidArgument
from berth.layers.compression import open_decompressed
from berth.oci.digest import Digest
from berth.testing.daemon import BerthDaemon, running
from berth.testing.rootfs import FIXTURES
from berth.testing.servers import berth_registry

BERTH = Path(sys.executable).parent / "berth"
SKOPEO = shutil.which("skopeo")



def _htpasswd(path: Path, users: dict[str, str]) -> Path:
    path.write_text("".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(5)).decode()}\n"
                            for u, p in users.items()))
    return path


@pytest.fixture(scope="module")
def daemon() -> Iterator[BerthDaemon]:
    with running(BerthDaemon()) as d:
        yield d


@pytest.fixture(scope="module")
def loaded(daemon: BerthDaemon) -> str:
    """The multilayer fixture from its docker-save archive (plain tar layers: push gzips them); its image ID."""
    daemon.docker("load", "-i", str(FIXTURES / "multilayer-docker-save.tar"))
    return _image_id(daemon, "berth-fixture/multilayer:1.0")


def _image_id(daemon: BerthDaemon, name: str) -> str:
    return daemon.docker("image", "inspect", "-f", "{{.Id}}", name).stdout.strip()


def _round_trip(daemon: BerthDaemon, loaded: str, name: str) -> None:
    """push, push again (every layer exists), rmi every tag of the image, pull: the same image ID, and it runs."""
    daemon.docker("tag", "berth-fixture/multilayer:1.0", name)
    out = daemon.docker("push", name).stdout
    assert "The push refers to repository" in out and "digest: sha256:" in out, out
    again = daemon.docker("push", name).stdout
    assert "Layer already exists" in again, again
    daemon.docker("rmi", name)
    daemon.docker("rmi", "-f", loaded)  # a clean store: the pull really downloads
    pulled = daemon.docker("pull", name).stdout
    assert "Pull complete" in pulled and f"Downloaded newer image for {name}" in pulled, pulled
    assert _image_id(daemon, name) == loaded
    run = daemon.docker("run", "--rm", name)
    assert run.stdout.strip() != "", run  # CMD cat /srv/greeting.txt
    daemon.docker("tag", name, "berth-fixture/multilayer:1.0")
    daemon.docker("rmi", name)


@pytest.mark.root
@pytest.mark.docker_cli
def test_anonymous_push_pull_and_catalog(daemon: BerthDaemon, loaded: str, tmp_path: Path) -> None:
    reg = berth_registry(BERTH, tmp_path / "anon")
    try:
        _round_trip(daemon, loaded, f"{reg.addr}/team/app:1.0")
        name2 = f"{reg.addr}/other:2"
        daemon.docker("tag", "berth-fixture/multilayer:1.0", name2)
        out = daemon.docker("push", name2).stdout
        assert "Mounted from team/app" in out or "Layer already exists" in out, out
        assert requests.get(reg.url + "/v2/_catalog", timeout=10).json() == {"repositories": ["other", "team/app"]}
        assert requests.get(reg.url + "/v2/team/app/tags/list", timeout=10).json() == {
            "name": "team/app", "tags": ["1.0"]}
        daemon.docker("rmi", name2)
    finally:
        reg.stop()


@pytest.mark.root
@pytest.mark.docker_cli
def test_htpasswd_login_push_pull(daemon: BerthDaemon, loaded: str, tmp_path: Path) -> None:
    base = tmp_path / "basic"
    base.mkdir()
    reg = berth_registry(BERTH, base, "--htpasswd", str(_htpasswd(base / "htpasswd", {"alice": "s3cret"})))
    try:
        name = f"{reg.addr}/private/app:1"
        daemon.docker("tag", "berth-fixture/multilayer:1.0", name)
        denied = daemon.docker("push", name, check=False, input="")
        assert denied.returncode != 0 and "no basic auth credentials" in denied.stderr, denied
        bad = daemon.docker("login", "-u", "alice", "--password-stdin", reg.addr, input="wrong\n", check=False)
        assert bad.returncode != 0 and "401 Unauthorized" in bad.stderr, bad
        ok = daemon.docker("login", "-u", "alice", "--password-stdin", reg.addr, input="s3cret\n")
        assert "Login Succeeded" in ok.stdout, ok
        daemon.docker("rmi", name)
        _round_trip(daemon, loaded, name)
        catalog = requests.get(reg.url + "/v2/_catalog", auth=("alice", "s3cret"), timeout=10).json()
        assert catalog == {"repositories": ["private/app"]}
        daemon.docker("logout", reg.addr)
        daemon.docker("tag", "berth-fixture/multilayer:1.0", name)
        daemon.docker("rmi", name)
        denied = daemon.docker("pull", name, check=False, input="")
        assert denied.returncode != 0 and "no basic auth credentials" in denied.stderr, denied
    finally:
        daemon.docker("logout", reg.addr, check=False)
        reg.stop()


@pytest.mark.root
@pytest.mark.docker_cli
def test_token_server_login_push_pull(daemon: BerthDaemon, loaded: str, tmp_path: Path) -> None:
    base = tmp_path / "token"
    base.mkdir()
    reg = berth_registry(BERTH, base, "--token", "--htpasswd", str(_htpasswd(base / "htpasswd", {"bob": "hunter2"})))
    try:
        name = f"{reg.addr}/tok/app:1"
        challenge = requests.get(reg.url + "/v2/", timeout=10)
        assert challenge.status_code == 401 and challenge.headers["WWW-Authenticate"].startswith("Bearer "), \
            challenge.headers
        bad = daemon.docker("login", "-u", "bob", "--password-stdin", reg.addr, input="nope\n", check=False)
        assert bad.returncode != 0, bad
        daemon.docker("login", "-u", "bob", "--password-stdin", reg.addr, input="hunter2\n")
        _round_trip(daemon, loaded, name)
        token = requests.get(reg.url + "/token", params={"service": "berth-registry", "scope": "registry:catalog:*"},
                             auth=("bob", "hunter2"), timeout=10).json()["token"]
        catalog = requests.get(reg.url + "/v2/_catalog", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert catalog.json() == {"repositories": ["tok/app"]}, catalog.text
    finally:
        daemon.docker("logout", reg.addr, check=False)
        reg.stop()


@pytest.mark.root
@pytest.mark.docker_cli
@pytest.mark.skipif(SKOPEO is None, reason="skopeo is not installed (apt-get install skopeo)")
def test_skopeo_copy_in_then_docker_pull_and_run(daemon: BerthDaemon, tmp_path: Path) -> None:
    reg = berth_registry(BERTH, tmp_path / "skopeo")
    try:
        name = f"{reg.addr}/oci/multilayer:1.0"
        cp = subprocess.run([str(SKOPEO), "copy", "--dest-tls-verify=false",
                             f"oci-archive:{FIXTURES / 'multilayer-oci.tar'}", f"docker://{name}"],
                            capture_output=True, text=True, timeout=120)
        assert cp.returncode == 0, cp.stderr
        out = daemon.docker("pull", name).stdout
        assert "Digest: sha256:42852201597675d1abab649c91230bcc7e7a0f11e31e679385271ad299abbe50" in out, out
        run = daemon.docker("run", "--rm", name, "sh", "-c", "cat /data/keep/new; echo $APP_MODE; pwd")
        assert run.stdout.split() == ["fresh", "test", "/srv"], run
        # and back out: what skopeo reads from berth's server is byte-identical to the fixture's blobs
        out_dir = tmp_path / "out"
        cp = subprocess.run([str(SKOPEO), "copy", "--src-tls-verify=false", f"docker://{name}", f"oci:{out_dir}:1"],
                            capture_output=True, text=True, timeout=120)
        assert cp.returncode == 0, cp.stderr
        assert (out_dir / "blobs" / "sha256" / "42852201597675d1abab649c91230bcc7e7a0f11e31e679385271ad299abbe50"
                ).exists()
        daemon.docker("rmi", name)
    finally:
        reg.stop()


@pytest.mark.root
@pytest.mark.docker_cli
def test_pull_onto_existing_snapshots_checks_the_blob(daemon: BerthDaemon, loaded: str, tmp_path: Path) -> None:
    """The fixture's snapshots exist (loaded from docker save), so the pull extracts nothing: a registry that
    pairs the fixture's diff IDs with other gzip content is caught by hashing the blob, and nothing is tagged."""
    with tarfile.open(FIXTURES / "multilayer-oci.tar") as tar:
        def blob(digest: str) -> bytes:
            f = tar.extractfile(f"blobs/sha256/{digest.split(':')[1]}")
            assert f is not None
            return f.read()
        index = json.loads(tar.extractfile("index.json").read())  # type: ignore[union-attr]
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        blobs = {d["digest"]: blob(d["digest"]) for d in [manifest["config"], *manifest["layers"]]}
    bogus_tar = io.BytesIO()
    with tarfile.open(fileobj=bogus_tar, mode="w") as t:
        info = tarfile.TarInfo("evil")
        info.size = 4
        t.addfile(info, io.BytesIO(b"evil"))
    bogus = gzip.compress(bogus_tar.getvalue(), mtime=0)
    manifest["layers"][0] = {**manifest["layers"][0], "digest": str(Digest.of_bytes(bogus)), "size": len(bogus)}
    blobs[str(Digest.of_bytes(bogus))] = bogus
    reg = berth_registry(BERTH, tmp_path / "reused")
    try:
        for digest, data in blobs.items():
            r = requests.post(f"{reg.url}/v2/evil/app/blobs/uploads/", params={"digest": digest}, data=data, timeout=10)
            assert r.status_code == 201, r.text
        r = requests.put(f"{reg.url}/v2/evil/app/manifests/1", data=json.dumps(manifest).encode(),
                         headers={"Content-Type": manifest["mediaType"]}, timeout=10)
        assert r.status_code == 201, r.text
        assert _image_id(daemon, "berth-fixture/multilayer:1.0") == loaded  # its snapshots are there
        result = daemon.docker("pull", f"{reg.addr}/evil/app:1", check=False)
        assert result.returncode != 0 and "invalid diffID for layer 0" in result.stderr, result
        tags = daemon.docker("images", "--format", "{{.Repository}}").stdout
        assert "evil/app" not in tags, tags
    finally:
        reg.stop()


def test_inflate_read_ahead_thread_ends_when_the_reader_is_dropped() -> None:
    """Pulls inflate layers in a thread that runs ahead of the extraction; an extraction that fails half-way
    drops its reader without reading to the end, and the thread must not stay blocked on its full queue."""
    data = os.urandom(1 << 20) * 16
    stream = open_decompressed(io.BytesIO(gzip.compress(data, compresslevel=1, mtime=0)))
    assert stream.read(1000) == data[:1000]
    before = {t for t in threading.enumerate() if t.name == "berth-inflate"}
    assert before
    del stream
    deadline = time.monotonic() + 5
    while any(t.is_alive() for t in before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.is_alive() for t in before)
    whole = open_decompressed(io.BytesIO(gzip.compress(data, mtime=0) + gzip.compress(b"tail", mtime=0)))
    assert whole.read() == data + b"tail"
    with pytest.raises(InvalidArgument, match="unexpected EOF"):
        open_decompressed(io.BytesIO(gzip.compress(data, mtime=0)[:-100])).read()
