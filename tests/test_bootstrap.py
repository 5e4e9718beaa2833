"""Tests for berth.images.bootstrap: recipes, apt source parsing, the rootfs tar writer, and real builds.

The busybox build fetches one small package from the mirror in the host's apt sources and skips when that
mirror is unreachable. The debian/python builds take minutes and are marked slow; set
BERTH_BOOTSTRAP_CACHE to a directory to keep their downloads between runs.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from berth.errors import InvalidArgument, Unavailable
from berth.images import bootstrap
from berth.images.bootstrap import (
    Recipe,
    apt_mirror,
    apt_sources,
    build_rootfs_tar,
    probe_mirror,
    recipe_for,
    write_tar,
)

STD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
is_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: builds own files as uid 0 and mknod")


@pytest.mark.parametrize(
    ("name", "ref"),
    [
        ("busybox", "busybox:latest"),
        ("busybox:latest", "busybox:latest"),
        ("docker.io/library/busybox", "busybox:latest"),
        ("debian", "debian:bookworm"),
        ("debian:bookworm", "debian:bookworm"),
        ("debian:12-slim", "debian:bookworm"),
        ("python", "python:3.11"),
        ("python:3.11", "python:3.11"),
        ("python:3.11-slim", "python:3.11"),
        ("python:3", "python:3.11"),
    ],
)
def test_recipe_for_known_names(name: str, ref: str) -> None:
    assert recipe_for(name).ref == ref


@pytest.mark.parametrize(
    "name", ["alpine", "python:3.12", "quay.io/library/busybox", "busybox@sha256:" + "a" * 64, "NOT VALID"]
)
def test_recipe_for_unknown_names(name: str) -> None:
    with pytest.raises(InvalidArgument, match=r"no bootstrap recipe for .* \(known: busybox:latest, "):
        recipe_for(name)


def test_recipe_configs() -> None:
    bb = recipe_for("busybox")
    assert bb.config == {"Env": [f"PATH={STD_PATH}"], "Cmd": ["sh"]}
    assert recipe_for("debian").config["Cmd"] == ["bash"]
    py = recipe_for("python")
    assert py.config["Cmd"] == ["python3"]
    env = dict(e.split("=", 1) for e in py.config["Env"])
    assert env["LANG"] == "C.UTF-8"
    assert env["PIP_BREAK_SYSTEM_PACKAGES"] == "1"
    assert env["PYTHON_VERSION"].startswith("3.11.")
    assert env["PATH"].startswith("/usr/local/bin:")
    with pytest.raises(InvalidArgument):
        Recipe("busybox", (), {}, "")


def test_apt_sources_both_formats(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# comment\n"
        "deb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian bookworm-updates main contrib\n"
    )
    (tmp_path / "sources.list.d" / "a.sources").write_text(
        "Types: deb deb-src\n"
        "# http://archive.example/old\n"
        "URIs: http://two.example/debian/\n"
        "Suites: bookworm\n bookworm-updates\n"
        "Components: main\n"
        "\n"
        "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nComponents: main\nEnabled: no\n"
    )
    disabled = tmp_path / "sources.list.d" / "b.list.disabled"
    disabled.write_text("deb http://three.example/debian bookworm main\n")
    srcs = apt_sources(tmp_path)
    assert [s.uri for s in srcs] == ["http://one.example/debian", "http://two.example/debian/"]
    assert srcs[1].suites == ("bookworm", "bookworm-updates")
    assert apt_mirror("bookworm", tmp_path) == "http://two.example/debian"
    assert apt_mirror("bookworm-updates", tmp_path) == "http://one.example/debian"
    with pytest.raises(Unavailable, match="no Debian package mirror for trixie"):
        apt_mirror("trixie", tmp_path)


def test_host_has_a_mirror_for_bookworm() -> None:
    if not (Path("/etc/apt") / "sources.list.d").exists():
        pytest.skip("not a Debian host")
    assert apt_mirror().startswith(("http://", "https://"))


def test_probe_unreachable_mirror_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port now: the probe must fail fast with the documented wording.
    with pytest.raises(Unavailable, match="cannot reach the Debian package mirror configured in /etc/apt/"):
        probe_mirror(f"http://127.0.0.1:{port}/debian", timeout=2)


@is_root
@pytest.mark.root
def test_write_tar_keeps_owners_devices_hardlinks_modes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    os.mknod(root / "dev" / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (root / "a").write_text("x")
    os.link(root / "a", root / "b")
    os.chown(root / "a", 1234, 5678)
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "a", 0o4755)
    buf = io.BytesIO()
    write_tar(root, buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tf:
        members = {m.name.removeprefix("./"): m for m in tf.getmembers()}
    null = members["dev/null"]
    assert null.ischr() and (null.devmajor, null.devminor) == (1, 3)
    assert members["a"].uid == 1234 and members["a"].gid == 5678
    assert members["a"].mode & 0o7777 == 0o4755
    assert members["b"].islnk() and members["b"].linkname.removeprefix("./") == "a"
    assert members["tmp"].mode & 0o7777 == 0o1777


def _build(name: str, workdir: Path) -> tuple[bytes, list[str]]:
    messages: list[str] = []
    buf = io.BytesIO()
    try:
        build_rootfs_tar(recipe_for(name), workdir, buf, messages.append)
    except Unavailable as e:
        pytest.skip(f"Debian packages unreachable: {e}")
    return buf.getvalue(), messages


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name.removeprefix("./").rstrip("/"): m for m in tf.getmembers()}


@is_root
@pytest.mark.root
def test_busybox_rootfs(tmp_path: Path) -> None:
    data, messages = _build("busybox", tmp_path / "work")
    m = _members(data)
    assert m["bin/busybox"].isfile() and m["bin/busybox"].mode & 0o111 == 0o111
    assert m["bin/busybox"].size > 500_000
    assert m["bin/sh"].issym() and m["bin/sh"].linkname == "busybox"
    for d in ("proc", "sys", "dev", "etc", "root"):
        assert m[d].isdir()
    assert m["tmp"].mode & 0o7777 == 0o1777
    assert {m[x].uid for x in m} == {0}
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        passwd = tf.extractfile("./etc/passwd").read().decode()  # type: ignore[union-attr]
        group = tf.extractfile("./etc/group").read().decode()  # type: ignore[union-attr]
    assert passwd.startswith("root:x:0:0:") and "\nnobody:x:65534:65534:" in passwd
    assert group.startswith("root:x:0:") and "nobody:x:65534:" in group
    assert any("Bootstrapped busybox:latest" in x for x in messages)
    # The second build reuses the cached .deb and gives a byte-identical layer.
    again, messages2 = _build("busybox:latest", tmp_path / "work")
    assert again == data
    assert any(x.startswith("Using cached busybox-static") for x in messages2)
    assert not [p for p in (tmp_path / "work").iterdir() if p.name.startswith("build-")]


@is_root
@pytest.mark.root
def test_busybox_rootfs_runs_in_chroot(tmp_path: Path) -> None:
    data, _ = _build("busybox", tmp_path / "work")
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xpf", "-", "-C", str(root)], input=data, check=True)
    out = subprocess.run([CHROOT, str(root), "/bin/sh", "-c", "echo hi; ls /bin | wc -l"],
                         capture_output=True, text=True, check=True, env={"PATH": "/bin"})
    lines = out.stdout.split()
    assert lines[0] == "hi" and int(lines[1]) > 200


def _cache(tmp_path: Path) -> Path:
    env = os.environ.get("BERTH_BOOTSTRAP_CACHE")
    return Path(env) if env else tmp_path / "work"


@is_root
@pytest.mark.root
@pytest.mark.slow
def test_debian_rootfs(tmp_path: Path) -> None:
    data, _ = _build("debian:bookworm", _cache(tmp_path))
    m = _members(data)
    assert m["bin"].issym() or m["bin"].isdir()  # bookworm is usr-merged: /bin -> usr/bin
    assert m["usr/bin/bash"].isfile() and m["usr/bin/apt-get"].isfile()
    assert "etc/hostname" not in m and "etc/resolv.conf" not in m
    assert not [x for x in m if x.startswith("dev/")]
    assert not [x for x in m if x.startswith("var/cache/apt/archives/") and x.endswith(".deb")]


@is_root
@pytest.mark.root
@pytest.mark.slow
def test_python_rootfs_runs_pip_and_venv(tmp_path: Path) -> None:
    data, _ = _build("python:3.11", _cache(tmp_path))
    m = _members(data)
    assert m["usr/local/bin/python"].linkname == "/usr/bin/python3"
    assert m["usr/local/bin/pip"].linkname == "/usr/bin/pip3"
    root = tmp_path / "root"
    root.mkdir()
    subprocess.run(["tar", "--numeric-owner", "-xpf", "-", "-C", str(root)], input=data, check=True)
    env = dict(e.split("=", 1) for e in recipe_for("python").config["Env"])
    out = subprocess.run(
        [CHROOT, str(root), "python", "-c", "import venv, pip, sys; print(sys.version_info[:2])"],
        capture_output=True, text=True, check=True, env=env,
    )
    assert out.stdout.strip() == "(3, 11)"


def test_module_never_names_a_mirror_host() -> None:
    source = Path(bootstrap.__file__).read_text()
    assert "debian.org" not in source
