"""How every metadata store opens ``berth.db``: one SQLite connection per store, in WAL mode, autocommit,
serialized by a re-entrant lock, with the store's own tables created if missing. The tables themselves are
drawn in each store's module (images.py, containers.py, networks.py, volumes.py)."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


class Database:
    """The connection a store subclass works through: ``_conn`` under ``_lock``; ``_tx`` for several writes."""

    def __init__(self, path: Path, schema: str) -> None:
        # autocommit (isolation_level=None): each statement stands alone unless _tx groups them
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.executescript(schema)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front (IMMEDIATE) so two writers never deadlock upgrading."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
