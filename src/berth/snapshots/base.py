"""The snapshotter interface, its value types, and the on-disk bookkeeping both implementations share.

A snapshotter hands out *descriptions* of mounts (``list[Mount]``); callers mount them where they like.
Snapshots form a tree: ``prepare``/``view`` make an active (writable) or view (read-only) snapshot on top
of a committed parent; ``commit`` turns an active snapshot into a committed one that can be a parent.

Keys are arbitrary strings (chain IDs, ``extract-<random>-sha256:...``); each snapshot gets a short
numeric directory id, never reused, so mount option strings stay short. The key -> id/parent/kind table
is a small SQLite database owned by the snapshotter. Layout under ``root`` (0700, see CVE-2021-41091)::

    root/
    ├── metadata.db          key, id, parent id, kind, created, cached usage
    └── s/                   0700
        ├── <id>/            one snapshot
        │   ├── fs/          its files (overlay: the upper dir; copy: the full tree)   0755
        │   └── work/        overlay workdir (overlay only)
        ├── new-<random>/    a prepare in progress (a leftover after a crash)
        └── rm-<id>/         a remove in progress (a leftover after a crash)

Crash safety: a snapshot directory is renamed to ``s/<id>`` inside the same SQLite transaction that
inserts its row, and renamed away inside the transaction that deletes it, so after a crash every
directory without a row is garbage, which :meth:`LocalSnapshotter.cleanup` removes.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

from berth.errors import Conflict, InvalidArgument, NotFound
from berth.kernel import fsops
from berth.kernel.mount import Mount

_ROOT_MODE = 0o700
_FS_MODE = 0o755


class Kind(Enum):
    """The lifecycle of a snapshot: active (writable) -> committed; views stay views."""

    ACTIVE = "active"
    VIEW = "view"
    COMMITTED = "committed"

    def can_commit(self) -> bool:
        return self is Kind.ACTIVE

    def can_be_parent(self) -> bool:
        return self is Kind.COMMITTED


@dataclass(frozen=True)
class Info:
    """What a snapshotter knows about one snapshot."""

    key: str
    parent: str | None
    kind: Kind
    created: float


class Snapshotter(Protocol):
    """Layered filesystems as mount descriptions (containerd's snapshotter model)."""

    name: str

    def prepare(self, key: str, parent: str | None = None) -> list[Mount]: ...
    def view(self, key: str, parent: str | None = None) -> list[Mount]: ...
    def mounts(self, key: str) -> list[Mount]: ...
    def commit(self, name: str, key: str) -> None: ...
    def remove(self, key: str) -> None: ...
    def stat(self, key: str) -> Info: ...
    def walk(self) -> Iterator[Info]: ...
    def usage(self, key: str) -> int: ...
    def cleanup(self) -> None: ...


@dataclass(frozen=True)
class _Row:
    id: int
    key: str
    parent_id: int | None
    kind: Kind
    created: float
    size: int | None


_SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    parent_id INTEGER REFERENCES snapshots(id),
    kind TEXT NOT NULL,
    created REAL NOT NULL,
    size INTEGER
);
CREATE INDEX IF NOT EXISTS snapshots_parent ON snapshots(parent_id);
"""


def _not_found(key: str) -> NotFound:
    return NotFound(f"snapshot {key}: not found")


def remove_tree(path: Path) -> None:
    """Remove a snapshot directory whatever its depth and modes, never following a symlink (fd-relative walk)."""
    parent = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fsops.remove_at(parent, os.path.basename(path))
    finally:
        os.close(parent)


def tree_size(path: Path) -> int:
    """Apparent bytes under ``path``, each inode once, directories not counted (Docker's SizeRw rule).

    Walks by directory fd, so trees deeper than PATH_MAX (hostile layers) are measured too.
    """
    seen: set[int] = set()
    total = 0
    try:
        top = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    stack: list[tuple[int, Iterator[os.DirEntry[str]]]] = [(top, os.scandir(top))]
    try:
        while stack:
            fd, it = stack[-1]
            entry = next(it, None)
            if entry is None:
                stack.pop()
                it.close()  # type: ignore[attr-defined]
                os.close(fd)
                continue
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                sub = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
                stack.append((sub, os.scandir(sub)))
            elif st.st_size and st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    finally:
        for fd, it in stack:
            it.close()  # type: ignore[attr-defined]
            os.close(fd)
    return total


class LocalSnapshotter:
    """The shared bookkeeping: metadata, directories, crash safety. Subclasses decide what mounts mean."""

    name = "local"
    needs_workdir = False

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._snaps = self.root / "s"
        for d in (self.root, self._snaps):
            d.mkdir(mode=_ROOT_MODE, parents=True, exist_ok=True)
            os.chmod(d, _ROOT_MODE)
        # each snapshot in a block group of its own: on ext4 without a journal, new inodes in the group where a
        # removed snapshot's inodes died in the last 60 s cost a scan each (rmi then pull was 5x slower)
        fsops.mark_top_dir(self._snaps)
        self._lock = threading.RLock()
        self._inflight: set[str] = set()
        self._db = sqlite3.connect(
            self.root / "metadata.db", isolation_level=None, check_same_thread=False, timeout=30
        )
        # WAL: a commit no longer fsyncs the whole DB (~1 ms on every container start/remove); a process crash
        # still loses nothing committed, like the other berth databases
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # paths, the only place that joins under root
    def _dir(self, sid: int) -> Path:
        return self._snaps / str(sid)

    def _fs(self, sid: int) -> Path:
        return self._snaps / str(sid) / "fs"

    def _work(self, sid: int) -> Path:
        return self._snaps / str(sid) / "work"

    # metadata
    def _row(self, key: str) -> _Row:
        r = self._db.execute(
            "SELECT id, key, parent_id, kind, created, size FROM snapshots WHERE key = ?", (key,)
        ).fetchone()
        if r is None:
            raise _not_found(key)
        return _Row(r[0], r[1], r[2], Kind(r[3]), r[4], r[5])

    def _chain(self, parent_id: int | None) -> list[int]:
        """Ids from ``parent_id`` down to the base layer, nearest first."""
        chain: list[int] = []
        while parent_id is not None:
            chain.append(parent_id)
            (parent_id,) = self._db.execute(
                "SELECT parent_id FROM snapshots WHERE id = ?", (parent_id,)
            ).fetchone()
        return chain

    def _key_of(self, sid: int | None) -> str | None:
        if sid is None:
            return None
        r = self._db.execute("SELECT key FROM snapshots WHERE id = ?", (sid,)).fetchone()
        return None if r is None else str(r[0])

    # hooks for the implementations
    def _populate(self, new_dir: Path, parent_chain: list[int], kind: Kind) -> None:
        """Fill a fresh snapshot directory before it is published (copy: the parent's tree)."""

    def _mounts(self, row: _Row, chain: list[int]) -> list[Mount]:
        raise NotImplementedError

    def _check_depth(self, parent_chain: list[int]) -> None:
        """Refuse chains the implementation cannot mount."""

    # the Snapshotter interface
    def prepare(self, key: str, parent: str | None = None) -> list[Mount]:
        """Make a writable snapshot ``key`` on top of committed ``parent``; Conflict if ``key`` exists."""
        return self._create(key, parent, Kind.ACTIVE)

    def view(self, key: str, parent: str | None = None) -> list[Mount]:
        """Make a read-only snapshot ``key`` of committed ``parent``."""
        return self._create(key, parent, Kind.VIEW)

    def _create(self, key: str, parent: str | None, kind: Kind) -> list[Mount]:
        if not key:
            raise InvalidArgument("snapshot key must not be empty")
        with self._lock:
            parent_id, chain = self._check_create(key, parent)
        tmp = self._snaps / f"new-{secrets.token_hex(8)}"
        with self._lock:
            self._inflight.add(tmp.name)
        tmp.mkdir(mode=0o700)
        try:
            (tmp / "fs").mkdir(mode=_FS_MODE)
            os.chmod(tmp / "fs", _FS_MODE)
            if self.needs_workdir:
                (tmp / "work").mkdir(mode=0o700)
            self._populate(tmp, chain, kind)
            with self._lock:
                # the parent may have gone while we populated without the lock
                parent_id, chain = self._check_create(key, parent)
                sid = 0
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    cur = self._db.execute(
                        "INSERT INTO snapshots (key, parent_id, kind, created) VALUES (?, ?, ?, ?)",
                        (key, parent_id, kind.value, time.time()),
                    )
                    sid = int(cur.lastrowid or 0)
                    # an id whose insert was rolled back by a crash may be handed out again
                    remove_tree(self._dir(sid))
                    os.rename(tmp, self._dir(sid))
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    if sid and self._dir(sid).exists() and not tmp.exists():
                        os.rename(self._dir(sid), tmp)
                    raise
                return self._mounts(self._row(key), chain)
        finally:
            remove_tree(tmp)
            with self._lock:
                self._inflight.discard(tmp.name)

    def _check_create(self, key: str, parent: str | None) -> tuple[int | None, list[int]]:
        if self._db.execute("SELECT 1 FROM snapshots WHERE key = ?", (key,)).fetchone():
            raise Conflict(f"snapshot {key}: already exists")
        if parent is None:
            return None, []
        try:
            prow = self._row(parent)
        except NotFound:
            raise NotFound(f"parent snapshot {parent}: not found") from None
        if not prow.kind.can_be_parent():
            raise InvalidArgument(f"parent snapshot {parent} is not committed")
        chain = [prow.id, *self._chain(prow.parent_id)]
        self._check_depth(chain)
        return prow.id, chain

    def mounts(self, key: str) -> list[Mount]:
        """The mounts for an existing snapshot (committed ones read-only)."""
        with self._lock:
            row = self._row(key)
            return self._mounts(row, self._chain(row.parent_id))

    def commit(self, name: str, key: str) -> None:
        """Turn active snapshot ``key`` into committed snapshot ``name``; ``key`` disappears."""
        if not name:
            raise InvalidArgument("snapshot name must not be empty")
        with self._lock:
            row = self._row(key)
            if not row.kind.can_commit():
                raise InvalidArgument(f"snapshot {key} is not active")
            if name != key and self._db.execute("SELECT 1 FROM snapshots WHERE key = ?", (name,)).fetchone():
                raise Conflict(f"snapshot {name}: already exists")
            size = tree_size(self._fs(row.id))
            self._db.execute(
                "UPDATE snapshots SET key = ?, kind = ?, size = ? WHERE id = ?",
                (name, Kind.COMMITTED.value, size, row.id),
            )

    def remove(self, key: str) -> None:
        """Remove snapshot ``key``; Conflict while other snapshots sit on it, NotFound if missing."""
        with self._lock:
            row = self._row(key)
            if self._db.execute("SELECT 1 FROM snapshots WHERE parent_id = ? LIMIT 1", (row.id,)).fetchone():
                raise Conflict(f"cannot remove snapshot {key}: it has children")
            doomed = self._snaps / f"rm-{row.id}"
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("DELETE FROM snapshots WHERE id = ?", (row.id,))
                if self._dir(row.id).exists():
                    os.rename(self._dir(row.id), doomed)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                if doomed.exists() and not self._dir(row.id).exists():
                    os.rename(doomed, self._dir(row.id))
                raise
            self._inflight.add(doomed.name)
        try:
            remove_tree(doomed)
        finally:
            with self._lock:
                self._inflight.discard(doomed.name)

    def stat(self, key: str) -> Info:
        with self._lock:
            row = self._row(key)
            return Info(row.key, self._key_of(row.parent_id), row.kind, row.created)

    def walk(self) -> Iterator[Info]:
        with self._lock:
            rows = self._db.execute(
                "SELECT s.key, p.key, s.kind, s.created FROM snapshots s "
                "LEFT JOIN snapshots p ON p.id = s.parent_id ORDER BY s.id"
            ).fetchall()
        for key, parent, kind, created in rows:
            yield Info(key, parent, Kind(kind), created)

    def usage(self, key: str) -> int:
        """Bytes this snapshot adds itself (cached once committed)."""
        with self._lock:
            row = self._row(key)
        if row.size is not None:
            return row.size
        return tree_size(self._fs(row.id))

    def cleanup(self) -> None:
        """Remove directories no row refers to: crashed prepares (new-*), removes (rm-*), orphans."""
        with self._lock:
            ids = {str(r[0]) for r in self._db.execute("SELECT id FROM snapshots")}
            keep = ids | self._inflight
            leftovers = [e.name for e in os.scandir(self._snaps) if e.name not in keep]
        for name in leftovers:
            remove_tree(self._snaps / name)


def open_snapshotter(root: Path, kind: str = "auto") -> Snapshotter:
    """The snapshotter kept in ``root/<name>``: "overlayfs" when the kernel can overlay there, else "copy".

    Each kind keeps its own subdirectory, so switching kinds never mixes their trees.
    """
    from berth.kernel.mount import overlay_supported
    from berth.snapshots.copy import CopySnapshotter
    from berth.snapshots.overlay import OverlaySnapshotter

    if kind == "auto":
        Path(root).mkdir(mode=_ROOT_MODE, parents=True, exist_ok=True)
        kind = "overlayfs" if overlay_supported(root) else "copy"
    if kind in ("overlayfs", "overlay", "overlay2"):
        return OverlaySnapshotter(Path(root) / OverlaySnapshotter.name)
    if kind in ("copy", "native", "vfs"):
        return CopySnapshotter(Path(root) / CopySnapshotter.name)
    raise InvalidArgument(f"unknown snapshotter {kind!r}: want overlayfs or copy")
