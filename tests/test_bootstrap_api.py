"""``berth image bootstrap`` through a real berthd (POST /berth/images/bootstrap), checked with the docker CLI.

The busybox bootstrap fetches ``busybox-static`` (about 1 MB) from the Debian mirror in the host's apt
sources into the daemon's default cache (``<data-root>/bootstrap``) and skips when that mirror is
unreachable. The python bootstrap runs debootstrap (about a minute) and is marked slow; set
BERTH_BOOTSTRAP_CACHE to a directory to reuse its downloads between runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from berth.errors import Unavailable
from berth.images.bootstrap import STD_PATH, apt_mirror, probe_mirror
from berth.testing.daemon import BerthDaemon

pytestmark = [pytest.mark.root, pytest.mark.docker_cli]

BERTH = str(Path(sys.executable).with_name("berth"))
KNOWN = "busybox:latest, debian:bookworm, python:3.11"


@pytest.fixture(scope="module")
def mirror() -> str:
    """The host's Debian mirror, or a skip saying why it cannot be used."""
    if os.geteuid() != 0:
        pytest.skip("bootstrap needs root (device nodes, chroot, file ownership)")
    try:
        url = apt_mirror()
        probe_mirror(url, timeout=10)
    except Unavailable as err:
        pytest.skip(f"Debian mirror unreachable, cannot bootstrap: {err}")
    return url


def berth(d: BerthDaemon, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "BERTH_"))}
    env["BERTH_HOST"] = d.host
    return subprocess.run([BERTH, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False)


def layer_names(d: BerthDaemon, image: str) -> set[str]:
    """Every path in the single layer of ``image``, read from ``docker save`` as it streams."""
    info = json.loads(d.docker("image", "inspect", image).stdout)[0]
    layers = info["RootFS"]["Layers"]
    assert len(layers) == 1
    wanted = f"blobs/sha256/{layers[0].removeprefix('sha256:')}"
    proc = subprocess.Popen(["/usr/local/bin/docker", "save", image], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=d.docker_env())
    assert proc.stdout is not None
    names: set[str] = set()
    found = False
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as outer:
            for member in outer:
                if member.name != wanted:
                    continue
                found = True
                blob = outer.extractfile(member)
                assert blob is not None
                with tarfile.open(fileobj=blob, mode="r|") as inner:
                    names = {m.name.removeprefix("./") for m in inner}
    finally:
        proc.stdout.close()
        proc.wait(60)
    assert proc.returncode == 0 and found, f"docker save {image} failed or lacked {wanted}"
    return names


def test_bootstrap_busybox(mirror: str, berthd: BerthDaemon, tmp_path: Path) -> None:
    res = berth(berthd, "image", "bootstrap", "busybox")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert any(line.startswith("Downloading busybox-static") for line in lines), res.stdout
    assert any(line.startswith("Linking ") and line.endswith(" busybox applets into /bin") for line in lines)
    assert lines[-1] == "Status: Bootstrapped image busybox:latest"
    assert berth(berthd, "images", "--format", "{{.Repository}}:{{.Tag}}").stdout == "busybox:latest\n"

    info = json.loads(berthd.docker("image", "inspect", "busybox").stdout)[0]
    assert info["RepoTags"] == ["busybox:latest"]
    assert info["Config"]["Cmd"] == ["sh"]
    assert info["Config"]["Env"] == [STD_PATH]
    assert info["Os"] == "linux" and info["Architecture"] == "amd64"
    assert any(line.startswith(f"Digest: {info['Id']}") for line in lines)

    saved = tmp_path / "busybox.tar"
    berthd.docker("save", "-o", str(saved), "busybox")
    with tarfile.open(saved) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert manifest[0]["RepoTags"] == ["busybox:latest"]
    names = layer_names(berthd, "busybox")
    assert {"bin/busybox", "bin/sh", "etc/passwd", "etc/group", "tmp"} <= names

    # a second bootstrap finds the tag and does nothing
    started = time.monotonic()
    again = berth(berthd, "image", "bootstrap", "busybox")
    elapsed = time.monotonic() - started
    assert (again.returncode, again.stdout) == (0, "Status: Image is up to date for busybox:latest\n")
    assert elapsed < 1.0, f"an up-to-date bootstrap took {elapsed:.2f} s"
    same = berth(berthd, "image", "bootstrap", "docker.io/library/busybox:latest")
    assert same.stdout == "Status: Image is up to date for busybox:latest\n"
    assert berth(berthd, "images", "-q").stdout.count("\n") == 1


def test_bootstrap_again_after_rmi_uses_the_cache(mirror: str, berthd: BerthDaemon) -> None:
    first = berth(berthd, "image", "bootstrap", "busybox")
    assert first.returncode == 0, first.stderr
    ident = json.loads(berthd.docker("image", "inspect", "busybox").stdout)[0]["RootFS"]["Layers"]
    assert berth(berthd, "rmi", "busybox").returncode == 0
    again = berth(berthd, "image", "bootstrap", "busybox")
    assert again.returncode == 0, again.stderr
    assert "Using cached busybox-static_" in again.stdout
    # the layer is reproducible: the same packaged binary makes the same diff ID
    assert json.loads(berthd.docker("image", "inspect", "busybox").stdout)[0]["RootFS"]["Layers"] == ident


@pytest.mark.parametrize("name", ["alpine", "python:3.12", "quay.io/library/busybox", "NOT VALID"])
def test_bootstrap_unknown_name(shared_berthd: BerthDaemon, name: str) -> None:
    res = berth(shared_berthd, "image", "bootstrap", name)
    assert (res.returncode, res.stdout) == (1, "")
    assert res.stderr == f"Error response from daemon: no bootstrap recipe for {name} (known: {KNOWN})\n"


def test_bootstrap_route_answers_400_before_streaming(shared_berthd: BerthDaemon) -> None:
    for query, message in (("?image=alpine", f"no bootstrap recipe for alpine (known: {KNOWN})"),
                           ("", "image is required (e.g. busybox, debian:bookworm, python:3.11)")):
        conn = shared_berthd.http()
        try:
            conn.request("POST", f"/v1.44/berth/images/bootstrap{query}")
            resp = conn.getresponse()
            assert resp.status == 400
            assert json.loads(resp.read()) == {"message": message}
        finally:
            conn.close()
    res = berth(shared_berthd, "image", "bootstrap")
    assert res.returncode == 1 and res.stderr.startswith("berth: 'berth image bootstrap' requires 1 argument")


@pytest.mark.slow
def test_bootstrap_python(mirror: str, berthd_factory: Any) -> None:
    daemon = berthd_factory(start=False)
    cache = os.environ.get("BERTH_BOOTSTRAP_CACHE")
    if cache:
        # the daemon's default cache is <data-root>/bootstrap; point it at the shared one
        Path(cache).mkdir(parents=True, exist_ok=True)
        daemon.data_root.mkdir(parents=True, exist_ok=True)
        (daemon.data_root / "bootstrap").symlink_to(Path(cache).resolve(), target_is_directory=True)
    daemon.start()
    res = berth(daemon, "image", "bootstrap", "python:3.11", timeout=900)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines()[-1] == "Status: Bootstrapped image python:3.11"

    info = json.loads(daemon.docker("image", "inspect", "python:3.11").stdout)[0]
    assert info["Config"]["Cmd"] == ["python3"]
    assert info["Config"]["Env"][0] == "PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert "python:3.11-slim" in info["RepoTags"] and "python:3" in info["RepoTags"]
    slim = json.loads(daemon.docker("image", "inspect", "python:3.11-slim").stdout)[0]
    assert slim["Id"] == info["Id"]
    names = layer_names(daemon, "python:3.11")
    assert {"usr/bin/python3", "usr/bin/pip3", "usr/local/bin/python", "etc/debian_version"} <= names
    up_to_date = berth(daemon, "image", "bootstrap", "python:3.11-slim")
    assert up_to_date.stdout == "Status: Image is up to date for python:3.11\n"

    # the README's walkthrough on that image: build the Python API, run it with a port on localhost, a data folder
    # and a single settings file mounted, then replace the file the way editors save it
    example = Path(__file__).resolve().parent.parent / "examples" / "walkthrough"
    built = berth(daemon, "build", "-t", "walkthrough-api", str(example))
    assert built.returncode == 0 and "Successfully tagged walkthrough-api:latest" in built.stdout, built.stderr
    host = daemon.data_root.parent / "walkthrough"
    (host / "notes").mkdir(parents=True)
    (host / "notes" / "first.txt").write_text("from the host\n")
    (host / "settings.json").write_text('{"version": 1}\n')
    run = berth(daemon, "run", "-d", "--name", "api", "-p", "127.0.0.1::8000", "-v", f"{host / 'notes'}:/data",
                "-v", f"{host / 'settings.json'}:/config/settings.json:ro", "walkthrough-api")
    assert run.returncode == 0, run.stderr
    url = "http://" + berth(daemon, "port", "api", "8000").stdout.strip()
    assert json.loads(_http(url + "/api/notes")) == [{"file": "first.txt", "text": "from the host"}]
    created = json.loads(_http(url + "/api/notes", b"from the container"))
    assert (host / "notes" / created["file"]).read_text() == "from the container\n"
    (host / "settings.new").write_text('{"version": 2}\n')
    os.rename(host / "settings.new", host / "settings.json")
    deadline = time.monotonic() + 5
    while json.loads(_http(url + "/api/settings")) != {"version": 2} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert json.loads(_http(url + "/api/settings")) == {"version": 2}
    again = berth(daemon, "build", "-t", "walkthrough-api", str(example))
    assert again.stdout.count(" ---> Using cache") == 6, again.stdout
    daemon.docker("rm", "-f", "api")


def _http(url: str, data: bytes | None = None) -> str:
    """One request to a published port, retried while the app starts; no proxy from the environment."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + 20
    while True:
        try:
            with opener.open(urllib.request.Request(url, data=data), timeout=5) as resp:
                return resp.read().decode()  # type: ignore[no-any-return]
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
