"""Where berth's registry server keeps things: the ``StorageDriver`` interface and its drivers.

A driver stores blobs content-addressed (manifests are blobs too, kept byte-exact), links blobs and manifest
revisions into repositories (a blob is served from a repository only once it was pushed or mounted there), keeps
tags, referrer links (manifest → its ``subject``) and resumable upload sessions. Errors are ``berth.errors``
kinds (``NotFound``, ``InvalidArgument``, ``Conflict``, ``Forbidden``); the server turns them into registry codes.

Drivers:

* ``FilesystemDriver`` — a directory tree (drawn below), every write temp+fsync+rename.
* ``MemoryDriver``     — dicts under a lock; for tests and throwaway registries.
* ``ImageStoreView``   — berthd's own content store and image tags, served read-only without copying.

All of them pass ``tests/test_registry_conformance.py``. Garbage collection (``berth.registry.gc``) takes
``exclusive()`` while it sweeps; writers that make a blob referenced (upload commit, mount, manifest PUT) hold
``shared()``, and GC spares blobs touched within its grace period, so it is safe while the server runs.

FilesystemDriver layout (only this module joins paths under ``root``)::

    root/
    ├── gc.lock                               flock: shared by writers, exclusive for a GC sweep
    ├── blobs/<alg>/<hex[:2]>/<hex>           blob bytes (layers, configs, manifests), 0444, mtime = last use
    ├── repositories/<name...>/               <name> may nest (library/busybox); "_" dirs mark a repository
    │   ├── _layers/<alg>/<hex>               empty link: the blob belongs to this repository
    │   ├── _manifests/revisions/<alg>/<hex>  the manifest's media type (its bytes are the blob)
    │   ├── _manifests/tags/<tag>             the digest the tag points at
    │   └── _referrers/<alg>/<subject-hex>/<alg>-<hex>   empty link: manifest <alg>:<hex> has this subject
    ├── uploads/<uuid>/{data,repo}            a session: bytes so far (mtime = last activity), its repository
    └── tmp/                                  temp files of atomic writes (crash leftovers are harmless)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import re
import secrets
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from berth.errors import Conflict, Forbidden, InvalidArgument, NotFound
from berth.oci.digest import Digest
from berth.registry import protocol

if TYPE_CHECKING:
    from berth.content.store import ContentStore
    from berth.metadata.images import ImageDB

_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class StoredManifest:
    """A manifest exactly as pushed, with the media type it was pushed as."""

    digest: Digest
    media_type: str
    data: bytes


@dataclass(frozen=True)
class BlobInfo:
    digest: Digest
    size: int
    touched_at: float  # wall clock of the last install, re-push or mount (GC's grace period reads it)


@dataclass(frozen=True)
class UploadState:
    repo: str
    uuid: str
    size: int
    touched_at: float  # wall clock of the last write (session expiry reads it)


class UploadWriter(Protocol):
    """Appends one chunk to an upload session."""

    def write(self, data: bytes | bytearray | memoryview) -> int: ...

    def close(self) -> None: ...


class StorageDriver(Protocol):
    """What the registry server needs from storage. Blocking; the server calls it from worker threads."""

    read_only: bool

    # blobs (global, content-addressed)
    def blob_size(self, digest: Digest) -> int: ...
    def open_blob(self, digest: Digest) -> BinaryIO: ...
    def put_blob(self, data: bytes) -> Digest: ...
    def delete_blob(self, digest: Digest) -> None: ...
    def walk_blobs(self) -> Iterator[BlobInfo]: ...

    # repositories and their blob links
    def repositories(self) -> list[str]: ...
    def link_blob(self, repo: str, digest: Digest) -> None: ...
    def has_link(self, repo: str, digest: Digest) -> bool: ...
    def unlink_blob(self, repo: str, digest: Digest) -> None: ...
    def linked_blobs(self, repo: str) -> list[Digest]: ...

    # manifests, tags and referrers
    def put_manifest(self, repo: str, data: bytes, media_type: str, subject: Digest | None = None) -> Digest: ...
    def get_manifest(self, repo: str, digest: Digest) -> StoredManifest: ...
    def delete_manifest(self, repo: str, digest: Digest) -> None: ...
    def manifests(self, repo: str) -> list[Digest]: ...
    def referrers(self, repo: str, subject: Digest) -> list[Digest]: ...
    def set_tag(self, repo: str, tag: str, digest: Digest) -> None: ...
    def resolve_tag(self, repo: str, tag: str) -> Digest: ...
    def delete_tag(self, repo: str, tag: str) -> None: ...
    def tags(self, repo: str) -> list[str]: ...

    # upload sessions
    def start_upload(self, repo: str) -> str: ...
    def upload_state(self, repo: str, uuid: str) -> UploadState: ...
    def upload_writer(self, repo: str, uuid: str, offset: int) -> UploadWriter: ...
    def commit_upload(self, repo: str, uuid: str, expected: Digest) -> Digest: ...
    def cancel_upload(self, repo: str, uuid: str) -> None: ...
    def uploads(self) -> list[UploadState]: ...

    # coordination with garbage collection
    def shared(self) -> contextlib.AbstractContextManager[None]: ...
    def exclusive(self) -> contextlib.AbstractContextManager[None]: ...


def check_name(repo: str) -> None:
    if not protocol.valid_name(repo):
        raise InvalidArgument(f"invalid repository name: {repo!r}")


def check_tag(tag: str) -> None:
    if not protocol.valid_tag(tag):
        raise InvalidArgument(f"invalid tag: {tag!r}")


def _check_uuid(uuid: str) -> None:
    if not _UUID_RE.match(uuid):
        raise NotFound(f"upload {uuid!r}: unknown")


def _blob_unknown(digest: Digest) -> NotFound:
    return NotFound(f"blob {digest}: unknown")


def _manifest_unknown(what: object) -> NotFound:
    return NotFound(f"manifest {what}: unknown")


class _Hashing:
    """The sha256 state of an upload session while this process follows it (lost on restart: rehash then)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, tuple[int, hashlib._Hash]] = {}

    def update(self, uuid: str, offset: int, data: bytes | bytearray | memoryview) -> None:
        with self._lock:
            known = self._state.get(uuid)
            if known is None and offset == 0:
                known = (0, hashlib.sha256())
            if known is None or known[0] != offset:
                self._state.pop(uuid, None)
                return
            known[1].update(data)
            self._state[uuid] = (offset + len(data), known[1])

    def digest(self, uuid: str, size: int, algorithm: str) -> Digest | None:
        with self._lock:
            known = self._state.get(uuid)
        if algorithm == "sha256" and size == 0:
            return Digest.from_hasher(hashlib.sha256())
        if known is None or known[0] != size or algorithm != "sha256":
            return None
        return Digest.from_hasher(known[1].copy())

    def forget(self, uuid: str) -> None:
        with self._lock:
            self._state.pop(uuid, None)


def _hash_stream(stream: BinaryIO, algorithm: str) -> Digest:
    hasher = hashlib.new(algorithm)
    while chunk := stream.read(1 << 20):
        hasher.update(chunk)
    return Digest.from_hasher(hasher)


def _referrer_name(digest: Digest) -> str:
    return f"{digest.algorithm}-{digest.hex}"


def _referrer_digest(name: str) -> Digest | None:
    alg, _, hexpart = name.partition("-")
    try:
        return Digest(alg, hexpart)
    except InvalidArgument:
        return None


# --- filesystem ------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FileUpload:
    """``UploadWriter`` appending to ``uploads/<uuid>/data``."""

    def __init__(self, path: Path, uuid: str, offset: int, hashing: _Hashing) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        self._uuid = uuid
        self._offset = offset
        self._hashing = hashing

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        self._hashing.update(self._uuid, self._offset, view)
        total = len(view)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._offset += total
        return total

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class FilesystemDriver:
    """The registry's storage as a directory tree (see the module docstring)."""

    read_only = False

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs"
        self._repos = self.root / "repositories"
        self._uploads = self.root / "uploads"
        self._tmp = self.root / "tmp"
        for d in (self.root, self._blobs, self._repos, self._uploads, self._tmp):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_path = self.root / "gc.lock"
        self._lock_path.touch(exist_ok=True)
        self._hashing = _Hashing()

    # paths
    def _blob_path(self, digest: Digest) -> Path:
        return self._blobs / digest.algorithm / digest.hex[:2] / digest.hex

    def _repo(self, repo: str) -> Path:
        check_name(repo)
        return self._repos / repo

    def _link_path(self, repo: str, digest: Digest) -> Path:
        return self._repo(repo) / "_layers" / digest.algorithm / digest.hex

    def _revision_path(self, repo: str, digest: Digest) -> Path:
        return self._repo(repo) / "_manifests" / "revisions" / digest.algorithm / digest.hex

    def _tag_path(self, repo: str, tag: str) -> Path:
        check_tag(tag)
        return self._repo(repo) / "_manifests" / "tags" / tag

    def _referrer_dir(self, repo: str, subject: Digest) -> Path:
        return self._repo(repo) / "_referrers" / subject.algorithm / subject.hex

    def _upload_dir(self, uuid: str) -> Path:
        _check_uuid(uuid)
        return self._uploads / uuid

    def _write_atomic(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp / secrets.token_hex(12)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        _fsync_dir(path.parent)

    @staticmethod
    def _remove(path: Path) -> bool:
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return False

    # blobs
    def blob_size(self, digest: Digest) -> int:
        try:
            return os.stat(self._blob_path(digest)).st_size
        except FileNotFoundError:
            raise _blob_unknown(digest) from None

    def open_blob(self, digest: Digest) -> BinaryIO:
        try:
            return open(self._blob_path(digest), "rb")
        except FileNotFoundError:
            raise _blob_unknown(digest) from None

    def _install(self, tmp: Path, digest: Digest) -> None:
        """Move a verified temp file into the blob store (or drop it if the blob is already there)."""
        final = self._blob_path(digest)
        if final.exists():
            self._remove(tmp)
            self._touch(digest)
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)
        os.rename(tmp, final)
        _fsync_dir(final.parent)

    def _touch(self, digest: Digest) -> None:
        with contextlib.suppress(FileNotFoundError, PermissionError):
            os.utime(self._blob_path(digest))

    def put_blob(self, data: bytes) -> Digest:
        digest = Digest.of_bytes(data)
        tmp = self._tmp / secrets.token_hex(12)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._install(tmp, digest)
        return digest

    def delete_blob(self, digest: Digest) -> None:
        self._remove(self._blob_path(digest))

    def walk_blobs(self) -> Iterator[BlobInfo]:
        for alg in _scandirs(self._blobs):
            for prefix in _scandirs(Path(alg.path)):
                for entry in os.scandir(prefix.path):
                    try:
                        digest = Digest(alg.name, entry.name)
                        st = entry.stat(follow_symlinks=False)
                    except (InvalidArgument, FileNotFoundError):
                        continue
                    yield BlobInfo(digest, st.st_size, st.st_mtime)

    # repositories
    def repositories(self) -> list[str]:
        found: list[str] = []

        def walk(path: Path, prefix: str) -> None:
            for entry in sorted(_scandirs(path), key=lambda e: e.name):
                if entry.name.startswith("_"):
                    continue
                name = f"{prefix}{entry.name}"
                children = {e.name for e in _scandirs(Path(entry.path))}
                if children & {"_layers", "_manifests"}:
                    found.append(name)
                walk(Path(entry.path), name + "/")

        walk(self._repos, "")
        return sorted(found)

    def _repo_exists(self, repo: str) -> bool:
        path = self._repo(repo)
        return (path / "_layers").is_dir() or (path / "_manifests").is_dir()

    def link_blob(self, repo: str, digest: Digest) -> None:
        if not self._blob_path(digest).exists():
            raise _blob_unknown(digest)
        self._touch(digest)
        path = self._link_path(repo, digest)
        if not path.exists():
            self._write_atomic(path, b"")

    def has_link(self, repo: str, digest: Digest) -> bool:
        return self._link_path(repo, digest).exists() and self._blob_path(digest).exists()

    def unlink_blob(self, repo: str, digest: Digest) -> None:
        if not self._remove(self._link_path(repo, digest)):
            raise _blob_unknown(digest)

    def linked_blobs(self, repo: str) -> list[Digest]:
        return _digests_under(self._repo(repo) / "_layers")

    # manifests
    def put_manifest(self, repo: str, data: bytes, media_type: str, subject: Digest | None = None) -> Digest:
        digest = self.put_blob(data)
        self._write_atomic(self._revision_path(repo, digest), media_type.encode())
        if subject is not None:
            self._write_atomic(self._referrer_dir(repo, subject) / _referrer_name(digest), b"")
        return digest

    def get_manifest(self, repo: str, digest: Digest) -> StoredManifest:
        try:
            media_type = self._revision_path(repo, digest).read_text()
            with self.open_blob(digest) as f:
                return StoredManifest(digest, media_type, f.read())
        except (FileNotFoundError, NotFound):
            raise _manifest_unknown(digest) from None

    def delete_manifest(self, repo: str, digest: Digest) -> None:
        if not self._remove(self._revision_path(repo, digest)):
            raise _manifest_unknown(digest)
        for tag in self._tag_names(repo):
            with contextlib.suppress(NotFound):
                if self.resolve_tag(repo, tag) == digest:
                    self._remove(self._tag_path(repo, tag))
        for alg in _scandirs(self._repo(repo) / "_referrers"):
            for subject in _scandirs(Path(alg.path)):
                self._remove(Path(subject.path) / _referrer_name(digest))

    def manifests(self, repo: str) -> list[Digest]:
        return _digests_under(self._repo(repo) / "_manifests" / "revisions")

    def referrers(self, repo: str, subject: Digest) -> list[Digest]:
        try:
            names = sorted(os.listdir(self._referrer_dir(repo, subject)))
        except FileNotFoundError:
            return []
        out = [d for d in map(_referrer_digest, names) if d is not None]
        return [d for d in out if self._revision_path(repo, d).exists()]

    def set_tag(self, repo: str, tag: str, digest: Digest) -> None:
        self._write_atomic(self._tag_path(repo, tag), str(digest).encode())

    def resolve_tag(self, repo: str, tag: str) -> Digest:
        try:
            return Digest.parse(self._tag_path(repo, tag).read_text().strip())
        except (FileNotFoundError, InvalidArgument):
            raise _manifest_unknown(f"{repo}:{tag}") from None

    def delete_tag(self, repo: str, tag: str) -> None:
        if not self._remove(self._tag_path(repo, tag)):
            raise _manifest_unknown(f"{repo}:{tag}")

    def _tag_names(self, repo: str) -> list[str]:
        try:
            return sorted(os.listdir(self._repo(repo) / "_manifests" / "tags"))
        except FileNotFoundError:
            return []

    def tags(self, repo: str) -> list[str]:
        if not self._repo_exists(repo):
            raise NotFound(f"repository {repo}: unknown")
        return self._tag_names(repo)

    # uploads
    def start_upload(self, repo: str) -> str:
        check_name(repo)
        uuid = str(uuidlib.uuid4())
        path = self._upload_dir(uuid)
        path.mkdir(mode=0o700)
        (path / "repo").write_text(repo)
        (path / "data").touch()
        return uuid

    def upload_state(self, repo: str, uuid: str) -> UploadState:
        path = self._upload_dir(uuid)
        try:
            owner = (path / "repo").read_text()
            st = os.stat(path / "data")
        except FileNotFoundError:
            raise NotFound(f"upload {uuid}: unknown") from None
        if owner != repo:
            raise NotFound(f"upload {uuid}: unknown")
        return UploadState(owner, uuid, st.st_size, st.st_mtime)

    def upload_writer(self, repo: str, uuid: str, offset: int) -> UploadWriter:
        state = self.upload_state(repo, uuid)
        if offset != state.size:
            raise Conflict(f"upload {uuid}: chunk starts at {offset}, upload has {state.size} bytes")
        return _FileUpload(self._upload_dir(uuid) / "data", uuid, offset, self._hashing)

    def commit_upload(self, repo: str, uuid: str, expected: Digest) -> Digest:
        state = self.upload_state(repo, uuid)
        data = self._upload_dir(uuid) / "data"
        actual = self._hashing.digest(uuid, state.size, expected.algorithm)
        if actual is None:
            with open(data, "rb") as f:
                actual = _hash_stream(f, expected.algorithm)
        if actual != expected:
            self.cancel_upload(repo, uuid)
            raise InvalidArgument(f"digest mismatch: computed {actual}, expected {expected}")
        with self.shared():
            fd = os.open(data, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._install(data, expected)
            self.link_blob(repo, expected)
        self._drop_upload(uuid)
        return expected

    def cancel_upload(self, repo: str, uuid: str) -> None:
        self.upload_state(repo, uuid)
        self._drop_upload(uuid)

    def _drop_upload(self, uuid: str) -> None:
        path = self._upload_dir(uuid)
        self._hashing.forget(uuid)
        for name in ("data", "repo"):
            self._remove(path / name)
        with contextlib.suppress(OSError):
            path.rmdir()

    def uploads(self) -> list[UploadState]:
        out = []
        for entry in _scandirs(self._uploads):
            try:
                repo = (Path(entry.path) / "repo").read_text()
                out.append(self.upload_state(repo, entry.name))
            except (FileNotFoundError, NotFound):
                continue
        return out

    # coordination
    @contextlib.contextmanager
    def _flock(self, mode: int) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)

    def shared(self) -> contextlib.AbstractContextManager[None]:
        return self._flock(fcntl.LOCK_SH)

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        return self._flock(fcntl.LOCK_EX)


def _scandirs(path: Path) -> list[os.DirEntry[str]]:
    try:
        return [e for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def _digests_under(path: Path) -> list[Digest]:
    out = []
    for alg in _scandirs(path):
        for entry in os.scandir(alg.path):
            with contextlib.suppress(InvalidArgument):
                out.append(Digest(alg.name, entry.name))
    return sorted(out)


# --- memory ----------------------------------------------------------------------------------------------


@dataclass
class _MemRepo:
    layers: set[Digest]
    manifests: dict[Digest, str]          # digest -> media type
    tags: dict[str, Digest]
    referrers: dict[Digest, set[Digest]]  # subject -> manifests naming it


@dataclass
class _MemUpload:
    repo: str
    data: bytearray
    touched_at: float


class _MemUploadWriter:
    def __init__(self, driver: MemoryDriver, upload: _MemUpload) -> None:
        self._driver = driver
        self._upload = upload

    def write(self, data: bytes | bytearray | memoryview) -> int:
        with self._driver._lock:
            self._upload.data += data
            self._upload.touched_at = time.time()
        return len(data)

    def close(self) -> None:
        pass


class MemoryDriver:
    """Everything in dicts under one lock; GC coordination is an in-process reader/writer lock."""

    read_only = False

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._blobs: dict[Digest, tuple[bytes, float]] = {}
        self._repos: dict[str, _MemRepo] = {}
        self._uploads: dict[str, _MemUpload] = {}
        self._gc = _RWLock()

    def _repo(self, repo: str, create: bool = False) -> _MemRepo:
        check_name(repo)
        found = self._repos.get(repo)
        if found is None:
            if not create:
                raise NotFound(f"repository {repo}: unknown")
            found = self._repos[repo] = _MemRepo(set(), {}, {}, {})
        return found

    def blob_size(self, digest: Digest) -> int:
        with self._lock:
            if digest not in self._blobs:
                raise _blob_unknown(digest)
            return len(self._blobs[digest][0])

    def open_blob(self, digest: Digest) -> BinaryIO:
        with self._lock:
            if digest not in self._blobs:
                raise _blob_unknown(digest)
            return io.BytesIO(self._blobs[digest][0])

    def put_blob(self, data: bytes) -> Digest:
        digest = Digest.of_bytes(data)
        with self._lock:
            self._blobs[digest] = (bytes(data), time.time())
        return digest

    def delete_blob(self, digest: Digest) -> None:
        with self._lock:
            self._blobs.pop(digest, None)

    def walk_blobs(self) -> Iterator[BlobInfo]:
        with self._lock:
            items = [BlobInfo(d, len(b), t) for d, (b, t) in self._blobs.items()]
        yield from items

    def repositories(self) -> list[str]:
        with self._lock:
            return sorted(self._repos)

    def link_blob(self, repo: str, digest: Digest) -> None:
        with self._lock:
            if digest not in self._blobs:
                raise _blob_unknown(digest)
            data, _ = self._blobs[digest]
            self._blobs[digest] = (data, time.time())
            self._repo(repo, create=True).layers.add(digest)

    def has_link(self, repo: str, digest: Digest) -> bool:
        with self._lock:
            found = self._repos.get(repo)
            return found is not None and digest in found.layers and digest in self._blobs

    def unlink_blob(self, repo: str, digest: Digest) -> None:
        with self._lock:
            found = self._repos.get(repo)
            if found is None or digest not in found.layers:
                raise _blob_unknown(digest)
            found.layers.discard(digest)

    def linked_blobs(self, repo: str) -> list[Digest]:
        with self._lock:
            found = self._repos.get(repo)
            return sorted(found.layers) if found else []

    def put_manifest(self, repo: str, data: bytes, media_type: str, subject: Digest | None = None) -> Digest:
        digest = self.put_blob(data)
        with self._lock:
            r = self._repo(repo, create=True)
            r.manifests[digest] = media_type
            if subject is not None:
                r.referrers.setdefault(subject, set()).add(digest)
        return digest

    def get_manifest(self, repo: str, digest: Digest) -> StoredManifest:
        with self._lock:
            found = self._repos.get(repo)
            if found is None or digest not in found.manifests or digest not in self._blobs:
                raise _manifest_unknown(digest)
            return StoredManifest(digest, found.manifests[digest], self._blobs[digest][0])

    def delete_manifest(self, repo: str, digest: Digest) -> None:
        with self._lock:
            found = self._repos.get(repo)
            if found is None or digest not in found.manifests:
                raise _manifest_unknown(digest)
            del found.manifests[digest]
            for tag in [t for t, d in found.tags.items() if d == digest]:
                del found.tags[tag]
            for refs in found.referrers.values():
                refs.discard(digest)

    def manifests(self, repo: str) -> list[Digest]:
        with self._lock:
            found = self._repos.get(repo)
            return sorted(found.manifests) if found else []

    def referrers(self, repo: str, subject: Digest) -> list[Digest]:
        with self._lock:
            found = self._repos.get(repo)
            if found is None:
                return []
            return sorted(d for d in found.referrers.get(subject, set()) if d in found.manifests)

    def set_tag(self, repo: str, tag: str, digest: Digest) -> None:
        check_tag(tag)
        with self._lock:
            self._repo(repo, create=True).tags[tag] = digest

    def resolve_tag(self, repo: str, tag: str) -> Digest:
        check_tag(tag)
        with self._lock:
            found = self._repos.get(repo)
            if found is None or tag not in found.tags:
                raise _manifest_unknown(f"{repo}:{tag}")
            return found.tags[tag]

    def delete_tag(self, repo: str, tag: str) -> None:
        with self._lock:
            self.resolve_tag(repo, tag)
            del self._repo(repo).tags[tag]

    def tags(self, repo: str) -> list[str]:
        with self._lock:
            return sorted(self._repo(repo).tags)

    def start_upload(self, repo: str) -> str:
        check_name(repo)
        uuid = str(uuidlib.uuid4())
        with self._lock:
            self._uploads[uuid] = _MemUpload(repo, bytearray(), time.time())
        return uuid

    def _upload(self, repo: str, uuid: str) -> _MemUpload:
        found = self._uploads.get(uuid)
        if found is None or found.repo != repo:
            raise NotFound(f"upload {uuid}: unknown")
        return found

    def upload_state(self, repo: str, uuid: str) -> UploadState:
        with self._lock:
            up = self._upload(repo, uuid)
            return UploadState(repo, uuid, len(up.data), up.touched_at)

    def upload_writer(self, repo: str, uuid: str, offset: int) -> UploadWriter:
        with self._lock:
            up = self._upload(repo, uuid)
            if offset != len(up.data):
                raise Conflict(f"upload {uuid}: chunk starts at {offset}, upload has {len(up.data)} bytes")
            return _MemUploadWriter(self, up)

    def commit_upload(self, repo: str, uuid: str, expected: Digest) -> Digest:
        with self._lock:
            data = bytes(self._upload(repo, uuid).data)
        hasher = expected.hasher()
        hasher.update(data)
        actual = Digest.from_hasher(hasher)
        if actual != expected:
            self.cancel_upload(repo, uuid)
            raise InvalidArgument(f"digest mismatch: computed {actual}, expected {expected}")
        with self.shared(), self._lock:
            self._blobs[expected] = (data, time.time())
            self._repo(repo, create=True).layers.add(expected)
            self._uploads.pop(uuid, None)
        return expected

    def cancel_upload(self, repo: str, uuid: str) -> None:
        with self._lock:
            self._upload(repo, uuid)
            del self._uploads[uuid]

    def uploads(self) -> list[UploadState]:
        with self._lock:
            return [UploadState(u.repo, k, len(u.data), u.touched_at) for k, u in self._uploads.items()]

    def shared(self) -> contextlib.AbstractContextManager[None]:
        return self._gc.shared()

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        return self._gc.exclusive()


class _RWLock:
    """Many holders of ``shared`` or one of ``exclusive`` (writers first once one waits)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._writer and not self._waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._writer and not self._readers)
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


# --- berthd's image store, read-only ---------------------------------------------------------------------


def _denied() -> Forbidden:
    return Forbidden("this registry serves berthd's image store read-only")


class ImageStoreView:
    """berthd's content store and image tags as a read-only registry, without copying a byte.

    A repository is an image store tag's path: ``docker.io/library/busybox:latest`` is ``busybox:latest``
    (also reachable as ``library/busybox``), ``localhost:5000/app:1`` is ``app:1``. A blob belongs to a
    repository when a manifest tagged in it names the blob. Every write raises ``Forbidden`` (DENIED).
    """

    read_only = True

    def __init__(self, content: ContentStore, images: ImageDB) -> None:
        self._content = content
        self._images = images

    @classmethod
    def open(cls, data_root: Path) -> ImageStoreView:
        """The view over a berthd data root (``content/`` and ``berth.db``, as ``berth.daemon.wiring`` lays it)."""
        from berth.content.store import ContentStore
        from berth.metadata.images import ImageDB

        if not (data_root / "berth.db").is_file():
            raise NotFound(f"no berth data root at {data_root}")
        return cls(ContentStore(data_root / "content"), ImageDB(data_root / "berth.db"))

    # what the image DB says, as (repo, tag or None, manifest digest, media type)
    def _entries(self) -> list[tuple[str, str | None, Digest, str]]:
        out: list[tuple[str, str | None, Digest, str]] = []
        for rec in self._images.all():
            digest = Digest.parse(rec.target_digest)
            for ref in rec.tags:
                path, _, tag = ref.rpartition(":")
                out.append((_repo_of(path), tag, digest, rec.target_media_type))
            for ref in rec.repo_digests:
                out.append((_repo_of(ref.partition("@")[0]), None, digest, rec.target_media_type))
        return out

    def _repo_entries(self, repo: str) -> list[tuple[str, str | None, Digest, str]]:
        check_name(repo)
        alias = repo.removeprefix("library/") if repo.count("/") == 1 else repo
        return [e for e in self._entries() if e[0] in (repo, alias)]

    def blob_size(self, digest: Digest) -> int:
        try:
            return self._content.size(digest)
        except NotFound:
            raise _blob_unknown(digest) from None

    def open_blob(self, digest: Digest) -> BinaryIO:
        try:
            return self._content.open(digest)
        except NotFound:
            raise _blob_unknown(digest) from None

    def put_blob(self, data: bytes) -> Digest:
        raise _denied()

    def delete_blob(self, digest: Digest) -> None:
        raise _denied()

    def walk_blobs(self) -> Iterator[BlobInfo]:
        for digest, size in self._content.walk():
            yield BlobInfo(digest, size, time.time())

    def repositories(self) -> list[str]:
        return sorted({e[0] for e in self._entries()})

    def link_blob(self, repo: str, digest: Digest) -> None:
        raise _denied()

    def has_link(self, repo: str, digest: Digest) -> bool:
        return digest in self.linked_blobs(repo) and self._content.has(digest)

    def unlink_blob(self, repo: str, digest: Digest) -> None:
        raise _denied()

    def linked_blobs(self, repo: str) -> list[Digest]:
        import json

        out: set[Digest] = set()
        for _, _, digest, _ in self._repo_entries(repo):
            try:
                doc = json.loads(self._content.read(digest))
            except (NotFound, ValueError):
                continue
            for desc in [doc.get("config"), *(doc.get("layers") or [])]:
                if isinstance(desc, dict) and isinstance(desc.get("digest"), str):
                    with contextlib.suppress(InvalidArgument):
                        out.add(Digest.parse(desc["digest"]))
        return sorted(out)

    def put_manifest(self, repo: str, data: bytes, media_type: str, subject: Digest | None = None) -> Digest:
        raise _denied()

    def get_manifest(self, repo: str, digest: Digest) -> StoredManifest:
        for _, _, known, media_type in self._repo_entries(repo):
            if known == digest:
                try:
                    return StoredManifest(digest, media_type, self._content.read(digest))
                except NotFound:
                    break
        raise _manifest_unknown(digest)

    def delete_manifest(self, repo: str, digest: Digest) -> None:
        raise _denied()

    def manifests(self, repo: str) -> list[Digest]:
        return sorted({e[2] for e in self._repo_entries(repo)})

    def referrers(self, repo: str, subject: Digest) -> list[Digest]:
        return []

    def set_tag(self, repo: str, tag: str, digest: Digest) -> None:
        raise _denied()

    def resolve_tag(self, repo: str, tag: str) -> Digest:
        for _, known_tag, digest, _ in self._repo_entries(repo):
            if known_tag == tag:
                return digest
        raise _manifest_unknown(f"{repo}:{tag}")

    def delete_tag(self, repo: str, tag: str) -> None:
        raise _denied()

    def tags(self, repo: str) -> list[str]:
        entries = self._repo_entries(repo)
        if not entries:
            raise NotFound(f"repository {repo}: unknown")
        return sorted({e[1] for e in entries if e[1] is not None})

    def start_upload(self, repo: str) -> str:
        raise _denied()

    def upload_state(self, repo: str, uuid: str) -> UploadState:
        raise NotFound(f"upload {uuid}: unknown")

    def upload_writer(self, repo: str, uuid: str, offset: int) -> UploadWriter:
        raise _denied()

    def commit_upload(self, repo: str, uuid: str, expected: Digest) -> Digest:
        raise _denied()

    def cancel_upload(self, repo: str, uuid: str) -> None:
        raise NotFound(f"upload {uuid}: unknown")

    def uploads(self) -> list[UploadState]:
        return []

    def shared(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        raise _denied()


def _repo_of(name: str) -> str:
    """``docker.io/library/busybox`` → ``busybox``; ``localhost:5000/app`` → ``app``; ``docker.io/u/x`` → ``u/x``."""
    domain, _, path = name.partition("/")
    if domain == "docker.io" and path.startswith("library/") and path.count("/") == 1:
        return path.removeprefix("library/")
    return path
