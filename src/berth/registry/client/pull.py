"""``docker pull``: a reference's manifest (through an index by platform), its config and layers from a registry,
verified, into berth's image store, with Docker's JSON progress messages.

Every document and blob is checked against its digest (and size) before it can be addressed; a failed pull
tags nothing and keeps no bad blob (the content store discards unverified writes). Layers download in
parallel threads and resume with ``Range`` after an interrupted body; a blob another pull is already fetching
is waited for, not fetched twice. Layers are extracted in order while later ones still download.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from berth.errors import BerthError, InvalidArgument, NotFound, Unavailable
from berth.images.store import ImageStore, Lease
from berth.layers.compression import open_decompressed
from berth.oci import media
from berth.oci.descriptor import Descriptor
from berth.oci.digest import Digest
from berth.oci.image import MAX_MANIFEST_SIZE, ImageConfig, Index, Manifest
from berth.oci.reference import Reference
from berth.registry.client.auth import repository_scope
from berth.registry.client.transport import Transport
from berth.registry.protocol import Route, path_for
from berth.snapshots.base import Kind

log = logging.getLogger("berth.registry")

Emit = Callable[[dict[str, Any]], None]

SCHEMA1_TYPES = frozenset({
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
})
MANIFEST_ACCEPT = ", ".join([media.OCI_INDEX, media.DOCKER_MANIFEST_LIST, media.OCI_MANIFEST, media.DOCKER_MANIFEST])
MAX_CONFIG_SIZE = 8 * 1024 * 1024
DOWNLOAD_THREADS = 4
MAX_RESUMES = 5
_PROGRESS_EVERY_S = 0.1
_BUF = 1 << 20


@dataclass(frozen=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os[/arch[/variant]]`` as in ``--platform``; empty means linux/amd64."""
        if not text:
            return cls()
        parts = text.lower().split("/")
        if len(parts) > 3 or not all(parts):
            raise InvalidArgument(f'"{text}": unknown operating system or architecture: invalid argument')
        arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(parts[1], parts[1]) if len(parts) > 1 else "amd64"
        return cls(parts[0], arch, parts[2] if len(parts) > 2 else "")

    def matches(self, p: dict[str, Any] | None) -> bool:
        if not p:
            return False
        if p.get("os") != self.os or p.get("architecture") != self.architecture:
            return False
        return not self.variant or p.get("variant", "") in (self.variant, "")

    def __str__(self) -> str:
        return "/".join(x for x in (self.os, self.architecture, self.variant) if x)


@dataclass(frozen=True)
class PullResult:
    image_id: str
    digest: Digest          # what the reference resolved to (an index's digest for a multi-platform image)
    updated: bool           # False: the tag already named this image


class InFlight:
    """Blobs being downloaded right now, shared by all pulls of one daemon, so a blob is fetched once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[Digest, threading.Event] = {}

    def claim(self, digest: Digest) -> threading.Event | None:
        """None: the caller downloads and must ``release``; else an event set when the other download ends."""
        with self._lock:
            event = self._events.get(digest)
            if event is not None:
                return event
            self._events[digest] = threading.Event()
            return None

    def release(self, digest: Digest) -> None:
        with self._lock:
            event = self._events.pop(digest, None)
        if event is not None:
            event.set()


def layer_id(d: Descriptor) -> str:
    return d.digest.short


def progress(status: str, ident: str, current: int | None = None, total: int | None = None) -> dict[str, Any]:
    """One Docker JSON progress message (``progressDetail`` is what the docker CLI draws its bar from)."""
    msg: dict[str, Any] = {"status": status, "progressDetail": {}, "id": ident}
    if current is not None:
        detail: dict[str, int] = {"current": current}
        if total:
            detail["total"] = total
        msg["progressDetail"] = detail
        msg["progress"] = _bar(current, total or 0)
    return msg


def _bar(current: int, total: int) -> str:
    def human(n: float) -> str:
        for unit in ("B", "kB", "MB", "GB"):
            if n < 1000:
                return f"{n:.3g}{unit}"
            n /= 1000
        return f"{n:.3g}TB"
    if total <= 0:
        return human(current)
    filled = min(50, int(current * 50 / total))
    return "[" + "=" * filled + (">" if filled < 50 else "") + " " * max(0, 49 - filled) + f"] {human(current)}/" \
        f"{human(total)}"


class Puller:
    """One pull of one reference through one transport."""

    def __init__(self, store: ImageStore, transport: Transport, inflight: InFlight, emit: Emit,
                 platform: Platform | None = None) -> None:
        self.store = store
        self.transport = transport
        self.inflight = inflight
        self.platform = platform or Platform()
        self._emit_lock = threading.Lock()
        self._emit = emit

    def emit(self, msg: dict[str, Any]) -> None:
        with self._emit_lock:
            self._emit(msg)

    def pull(self, ref: Reference) -> PullResult:
        repo = ref.path
        scopes = (repository_scope(repo, ["pull"]),)
        top_raw, top_type, top_digest = self._manifest(ref, ref.digest or ref.tag or "latest", scopes)
        # after the manifest, like dockerd: a missing image is a plain error response, not a broken stream
        self.emit({"status": f"Pulling from {ref.path}", "id": ref.tag or str(ref.digest)})
        raw, mtype, _ = top_raw, top_type, top_digest
        if mtype in media.INDEXES:
            index = Index.parse(raw, mtype)
            chosen = next((m for m in index.manifests if self.platform.matches(m.platform)), None)
            if chosen is None:
                raise NotFound(f"no matching manifest for {self.platform} in the manifest list entries")
            if chosen.media_type not in media.MANIFESTS:
                raise InvalidArgument(f"unsupported manifest media type {chosen.media_type} in the index of "
                                      f"{ref.familiar()}")
            raw, mtype, _ = self._manifest(ref, chosen.digest, scopes)
            if mtype in media.INDEXES:
                raise InvalidArgument(f"{ref.familiar()}: nested image indexes are not supported")
        manifest = Manifest.parse(raw, mtype)
        for layer in manifest.layers:
            if layer.media_type not in media.LAYERS:
                raise InvalidArgument(f"unsupported layer media type {layer.media_type} in {ref.familiar()}")
        with self.store.lease() as lease:
            config = self._config(ref, manifest.config, scopes, lease)
            if len(config.diff_ids) != len(manifest.layers):
                raise InvalidArgument(f"invalid manifest for {ref.familiar()}: it has {len(manifest.layers)} layers, "
                                      f"its config {len(config.diff_ids)} diff IDs")
            self._layers(ref, manifest, config, scopes, lease)
            self.store.put_bytes(lease, raw)
            tags = [ref] if ref.tag is not None and ref.digest is None else []
            before = self.store.db.by_tag(str(ref)) if tags else None
            repo_digest = f"{ref.name}@{top_digest}"
            self.store.commit_image(raw, config, tags, [repo_digest], media_type=mtype)
        self.emit({"status": f"Digest: {top_digest}"})
        updated = before != str(config.id)
        shown = ref.familiar()
        self.emit({"status": f"Status: {'Downloaded newer image' if updated else 'Image is up to date'} for {shown}"})
        return PullResult(str(config.id), top_digest, updated)

    # --- documents ----------------------------------------------------------------------------------------

    def _manifest(self, ref: Reference, which: Digest | str, scopes: tuple[str, ...]) -> tuple[bytes, str, Digest]:
        """A manifest or index by tag or digest: bytes (≤ 4 MiB), its media type, its verified digest."""
        path = path_for(Route.MANIFEST, name=ref.path, reference=str(which))
        shown = f"{ref.name}:{which}" if isinstance(which, str) else f"{ref.name}@{which}"
        try:
            resp = self.transport.request("GET", path, scopes=scopes, headers={"Accept": MANIFEST_ACCEPT})
        except NotFound as err:
            raise NotFound(f"manifest for {shown} not found: {_tail(err)}") from None
        with resp:
            declared = resp.header("Content-Length")
            if declared.isdigit() and int(declared) > MAX_MANIFEST_SIZE:
                resp.abort()
                raise InvalidArgument(f"manifest for {shown} is too large: {declared} bytes (limit 4 MiB)")
            try:
                raw = resp.read(MAX_MANIFEST_SIZE)
            except InvalidArgument:
                raise InvalidArgument(f"manifest for {shown} is too large (limit 4 MiB)") from None
            except (OSError, http.client.HTTPException) as err:
                raise Unavailable(f"reading manifest for {shown}: {err or type(err).__name__}") from None
            ctype = resp.header("Content-Type").split(";")[0].strip()
            header_digest = resp.header("Docker-Content-Digest")
        actual = Digest.of_bytes(raw)
        if isinstance(which, Digest):
            if which.algorithm != "sha256":
                actual = Digest.from_hasher(_hash(which, raw))
            if actual != which:
                raise InvalidArgument(f"manifest verification failed for digest {which}: the registry sent content "
                                      f"with digest {actual}")
        elif header_digest:
            try:
                claimed = Digest.parse(header_digest)
            except InvalidArgument:
                claimed = None
            if claimed is not None and claimed.algorithm == "sha256" and claimed != actual:
                raise InvalidArgument(f"manifest for {shown}: Docker-Content-Digest {claimed} does not match the "
                                      f"content ({actual})")
        return raw, _media_type(raw, ctype, shown), actual

    def _config(self, ref: Reference, desc: Descriptor, scopes: tuple[str, ...], lease: Lease) -> ImageConfig:
        if desc.size > MAX_CONFIG_SIZE:
            raise InvalidArgument(f"image config {desc.digest} of {ref.familiar()} is too large ({desc.size} bytes)")
        if not self.store.content.has(desc.digest):
            self._download(ref, desc, scopes, lease, announce=False)
        else:
            lease.blobs.add(desc.digest)
        return ImageConfig.parse(self.store.content.read(desc.digest))

    # --- layers ---------------------------------------------------------------------------------------------

    def _layers(self, ref: Reference, manifest: Manifest, config: ImageConfig, scopes: tuple[str, ...],
                lease: Lease) -> None:
        layers = list(manifest.layers)
        need: dict[Digest, Descriptor] = {}
        for layer in layers:
            lease.blobs.add(layer.digest)
            if self.store.content.has(layer.digest):
                self.emit(progress("Already exists", layer_id(layer)))
            elif layer.digest not in need:
                need[layer.digest] = layer
                self.emit(progress("Pulling fs layer", layer_id(layer)))
        with concurrent.futures.ThreadPoolExecutor(DOWNLOAD_THREADS, thread_name_prefix="berth-pull") as pool:
            futures = {d: pool.submit(self._download, ref, desc, scopes, lease, True) for d, desc in need.items()}
            try:
                for i, layer in enumerate(layers):
                    fut = futures.get(layer.digest)
                    if fut is not None:
                        fut.result()
                    chain = config.chain_ids[i]
                    if layer.digest != config.diff_ids[i] and self._committed(str(chain)):
                        self._check_reused(layer, config.diff_ids[i], i)
                    self.store.unpack(lease, layers[:i + 1], config.diff_ids[:i + 1])
                    if fut is not None:
                        self.emit(progress("Pull complete", layer_id(layer)))
            except BaseException:
                for f in futures.values():
                    f.cancel()
                raise

    def _committed(self, chain: str) -> bool:
        try:
            return self.store.snapshotter.stat(chain).kind is Kind.COMMITTED
        except NotFound:
            return False

    def _check_reused(self, layer: Descriptor, diff_id: Digest, i: int) -> None:
        """A layer whose snapshot already exists is not extracted, so its blob is hashed here instead: the stored
        manifest must not pair a diff ID with other content. Layers this pull extracts are checked by the
        extraction itself (hashing them again after it was a second full decompression of every layer)."""
        hasher = diff_id.hasher()
        with self.store.content.open(layer.digest) as raw, open_decompressed(raw) as stream:
            while chunk := stream.read(_BUF):
                hasher.update(chunk)
        actual = Digest.from_hasher(hasher)
        if actual != diff_id:
            raise InvalidArgument(f"invalid diffID for layer {i}: calculated {actual}, expected {diff_id}")

    def _download(self, ref: Reference, desc: Descriptor, scopes: tuple[str, ...], lease: Lease,
                  announce: bool) -> None:
        lease.blobs.add(desc.digest)
        while True:
            waiting = self.inflight.claim(desc.digest)
            if waiting is None:
                break
            waiting.wait()
            if self.store.content.has(desc.digest):
                if announce:
                    self.emit(progress("Download complete", layer_id(desc)))
                return
        try:
            if self.store.content.has(desc.digest):
                return
            self._fetch(ref, desc, scopes, announce)
        finally:
            self.inflight.release(desc.digest)

    def _fetch(self, ref: Reference, desc: Descriptor, scopes: tuple[str, ...], announce: bool) -> None:
        """GET the blob into the content store, resuming with Range after a broken body; verified on commit."""
        path = path_for(Route.BLOB, name=ref.path, digest=str(desc.digest))
        ident = layer_id(desc)
        size = desc.size
        resumes = 0
        last_emit = 0.0
        buf = memoryview(bytearray(_BUF))
        # a download that broke off earlier (even with berthd killed mid-pull) continues where it stopped
        stale = False
        with self.store.content.resumable_writer(desc.digest, size) as writer:
            offset = resumed_from = writer.offset
            while True:
                headers = {"Range": f"bytes={offset}-"} if offset else {}
                try:
                    resp = self.transport.request("GET", path, scopes=scopes, headers=headers, ok=(200, 206))
                except NotFound as err:
                    raise NotFound(f"blob {desc.digest} of {ref.familiar()} not found: {_tail(err)}") from None
                try:
                    skip = offset if resp.status == 200 else 0  # the server ignored Range: drop what we have
                    if resp.status == 206 and not resp.header("Content-Range").startswith(f"bytes {offset}-"):
                        raise Unavailable(f"blob {desc.digest}: the registry answered Range bytes={offset}- with "
                                          f"{resp.header('Content-Range')!r}")
                    while True:
                        n = resp.readinto(buf)
                        if not n:
                            break
                        chunk = buf[:n]
                        if skip:
                            dropped = min(skip, n)
                            skip -= dropped
                            chunk = chunk[dropped:]
                        if offset + len(chunk) > size:
                            raise InvalidArgument(f"blob {desc.digest} of {ref.familiar()}: the registry sent more "
                                                  f"than the {size} bytes its descriptor declares")
                        writer.write(chunk)
                        offset += len(chunk)
                        now = time.monotonic()
                        if announce and now - last_emit >= _PROGRESS_EVERY_S:
                            last_emit = now
                            self.emit(progress("Downloading", ident, offset, size))
                    resp.close()
                except (OSError, http.client.HTTPException) as err:
                    resp.abort()
                    resumes += 1
                    if resumes > MAX_RESUMES:
                        raise Unavailable(f"downloading blob {desc.digest} of {ref.familiar()}: {err or 'broken'}"
                                          f" after {MAX_RESUMES} resumes") from None
                    continue
                except BaseException:
                    resp.abort()
                    raise
                if offset < size:
                    resumes += 1  # the body ended early without an error (no Content-Length): resume
                    if resumes > MAX_RESUMES:
                        raise Unavailable(f"downloading blob {desc.digest} of {ref.familiar()}: unexpected EOF "
                                          f"at {offset} of {size} bytes")
                    continue
                break
            if announce:
                self.emit(progress("Verifying Checksum", ident))
            try:
                writer.commit()
            except InvalidArgument as err:
                if not resumed_from:
                    raise InvalidArgument(f"filesystem layer verification failed for digest {desc.digest}: "
                                          f"{err}") from None
                stale = True  # the kept prefix was bad (a machine crash): it is gone now, fetch the whole blob
        if stale:
            log.warning("blob %s: the partial download kept from an earlier pull was corrupt; fetching it again",
                        desc.digest)
            self._fetch(ref, desc, scopes, announce)
            return
        if announce:
            self.emit(progress("Download complete", ident))


def _hash(which: Digest, raw: bytes) -> Any:
    h = which.hasher()
    h.update(raw)
    return h


def _tail(err: BerthError) -> str:
    return str(err).split('": ', 1)[-1]


def _media_type(raw: bytes, content_type: str, shown: str) -> str:
    """The document's type from its mediaType field, else the Content-Type; schema 1 is refused clearly, a
    mediaType contradicting Content-Type is refused (CVE-2021-41190 type confusion)."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidArgument(f"invalid manifest for {shown}: {err}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument(f"invalid manifest for {shown}: not a JSON object")
    declared = doc.get("mediaType")
    if doc.get("schemaVersion") == 1 or content_type in SCHEMA1_TYPES or declared in SCHEMA1_TYPES:
        raise InvalidArgument(
            "[DEPRECATION NOTICE] Docker Image Format v1 and Docker Image manifest version 2, schema 1 support has "
            f"been removed. Suggest the author of {shown} to upgrade the image to the OCI Format or Docker Image "
            "manifest v2, schema 2. More information at https://docs.docker.com/go/deprecated-image-specs/")
    if declared is not None and not isinstance(declared, str):
        raise InvalidArgument(f"invalid manifest for {shown}: mediaType is not a string")
    known = media.MANIFESTS | media.INDEXES
    if declared and content_type in known and declared != content_type:
        raise InvalidArgument(f"invalid manifest for {shown}: mediaType {declared} does not match Content-Type "
                              f"{content_type}")
    mtype = declared or (content_type if content_type in known else "")
    if not mtype:
        mtype = media.OCI_INDEX if "manifests" in doc else media.OCI_MANIFEST
    if mtype not in known:
        raise InvalidArgument(f"unsupported manifest media type for {shown}: {mtype}")
    if mtype in media.INDEXES and ("layers" in doc or "config" in doc):
        raise InvalidArgument(f"invalid manifest for {shown}: an index with config or layers")
    if mtype in media.MANIFESTS and "manifests" in doc:
        raise InvalidArgument(f"invalid manifest for {shown}: a manifest with a manifests list")
    return mtype
