"""``docker push``: an image's config, layers and manifest to a registry, with Docker's JSON progress messages.

Each blob is first looked for (``HEAD``), then mounted from another repository of the same registry that the
image came from, and only then uploaded: in one ``PUT`` when small, in ``PATCH`` chunks when big. Layers stored
compressed (pulled images, OCI archives) are pushed as they are, so the manifest goes out byte-exact; layers
stored as plain tars (``docker load`` of a ``docker save``) are gzipped first, in parallel blocks like pigz
(deterministic output, so the same layer always gets the same digest). After a push the image's stored
manifest is the pushed one, so the compressed layers are kept and the next push reuses them.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import struct
import threading
import time
import types
import urllib.parse
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, cast

from berth.errors import InvalidArgument, NotFound, Unavailable
from berth.images.store import ImageStore, Lease
from berth.layers.compression import detect
from berth.oci import media
from berth.oci.descriptor import Descriptor
from berth.oci.digest import Digest
from berth.oci.image import Manifest
from berth.oci.reference import Reference, parse
from berth.registry.client.auth import repository_scope
from berth.registry.client.pull import layer_id, progress
from berth.registry.client.transport import Transport
from berth.registry.protocol import Route, path_for

_deflate_impl: types.ModuleType
try:
    from isal import isal_zlib  # ISA-L: ~4x zlib's level-1 speed at the same ratio

    _deflate_impl = isal_zlib
except ImportError:  # pragma: no cover - isal is a dependency; zlib keeps push working without it
    _deflate_impl = zlib

Emit = Callable[[dict[str, Any]], None]

UPLOAD_THREADS = 5
MONOLITHIC_MAX = 16 * 1024 * 1024   # blobs up to this size go up in one PUT; bigger ones in PATCH chunks
CHUNK_SIZE = 32 * 1024 * 1024
GZIP_LEVEL = 1
GZIP_BLOCK = 1 << 20
GZIP_THREADS = max(2, min(8, os.cpu_count() or 2))
_WINDOW = 32 * 1024
_PROGRESS_EVERY_S = 0.1

_GZIPPED = {media.OCI_LAYER: media.OCI_LAYER_GZIP, media.DOCKER_LAYER: media.DOCKER_LAYER_GZIP}


@dataclass(frozen=True)
class PushResult:
    tag: str
    digest: Digest
    size: int


def gzip_parallel(src: IO[bytes], write: Callable[[bytes], object], level: int = GZIP_LEVEL,
                  block: int = GZIP_BLOCK, threads: int = GZIP_THREADS) -> None:
    """gzip ``src`` into ``write`` with blocks compressed in parallel threads (ISA-L and zlib release the GIL),
    each primed with the previous block's last 32 KiB like pigz; the output does not depend on ``threads``."""
    write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")  # no name, no mtime: the same input gives the same bytes
    crc = 0
    total = 0

    def deflate(data: bytes, prime: bytes, last: bool) -> bytes:
        c = _deflate_impl.compressobj(level, zlib.DEFLATED, -15, 9, zdict=prime) if prime else \
            _deflate_impl.compressobj(level, zlib.DEFLATED, -15, 9)
        return cast(bytes, c.compress(data) + c.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH))

    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="berth-gzip") as pool:
        pending: list[concurrent.futures.Future[bytes]] = []
        prime = b""
        data = src.read(block)
        while True:
            nxt = src.read(block) if data else b""
            last = not nxt
            crc = zlib.crc32(data, crc)
            total += len(data)
            pending.append(pool.submit(deflate, data, prime, last))
            prime = data[-_WINDOW:]
            while len(pending) > threads * 2 or (pending and pending[0].done()):
                write(pending.pop(0).result())
            if last:
                break
            data = nxt
        for fut in pending:
            write(fut.result())
    write(struct.pack("<II", crc & 0xFFFFFFFF, total & 0xFFFFFFFF))


class _Counting:
    """A file wrapper that reports how many bytes were read (upload progress)."""

    def __init__(self, f: IO[bytes], limit: int, report: Callable[[int], None]) -> None:
        self._f = f
        self._left = limit
        self._report = report

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        self._report(len(data))
        return data


class Pusher:
    """One push of one image to one tag through one transport."""

    def __init__(self, store: ImageStore, transport: Transport, emit: Emit) -> None:
        self.store = store
        self.transport = transport
        self._emit_lock = threading.Lock()
        self._emit = emit

    def emit(self, msg: dict[str, Any]) -> None:
        with self._emit_lock:
            self._emit(msg)

    def push(self, ref: Reference, image_id: str) -> PushResult:
        """Push ``image_id`` as ``ref`` (which has a tag)."""
        assert ref.tag is not None
        rec = self.store.db.get(image_id)
        stored_raw = self.store.content.read(Digest.parse(rec.target_digest))
        stored = Manifest.parse(stored_raw)
        sources = self._mount_sources(ref, rec.repo_digests)
        scopes = (repository_scope(ref.path, ["pull", "push"]),
                  *(repository_scope(s, ["pull"]) for s in sources))
        self.emit({"status": f"The push refers to repository [{ref.name}]"})
        with self.store.lease() as lease:
            unique: dict[Digest, Descriptor] = {}
            for layer in stored.layers:
                unique.setdefault(layer.digest, layer)
            for layer in reversed(list(unique.values())):
                self.emit(progress("Preparing", layer_id(layer)))
            pushed: dict[Digest, Descriptor] = {}
            with concurrent.futures.ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="berth-push") as pool:
                futures = {d: pool.submit(self._layer, ref, desc, stored.media_type, scopes, sources, lease)
                           for d, desc in unique.items()}
                try:
                    for d, fut in futures.items():
                        pushed[d] = fut.result()
                except BaseException:
                    for f in futures.values():
                        f.cancel()
                    raise
            layers = tuple(pushed[layer.digest] for layer in stored.layers)
            self._blob(ref, stored.config, scopes, sources, None)
            if layers == stored.layers and all(a.media_type == b.media_type for a, b in zip(layers, stored.layers,
                                                                                          strict=True)):
                raw = stored_raw
                mtype = stored.media_type
            else:
                mtype = stored.media_type
                doc = Manifest(mtype, stored.config, layers).to_json()
                raw = json.dumps(doc, indent=3).encode()
                self.store.put_bytes(lease, raw)
            digest = Digest.of_bytes(raw)
            url = path_for(Route.MANIFEST, name=ref.path, reference=ref.tag)
            with self.transport.request("PUT", url, scopes=scopes, headers={"Content-Type": mtype}, body=raw,
                                        ok=(200, 201), what=f"pushing manifest for {ref.familiar()}") as resp:
                resp.read()
                claimed = resp.header("Docker-Content-Digest")
            if claimed and claimed != str(digest):
                raise Unavailable(f"pushing manifest for {ref.familiar()}: the registry stored digest {claimed}, "
                                  f"expected {digest}")
            config = self.store.config(rec.id)
            self.store.commit_image(raw, config, [], [f"{ref.name}@{digest}"], media_type=mtype)
        self.emit({"status": f"{ref.tag}: digest: {digest} size: {len(raw)}"})
        self.emit({"progressDetail": {}, "aux": {"Tag": ref.tag, "Digest": str(digest), "Size": len(raw)}})
        return PushResult(ref.tag, digest, len(raw))

    def _mount_sources(self, ref: Reference, repo_digests: tuple[str, ...]) -> list[str]:
        """Other repositories of the same registry this image is known in (candidates for a cross-repo mount)."""
        out: list[str] = []
        for text in repo_digests:
            try:
                other = parse(text)
            except InvalidArgument:
                continue
            if other.domain == ref.domain and other.path != ref.path and other.path not in out:
                out.append(other.path)
        return out[:3]

    # --- layers ---------------------------------------------------------------------------------------------

    def _layer(self, ref: Reference, desc: Descriptor, manifest_type: str, scopes: tuple[str, ...],
               sources: list[str], lease: Lease) -> Descriptor:
        ident = layer_id(desc)
        lease.blobs.add(desc.digest)
        with self.store.content.open(desc.digest) as f:
            kind = detect(f.read(8))
        out = desc
        if kind == "none":
            out = self._compress(desc, manifest_type, lease)
        self._blob(ref, out, scopes, sources, ident)
        return out

    def _compress(self, desc: Descriptor, manifest_type: str, lease: Lease) -> Descriptor:
        gz_type = media.DOCKER_LAYER_GZIP if manifest_type == media.DOCKER_MANIFEST else media.OCI_LAYER_GZIP
        hasher = hashlib.sha256()

        with self.store.content.open(desc.digest) as src, self.store.content.writer() as w:
            def write(data: bytes) -> None:
                hasher.update(data)
                w.write(data)
            gzip_parallel(src, write)
            size = w.offset
            digest = Digest.from_hasher(hasher)
            lease.blobs.add(digest)  # before the blob appears: a concurrent GC must not take it
            w.commit()
        return Descriptor(_GZIPPED.get(desc.media_type, gz_type), digest, size, dict(desc.annotations))

    def _blob(self, ref: Reference, desc: Descriptor, scopes: tuple[str, ...], sources: list[str],
              ident: str | None) -> None:
        """Make sure the registry has ``desc`` under ``ref``'s repository: exists, mount, or upload."""
        repo = ref.path
        with self.transport.request("HEAD", path_for(Route.BLOB, name=repo, digest=str(desc.digest)), scopes=scopes,
                                    ok=(200, 404)) as head:
            head.read()
            exists = head.status == 200
        if exists:
            if ident:
                self.emit(progress("Layer already exists", ident))
            return
        location = ""
        for source in sources:
            query = urllib.parse.urlencode({"mount": str(desc.digest), "from": source})
            with self.transport.request("POST", path_for(Route.UPLOADS, name=repo) + "?" + query, scopes=scopes,
                                        ok=(201, 202), what=f"mounting blob {desc.digest}") as resp:
                resp.read()
                if resp.status == 201:
                    if ident:
                        self.emit(progress(f"Mounted from {source}", ident))
                    return
                location = resp.header("Location")
                break
        if not location:
            with self.transport.request("POST", path_for(Route.UPLOADS, name=repo), scopes=scopes, ok=(202,),
                                        what=f"starting upload of blob {desc.digest}") as resp:
                resp.read()
                location = resp.header("Location")
        if not location:
            raise Unavailable(f"starting upload of blob {desc.digest}: the registry gave no upload Location")
        self._upload(ref, desc, scopes, _absolute(self.transport.base, location), ident)
        if ident:
            self.emit(progress("Pushed", ident))

    def _upload(self, ref: Reference, desc: Descriptor, scopes: tuple[str, ...], location: str,
                ident: str | None) -> None:
        size = desc.size
        done = 0
        last = 0.0

        def report(n: int) -> None:
            nonlocal done, last
            done += n
            now = time.monotonic()
            if ident and now - last >= _PROGRESS_EVERY_S:
                last = now
                self.emit(progress("Pushing", ident, done, size))

        what = f"uploading blob {desc.digest}"
        with self.store.content.open(desc.digest) as f:
            if size > MONOLITHIC_MAX:
                offset = 0
                while offset < size:
                    n = min(CHUNK_SIZE, size - offset)
                    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(n),
                               "Content-Range": f"{offset}-{offset + n - 1}"}
                    chunk: Any = _Counting(f, n, report)
                    with self.transport.request("PATCH", location, scopes=scopes, headers=headers,
                                                body=chunk, ok=(202,), what=what) as resp:
                        resp.read()
                        location = _absolute(location, resp.header("Location") or location)
                    offset += n
                body: Any = b""
                length = 0
            else:
                body = _Counting(f, size, report)
                length = size
            url = _with_digest(location, desc.digest)
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(length)}
            try:
                with self.transport.request("PUT", url, scopes=scopes, headers=headers, body=body, ok=(201, 204),
                                            what=what) as resp:
                    resp.read()
            except NotFound as err:
                raise Unavailable(f"{what}: the upload session is gone: {err}") from None


def _absolute(base: str, location: str) -> str:
    return urllib.parse.urljoin(base + ("/" if "://" in base and base.count("/") == 2 else ""), location)


def _with_digest(location: str, digest: Digest) -> str:
    sep = "&" if "?" in location else "?"
    return f"{location}{sep}digest={urllib.parse.quote(str(digest))}"

