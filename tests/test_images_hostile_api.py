"""The hostile-layer matrix (security.md §1.1) through ``docker load`` into a real berthd.

Every recipe of ``berth.testing.tarcraft`` is wrapped into a ``docker save`` archive and loaded with the real
docker CLI. The daemon's directory is the "host": victim dirs sit next to its data root and its scratch mount
points, and nothing outside its content store and snapshot dirs may change. A load either succeeds and the
image's rootfs shows the clamped result, or fails with the recipe's message, tags nothing and leaves no new
blob or snapshot once ``docker image prune -f`` has run GC. The daemon must answer afterwards either way.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import sqlite3
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from berth.kernel import fsops
from berth.kernel.mount import Mount, mounted
from berth.oci.digest import Digest
from berth.oci.image import chain_ids
from berth.testing import tarcraft
from berth.testing.daemon import BerthDaemon
from berth.testing.tarcraft import RECIPES
from test_layers_hostile import EXPECT, HOST_PATHS

pytestmark = [
    pytest.mark.root,
    pytest.mark.docker_cli,
    pytest.mark.skipif(os.geteuid() != 0, reason="berthd extracts layers as root (chown, mknod, mounts)"),
]

SMALL_BOMB = 16 << 20  # T25's 256 MiB bomb has its own memory test in test_layers_hostile.py
Snapshot = dict[str, tuple[object, ...]]


# --- building archives -----------------------------------------------------------------------------------


def diff_id(blob: bytes) -> str:
    """What the layer's uncompressed bytes hash to; a blob that does not decompress hashes as it is."""
    data = blob
    with contextlib.suppress(Exception):
        if blob[:2] == b"\x1f\x8b":
            data = gzip.decompress(blob)
        elif blob[:4] == b"\x28\xb5\x2f\xfd":
            data = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    return "sha256:" + hashlib.sha256(data).hexdigest()


def docker_save_archive(path: Path, layers: list[bytes], tag: str) -> str:
    """Write a legacy ``docker save`` layout (``<id>/layer.tar``, ``<config>.json``); returns the image ID."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id(b) for b in layers]}}).encode()
    cid = hashlib.sha256(config).hexdigest()
    members: dict[str, bytes] = {}
    names = []
    for blob in layers:
        name = f"{hashlib.sha256(blob).hexdigest()}/layer.tar"
        members[name] = blob
        names.append(name)
    members[f"{cid}.json"] = config
    members["manifest.json"] = json.dumps([{"Config": f"{cid}.json", "RepoTags": [tag], "Layers": names}]).encode()
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = tarcraft.MTIME
            tar.addfile(info, io.BytesIO(data))
    return "sha256:" + cid


# --- the host around the daemon -----------------------------------------------------------------------------


def _node(path: Path) -> tuple[object, ...]:
    st = os.lstat(path)
    extra: object = None
    if stat.S_ISREG(st.st_mode):
        extra = hashlib.sha256(path.read_bytes()).hexdigest()
    elif stat.S_ISLNK(st.st_mode):
        extra = os.readlink(path)
    return (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_nlink, st.st_ino, extra)


def _victim(where: Path) -> None:
    where.mkdir(exist_ok=True)
    (where / "hello").write_bytes(b"hello\n")
    (where / "perm400").write_bytes(b"keep my mode\n")
    (where / "perm400").chmod(0o400)


@pytest.fixture(scope="module")
def host(shared_berthd: BerthDaemon) -> BerthDaemon:
    """The shared daemon with victim dirs where ``../victim`` from a snapshot or a mount point lands."""
    _victim(shared_berthd.base / "victim")
    _victim(shared_berthd.data_root / "tmp" / "victim")
    return shared_berthd


# Owned by the daemon's stores, allowed to change: blobs, snapshots, the DBs, the log, the scratch mount points.
_CHANGING = {"data/content", "data/snapshots", "data/berth.db", "data/berth.db-wal", "data/berth.db-shm",
             "berthd.log"}


def outside(daemon: BerthDaemon, extra_host: tuple[str, ...] = ()) -> Snapshot:
    """Every node of the daemon's base dir outside its stores, plus named host paths (absence recorded)."""
    base = daemon.base
    snap: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(base):
        rel_dir = Path(dirpath).relative_to(base)
        if rel_dir == Path("data/tmp"):
            dirnames[:] = [d for d in dirnames if d == "victim"]  # the rest are per-extraction mount points
            filenames = []
        else:
            dirnames[:] = [d for d in dirnames if str(rel_dir / d) not in _CHANGING]
        for name in filenames + dirnames:
            rel = str(rel_dir / name)
            if rel not in _CHANGING and rel not in ("data", "data/tmp"):
                snap[rel] = _node(Path(dirpath, name))
    for h in (*HOST_PATHS, *extra_host, str(base.parent / "pwned"), str(base.parent / "victim")):
        snap["host:" + h] = _node(Path(h)) if os.path.lexists(h) else ("absent",)
    return snap


def blobs(daemon: BerthDaemon) -> set[str]:
    root = daemon.data_root / "content" / "blobs"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def _snapshot_db(daemon: BerthDaemon) -> sqlite3.Connection:
    db = daemon.data_root / "snapshots" / driver(daemon) / "metadata.db"
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True)


def snapshot_keys(daemon: BerthDaemon) -> set[str]:
    with contextlib.closing(_snapshot_db(daemon)) as con:
        return {k for (k,) in con.execute("SELECT key FROM snapshots")}


_DRIVERS: dict[str, str] = {}


def driver(daemon: BerthDaemon) -> str:
    if daemon.host not in _DRIVERS:
        _DRIVERS[daemon.host] = daemon.docker("info", "-f", "{{.Driver}}").stdout.strip()
    return _DRIVERS[daemon.host]


@contextlib.contextmanager
def image_rootfs(daemon: BerthDaemon, image: str, where: Path) -> Iterator[Path]:
    """The image's merged rootfs, read-only: the top snapshot's tree (copy, one layer) or an overlay of all."""
    info = json.loads(daemon.docker("image", "inspect", image).stdout)[0]
    top = str(chain_ids([Digest.parse(d) for d in info["RootFS"]["Layers"]])[-1])
    ids: list[int] = []
    with contextlib.closing(_snapshot_db(daemon)) as con:
        row = con.execute("SELECT id, parent_id FROM snapshots WHERE key = ?", (top,)).fetchone()
        while row is not None:
            ids.append(row[0])
            row = con.execute("SELECT id, parent_id FROM snapshots WHERE id = ?", (row[1],)).fetchone()
    fs = [daemon.data_root / "snapshots" / driver(daemon) / "s" / str(i) / "fs" for i in ids]
    if driver(daemon) != "overlayfs" or len(fs) == 1:
        yield fs[0]
        return
    where.mkdir()
    with mounted([Mount("overlay", "overlay", ("ro", "lowerdir=" + ":".join(map(str, fs))))], where):
        yield where


def images(daemon: BerthDaemon) -> str:
    return daemon.docker("images", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout


# --- the matrix ------------------------------------------------------------------------------------------------


def load_recipe(host: BerthDaemon, key: str, tmp_path: Path) -> None:
    """Load one recipe as an image and check the invariants; the image is removed again afterwards."""
    recipe = RECIPES[key]
    layers = [tarcraft.zeros_bomb(SMALL_BOMB)] if key == "T25" else recipe.layers(host.base)
    tag = f"hostile/{key.lower()}:1"
    archive = tmp_path / "image.tar"
    image_id = docker_save_archive(archive, layers, tag)
    before, blobs0, snaps0 = outside(host, recipe.host_paths), blobs(host), snapshot_keys(host)

    res = host.docker("load", "-i", str(archive), check=False)

    assert outside(host, recipe.host_paths) == before, f"{key}: something outside the daemon's stores changed"
    if recipe.error is None:
        assert res.returncode == 0, f"{key}: {res.stderr[:1000]}"
        assert f"Loaded image: {tag}" in res.stdout
        assert f"{tag} {image_id[7:19]}" in images(host)
        check = EXPECT.get(key)
        if check is not None:
            with image_rootfs(host, tag, tmp_path / "view") as root:
                assert check(root), f"{key}: unexpected rootfs"
        host.docker("rmi", tag)
    else:
        assert res.returncode == 1, f"{key}: {res.stdout} {res.stderr}"
        assert res.stderr.startswith("Error response from daemon: "), res.stderr
        assert recipe.error.lower() in res.stderr.lower(), f"{key}: {res.stderr}"
        assert "Traceback" not in res.stderr and len(res.stderr) < 400, res.stderr
        assert tag.split(":")[0] not in images(host)
    host.docker("image", "prune", "-f")
    assert blobs(host) == blobs0, f"{key}: blobs left behind"
    assert snapshot_keys(host) == snaps0, f"{key}: snapshots left behind"
    assert host.docker("version", "-f", "{{.Server.Version}}").stdout.strip()


@pytest.mark.parametrize("key", [k for k in RECIPES if k != "T25c"])
def test_hostile_layer_through_docker_load(key: str, host: BerthDaemon, tmp_path: Path) -> None:
    load_recipe(host, key, tmp_path)


def test_deep_tree_through_docker_load(tmp_path: Path) -> None:
    """T25c on a daemon of its own: while the bug stands, it leaves a tree that only fd-relative removal clears."""
    daemon = BerthDaemon()
    try:
        daemon.start()
        _victim(daemon.base / "victim")
        _victim(daemon.data_root / "tmp" / "victim")
        load_recipe(daemon, "T25c", tmp_path)
    finally:
        with contextlib.suppress(RecursionError):
            daemon.stop()
        if daemon.base.exists():
            parent = os.open(daemon.base.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fsops.remove_at(parent, daemon.base.name)
            finally:
                os.close(parent)


def test_two_hostile_loads_share_nothing_outside(host: BerthDaemon, tmp_path: Path) -> None:
    """The same escaping-symlink layer loaded twice (second time the snapshot exists) still writes nothing out."""
    layers = RECIPES["T19c"].layers(host.base)
    before = outside(host)
    for i in range(2):
        docker_save_archive(tmp_path / f"{i}.tar", layers, f"hostile/twice:{i}")
        host.docker("load", "-i", str(tmp_path / f"{i}.tar"))
    assert outside(host) == before
    with image_rootfs(host, "hostile/twice:1", tmp_path / "view") as root:
        assert (root / "a" / "pwned").read_bytes() == b"p" and not (root / "a").is_symlink()
    host.docker("rmi", "hostile/twice:0", "hostile/twice:1")
    host.docker("image", "prune", "-f")

