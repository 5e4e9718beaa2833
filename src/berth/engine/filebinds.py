"""Single-file bind mounts that follow the file: a replaced host file is re-bound inside running containers.

A bind mount pins an inode. Editors and ``mv new conf.txt`` replace the *name* with a new inode, so Docker's
single-file binds keep serving the old content (moby#15793). berth watches the parent directory of every
single-file bind source of a running container with inotify (``IN_MOVED_TO``, ``IN_CREATE``,
``IN_CLOSE_WRITE``, ``IN_ATTRIB``); when the name points at another inode than the one the container sees, a
fresh bind is made in the container's mount namespace:

1. ``open_tree(source, OPEN_TREE_CLONE)`` in the daemon's namespace: a detached bind of the current file
   (made read-only with ``mount_setattr`` for ``:ro``, and private);
2. in a throw-away thread: ``unshare(CLONE_FS)`` (a thread sharing its fs_struct may not change mount
   namespace), ``setns`` into the mount namespace of the container's init through a pidfd, ``stat`` of the
   destination (the inode the container sees now; the same one means nothing to do);
3. ``move_mount(MOVE_MOUNT_BENEATH)`` slides the new bind under the stale one and ``umount2(MNT_DETACH)``
   takes the stale one off: readers see the old file or the new one, never the empty mount point.

Only the container's init PID is needed, so this works for berth's runtime and for runc alike. The check is
also run once when watching starts (container start, and after a daemon restart for containers that kept
running: a replacement made while the daemon was down is applied then). A name that disappears changes
nothing: the container keeps the last file until the name comes back. Watches end when the container stops;
the inotify fd is closed when no container needs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from berth.engine.spec import parse_bind, parse_mount
from berth.errors import BerthError
from berth.kernel import inotify, ns
from berth.kernel import mount as kmount
from berth.runtime.state import process_start_time

log = logging.getLogger("berth.engine")

WATCH_MASK = (inotify.IN_MOVED_TO | inotify.IN_CREATE | inotify.IN_CLOSE_WRITE | inotify.IN_ATTRIB
              | inotify.IN_ONLYDIR)
_CLONE_FS = 0x00000200


@dataclass(frozen=True)
class FileBind:
    """A bind mount of one host file: where it comes from, where the container sees it, and read-only or not."""

    source: str
    destination: str
    readonly: bool

    @property
    def directory(self) -> str:
        return os.path.dirname(self.source) or "/"

    @property
    def name(self) -> str:
        return os.path.basename(self.source)


def file_binds(host: Mapping[str, Any]) -> list[FileBind]:
    """The container's user bind mounts whose host source is a regular file now (HostConfig Binds and Mounts,
    each entry on its own: a volume or an entry berth cannot parse does not hide the others)."""
    mounts = []
    for raw in host.get("Binds") or []:
        with contextlib.suppress(BerthError, TypeError, ValueError):
            mounts.append(parse_bind(raw))
    for entry in host.get("Mounts") or []:
        if isinstance(entry, dict) and entry.get("Type") == "bind":
            with contextlib.suppress(BerthError, TypeError, ValueError):
                mounts.append(parse_mount(entry))
    out = []
    for m in sorted(mounts, key=lambda m: len(m.destination.rstrip("/").split("/"))):
        if not m.is_bind or not m.source.startswith("/"):
            continue
        try:
            st = os.stat(m.source)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            readonly = False
            for opt in m.options:
                readonly = True if opt == "ro" else False if opt == "rw" else readonly
            out.append(FileBind(m.source, m.destination, readonly))
    return out


@dataclass(frozen=True)
class Outcome:
    """What one check did: ``rebound`` (a new bind is in place), ``same``, ``missing`` (no file at the name),
    or ``gone`` (the container's init has exited); ``inode`` is (st_dev, st_ino) of the file the container sees
    after a ``rebound`` or ``same``."""

    result: str
    detail: str = ""
    inode: tuple[int, int] | None = None


def follow(bind: FileBind, pid: int, pid_start: int | None) -> Outcome:
    """Make the container with init ``pid`` see the file ``bind.source`` names now (blocking: run it in a thread
    of its own, which must end afterwards, since it leaves that thread in the container's mount namespace)."""
    try:
        tree = kmount.open_tree(bind.source)
    except kmount.MountError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return Outcome("missing")
        raise
    try:
        new = os.fstat(tree)
        if not stat.S_ISREG(new.st_mode):
            return Outcome("missing", "not a regular file")
        kmount.mount_setattr(tree, kmount.MOUNT_ATTR_RDONLY if bind.readonly else 0,
                             propagation=kmount.MS_PRIVATE)
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return Outcome("gone")
        try:
            if pid_start is not None and process_start_time(pid) != pid_start:
                return Outcome("gone")  # the init exited and its PID was reused
            ns.unshare(_CLONE_FS)
            ns.setns(pidfd, ns.CLONE_NEWNS)
        finally:
            os.close(pidfd)
        # from here on, paths are the container's; nothing may import (the container's files would be read)
        try:
            cur = os.stat(bind.destination)
        except OSError as e:
            return Outcome("missing", f"destination: {e.strerror}")
        inode = (new.st_dev, new.st_ino)
        if (cur.st_dev, cur.st_ino) == inode:
            return Outcome("same", inode=inode)
        try:
            kmount.move_mount(tree, bind.destination, beneath=True)
        except kmount.MountError as e:
            if e.errno != errno.EINVAL:
                raise
            # not a mount point any more (or no MOVE_MOUNT_BENEATH): a plain attach
            kmount.move_mount(tree, bind.destination)
            return Outcome("rebound", "attached", inode)
        kmount.unmount(bind.destination, detach=True)
        return Outcome("rebound", inode=inode)
    finally:
        os.close(tree)


@dataclass
class _Binding:
    cid: str
    pid: int
    pid_start: int | None
    bind: FileBind
    wd: int = -1
    seen: tuple[int, int] | None = None  # the inode the container was last found to see
    busy: bool = False
    again: bool = False
    active: bool = True


@dataclass
class _Dir:
    names: dict[str, list[_Binding]] = field(default_factory=dict)


class FileBindWatcher:
    """The daemon-side follower; ``started``/``stopped``/``close`` are the runner's hooks (event-loop thread)."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dirs: dict[int, _Dir] = {}
        self._containers: dict[str, list[_Binding]] = {}
        self.rebinds = 0  # how many re-binds were made (for tests and debugging)

    # --- hooks --------------------------------------------------------------------------------------

    def starting(self, doc: dict[str, Any]) -> None:
        pass

    def started(self, cid: str, doc: dict[str, Any], pid: int, restored: bool) -> None:
        """Container ``cid`` runs with init ``pid``: watch its single-file binds, and check them once now."""
        self.stopped(cid)
        binds = file_binds(doc.get("HostConfig") or {})
        if not binds or pid <= 0:
            return
        pid_start = process_start_time(pid)
        if pid_start is None:
            return
        bindings = []
        for bind in binds:
            b = _Binding(cid, pid, pid_start, bind)
            try:
                self._watch(b)
            except OSError as e:
                log.warning("container %s: cannot watch %s for replacements: %s", cid[:12], bind.source, e)
                continue
            bindings.append(b)
        if not bindings:
            self._release_fd()
            return
        self._containers[cid] = bindings
        for b in bindings:
            self._check(b)

    def stopped(self, cid: str) -> None:
        """Container ``cid`` ended: drop its watches (and the inotify fd once nothing is watched)."""
        for b in self._containers.pop(cid, []):
            b.active = False
            d = self._dirs.get(b.wd)
            if d is None:
                continue
            same = d.names.get(b.bind.name, [])
            if b in same:
                same.remove(b)
            if not same:
                d.names.pop(b.bind.name, None)
            if not d.names:
                del self._dirs[b.wd]
                if self._fd is not None:
                    with contextlib.suppress(OSError):
                        inotify.rm_watch(self._fd, b.wd)
        self._release_fd()

    def close(self) -> None:
        for cid in list(self._containers):
            self.stopped(cid)
        self._release_fd(force=True)

    def watched(self) -> dict[str, list[FileBind]]:
        """Container id → the binds followed for it now."""
        return {cid: [b.bind for b in bs] for cid, bs in self._containers.items()}

    # --- inotify ------------------------------------------------------------------------------------

    def _watch(self, b: _Binding) -> None:
        if self._fd is None:
            self._loop = asyncio.get_running_loop()
            self._fd = inotify.init()
            self._loop.add_reader(self._fd, self._on_events)
        b.wd = inotify.add_watch(self._fd, b.bind.directory, WATCH_MASK)
        self._dirs.setdefault(b.wd, _Dir()).names.setdefault(b.bind.name, []).append(b)

    def _release_fd(self, force: bool = False) -> None:
        if self._fd is None or (self._containers and not force):
            return
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = None
        self._dirs.clear()

    def _on_events(self) -> None:
        if self._fd is None:
            return
        try:
            events = inotify.read_events(self._fd)
        except OSError as e:
            log.warning("file binds: reading inotify events: %s", e)
            return
        due: list[_Binding] = []
        for ev in events:
            if ev.mask & inotify.IN_Q_OVERFLOW:
                due = [b for bs in self._containers.values() for b in bs]  # events were lost: check everything
                break
            d = self._dirs.get(ev.wd)
            if d is None:
                continue
            if ev.mask & inotify.IN_IGNORED:  # the directory itself went away: nothing left to watch there
                del self._dirs[ev.wd]
                continue
            for b in d.names.get(ev.name, []):
                if b not in due and self._replaced(b):
                    due.append(b)
        for b in due:
            self._check(b)

    @staticmethod
    def _replaced(b: _Binding) -> bool:
        """Whether the name may point at another inode than the container's (an in-place write does not: it
        needs no thread)."""
        if b.seen is None or b.busy:
            return True
        try:
            st = os.stat(b.bind.source)
        except OSError:
            return False  # gone: the container keeps the last file
        return (st.st_dev, st.st_ino) != b.seen

    # --- the check, one at a time per binding ------------------------------------------------------------

    def _check(self, b: _Binding) -> None:
        if not b.active:
            return
        if b.busy:
            b.again = True  # a replacement during a check: look again once it is done
            return
        b.busy = True
        loop = asyncio.get_running_loop()

        def work() -> None:
            try:
                outcome: Outcome | BaseException = follow(b.bind, b.pid, b.pid_start)
            except BaseException as e:  # reported on the loop; this thread ends here either way
                outcome = e
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (daemon shutdown)
                loop.call_soon_threadsafe(self._checked, b, outcome)

        # a new thread every time: after setns it belongs to the container's mount namespace and must end
        threading.Thread(target=work, name=f"filebind-{b.cid[:12]}", daemon=True).start()

    def _checked(self, b: _Binding, outcome: Outcome | BaseException) -> None:
        b.busy = False
        if isinstance(outcome, BaseException):
            log.warning("container %s: following %s failed: %s", b.cid[:12], b.bind.source, outcome)
        elif outcome.result == "rebound":
            b.seen = outcome.inode
            self.rebinds += 1
            log.info("container %s: %s re-bound on %s (the host file was replaced)", b.cid[:12], b.bind.source,
                     b.bind.destination)
        elif outcome.result == "same":
            b.seen = outcome.inode
        elif outcome.result == "gone":
            b.active = False
        if b.again:
            b.again = False
            self._check(b)
