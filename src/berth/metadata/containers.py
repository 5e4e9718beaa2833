"""Container records in SQLite (WAL), in the same ``berth.db`` as images.

Table owned here::

    containers(id PRIMARY KEY, name UNIQUE, created REAL, doc TEXT)   doc = the container's JSON document

The UNIQUE name column reserves a name atomically: of two concurrent creates with one name, exactly one wins.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from berth.errors import Conflict, NotFound
from berth.metadata.db import Database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    doc TEXT NOT NULL
);
"""


def name_conflict(name: str, holder: str) -> Conflict:
    return Conflict(
        f'Conflict. The container name "/{name}" is already in use by container "{holder}". '
        "You have to remove (or rename) that container to be able to reuse that name."
    )


class ContainerDB(Database):
    """Thread-safe container records; each document is replaced whole, in one statement."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, _SCHEMA)

    def insert(self, cid: str, name: str, created: float, doc: dict[str, Any]) -> None:
        with self._lock:
            try:
                self._conn.execute(
                    "INSERT INTO containers(id, name, created, doc) VALUES (?, ?, ?, ?)",
                    (cid, name, created, json.dumps(doc)),
                )
            except sqlite3.IntegrityError:
                holder = self.id_by_name(name)
                raise name_conflict(name, holder or "?") from None

    def update(self, cid: str, doc: dict[str, Any]) -> None:
        with self._lock:
            self._conn.execute("UPDATE containers SET doc = ? WHERE id = ?", (json.dumps(doc), cid))

    def rename(self, cid: str, name: str) -> None:
        with self._lock:
            try:
                self._conn.execute("UPDATE containers SET name = ? WHERE id = ?", (name, cid))
            except sqlite3.IntegrityError:
                raise name_conflict(name, self.id_by_name(name) or "?") from None

    def delete(self, cid: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM containers WHERE id = ?", (cid,))

    def get(self, cid: str) -> tuple[str, dict[str, Any]]:
        with self._lock:
            row = self._conn.execute("SELECT name, doc FROM containers WHERE id = ?", (cid,)).fetchone()
        if row is None:
            raise NotFound(f"No such container: {cid}")
        return str(row[0]), json.loads(row[1])

    def id_by_name(self, name: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT id FROM containers WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else None

    def ids_with_prefix(self, prefix: str) -> list[str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT id FROM containers WHERE substr(id, 1, ?) = ?", (len(prefix), prefix)
            ).fetchall()
        return [str(r[0]) for r in rows]

    def all(self) -> list[tuple[str, str, dict[str, Any]]]:
        with self._lock:
            rows = self._conn.execute("SELECT id, name, doc FROM containers ORDER BY created DESC").fetchall()
        return [(str(r[0]), str(r[1]), json.loads(r[2])) for r in rows]
