"""Network records, container attachments and published-port reservations in SQLite (``berth.db``, WAL).

Tables owned here::

    networks(id PRIMARY KEY, name UNIQUE, created REAL, doc TEXT)        doc = the network's JSON document
    attachments(container_id, network_id, seq, config TEXT,              one row per container per network, from
                endpoint_id, ip, mac, host_if, ifname,                   create (or connect) until rm (or
                PRIMARY KEY(container_id, network_id),                   disconnect); endpoint_id .. ifname are
                UNIQUE(network_id, ip))                                  set while the container runs, else NULL
    ports(proto, host_ip, host_port, container_id, network_id,           published ports of running containers
          container_port, PRIMARY KEY(proto, host_ip, host_port))

UNIQUE(network_id, ip) makes two concurrent starts unable to take one address; the kernel holds nothing that the
daemon must remember, so a restarted daemon rebuilds its view (and the firewall) from these rows.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berth.errors import Conflict, NotFound
from berth.metadata.db import Database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS networks (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    doc TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS attachments (
    container_id TEXT NOT NULL,
    network_id TEXT NOT NULL,
    seq REAL NOT NULL,
    config TEXT NOT NULL,
    endpoint_id TEXT,
    ip TEXT,
    mac TEXT,
    host_if TEXT,
    ifname TEXT,
    PRIMARY KEY (container_id, network_id),
    UNIQUE (network_id, ip)
);
CREATE TABLE IF NOT EXISTS ports (
    proto TEXT NOT NULL,
    host_ip TEXT NOT NULL,
    host_port INTEGER NOT NULL,
    container_id TEXT NOT NULL,
    network_id TEXT NOT NULL,
    container_port INTEGER NOT NULL,
    PRIMARY KEY (proto, host_ip, host_port)
);
"""


@dataclass(frozen=True)
class Attachment:
    """A container's membership of a network; the endpoint fields are set while it runs."""

    container_id: str
    network_id: str
    seq: float
    config: dict[str, Any]
    endpoint_id: str | None = None
    ip: str | None = None
    mac: str | None = None
    host_if: str | None = None
    ifname: str | None = None

    @property
    def active(self) -> bool:
        return self.endpoint_id is not None


@dataclass(frozen=True)
class PortRecord:
    proto: str
    host_ip: str
    host_port: int
    container_id: str
    network_id: str
    container_port: int


class NetworkDB(Database):
    """Thread-safe network metadata; every method is one statement or one transaction."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, _SCHEMA)

    # --- networks -----------------------------------------------------------------------------------------

    def insert(self, nid: str, name: str, doc: dict[str, Any]) -> None:
        with self._lock:
            try:
                self._conn.execute("INSERT INTO networks(id, name, created, doc) VALUES (?, ?, ?, ?)",
                                   (nid, name, time.time(), json.dumps(doc)))
            except sqlite3.IntegrityError:
                raise Conflict(f"network with name {name} already exists") from None

    def update(self, nid: str, doc: dict[str, Any]) -> None:
        with self._lock:
            self._conn.execute("UPDATE networks SET doc = ? WHERE id = ?", (json.dumps(doc), nid))

    def delete(self, nid: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM networks WHERE id = ?", (nid,))

    def get(self, nid: str) -> dict[str, Any]:
        with self._lock:
            row = self._conn.execute("SELECT doc FROM networks WHERE id = ?", (nid,)).fetchone()
        if row is None:
            raise NotFound(f"network {nid} not found")
        doc: dict[str, Any] = json.loads(row[0])
        return doc

    def id_by_name(self, name: str) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT id FROM networks WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else None

    def ids_with_prefix(self, prefix: str) -> list[str]:
        with self._lock:
            rows = self._conn.execute("SELECT id FROM networks WHERE substr(id, 1, ?) = ?",
                                      (len(prefix), prefix)).fetchall()
        return [str(r[0]) for r in rows]

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute("SELECT doc FROM networks ORDER BY created").fetchall()
        return [json.loads(r[0]) for r in rows]

    # --- attachments ----------------------------------------------------------------------------------------

    def attach(self, cid: str, nid: str, config: dict[str, Any]) -> None:
        """Record (or replace the config of) a container's membership of a network."""
        with self._lock:
            self._conn.execute(
                "INSERT INTO attachments(container_id, network_id, seq, config) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(container_id, network_id) DO UPDATE SET config = excluded.config",
                (cid, nid, time.time(), json.dumps(config)))

    def detach(self, cid: str, nid: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM attachments WHERE container_id = ? AND network_id = ?", (cid, nid))

    def forget_container(self, cid: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM attachments WHERE container_id = ?", (cid,))
            self._conn.execute("DELETE FROM ports WHERE container_id = ?", (cid,))

    def _attachments(self, where: str, args: tuple[Any, ...]) -> list[Attachment]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT container_id, network_id, seq, config, endpoint_id, ip, mac, host_if, ifname "
                f"FROM attachments WHERE {where} ORDER BY seq", args).fetchall()
        return [Attachment(r[0], r[1], r[2], json.loads(r[3]), *r[4:]) for r in rows]

    def attachments_of(self, cid: str) -> list[Attachment]:
        return self._attachments("container_id = ?", (cid,))

    def attachments_to(self, nid: str) -> list[Attachment]:
        return self._attachments("network_id = ?", (nid,))

    def active_attachments(self) -> list[Attachment]:
        return self._attachments("endpoint_id IS NOT NULL", ())

    def taken_ips(self, nid: str) -> list[str]:
        with self._lock:
            rows = self._conn.execute("SELECT ip FROM attachments WHERE network_id = ? AND ip IS NOT NULL",
                                      (nid,)).fetchall()
        return [str(r[0]) for r in rows]

    def set_endpoint(self, cid: str, nid: str, endpoint_id: str, ip: str, mac: str, host_if: str,
                     ifname: str) -> bool:
        """Claim ``ip`` for the container's endpoint; False when another endpoint holds it already."""
        with self._lock:
            try:
                cur = self._conn.execute(
                    "UPDATE attachments SET endpoint_id = ?, ip = ?, mac = ?, host_if = ?, ifname = ? "
                    "WHERE container_id = ? AND network_id = ?", (endpoint_id, ip, mac, host_if, ifname, cid, nid))
            except sqlite3.IntegrityError:
                return False
        return cur.rowcount == 1

    def clear_endpoint(self, cid: str, nid: str | None = None) -> None:
        with self._lock:
            if nid is None:
                self._conn.execute("UPDATE attachments SET endpoint_id = NULL, ip = NULL, mac = NULL, "
                                   "host_if = NULL, ifname = NULL WHERE container_id = ?", (cid,))
            else:
                self._conn.execute("UPDATE attachments SET endpoint_id = NULL, ip = NULL, mac = NULL, "
                                   "host_if = NULL, ifname = NULL WHERE container_id = ? AND network_id = ?",
                                   (cid, nid))

    # --- published ports ------------------------------------------------------------------------------------

    def ports(self) -> list[PortRecord]:
        with self._lock:
            rows = self._conn.execute("SELECT proto, host_ip, host_port, container_id, network_id, container_port "
                                      "FROM ports ORDER BY host_port").fetchall()
        return [PortRecord(*r) for r in rows]

    def ports_of(self, cid: str) -> list[PortRecord]:
        return [p for p in self.ports() if p.container_id == cid]

    def add_ports(self, records: list[PortRecord]) -> None:
        """All or nothing; Conflict when one of them is taken."""
        try:
            with self._tx() as c:
                for p in records:
                    c.execute("INSERT INTO ports VALUES (?, ?, ?, ?, ?, ?)",
                              (p.proto, p.host_ip, p.host_port, p.container_id, p.network_id, p.container_port))
        except sqlite3.IntegrityError:
            raise Conflict("port is already allocated") from None

    def remove_ports(self, cid: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM ports WHERE container_id = ?", (cid,))
