"""The OCI runtimes the monitor can drive, behind one ``Runtime`` protocol: berth's library or a runc-like binary.

``LibraryRuntime`` calls ``berth.runtime.linux`` in-process (the default: nothing is spawned on the hot path).
``CliRuntime`` runs an OCI runtime binary (runc, crun) with exactly runc's command line: ``--root`` (a private
state directory), ``--log``/``--log-format json`` (so errors are read back and never written into the container's
stderr), ``create --bundle --pid-file [--console-socket]``, ``start``, ``state``, ``kill``, ``delete [--force]``.
Without a terminal the binary's fds 0-2 become the container's stdio (runc's pass-through mode). The container
init outlives ``create`` and is reparented to the nearest child subreaper (the monitor), which reaps it.

``runtime_for(name, exec_root)`` gives the runtime for a name (``berth``) or a binary (name or path); each binary
keeps its state under ``<exec-root>/runtime-<basename>``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from berth.errors import BerthError, Conflict, InternalError, NotFound
from berth.runtime import linux

LIBRARY = "berth"
# the runtimes every daemon knows, name -> binary (``berth`` is the library; its CLI is berth-runtime)
RUNTIMES: dict[str, str] = {LIBRARY: "berth-runtime", "runc": "runc", "crun": "crun"}
CLI_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RuntimeState:
    """What the monitor and the engine need of a container's runtime state."""

    id: str
    pid: int
    status: str           # creating | created | running | paused | stopped
    bundle: str
    cgroup_path: str = ""  # relative to each hierarchy root, as ``berth.kernel.cgroups.open_cgroup`` takes it


class Runtime(Protocol):
    """The OCI lifecycle (runc's semantics), as the monitor drives it."""

    name: str

    def create(self, cid: str, bundle: str | os.PathLike[str], *, stdio: Sequence[int] = (0, 1, 2),
               console_socket: str | None = None) -> int: ...

    def start(self, cid: str) -> None: ...

    def state(self, cid: str) -> RuntimeState: ...

    def kill(self, cid: str, sig: int) -> None: ...

    def delete(self, cid: str, *, force: bool = False) -> None: ...


class LibraryRuntime:
    """berth's own runtime, in-process."""

    name = LIBRARY

    def __init__(self, root: Path) -> None:
        self.root = root

    def create(self, cid: str, bundle: str | os.PathLike[str], *, stdio: Sequence[int] = (0, 1, 2),
               console_socket: str | None = None) -> int:
        if console_socket is not None:
            return linux.create(cid, bundle, self.root, console_socket=console_socket)
        return linux.create(cid, bundle, self.root, stdio=stdio)

    def start(self, cid: str) -> None:
        linux.start(cid, self.root)

    def state(self, cid: str) -> RuntimeState:
        st = linux.state(cid, self.root)
        return RuntimeState(st.id, st.pid, st.status.value, st.bundle, st.cgroup_path)

    def kill(self, cid: str, sig: int) -> None:
        linux.kill(cid, sig, self.root)

    def delete(self, cid: str, *, force: bool = False) -> None:
        linux.delete(cid, self.root, force=force)


class CliRuntime:
    """An OCI runtime binary with runc's command line."""

    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.name = os.path.basename(binary)
        self.root = root

    def _run(self, *args: str, stdio: Sequence[int] | None = None) -> str:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.NamedTemporaryFile(dir=self.root, prefix=".log-", suffix=".json") as logf:
            cmd = [self.binary, "--root", str(self.root), "--log", logf.name, "--log-format", "json", *args]
            out = subprocess.PIPE if stdio is None else stdio[1]
            try:
                res = subprocess.run(cmd, stdin=subprocess.DEVNULL if stdio is None else stdio[0], stdout=out,
                                     stderr=subprocess.PIPE if stdio is None else stdio[2],
                                     timeout=CLI_TIMEOUT_S, check=False)
            except FileNotFoundError:
                raise NotFound(f"OCI runtime {self.binary!r}: executable file not found in $PATH") from None
            except subprocess.TimeoutExpired:
                raise InternalError(f"{self.name} {args[0]} timed out") from None
            if res.returncode != 0:
                raise _error(_log_error(Path(logf.name)) or (res.stderr or b"").decode(errors="replace").strip()
                             or f"{self.name} {args[0]} failed with status {res.returncode}")
        return (res.stdout or b"").decode()

    def create(self, cid: str, bundle: str | os.PathLike[str], *, stdio: Sequence[int] = (0, 1, 2),
               console_socket: str | None = None) -> int:
        pid_file = self.root / f".{cid}.pid"
        args = ["create", "--bundle", os.path.abspath(os.fspath(bundle)), "--pid-file", str(pid_file)]
        if console_socket is not None:
            args += ["--console-socket", console_socket]
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            # without a terminal, runc hands its own fds 0-2 to the container
            self._run(*args, cid, stdio=stdio if console_socket is None else (null, null, null))
            return int(pid_file.read_text().strip())
        finally:
            os.close(null)
            with contextlib.suppress(OSError):
                pid_file.unlink()

    def start(self, cid: str) -> None:
        self._run("start", cid)

    def state(self, cid: str) -> RuntimeState:
        doc = json.loads(self._run("state", cid))
        bundle = str(doc.get("bundle", ""))
        cgroup_path = ""
        with contextlib.suppress(BerthError, OSError, ValueError):
            cgroup_path = linux.load_spec(bundle).linux.cgroups_path.strip("/")
        return RuntimeState(str(doc.get("id", cid)), int(doc.get("pid") or 0), str(doc.get("status", "")), bundle,
                            cgroup_path)

    def kill(self, cid: str, sig: int) -> None:
        self._run("kill", cid, str(int(sig)))

    def delete(self, cid: str, *, force: bool = False) -> None:
        self._run("delete", *(["--force"] if force else []), cid)

    def ids(self) -> list[str]:
        """The containers this runtime knows (``list``), for cleanup after a monitor restart."""
        try:
            return [str(c["id"]) for c in json.loads(self._run("list", "--format", "json") or "null") or []]
        except (BerthError, ValueError, KeyError, TypeError):
            return []


def _log_error(path: Path) -> str:
    """The last error the runtime logged (runc: one JSON object per line, ``level`` and ``msg``)."""
    last = ""
    with contextlib.suppress(OSError):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError, AttributeError):
                entry = json.loads(line)
                if entry.get("level") in ("error", "fatal"):
                    last = str(entry.get("msg", ""))
    return last


def _error(message: str) -> BerthError:
    lower = message.lower()
    if "does not exist" in lower and "container" in lower:
        return NotFound(message)
    if "not running" in lower or "already exists" in lower or "not stopped" in lower:
        return Conflict(message)
    return InternalError(message)


def binary_for(name: str) -> str | None:
    """The path of an OCI runtime binary given by name or path, or None when not installed."""
    if os.sep in name:
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name) or next((p for d in ("/usr/sbin", "/usr/local/sbin", "/sbin")
                                       if os.access(p := os.path.join(d, name), os.X_OK)), None)


def state_root(exec_root: Path, name: str) -> Path:
    return exec_root / f"runtime-{os.path.basename(name)}"


def runtime_for(name: str, exec_root: Path, library_root: Path) -> Runtime:
    """``berth`` → the library (state under ``library_root``); anything else → that binary."""
    if not name or name == LIBRARY:
        return LibraryRuntime(library_root)
    binary = binary_for(name)
    if binary is None:
        raise NotFound(f"OCI runtime {name!r}: executable file not found in $PATH")
    return CliRuntime(binary, state_root(exec_root, name))


def cli_roots(exec_root: Path) -> list[CliRuntime]:
    """Every binary runtime that left state under ``exec_root`` (and is still installed)."""
    out = []
    with contextlib.suppress(OSError):
        for d in exec_root.iterdir():
            if d.is_dir() and d.name.startswith("runtime-"):
                binary = binary_for(d.name[len("runtime-"):])
                if binary is not None:
                    out.append(CliRuntime(binary, d))
    return out

