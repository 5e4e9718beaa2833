"""Volume records in SQLite (WAL), in the same ``berth.db`` as images and containers.

Table owned here::

    volumes(name PRIMARY KEY, driver TEXT, created REAL, labels TEXT, options TEXT, anonymous INTEGER)
        labels, options = JSON objects of strings; anonymous = 1 for volumes made without a name

How many containers use a volume is not stored: it comes from the container records (their ``MountPoints``).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from berth.errors import InvalidArgument
from berth.metadata.db import Database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS volumes (
    name TEXT PRIMARY KEY,
    driver TEXT NOT NULL,
    created REAL NOT NULL,
    labels TEXT NOT NULL,
    options TEXT NOT NULL,
    anonymous INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class VolumeRecord:
    """One volume as recorded: its name, driver, creation time (unix seconds), labels and driver options."""

    name: str
    driver: str
    created: float
    labels: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    anonymous: bool = False

    def __post_init__(self) -> None:
        if not self.name or not self.driver:
            raise InvalidArgument("a volume record needs a name and a driver")


class VolumeDB(Database):
    """Thread-safe volume records; a name is reserved atomically by its PRIMARY KEY."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, _SCHEMA)

    def insert(self, rec: VolumeRecord) -> bool:
        """Record a new volume; False (and nothing written) when the name is taken."""
        with self._lock:
            try:
                self._conn.execute(
                    "INSERT INTO volumes(name, driver, created, labels, options, anonymous) VALUES (?, ?, ?, ?, ?, ?)",
                    (rec.name, rec.driver, rec.created, json.dumps(rec.labels), json.dumps(rec.options),
                     int(rec.anonymous)),
                )
            except sqlite3.IntegrityError:
                return False
        return True

    def get(self, name: str) -> VolumeRecord | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT name, driver, created, labels, options, anonymous FROM volumes WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else _record(row)

    def delete(self, name: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM volumes WHERE name = ?", (name,))

    def all(self) -> list[VolumeRecord]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT name, driver, created, labels, options, anonymous FROM volumes ORDER BY created, name"
            ).fetchall()
        return [_record(r) for r in rows]


def _record(row: tuple[object, ...]) -> VolumeRecord:
    name, driver, created, labels, options, anonymous = row
    return VolumeRecord(str(name), str(driver), float(created),  # type: ignore[arg-type]
                        json.loads(str(labels)), json.loads(str(options)), bool(anonymous))
