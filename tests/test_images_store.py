"""The image store end to end below the API: load real Docker/skopeo archives, unpack, compare, save, GC."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth.content.store import ContentStore
from berth.errors import InvalidArgument, NoSuchImage
from berth.images import archive
from berth.images.store import ImageStore
from berth.kernel.mount import mounted, overlay_supported
from berth.metadata.images import ImageDB
from berth.snapshots.base import open_snapshotter
from berth.testing.rootfs import FIXTURES, expected_tree, list_tree

pytestmark = pytest.mark.root

DOCKER_SAVE = FIXTURES / "multilayer-docker-save.tar"
OCI = FIXTURES / "multilayer-oci.tar"
DOCKER_ID = "sha256:626be372821f11314d992e0ea4e16e1f6311496ea17610d41a4142451e8e11a5"
OCI_ID = "sha256:aed6cee837d96277486419d1594429c08c581f3456d37d4b291ee636a752f2ec"
KINDS = ["copy"] + (["overlayfs"] if overlay_supported() else [])


def make_store(root: Path, kind: str) -> ImageStore:
    root.mkdir(parents=True, exist_ok=True)
    return ImageStore(ContentStore(root / "content"), open_snapshotter(root / "snapshots", kind),
                      ImageDB(root / "berth.db"), root / "tmp")


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ImageStore]:
    s = make_store(tmp_path / "root", request.param)
    s.reset_scratch()
    yield s
    s.db.close()


def load_file(store: ImageStore, path: Path) -> list[archive.LoadedImage]:
    with path.open("rb") as f:
        return archive.load(store, f)


def rootfs_of(store: ImageStore, image_id: str, where: Path) -> dict[str, tuple[object, ...]]:
    top = str(store.config(image_id).chain_ids[-1])
    key = "view-test"
    mounts = store.snapshotter.view(key, top)
    where.mkdir()
    try:
        with mounted(mounts, where):
            return list_tree(where)  # type: ignore[return-value]
    finally:
        store.snapshotter.remove(key)


@pytest.mark.parametrize("path,image_id", [(DOCKER_SAVE, DOCKER_ID), (OCI, OCI_ID)])
def test_load_unpacks_exactly_the_expected_rootfs(store: ImageStore, tmp_path: Path, path: Path,
                                                  image_id: str) -> None:
    loaded = load_file(store, path)
    assert [img.image_id for img in loaded] == [image_id]
    assert [t.familiar() for t in loaded[0].tags] == ["berth-fixture/multilayer:1.0"]
    assert store.resolve("berth-fixture/multilayer:1.0").id == image_id
    got = rootfs_of(store, image_id, tmp_path / "view")
    want = expected_tree()
    differ = sorted(k for k in got.keys() | want.keys() if got.get(k) != want.get(k))
    assert [(k, got.get(k), want.get(k)) for k in differ] == []


def test_resolution_forms(store: ImageStore) -> None:
    load_file(store, DOCKER_SAVE)
    hexid = DOCKER_ID[7:]
    for name in ["berth-fixture/multilayer:1.0", "docker.io/berth-fixture/multilayer:1.0", DOCKER_ID, hexid,
                 hexid[:12]]:
        assert store.resolve(name).id == DOCKER_ID, name
    for name in ["berth-fixture/multilayer", "nosuch", "abcdef123456"]:
        with pytest.raises(NoSuchImage, match="No such image: "):
            store.resolve(name)


def test_save_then_load_keeps_the_id(store: ImageStore, tmp_path: Path) -> None:
    load_file(store, DOCKER_SAVE)
    out = tmp_path / "saved.tar"
    with out.open("wb") as f:
        archive.save(store, archive.parse_save_names(store, ["berth-fixture/multilayer:1.0"]), f)
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert {"manifest.json", "index.json", "oci-layout", "repositories"} <= names
    assert manifest[0]["RepoTags"] == ["berth-fixture/multilayer:1.0"]
    assert manifest[0]["Config"] == f"blobs/sha256/{DOCKER_ID[7:]}"
    fresh = make_store(tmp_path / "fresh", "copy")
    fresh.reset_scratch()
    loaded = load_file(fresh, out)
    assert loaded[0].image_id == DOCKER_ID
    assert rootfs_of(fresh, DOCKER_ID, tmp_path / "v2") == expected_tree()


def test_oci_layers_saved_uncompressed_with_diff_ids(store: ImageStore, tmp_path: Path) -> None:
    load_file(store, OCI)
    buf = io.BytesIO()
    archive.save(store, archive.parse_save_names(store, [OCI_ID]), buf)
    fresh = make_store(tmp_path / "fresh", "copy")
    fresh.reset_scratch()
    buf.seek(0)
    assert archive.load(fresh, buf)[0].image_id == OCI_ID


@pytest.mark.parametrize("mangle", ["truncate", "garbage", "empty", "no-index"])
def test_bad_archives_change_nothing(store: ImageStore, mangle: str) -> None:
    load_file(store, OCI)
    before_blobs = sorted(store.content.walk())
    before_images = store.db.all()
    data = DOCKER_SAVE.read_bytes()
    bad = {
        "truncate": data[: len(data) // 2],
        "garbage": b"\x13\x37" * 5000,
        "empty": b"",
        "no-index": _archive_without(data, "manifest.json"),
    }[mangle]
    with pytest.raises(InvalidArgument):
        archive.load(store, io.BytesIO(bad))
    store.collect_garbage()
    assert store.db.all() == before_images
    assert sorted(store.content.walk()) == before_blobs
    assert {i.key for i in store.snapshotter.walk()} == {str(c) for c in store.config(OCI_ID).chain_ids}


def _archive_without(data: bytes, name: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for m in src:
            if m.name != name:
                dst.addfile(m, src.extractfile(m) if m.isfile() else None)
    return out.getvalue()


def test_hostile_manifest_paths_are_refused(store: ImageStore) -> None:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        doc = json.dumps([{"Config": "../../etc/shadow", "RepoTags": ["x:1"], "Layers": []}]).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(doc)
        tar.addfile(info, io.BytesIO(doc))
        link = tarfile.TarInfo("cfg.json")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/shadow"
        tar.addfile(link)
    with pytest.raises(InvalidArgument, match="not found in archive"):
        archive.load(store, io.BytesIO(out.getvalue()))


def test_gc_removes_everything_of_a_deleted_image(store: ImageStore) -> None:
    load_file(store, DOCKER_SAVE)
    store.db.delete_image(DOCKER_ID)
    result = store.collect_garbage()
    assert result.blobs_removed > 0
    assert list(store.content.walk()) == []
    assert list(store.snapshotter.walk()) == []


def test_shared_layers_survive_removal_of_one_image(store: ImageStore) -> None:
    load_file(store, DOCKER_SAVE)
    load_file(store, OCI)
    store.db.delete_image(OCI_ID)
    store.collect_garbage()
    assert {i.key for i in store.snapshotter.walk()} == {str(c) for c in store.config(DOCKER_ID).chain_ids}
    assert store.resolve(DOCKER_ID)
