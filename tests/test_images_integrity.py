"""Corrupt and lying image archives through ``docker load`` into a real berthd (security.md §1.2 for archives).

Each case starts from a good archive (Docker ``manifest.json`` layout or OCI image layout) and breaks one thing:
blob bytes against their names, descriptor sizes, diff IDs, document shapes and types, paths, links, nesting,
tags. Every one must be refused with a clear 4xx message (docker exits 1 with ``Error response from daemon:``),
tag nothing, leave no blob or snapshot behind once ``docker image prune -f`` has run GC, and leave the daemon
answering. A few good variants (links inside the archive, nested indexes within the limit) must still load.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import sqlite3
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from berth.oci import media
from berth.testing import tarcraft
from berth.testing.daemon import BerthDaemon

pytestmark = [
    pytest.mark.root,
    pytest.mark.docker_cli,
    pytest.mark.skipif(os.geteuid() != 0, reason="berthd extracts layers as root (chown, mknod, mounts)"),
]

Doc = dict[str, Any]
Member = tuple[str, bytes] | tarfile.TarInfo  # a regular file, or a link/dir header


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dumps(doc: object) -> bytes:
    return json.dumps(doc).encode()


LAYER = tarcraft.tar([tarcraft.file("hello", b"hello from a layer\n")])
LAYER2 = tarcraft.tar([tarcraft.file("second", b"second layer\n")])
GZ = gzip.compress(LAYER, mtime=0)


def config_doc(layers: list[bytes]) -> Doc:
    return {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/hello"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha(b) for b in layers]}}


def link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


def write_tar(members: list[Member]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
                continue
            info = tarfile.TarInfo(m[0])
            info.size = len(m[1])
            info.mtime = tarcraft.MTIME
            tar.addfile(info, io.BytesIO(m[1]))
    return out.getvalue()


# --- the Docker layout: manifest.json + <config>.json + <id>/layer.tar ------------------------------------------


def docker_archive(layers: list[bytes] | None = None, *, config: bytes | None = None,
                   entry: Callable[[Doc], Any] | None = None, manifest: bytes | None = None,
                   extra: list[Member] | None = None, tag: str = "integrity/docker:1") -> bytes:
    """A good ``docker save`` archive; ``entry`` may edit (or replace) its manifest.json entry."""
    layers = [LAYER] if layers is None else layers
    cfg = config if config is not None else dumps(config_doc(layers))
    members: list[Member] = [(f"{sha(b)}/layer.tar", b) for b in layers]
    members.append((f"{sha(cfg)}.json", cfg))
    item: Any = {"Config": f"{sha(cfg)}.json", "RepoTags": [tag], "Layers": [f"{sha(b)}/layer.tar" for b in layers]}
    if entry is not None:
        item = entry(item) or item
    doc = item if isinstance(item, list) else [item]
    members.append(("manifest.json", manifest if manifest is not None else dumps(doc)))
    return write_tar(members + (extra or []))


def edit(**changes: Any) -> Callable[[Doc], None]:
    return lambda item: item.update(changes)


# --- the OCI layout: index.json + blobs/sha256/* ----------------------------------------------------------------


def descriptor(mt: str, data: bytes, **extra: Any) -> Doc:
    return {"mediaType": mt, "digest": "sha256:" + sha(data), "size": len(data), **extra}


def oci_archive(layers: list[bytes] | None = None, *, config: bytes | None = None,
                man: Callable[[Doc], Any] | None = None, manifest_bytes: bytes | None = None,
                index: Callable[[Doc], Any] | None = None, index_bytes: bytes | None = None,
                blobs: dict[str, bytes] | None = None, extra: list[Member] | None = None,
                name: str = "docker.io/integrity/oci:1") -> bytes:
    """A good OCI image-layout archive; ``man``/``index`` may edit the documents, ``blobs`` overrides bytes."""
    layers = [LAYER] if layers is None else layers
    cfg = config if config is not None else dumps(config_doc(layers))
    mdoc: Doc = {"schemaVersion": 2, "mediaType": media.OCI_MANIFEST,
                 "config": descriptor(media.OCI_CONFIG, cfg),
                 "layers": [descriptor(media.OCI_LAYER, b) for b in layers]}
    if man is not None:
        mdoc = man(mdoc) or mdoc
    mbytes = manifest_bytes if manifest_bytes is not None else dumps(mdoc)
    idoc: Doc = {"schemaVersion": 2, "mediaType": media.OCI_INDEX,
                 "manifests": [descriptor(media.OCI_MANIFEST, mbytes,
                                          annotations={"io.containerd.image.name": name})]}
    if index is not None:
        idoc = index(idoc) or idoc
    content = {f"blobs/sha256/{sha(b)}": b for b in [*layers, cfg, mbytes]}
    content.update(blobs or {})
    members: list[Member] = [("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'), *content.items(),
                             ("index.json", index_bytes if index_bytes is not None else dumps(idoc))]
    return write_tar(members + (extra or []))


def nested_index(depth: int) -> bytes:
    """An OCI archive whose image sits below ``depth`` image indexes (index.json itself not counted)."""
    cfg = dumps(config_doc([LAYER]))
    mbytes = dumps({"schemaVersion": 2, "mediaType": media.OCI_MANIFEST,
                    "config": descriptor(media.OCI_CONFIG, cfg), "layers": [descriptor(media.OCI_LAYER, LAYER)]})
    blobs = {f"blobs/sha256/{sha(b)}": b for b in (LAYER, cfg, mbytes)}
    top = descriptor(media.OCI_MANIFEST, mbytes, platform={"os": "linux", "architecture": "amd64"})
    for _ in range(depth):
        ibytes = dumps({"schemaVersion": 2, "mediaType": media.OCI_INDEX, "manifests": [top]})
        blobs[f"blobs/sha256/{sha(ibytes)}"] = ibytes
        top = descriptor(media.OCI_INDEX, ibytes)
    top["annotations"] = {"io.containerd.image.name": "docker.io/integrity/nested:1"}
    index = dumps({"schemaVersion": 2, "mediaType": media.OCI_INDEX, "manifests": [top]})
    return write_tar([("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'), *blobs.items(), ("index.json", index)])


def _swap_layer(mdoc: Doc) -> None:
    mdoc["layers"][0] = descriptor(media.OCI_LAYER, LAYER2)


def _size(where: str, value: object) -> Callable[[Doc], None]:
    def change(doc: Doc) -> None:
        target = doc["config"] if where == "config" else doc["layers"][0] if where == "layer" else doc["manifests"][0]
        target["size"] = value
    return change


BIG = "x" * (5 << 20)
DIGEST_A = "sha256:" + "a" * 64
ESCAPE = "../../../../etc/passwd"

# name -> (archive bytes, a piece of the expected message)
CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    # blob bytes against their names
    "oci-blob-bytes-not-its-name": (lambda: oci_archive(blobs={f"blobs/sha256/{sha(LAYER)}": LAYER2}),
                                    "unexpected commit digest"),
    "docker-config-bytes-not-its-name": (lambda: docker_archive(extra=[(f"{sha(b'{}')}.json", b"{ }")]),
                                         "unexpected commit digest"),
    "bad-blob-name": (lambda: oci_archive(extra=[("blobs/sha256/nothex", b"x")]), "bad blob name"),
    # sizes
    "layer-size-lies": (lambda: oci_archive(man=_size("layer", len(LAYER) + 1)), "size"),
    "layer-size-lies-small": (lambda: oci_archive(man=_size("layer", 10)), "size"),
    "config-size-lies": (lambda: oci_archive(man=_size("config", 3)), "size"),
    "manifest-size-lies": (lambda: oci_archive(index=_size("index", 7)), "size"),
    "negative-size": (lambda: oci_archive(man=_size("layer", -1)), "invalid descriptor size"),
    "size-2^63": (lambda: oci_archive(man=_size("layer", 1 << 63)), "invalid descriptor size"),
    "size-float": (lambda: oci_archive(man=_size("layer", 1.5)), "invalid descriptor"),
    "size-bool": (lambda: oci_archive(man=_size("layer", True)), "invalid descriptor size"),
    "size-string": (lambda: oci_archive(man=_size("config", "12")), "invalid descriptor"),
    # diff IDs and layer counts
    "docker-diffid-mismatch": (lambda: docker_archive(config=dumps(config_doc([LAYER2]))), "invalid diffID"),
    "oci-diffid-mismatch": (lambda: oci_archive(man=_swap_layer, blobs={f"blobs/sha256/{sha(LAYER2)}": LAYER2}),
                            "invalid diffID"),
    "docker-more-layers-than-diffids": (lambda: docker_archive([LAYER, LAYER2], config=dumps(config_doc([LAYER]))),
                                        "layers length mismatch"),
    "docker-fewer-layers-than-diffids": (lambda: docker_archive(entry=edit(Layers=[])), "layers length mismatch"),
    "docker-layers-null": (lambda: docker_archive(entry=edit(Layers=None)), "layers length mismatch"),
    "oci-fewer-layers-than-diffids": (lambda: oci_archive(config=dumps(config_doc([LAYER, LAYER2]))),
                                      "layers length mismatch"),
    # manifest.json shapes and types
    "manifest-json-object": (lambda: docker_archive(manifest=b'{"Config": "x"}'), "manifest.json"),
    "manifest-json-not-json": (lambda: docker_archive(manifest=b"[{"), "manifest.json"),
    "manifest-json-empty-list": (lambda: docker_archive(manifest=b"[]"), "no images"),
    "manifest-json-entry-string": (lambda: docker_archive(entry=lambda _i: "x"), "manifest.json"),
    "docker-config-null": (lambda: docker_archive(entry=edit(Config=None)), "Config"),
    "docker-config-number": (lambda: docker_archive(entry=edit(Config=5)), "Config"),
    "docker-layers-string": (lambda: docker_archive(entry=edit(Layers="abc/layer.tar")), "Layers"),
    "docker-layers-numbers": (lambda: docker_archive(entry=edit(Layers=[1])), "Layers"),
    "docker-repotags-string": (lambda: docker_archive(entry=edit(RepoTags="integrity/docker:1")), "RepoTags"),
    "docker-repotags-number": (lambda: docker_archive(entry=edit(RepoTags=[7])), "RepoTags"),
    "manifest-json-9mib": (lambda: docker_archive(manifest=dumps([{"x": BIG * 2}])), "too large"),
    # OCI documents
    "index-not-json": (lambda: oci_archive(index_bytes=b"{nope"), "invalid"),
    "index-manifests-null": (lambda: oci_archive(index=lambda d: d.update(manifests=None)), "manifests"),
    "index-manifests-object": (lambda: oci_archive(index=lambda d: d.update(manifests={})), "manifests"),
    "index-5mib": (lambda: oci_archive(index=lambda d: d.update(pad=BIG)), "too large"),
    "index-with-layers": (lambda: oci_archive(index=lambda d: d.update(layers=[])), "both manifests and"),
    "manifest-config-null": (lambda: oci_archive(man=lambda d: d.update(config=None)), "invalid descriptor"),
    "manifest-layers-null": (lambda: oci_archive(man=lambda d: d.update(layers=None)), "layers must be a list"),
    "manifest-layers-object": (lambda: oci_archive(man=lambda d: d.update(layers={})), "layers must be a list"),
    "manifest-5mib": (lambda: oci_archive(man=lambda d: d.update(pad=BIG)), "too large"),
    "manifest-with-manifests": (lambda: oci_archive(man=lambda d: d.update(manifests=[])), "both manifests and"),
    "manifest-is-a-list": (lambda: oci_archive(manifest_bytes=b"[]"), "not a JSON object"),
    "manifest-not-json": (lambda: oci_archive(manifest_bytes=b"\xff\xfe"), "invalid manifest"),
    "manifest-unknown-media-type": (lambda: oci_archive(man=lambda d: d.update(mediaType="text/plain")),
                                    "unsupported manifest media type"),
    "descriptor-digest-number": (lambda: oci_archive(man=lambda d: d["config"].update(digest=5)),
                                 "invalid descriptor"),
    "descriptor-digest-climbs": (lambda: oci_archive(man=lambda d: d["config"].update(digest="sha256:../../x")),
                                 "invalid checksum digest format"),
    "descriptor-digest-md5": (lambda: oci_archive(man=lambda d: d["config"].update(digest="md5:" + "a" * 32)),
                              "unsupported digest algorithm"),
    "oci-missing-layer": (lambda: oci_archive(man=_swap_layer), "not found in archive"),
    "oci-missing-manifest": (lambda: oci_archive(index=lambda d: d["manifests"][0].update(digest=DIGEST_A)),
                             "not found in archive"),
    "nested-index-too-deep": (lambda: nested_index(8), "nested too deep"),
    # config blobs
    "config-not-json": (lambda: docker_archive(config=b"not json at all"), "invalid image config"),
    "config-a-list": (lambda: docker_archive(config=b"[]"), "invalid image config"),
    "config-no-rootfs": (lambda: docker_archive(config=b'{"architecture": "amd64"}'), "invalid image config"),
    "config-diffids-object": (lambda: docker_archive(config=dumps({"rootfs": {"type": "layers", "diff_ids": {}}})),
                              "invalid image config"),
    "config-diffid-climbs": (lambda: docker_archive([], config=dumps({"rootfs": {"type": "layers",
                                                                               "diff_ids": ["sha256:../x"]}})),
                             "invalid checksum digest format"),
    "oci-config-not-json": (lambda: oci_archive(config=b"\x00\x01"), "invalid image config"),
    # paths and links
    "config-path-climbs": (lambda: docker_archive(entry=edit(Config="../../etc/shadow")),
                           "../../etc/shadow not found in archive"),
    "config-path-absolute-clamped": (lambda: docker_archive(entry=edit(Config="/../../etc/passwd")),
                                     "/../../etc/passwd not found in archive"),
    "config-path-missing": (lambda: docker_archive(entry=edit(Config="nothere.json")), "not found in archive"),
    "layer-path-climbs": (lambda: docker_archive(entry=edit(Layers=["../../../bin/sh"])), "not found in archive"),
    "layer-path-is-a-dir": (lambda: docker_archive(entry=lambda i: i.update(Layers=[i["Layers"][0][:64]])),
                            "not found in archive"),
    "member-name-climbs": (lambda: docker_archive(extra=[("../../escape.txt", b"x")]), "invalid member name"),
    "symlink-member-points-out": (lambda: docker_archive(entry=edit(Config="cfg.json"),
                                                         extra=[link("cfg.json", ESCAPE)]), "invalid symlink"),
    "absolute-symlink-to-host-file": (lambda: docker_archive(entry=edit(Config="cfg.json"),
                                                             extra=[link("cfg.json", "/etc/passwd")]),
                                      "not found in archive"),
    "hardlink-member-points-out": (lambda: docker_archive(entry=edit(Config="cfg.json"),
                                                          extra=[link("cfg.json", ESCAPE, hard=True)]),
                                   "invalid hardlink"),
    "symlink-loop": (lambda: docker_archive(entry=edit(Config="a"), extra=[link("a", "b"), link("b", "a")]),
                     "too many levels"),
    "legacy-repositories-only": (lambda: write_tar([("repositories", dumps({"x": {"1": "../../etc"}}))]),
                                 "no manifest.json or index.json"),
    "oci-layout-only": (lambda: write_tar([("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')]),
                        "no manifest.json or index.json"),
    # tags
    "tag-with-digest": (lambda: docker_archive(tag=f"integrity/docker:1@{DIGEST_A}"), "invalid tag"),
    "digest-only-tag": (lambda: docker_archive(tag=f"integrity/docker@{DIGEST_A}"), "invalid tag"),
    "uppercase-tag": (lambda: docker_archive(tag="Integrity/Docker:1"), "must be lowercase"),
    "bad-tag-chars": (lambda: docker_archive(tag="integrity/docker:a b"), "invalid reference format"),
    "oci-name-with-digest": (lambda: oci_archive(name=f"docker.io/integrity/oci:1@{DIGEST_A}"), "invalid tag"),
    "oci-uppercase-name": (lambda: oci_archive(name="docker.io/Integrity/oci:1"), "must be lowercase"),
    # one bad image spoils the archive: nothing of it is tagged
    "second-image-bad": (lambda: docker_archive(entry=lambda i: [i, {**i, "Config": "nothere.json",
                                                                     "RepoTags": ["integrity/other:1"]}]),
                         "not found in archive"),
}


# --- helpers over the daemon -------------------------------------------------------------------------------------


def blobs(daemon: BerthDaemon) -> set[str]:
    root = daemon.data_root / "content" / "blobs"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def snapshot_keys(daemon: BerthDaemon) -> set[str]:
    dbs = list((daemon.data_root / "snapshots").glob("*/metadata.db"))
    assert len(dbs) == 1
    with contextlib.closing(sqlite3.connect(f"file:{dbs[0]}?mode=ro", uri=True)) as con:
        return {k for (k,) in con.execute("SELECT key FROM snapshots")}


def images(daemon: BerthDaemon) -> str:
    return daemon.docker("images", "-a", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}").stdout


def load(daemon: BerthDaemon, data: bytes, tmp_path: Path) -> Any:
    path = tmp_path / "archive.tar"
    path.write_bytes(data)
    return daemon.docker("load", "-i", str(path), check=False)


@pytest.fixture(scope="module")
def loaded(shared_berthd: BerthDaemon) -> BerthDaemon:
    """The shared daemon with one good image in it, which no refused load may disturb."""
    shared_berthd.docker("load", input=docker_archive(tag="integrity/base:1"))
    return shared_berthd


@pytest.fixture
def daemon(loaded: BerthDaemon) -> Iterator[BerthDaemon]:
    """After each test, whatever it loaded is removed again, so one failure does not cascade."""
    yield loaded
    for line in images(loaded).splitlines():
        name, image_id = line.split()
        if name != "integrity/base:1":
            loaded.docker("rmi", "-f", image_id if name == "<none>:<none>" else name, check=False)
    loaded.docker("image", "prune", "-f")


@pytest.mark.parametrize("case", list(CASES))
def test_corrupt_archive_is_refused(case: str, daemon: BerthDaemon, tmp_path: Path) -> None:
    build, message = CASES[case]
    data = build()
    before_images, before_blobs, before_snaps = images(daemon), blobs(daemon), snapshot_keys(daemon)

    res = load(daemon, data, tmp_path)

    assert res.returncode == 1, f"{case}: loaded:\n{res.stdout}{res.stderr}"
    assert res.stderr.startswith("Error response from daemon: "), res.stderr
    assert message.lower() in res.stderr.lower(), res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr) < 400, res.stderr
    assert "Loaded image" not in res.stdout
    assert images(daemon) == before_images
    daemon.docker("image", "prune", "-f")
    assert blobs(daemon) == before_blobs, f"{case}: blobs left behind"
    assert snapshot_keys(daemon) == before_snaps, f"{case}: snapshots left behind"
    assert daemon.docker("version", "-f", "{{.Server.Version}}").stdout.strip()


@pytest.mark.parametrize("kind", ["docker", "oci"])
def test_load_errors_are_http_400_before_the_stream_starts(kind: str, daemon: BerthDaemon) -> None:
    data = docker_archive(config=b"not json") if kind == "docker" else oci_archive(man=_size("layer", 3))
    conn = daemon.http()
    try:
        conn.request("POST", "/images/load?quiet=1", body=data, headers={"Content-Type": "application/x-tar"})
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 400, body
    assert set(body) == {"message"} and body["message"]


def test_in_stream_error_when_progress_was_sent(daemon: BerthDaemon) -> None:
    """With quiet=0 the first progress line has gone out: the error arrives as Docker's errorDetail line."""
    conn = daemon.http()
    try:
        conn.request("POST", "/images/load?quiet=0", body=docker_archive(config=dumps(config_doc([LAYER2]))),
                     headers={"Content-Type": "application/x-tar"})
        resp = conn.getresponse()
        lines = [json.loads(line) for line in resp.read().splitlines() if line.strip()]
    finally:
        conn.close()
    assert resp.status == 200
    assert "invalid diffID" in lines[-1]["error"] and lines[-1]["errorDetail"]["message"] == lines[-1]["error"]


GOOD: dict[str, Callable[[], bytes]] = {
    "docker": lambda: docker_archive(tag="integrity/good:docker"),
    "oci": lambda: oci_archive(name="docker.io/integrity/good:oci"),
    "symlinked-layer-inside": lambda: docker_archive(
        tag="integrity/good:links",
        entry=lambda i: i.update(Layers=["by-link/layer.tar"]),
        extra=[link("by-link/layer.tar", f"../{sha(LAYER)}/layer.tar"), link("cfg-hard", f"{sha(LAYER)}/layer.tar",
                                                                              hard=True)]),
    "absolute-symlink-stays-inside": lambda: docker_archive(
        tag="integrity/good:abs", entry=lambda i: i.update(Layers=["abs"]),
        extra=[link("abs", f"/{sha(LAYER)}/layer.tar")]),
    "nested-index-within-limit": lambda: nested_index(3),
    # like Docker (FollowSymlinkInScope), manifest.json paths are clamped to the archive root
    "climbing-paths-clamped": lambda: docker_archive(tag="integrity/good:clamped", entry=lambda i: i.update(
        Config="../../" + i["Config"], Layers=["/../" + i["Layers"][0]])),
    "gzip-layer": lambda: oci_archive(man=lambda d: d.update(layers=[descriptor(media.OCI_LAYER_GZIP, GZ)]),
                                      blobs={f"blobs/sha256/{sha(GZ)}": GZ}, name="docker.io/integrity/good:gzip"),
}


@pytest.mark.parametrize("case", list(GOOD))
def test_good_variants_still_load(case: str, daemon: BerthDaemon, tmp_path: Path) -> None:
    res = load(daemon, GOOD[case](), tmp_path)
    assert res.returncode == 0, res.stderr
    assert "Loaded image: " in res.stdout
    loaded = res.stdout.split("Loaded image: ")[1].split()[0]
    info = json.loads(daemon.docker("image", "inspect", loaded).stdout)[0]
    assert info["RootFS"]["Layers"] == ["sha256:" + sha(LAYER)]
    daemon.docker("rmi", loaded)
