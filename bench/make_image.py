"""Benchmark inputs: ``docker save``-format image archives built without a daemon.

An archive holds the OCI layout Docker 25+ writes (``oci-layout``, ``index.json``, ``blobs/sha256/...``)
plus the legacy ``manifest.json`` every ``docker load`` since 1.10 reads, so both old and new daemons
(and berth) load it. Layers come from a bootstrapped rootfs tar (berth.images.bootstrap) or from a
seeded synthetic tree: thousands of files of mixed sizes, the same bytes on every run.

    .venv/bin/python bench/make_image.py --source synthetic --size-mb 250 -o /var/tmp/load.tar
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import random
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

CREATED = "2025-01-01T00:00:00Z"
MTIME = 1735689600
TAG = "berth-bench/load:latest"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
_WORDS = b"the quick brown fox jumps over the lazy dog lorem ipsum dolor sit amet container layer ".split()


@dataclass(frozen=True)
class Layer:
    """One uncompressed layer tar on disk and its digest (diff ID == blob digest, as docker save writes)."""

    path: Path
    digest: str
    size: int
    files: int
    comment: str


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts what passes through it to ``sink``."""

    def __init__(self, sink: BinaryIO) -> None:
        self.sink = sink
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.hash.update(data)
        self.size += len(data)
        self.sink.write(data)
        return len(data)


def layer_from_stream(path: Path, fill: Any, comment: str) -> Layer:
    """Write a layer with ``fill(fileobj)`` into ``path``; returns it with its sha256 and size."""
    with open(path, "wb") as f:
        hw = _HashingWriter(f)
        fill(hw)
    with tarfile.open(path) as tf:
        files = sum(1 for m in tf if m.isfile())
    return Layer(path, f"sha256:{hw.hash.hexdigest()}", hw.size, files, comment)


def synthetic_layers(workdir: Path, size_mb: int, layers: int, seed: int = 1) -> list[Layer]:
    """``layers`` layers totalling about ``size_mb`` MB of file data, as thousands of files of mixed sizes."""
    rng = random.Random(seed)
    per_layer = size_mb * 1024 * 1024 // layers
    out = []
    for n in range(layers):
        path = workdir / f"synthetic-{n}.tar"

        def fill(f: BinaryIO, n: int = n) -> None:
            with tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tf:
                for info, data in _synthetic_entries(rng, n, per_layer):
                    tf.addfile(info, io.BytesIO(data) if data is not None else None)

        out.append(layer_from_stream(path, fill, f"synthetic layer {n}: ~{per_layer >> 20} MB"))
    return out


def _synthetic_entries(rng: random.Random, n: int, budget: int) -> Iterator[tuple[tarfile.TarInfo, bytes | None]]:
    made_dirs: set[str] = set()

    def dirs(path: str) -> Iterator[tuple[tarfile.TarInfo, None]]:
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in made_dirs:
                made_dirs.add(d)
                yield _info(d, tarfile.DIRTYPE, 0o755), None

    total, count = 0, 0
    while total < budget:
        d = f"usr/share/bench{n}/d{count // 200:03d}/s{(count // 20) % 10}"
        yield from dirs(d)
        roll = rng.random()
        if roll < 0.85:
            size = rng.randint(100, 8 * 1024)
            data = b" ".join(rng.choices(_WORDS, k=size // 5 + 1))[:size]  # text: compressible, like sources
        elif roll < 0.99:
            data = rng.randbytes(rng.randint(8 * 1024, 256 * 1024))  # like .so and .pyc files
        else:
            data = rng.randbytes(rng.randint(1 << 20, 16 << 20))
        info = _info(f"{d}/f{count:05d}", tarfile.REGTYPE, 0o755 if roll > 0.97 else 0o644)
        info.size = len(data)
        yield info, data
        if count % 50 == 49:
            yield _info(f"{d}/link{count:05d}", tarfile.SYMTYPE, 0o777, linkname=f"f{count:05d}"), None
        total += len(data)
        count += 1


def _info(name: str, kind: bytes, mode: int, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.linkname = kind, mode, MTIME, linkname
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def bootstrap_layer(workdir: Path, cache: Path, image: str = "python:3.11") -> tuple[Layer, dict[str, Any]]:
    """One layer holding a bootstrapped rootfs (needs root and the apt mirror the first time)."""
    from berth.images.bootstrap import build_rootfs_tar, recipe_for

    recipe = recipe_for(image)
    path = workdir / "bootstrap.tar"

    def fill(f: BinaryIO) -> None:
        build_rootfs_tar(recipe, cache, f, lambda m: print(f"  bootstrap: {m}", file=sys.stderr))

    return layer_from_stream(path, fill, recipe.history_comment), recipe.config


def write_archive(out: Path, layers: list[Layer], config: dict[str, Any], tag: str = TAG) -> str:
    """Write a ``docker save``-format archive of one image; returns the image ID (config digest)."""
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "created": CREATED,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [x.digest for x in layers]},
        "history": [{"created": CREATED, "comment": x.comment} for x in layers],
    }
    config_raw = json.dumps(image_config, separators=(",", ":")).encode()
    config_digest = f"sha256:{hashlib.sha256(config_raw).hexdigest()}"
    manifest_raw = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_raw)},
        "layers": [{"mediaType": OCI_LAYER, "digest": x.digest, "size": x.size} for x in layers],
    }, separators=(",", ":")).encode()
    manifest_digest = f"sha256:{hashlib.sha256(manifest_raw).hexdigest()}"
    name, _, tag_part = tag.rpartition(":")
    first = name.split("/", 1)[0]
    if "/" in name and ("." in first or ":" in first or first == "localhost"):
        full = name
    else:
        full = f"docker.io/{name}" if "/" in name else f"docker.io/library/{name}"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest_raw),
            "annotations": {"io.containerd.image.name": f"{full}:{tag_part}",
                            "org.opencontainers.image.ref.name": tag_part},
        }],
    }
    legacy = [{
        "Config": _blob(config_digest),
        "RepoTags": [tag],
        "Layers": [_blob(x.digest) for x in layers],
    }]
    tmp = out.with_name(out.name + ".partial")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
        for d in ("blobs", "blobs/sha256"):
            tf.addfile(_info(d, tarfile.DIRTYPE, 0o755))
        seen: set[str] = set()
        for layer in layers:
            if layer.digest not in seen:
                seen.add(layer.digest)
                info = _info(_blob(layer.digest), tarfile.REGTYPE, 0o644)
                info.size = layer.size
                with open(layer.path, "rb") as f:
                    tf.addfile(info, f)
        for path, raw in ((_blob(config_digest), config_raw), (_blob(manifest_digest), manifest_raw),
                          ("index.json", json.dumps(index).encode()), ("manifest.json", json.dumps(legacy).encode()),
                          ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')):
            info = _info(path, tarfile.REGTYPE, 0o644)
            info.size = len(raw)
            tf.addfile(info, io.BytesIO(raw))
    tmp.replace(out)
    return config_digest


def _blob(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]


def make(out: Path, source: str, size_mb: int, layers: int, cache: Path) -> str:
    """Build the benchmark archive at ``out``; ``source`` is bootstrap, synthetic or auto. Returns the source used."""
    work = Path(tempfile.mkdtemp(prefix="bench-image-", dir=out.parent))
    try:
        if source in ("auto", "bootstrap"):
            try:
                layer, config = bootstrap_layer(work, cache / "bootstrap")
                write_archive(out, [layer], config)
                return "bootstrap"
            except Exception as e:
                if source == "bootstrap":
                    raise
                print(f"bootstrap unavailable ({e}); using a synthetic rootfs", file=sys.stderr)
        made = synthetic_layers(work, size_mb, layers)
        write_archive(out, made, {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                                  "Cmd": ["sh"]})
        return "synthetic"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--source", choices=("auto", "bootstrap", "synthetic"), default="synthetic")
    ap.add_argument("--size-mb", type=int, default=250)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path("/var/tmp/berth-bench-cache"))
    args = ap.parse_args()
    used = make(args.output, args.source, args.size_mb, args.layers, args.cache)
    print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.0f} MB, {used})")


if __name__ == "__main__":
    main()
