"""Image metadata in SQLite (WAL): images, their tags and repo digests, and unpacked layer sizes.

On-disk layout owned here: one file, ``<data-root>/berth.db``. Tables::

    images(id, target_digest, target_media_type, added_at, last_tag_time, parent, cache_key)
                                     parent/cache_key: the image a build step started from, and the step's cache
                                     key (the classic builder's cache is a lookup among a parent's children)
    tags(ref -> image_id)            ref is a normalized "docker.io/library/busybox:latest"
    repo_digests(ref -> image_id)    ref is "docker.io/library/busybox@sha256:..."
    layer_sizes(diff_id -> size)     uncompressed tar size, recorded when a layer is unpacked

Every write is one transaction, so an image appears with all its tags or not at all.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from berth.errors import NotFound
from berth.metadata.db import Database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,
    target_digest TEXT NOT NULL,
    target_media_type TEXT NOT NULL,
    added_at REAL NOT NULL,
    last_tag_time REAL,
    parent TEXT NOT NULL DEFAULT '',
    cache_key TEXT
);
CREATE TABLE IF NOT EXISTS tags (
    ref TEXT PRIMARY KEY,
    image_id TEXT NOT NULL REFERENCES images(id)
);
CREATE INDEX IF NOT EXISTS tags_by_image ON tags(image_id);
CREATE TABLE IF NOT EXISTS repo_digests (
    ref TEXT PRIMARY KEY,
    image_id TEXT NOT NULL REFERENCES images(id)
);
CREATE TABLE IF NOT EXISTS layer_sizes (
    diff_id TEXT PRIMARY KEY,
    size INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class ImageRecord:
    id: str                     # "sha256:<hex>" of the config blob
    target_digest: str          # the manifest blob in the content store
    target_media_type: str
    added_at: float
    last_tag_time: float | None
    tags: tuple[str, ...]       # normalized refs, sorted
    repo_digests: tuple[str, ...]
    parent: str = ""            # the image a build step started from ("" for loaded/pulled/imported images)


class ImageDB(Database):
    """Thread-safe access to the image tables (one connection, serialized by a lock; queries are tiny)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, _SCHEMA)
        with self._lock:
            # data roots made before builds existed lack the two build columns
            have = {r[1] for r in self._conn.execute("PRAGMA table_info(images)")}
            if "parent" not in have:
                self._conn.execute("ALTER TABLE images ADD COLUMN parent TEXT NOT NULL DEFAULT ''")
            if "cache_key" not in have:
                self._conn.execute("ALTER TABLE images ADD COLUMN cache_key TEXT")
            self._conn.execute("CREATE INDEX IF NOT EXISTS images_by_parent ON images(parent, cache_key)")

    # --- reads -------------------------------------------------------------------------------------

    def get(self, image_id: str) -> ImageRecord:
        rec = self._records("WHERE i.id = ?", (image_id,))
        if not rec:
            raise NotFound(f"No such image: {image_id}")
        return rec[0]

    def all(self) -> list[ImageRecord]:
        return self._records("", ())

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM images").fetchone()[0])

    def by_tag(self, ref: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT image_id FROM tags WHERE ref = ?", (ref,)).fetchone()
        return str(row[0]) if row else None

    def by_repo_digest(self, ref: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT image_id FROM repo_digests WHERE ref = ?", (ref,)).fetchone()
        return str(row[0]) if row else None

    def ids_with_prefix(self, hex_prefix: str) -> list[str]:
        pattern = "sha256:" + hex_prefix.replace("%", "").replace("_", "") + "%"
        with self._lock:
            rows = self._conn.execute("SELECT id FROM images WHERE id LIKE ?", (pattern,)).fetchall()
        return [str(r[0]) for r in rows]

    def children(self, image_id: str) -> list[str]:
        """Images built on top of ``image_id`` by a build step (Docker's child images)."""
        with self._lock:
            rows = self._conn.execute("SELECT id FROM images WHERE parent = ?", (image_id,)).fetchall()
        return [str(r[0]) for r in rows]

    def parents(self) -> set[str]:
        """Every image that has a child: the build's intermediate images, hidden from a plain listing."""
        with self._lock:
            rows = self._conn.execute("SELECT DISTINCT parent FROM images WHERE parent != ''").fetchall()
        return {str(r[0]) for r in rows}

    def child_keys(self, parent: str) -> list[str]:
        """The cache keys of ``parent``'s children: why a build step missed the cache."""
        with self._lock:
            rows = self._conn.execute("SELECT cache_key FROM images WHERE parent = ?", (parent,)).fetchall()
        return [str(r[0]) for r in rows if r[0]]

    def cached(self, parent: str, cache_key: str) -> str | None:
        """The newest image a build step with ``cache_key`` made on ``parent``, if any is left."""
        with self._lock:
            row = self._conn.execute(
                "SELECT id FROM images WHERE parent = ? AND cache_key = ? ORDER BY added_at DESC LIMIT 1",
                (parent, cache_key)).fetchone()
        return str(row[0]) if row else None

    def layer_size(self, diff_id: str) -> int | None:
        with self._lock:
            row = self._conn.execute("SELECT size FROM layer_sizes WHERE diff_id = ?", (diff_id,)).fetchone()
        return int(row[0]) if row else None

    def _records(self, where: str, args: tuple[object, ...]) -> list[ImageRecord]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT i.id, i.target_digest, i.target_media_type, i.added_at, i.last_tag_time,"
                " (SELECT group_concat(ref, char(10)) FROM tags t WHERE t.image_id = i.id),"
                " (SELECT group_concat(ref, char(10)) FROM repo_digests d WHERE d.image_id = i.id), i.parent"
                f" FROM images i {where} ORDER BY i.added_at", args).fetchall()
        return [
            ImageRecord(r[0], r[1], r[2], r[3], r[4], tuple(sorted((r[5] or "").split("\n"))) if r[5] else (),
                        tuple(sorted(r[6].split("\n"))) if r[6] else (), r[7] or "")
            for r in rows
        ]

    # --- writes ------------------------------------------------------------------------------------

    def put_image(self, image_id: str, target_digest: str, target_media_type: str,
                  tags: Iterable[str] = (), repo_digests: Iterable[str] = (), *, parent: str = "",
                  cache_key: str | None = None) -> list[tuple[str, str | None]]:
        """Add (or refresh) an image and point ``tags`` at it in one transaction.

        Returns ``(tag, previous_image_id)`` for each tag moved, so the caller can report untagged images.
        """
        now = time.time()
        moved: list[tuple[str, str | None]] = []
        tags = list(tags)
        with self._tx() as c:
            c.execute(
                "INSERT INTO images(id, target_digest, target_media_type, added_at, last_tag_time, parent, cache_key)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
                " target_digest = excluded.target_digest, target_media_type = excluded.target_media_type",
                (image_id, target_digest, target_media_type, now, now if tags else None, parent, cache_key))
            if parent:  # a build step reproduced an existing image: it becomes the step's cache entry too
                c.execute("UPDATE images SET parent = ?, cache_key = ? WHERE id = ? AND parent = ''",
                          (parent, cache_key, image_id))
            for ref in tags:
                prev = c.execute("SELECT image_id FROM tags WHERE ref = ?", (ref,)).fetchone()
                c.execute("INSERT OR REPLACE INTO tags(ref, image_id) VALUES (?, ?)", (ref, image_id))
                moved.append((ref, str(prev[0]) if prev and prev[0] != image_id else None))
            if tags:
                c.execute("UPDATE images SET last_tag_time = ? WHERE id = ?", (now, image_id))
            for ref in repo_digests:
                c.execute("INSERT OR REPLACE INTO repo_digests(ref, image_id) VALUES (?, ?)", (ref, image_id))
        return moved

    def set_tag(self, ref: str, image_id: str) -> str | None:
        """Point ``ref`` at ``image_id``; returns the image it pointed at before (if another)."""
        with self._tx() as c:
            prev = c.execute("SELECT image_id FROM tags WHERE ref = ?", (ref,)).fetchone()
            c.execute("INSERT OR REPLACE INTO tags(ref, image_id) VALUES (?, ?)", (ref, image_id))
            c.execute("UPDATE images SET last_tag_time = ? WHERE id = ?", (time.time(), image_id))
        return str(prev[0]) if prev and prev[0] != image_id else None

    def remove_tag(self, ref: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM tags WHERE ref = ?", (ref,))
            c.execute("DELETE FROM repo_digests WHERE ref = ?", (ref,))

    def delete_image(self, image_id: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM tags WHERE image_id = ?", (image_id,))
            c.execute("DELETE FROM repo_digests WHERE image_id = ?", (image_id,))
            c.execute("DELETE FROM images WHERE id = ?", (image_id,))

    def record_layer_size(self, diff_id: str, size: int) -> None:
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO layer_sizes(diff_id, size) VALUES (?, ?)", (diff_id, size))

    def forget_layer_sizes(self, keep: set[str]) -> None:
        with self._tx() as c:
            rows = c.execute("SELECT diff_id FROM layer_sizes").fetchall()
            for (d,) in rows:
                if d not in keep:
                    c.execute("DELETE FROM layer_sizes WHERE diff_id = ?", (d,))
