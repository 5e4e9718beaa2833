"""Unpack the fixture images written by real Docker and skopeo, compare with Docker's own container filesystem."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from berth.layers.apply import apply_layer
from berth.testing.rootfs import FIXTURES as ROOTFS_FIXTURES

FIXTURES = ROOTFS_FIXTURES
DOCKER_SAVE = FIXTURES / "multilayer-docker-save.tar"
OCI = FIXTURES / "multilayer-oci.tar"
EXPECTED = FIXTURES / "multilayer-expected-rootfs.json"
# Created by the engine at container creation, not by the image (fixtures/README.md); /etc/mtab -> /proc/mounts
# is made by Docker's initlayer too, although the README does not list it.
ENGINE_FILES = {"/.dockerenv", "/etc/hostname", "/etc/hosts", "/etc/resolv.conf", "/etc/mtab"}
ENGINE_TREES = ("/dev/", "/proc/", "/sys/")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="layer apply needs root (chown, setuid bits, overlay mounts)"),
    pytest.mark.skipif(not EXPECTED.exists(), reason="shared fixtures are not present"),
]

Listing = dict[str, tuple[str, str, int, int, int, str | None]]


def _image_path(path: str) -> bool:
    return path not in ENGINE_FILES and not path.startswith(ENGINE_TREES)


def expected_listing() -> Listing:
    entries = json.loads(EXPECTED.read_text())["entries"]
    return {e["path"]: (e["type"], e["mode"], e["uid"], e["gid"], e["size"], e["link"])
            for e in entries if _image_path(e["path"])}


def listing(root: Path) -> Listing:
    """The tree at ``root`` in the fixture's format (sizes only for regular files, like docker export)."""
    out: Listing = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = os.lstat(p)
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "symlink" if stat.S_ISLNK(st.st_mode) else \
                "file" if stat.S_ISREG(st.st_mode) else "other"
            path = "/" + str(p.relative_to(root))
            if _image_path(path):
                out[path] = (kind, oct(st.st_mode), st.st_uid, st.st_gid,
                             st.st_size if kind == "file" else 0, os.readlink(p) if kind == "symlink" else None)
    return out


def docker_save_layers(tf: tarfile.TarFile) -> tuple[list[str], list[str]]:
    """(layer member names, diff IDs from the image config) of a ``docker save`` archive."""
    manifest = json.load(tf.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
    config = json.load(tf.extractfile(manifest["Config"]))  # type: ignore[arg-type]
    return manifest["Layers"], config["rootfs"]["diff_ids"]


def oci_layers(tf: tarfile.TarFile) -> tuple[list[str], list[str]]:
    """(layer blob member names, diff IDs) of an OCI image layout archive: index -> manifest -> layers."""
    def blob(digest: str) -> Any:
        return json.load(tf.extractfile("blobs/" + digest.replace(":", "/")))  # type: ignore[arg-type]

    index = json.load(tf.extractfile("index.json"))  # type: ignore[arg-type]
    manifest = blob(index["manifests"][0]["digest"])
    config = blob(manifest["config"]["digest"])
    names = ["blobs/" + layer["digest"].replace(":", "/") for layer in manifest["layers"]]
    return names, config["rootfs"]["diff_ids"]


@pytest.mark.parametrize("archive", [DOCKER_SAVE, OCI], ids=["docker-save", "oci"])
def test_unpack_into_plain_dir_matches_docker(archive: Path, tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    with tarfile.open(archive) as tf:
        names, diff_ids = (docker_save_layers if archive == DOCKER_SAVE else oci_layers)(tf)
        assert len(names) == len(diff_ids) == 5
        for name, diff_id in zip(names, diff_ids, strict=True):
            result = apply_layer(root, tf.extractfile(name))  # type: ignore[arg-type]
            assert str(result.diff_id) == diff_id
    assert listing(root) == expected_listing()
    assert (root / "data/keep/new").read_bytes() == b"fresh\n"
    assert stat.S_IMODE(os.lstat(root / "opt/app/suid").st_mode) == 0o4755


@contextmanager
def overlay(lowers: list[Path], upper: Path | None, work: Path | None, merged: Path) -> Iterator[Path]:
    """Mount an overlay (the first of ``lowers`` is the top one); read-only when ``upper`` is None."""
    opts = "lowerdir=" + ":".join(str(p) for p in lowers)
    if upper is not None and work is not None:
        opts += f",upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], check=True)
    try:
        yield merged
    finally:
        subprocess.run(["umount", str(merged)], check=True)


def test_unpack_through_real_overlay_matches_docker(tmp_path: Path) -> None:
    """Each layer is applied into a merged view whose lowerdirs are the previous layers' upperdirs."""
    empty = tmp_path / "empty"
    merged = tmp_path / "merged"
    empty.mkdir()
    merged.mkdir()
    uppers: list[Path] = []
    with tarfile.open(DOCKER_SAVE) as tf:
        names, diff_ids = docker_save_layers(tf)
        for i, (name, diff_id) in enumerate(zip(names, diff_ids, strict=True)):
            upper, work = tmp_path / f"upper{i}", tmp_path / f"work{i}"
            upper.mkdir()
            work.mkdir()
            with overlay(list(reversed(uppers)) or [empty], upper, work, merged):
                result = apply_layer(merged, tf.extractfile(name))  # type: ignore[arg-type]
            assert str(result.diff_id) == diff_id
            uppers.append(upper)
    # Layer 3 ("rm -rf /data/keep && mkdir /data/keep") left overlay's own opaque marker or whiteouts behind.
    with overlay(list(reversed(uppers)), None, None, merged):
        assert listing(merged) == expected_listing()
        assert (merged / "data/keep/new").read_bytes() == b"fresh\n"
    gone = os.lstat(uppers[2] / "data" / "gone")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0  # the whiteout of a removed lower directory
