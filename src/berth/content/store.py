"""Content-addressed blob store: blobs by digest, written to ingest/, verified, then renamed into place.

A reader never sees a partial blob: bytes go to a private temp file under ``ingest/``, are hashed while
written, size- and digest-checked, fsynced, and only then renamed into ``blobs/`` (and the directory
fsynced). A crash leaves only ``ingest/`` leftovers, which :meth:`ContentStore.clean_ingest` removes, except
the partial downloads of :meth:`ContentStore.resumable_writer` (named by the digest they should become), which
a later pull continues where it stopped, even after a daemon crash; they are kept for a day.

On-disk layout (this module is the only one that joins paths under ``root``)::

    root/                      0700
    ├── blobs/
    │   └── sha256/
    │       └── <hex>          0444, immutable once renamed in
    └── ingest/
        ├── <random>.tmp       a write in progress (or a crash leftover)
        └── <alg>-<hex>.partial  a resumable download of that digest (flocked while written)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from berth.errors import InvalidArgument, NotFound
from berth.oci.digest import Digest

_DIR_MODE = 0o700
_BLOB_MODE = 0o444
PARTIAL_KEEP_S = 24 * 3600
_PARTIAL = ".partial"


def _not_found(digest: Digest) -> NotFound:
    return NotFound(f"content {digest}: not found")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ContentStore:
    """Blobs by digest under ``root`` (see the module docstring for the tree)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs"
        self._ingest = self.root / "ingest"
        for d in (self.root, self._blobs, self._blobs / "sha256", self._ingest):
            d.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        os.chmod(self.root, _DIR_MODE)

    def _path(self, digest: Digest) -> Path:
        return self._blobs / digest.algorithm / digest.hex

    def has(self, digest: Digest) -> bool:
        return self._path(digest).is_file()

    def size(self, digest: Digest) -> int:
        try:
            return os.stat(self._path(digest)).st_size
        except FileNotFoundError:
            raise _not_found(digest) from None

    def open(self, digest: Digest) -> BinaryIO:
        """Open a blob for reading (binary, buffered); the caller closes it."""
        try:
            return open(self._path(digest), "rb")
        except FileNotFoundError:
            raise _not_found(digest) from None

    def read(self, digest: Digest) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def resumable_writer(self, expected: Digest, expected_size: int) -> ContentWriter:
        """A writer for a download of ``expected`` that continues a partial one left by an earlier attempt (its
        ``offset`` says where: ask the server for the rest); kept on disk when the download breaks off, removed
        once committed or found corrupt. Busy (another writer holds it): a private temp file instead."""
        path = self._ingest / f"{expected.algorithm}-{expected.hex}{_PARTIAL}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return ContentWriter(self, expected, expected_size)
        return ContentWriter(self, expected, expected_size, resume=(path, fd))

    def writer(self, expected: Digest | None = None, expected_size: int | None = None) -> ContentWriter:
        """Start a write; the blob appears only on :meth:`ContentWriter.commit`."""
        return ContentWriter(self, expected, expected_size)

    def put(self, data: bytes, expected: Digest | None = None) -> Digest:
        """Store ``data`` in one go; with ``expected``, refuse bytes that do not hash to it."""
        if expected is not None and self.has(expected) and expected == Digest.of_bytes(data):
            return expected
        with self.writer(expected, None) as w:
            w.write(data)
            return w.commit()

    def delete(self, digest: Digest) -> None:
        """Remove a blob; a missing blob is fine (deletes race with garbage collection)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(digest))

    def walk(self) -> Iterator[tuple[Digest, int]]:
        """Every stored blob with its size, in no particular order."""
        for alg_dir in os.scandir(self._blobs):
            if not alg_dir.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(alg_dir.path):
                try:
                    digest = Digest(alg_dir.name, entry.name)
                    size = entry.stat(follow_symlinks=False).st_size
                except (InvalidArgument, FileNotFoundError):
                    continue
                yield digest, size

    def clean_ingest(self) -> int:
        """Remove leftovers of interrupted writes (at daemon start, before any write), but partial downloads
        younger than a day; returns the count removed."""
        removed = 0
        cutoff = time.time() - PARTIAL_KEEP_S
        for entry in os.scandir(self._ingest):
            with contextlib.suppress(FileNotFoundError):
                if entry.name.endswith(_PARTIAL) and entry.stat().st_mtime > cutoff:
                    continue
                os.unlink(entry.path)
                removed += 1
        return removed

    def disk_usage(self) -> int:
        """Total bytes of stored blobs."""
        return sum(size for _, size in self.walk())

    # ContentWriter's side of the layout
    def _new_ingest(self) -> tuple[Path, int]:
        path = self._ingest / f"{secrets.token_hex(16)}.tmp"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return path, fd

    def _install(self, tmp: Path, digest: Digest) -> None:
        final = self._path(digest)
        final.parent.mkdir(mode=_DIR_MODE, exist_ok=True)
        os.chmod(tmp, _BLOB_MODE)
        os.rename(tmp, final)
        _fsync_dir(final.parent)


class ContentWriter:
    """One blob being written: a temp file in ``ingest/``, hashed as it is written.

    Use as a context manager; leaving the block without :meth:`commit` (or with an exception) discards.
    """

    def __init__(self, store: ContentStore, expected: Digest | None, expected_size: int | None,
                 resume: tuple[Path, int] | None = None) -> None:
        if expected_size is not None and expected_size < 0:
            raise InvalidArgument(f"invalid expected size {expected_size}")
        self._store = store
        self.expected = expected
        self.expected_size = expected_size
        self._hasher = expected.hasher() if expected is not None else hashlib.sha256()
        self.offset = 0
        self._done = False
        self._keep = resume is not None  # a resumable download survives a discard, not a failed commit
        if resume is None:
            self._path, self._fd = store._new_ingest()
            return
        self._path, self._fd = resume
        size = os.fstat(self._fd).st_size
        if expected_size is not None and size > expected_size:
            os.ftruncate(self._fd, 0)  # more than the blob can hold: not a prefix of it
            size = 0
        done = 0
        while done < size:  # the kept prefix counts toward the digest; it is checked with the rest at commit
            chunk = os.pread(self._fd, min(1 << 20, size - done), done)
            if not chunk:
                break
            self._hasher.update(chunk)
            done += len(chunk)
        os.ftruncate(self._fd, done)
        os.lseek(self._fd, done, os.SEEK_SET)
        self.offset = done

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; returns its length. Large writes are cheapest (one hash update, one syscall)."""
        if self._done:
            raise InvalidArgument("write to a closed content writer")
        view = memoryview(data)
        self._hasher.update(view)
        total = len(view)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self.offset += total
        return total

    def commit(self) -> Digest:
        """Check size then digest, fsync, rename into place; returns the digest (fine if already stored)."""
        if self._done:
            raise InvalidArgument("commit of a closed content writer")
        try:
            if self.expected_size is not None and self.offset != self.expected_size:
                self._keep = False
                raise InvalidArgument(
                    f"unexpected commit size {self.offset}, expected {self.expected_size}"
                )
            actual = Digest.from_hasher(self._hasher)
            if self.expected is not None and actual != self.expected:
                self._keep = False  # corrupt: never resumed from, never addressable
                raise InvalidArgument(f"unexpected commit digest {actual}, expected {self.expected}")
            self._keep = False
            if self._store.has(actual):
                return actual
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            self._store._install(self._path, actual)
            return actual
        finally:
            self.discard()

    def discard(self) -> None:
        """Drop the temp file; a no-op after commit or an earlier discard."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if not self._done:
            self._done = True
            if not self._keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path)

    def __enter__(self) -> ContentWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.discard()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.discard()
