"""A container's on-disk state under the runtime root, and how its status is read from the live system.

Layout (this module owns it)::

    <root>/                     --root (default /run/berth-runtime), mode 0700
    └── <id>/                   one per container; mkdir is the duplicate-id check
        ├── state.json          OCI state plus berth's fields (pid start time, cgroup, rootfs)
        └── exec.fifo           present from create until start: init blocks opening it for writing

The status is never trusted from the file: a process that is gone, a zombie, or a PID reused by another
process (start time differs) is ``stopped``; a live init with ``exec.fifo`` still there is ``created``.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from berth.errors import Conflict, InvalidArgument, NotFound
from berth.oci.runtime_spec import OCI_VERSION

DEFAULT_ROOT = "/run/berth-runtime"
STATE_FILE = "state.json"
EXEC_FIFO = "exec.fifo"

_ID_RE = re.compile(r"^[\w+.-]+$")


class Status(enum.Enum):
    """OCI lifecycle of a container."""

    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    STOPPED = "stopped"

    def can_start(self) -> bool:
        return self is Status.CREATED

    def can_kill(self) -> bool:
        return self in (Status.CREATED, Status.RUNNING)

    def can_delete(self) -> bool:
        return self in (Status.CREATED, Status.STOPPED)


def check_id(container_id: str) -> str:
    """runc's rule: word characters, ``+``, ``-`` and ``.``; never a path."""
    if not container_id or not _ID_RE.match(container_id) or container_id in (".", ".."):
        raise InvalidArgument(f"invalid container id format: {container_id}")
    return container_id


@dataclass(frozen=True)
class State:
    """What ``state`` prints (OCI fields) plus what berth needs to find the container again."""

    id: str
    pid: int
    bundle: str
    rootfs: str
    created: str
    cgroup_path: str = ""
    pid_start: int = 0
    status: Status = Status.CREATING
    annotations: dict[str, str] = field(default_factory=dict)
    oci_version: str = OCI_VERSION

    def oci(self) -> dict[str, Any]:
        """The OCI state document (``runc state`` shape)."""
        out: dict[str, Any] = {
            "ociVersion": self.oci_version,
            "id": self.id,
            "pid": self.pid,
            "status": self.status.value,
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
        }
        if self.status is Status.STOPPED:
            out["pid"] = 0
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out

    def to_json(self) -> str:
        doc = asdict(self)
        doc["status"] = self.status.value
        return json.dumps(doc)

    @classmethod
    def from_json(cls, text: str) -> State:
        doc = json.loads(text)
        doc["status"] = Status(doc.get("status", "creating"))
        return cls(**doc)


class StateDir:
    """The runtime root: one directory per container id."""

    def __init__(self, root: str | os.PathLike[str] = DEFAULT_ROOT) -> None:
        self.root = Path(root)

    def path(self, container_id: str) -> Path:
        return self.root / check_id(container_id)

    def fifo(self, container_id: str) -> Path:
        return self.path(container_id) / EXEC_FIFO

    def reserve(self, container_id: str) -> Path:
        """Make the container's directory; an existing one means the id is taken."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        d = self.path(container_id)
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            raise Conflict(f"container with id exists: {container_id}") from None
        return d

    def save(self, state: State) -> None:
        d = self.path(state.id)
        tmp = d / (STATE_FILE + ".tmp")
        tmp.write_text(state.to_json())
        os.replace(tmp, d / STATE_FILE)

    def load(self, container_id: str) -> State:
        """The stored state with its status refreshed from the system."""
        d = self.path(container_id)
        try:
            text = (d / STATE_FILE).read_text()
        except FileNotFoundError:
            if d.is_dir():
                raise Conflict(f"container {container_id} is still being created") from None
            raise NotFound(f"container does not exist: {container_id}") from None
        state = State.from_json(text)
        return replace(state, status=live_status(state, (d / EXEC_FIFO).exists()))

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / STATE_FILE).exists())

    def remove(self, container_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.path(container_id))


def process_start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/PID/stat`` (start time in clock ticks); ``None`` if gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = raw[raw.rindex(b")") + 2 :].split()  # comm may contain spaces and parentheses
    if rest[0] in (b"Z", b"X"):
        return None
    return int(rest[19])


def live_status(state: State, fifo_exists: bool) -> Status:
    if state.pid <= 0:
        return Status.CREATING if state.status is Status.CREATING else Status.STOPPED
    start = process_start_time(state.pid)
    if start is None or (state.pid_start and start != state.pid_start):
        return Status.STOPPED
    return Status.CREATED if fifo_exists else Status.RUNNING
