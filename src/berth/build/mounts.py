"""``RUN --mount`` and ``RUN --network`` for berth's builder: BuildKit's flag grammar, and the cache mounts' store.

Docker's classic builder refuses ``RUN --mount`` ("requires BuildKit"); berth serves only the classic API, so it
implements the common mounts itself with BuildKit's semantics (frontend/dockerfile/instructions/
commands_runmount.go, dockerfile2llb/convert_runmount.go). Parsing returns frozen values; the engine mounts them.

Owns one tree in the data root (no other module joins paths under it)::

    <data-root>/build-cache/
    └── <sha256 of the cache key>[-<n>]/   one cache mount: key = id, plus ":uid:gid:mode" when any is given
        │                                  (BuildKit keys a cache on its id and its base); "-n" = a private copy
        ├── meta.json                      {"ID": id, "Key": key, "Created": unix, "LastUsed": unix}
        ├── lock                           flock'd: shared while in use; exclusive under sharing=locked and
        │                                  while pruned (a cache in use is never pruned)
        └── data/                          what the RUN container sees at the mount's target
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import errno
import fcntl
import hashlib
import json
import os
import posixpath
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from berth.errors import InvalidArgument

MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
SHARING_MODES = ("shared", "private", "locked")
NETWORK_MODES = ("default", "none", "host")
_ALL_KEYS = ("type", "from", "source", "target", "readonly", "id", "sharing", "required", "size", "mode", "uid",
             "gid", "src", "dst", "destination", "ro", "rw", "readwrite", "env")
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_RAM_RE = re.compile(r"^(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$")
_RAM_UNITS = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


@dataclass(frozen=True)
class RunMount:
    """One ``--mount`` value (buildkit's ``instructions.Mount``), after variable expansion."""

    type: str = "bind"
    target: str = ""
    source: str = ""
    from_: str = ""               # a stage name or index, or an image; "" = the build context
    readonly: bool = True
    size: int = 0                 # tmpfs size in bytes; 0 = the kernel's default
    id: str = ""                  # cache id; "" = the target
    sharing: str = "shared"
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    required: bool = False
    env: str | None = None

    def __post_init__(self) -> None:
        if self.type not in MOUNT_TYPES:
            raise InvalidArgument(f"unsupported mount type {self.type!r}")
        if self.sharing not in SHARING_MODES:
            raise InvalidArgument(f"unsupported sharing value {self.sharing!r}")

    @property
    def cache_id(self) -> str:
        """convert_runmount.go: a cache's id defaults to the cleaned target, as written."""
        return self.id or posixpath.normpath(self.target or ".")

    @property
    def cache_key(self) -> str:
        """mount.go getRefCacheDir: the id, plus the base when uid/gid/mode give the cache one."""
        if self.uid is None and self.gid is None and self.mode is None:
            return self.cache_id
        mode = 0o755 if self.mode is None else self.mode
        return f"{self.cache_id}:{self.uid or 0}:{self.gid or 0}:{mode:o}"

    def describe(self) -> dict[str, Any]:
        """What the step's cache key records of this mount: its spec, never a cache's contents."""
        out: dict[str, Any] = {"type": self.type, "target": self.target, "ro": self.readonly}
        if self.type == "bind":
            out.update(source=self.source, from_=self.from_)
        elif self.type == "cache":
            out.update(id=self.cache_id, sharing=self.sharing, mode=self.mode, uid=self.uid, gid=self.gid,
                       source=self.source)
        elif self.type == "tmpfs":
            out.update(size=self.size)
        return out


def _go_bool(key: str, value: str) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidArgument(f"invalid value for {key}: {value}")


def _ram_in_bytes(key: str, text: str) -> int:
    """go-units ``RAMInBytes`` (binary multiples)."""
    m = _RAM_RE.match(text)
    if m is None:
        raise InvalidArgument(f"invalid value for {key}: {text}")
    unit = m.group(2)
    return int(float(m.group(1)) * (_RAM_UNITS[unit.lower()] if unit else 1))


def _uint(key: str, value: str, base: int) -> int:
    """strconv.ParseUint(value, base, 32): digits only, no sign or prefix."""
    digits = "01234567" if base == 8 else "0123456789"
    if not value or any(c not in digits for c in value) or int(value, base) >= 1 << 32:
        raise InvalidArgument(f"invalid value {value} for {key}")
    return int(value, base)


def _did_you_mean(value: str, options: tuple[str, ...]) -> str:
    """buildkit's suggest.WrapError: the closest known word, if any is close."""
    close = difflib.get_close_matches(value.lower(), options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def parse_mount(value: str, expand: Callable[[str], str] = lambda s: s) -> RunMount:
    """commands_runmount.go ``parseMount``: a CSV of ``key=value`` fields (and bare ``ro``/``rw``/``required``),
    each value expanded with ``expand`` (the step's ARGs and ENV) except ``from``, which cannot hold a variable."""
    try:
        fields = next(csv.reader([value], strict=True), [])
    except csv.Error as e:
        raise InvalidArgument(f"failed to parse csv mounts: {e}") from None
    kind = "bind"
    vals: dict[str, Any] = {}
    ro_auto = True
    readonly = False
    for field in fields:
        key, has_value, val = field.partition("=")
        key = key.lower()
        if not has_value:
            if key in ("readonly", "ro"):
                readonly, ro_auto = True, False
            elif key in ("readwrite", "rw"):
                readonly, ro_auto = False, False
            elif key == "required":
                if kind not in ("secret", "ssh"):
                    raise InvalidArgument(f"unexpected key '{key}' for mount type '{kind}'")
                vals["required"] = True
            else:
                raise InvalidArgument(f"invalid field '{field}' must be a key=value pair")
            continue
        if key == "from":
            if "$" in val[:-1]:
                raise InvalidArgument(f"'{key}' doesn't support variable expansion, define alias stage instead")
        else:
            val = expand(val)
        if key == "type":
            kind = val.lower()
            if kind not in MOUNT_TYPES:
                raise InvalidArgument(f"unsupported mount type \"{val}\"{_did_you_mean(val, MOUNT_TYPES)}")
        elif key == "from":
            vals["from_"] = val
        elif key in ("source", "src"):
            vals["source"] = val
        elif key in ("target", "dst", "destination"):
            vals["target"] = val
        elif key in ("readonly", "ro"):
            readonly, ro_auto = _go_bool(key, val), False
        elif key in ("readwrite", "rw"):
            readonly, ro_auto = not _go_bool(key, val), False
        elif key == "required":
            if kind not in ("secret", "ssh"):
                raise InvalidArgument(f"unexpected key '{key}' for mount type '{kind}'")
            vals["required"] = _go_bool(key, val)
        elif key == "size":
            if kind != "tmpfs":
                raise InvalidArgument(f"unexpected key '{key}' for mount type '{kind}'")
            vals["size"] = _ram_in_bytes(key, val)
        elif key == "id":
            vals["id"] = val
        elif key == "sharing":
            if val.lower() not in SHARING_MODES:
                raise InvalidArgument(f"unsupported sharing value \"{val}\"{_did_you_mean(val, SHARING_MODES)}")
            vals["sharing"] = val.lower()
        elif key == "mode":
            vals["mode"] = _uint("mode", val, 8)
        elif key in ("uid", "gid"):
            vals[key] = _uint(key, val, 10)
        elif key == "env":
            vals["env"] = val
        else:
            raise InvalidArgument(f"unexpected key '{key}' in '{field}'{_did_you_mean(key, _ALL_KEYS)}")
    if kind not in ("secret", "ssh", "cache"):
        for key in ("mode", "uid", "gid"):
            if key in vals:
                raise InvalidArgument(f"{key} not allowed for \"{kind}\" type mounts")
    if ro_auto:
        readonly = kind not in ("cache", "tmpfs")
    if kind == "secret":
        if vals.get("from_"):
            raise InvalidArgument("secret mount should not have a from")
        if "sharing" in vals:
            raise InvalidArgument("secret mount should not define sharing")
        if not vals.get("source") and not vals.get("target") and not vals.get("id"):
            raise InvalidArgument("invalid secret mount. one of source, target required")
        if vals.get("source") and vals.get("id"):
            raise InvalidArgument("both source and id can't be set")
    if "sharing" in vals and kind != "cache":
        raise InvalidArgument(f"invalid cache sharing set for {kind} mount")
    return RunMount(type=kind, readonly=readonly, **vals)


def mount_target(m: RunMount, workdir: str) -> str:
    """convert_runmount.go: a relative target is below the step's working directory; "/" is refused."""
    target = posixpath.normpath(posixpath.join("/", workdir or "/", m.target))
    if target == "/":
        raise InvalidArgument(f"invalid mount target \"{target}\"")
    return target


def check_network(value: str) -> str:
    """commands_runnetwork.go: ``--network`` is one of default, none, host."""
    if value not in NETWORK_MODES:
        raise InvalidArgument(f"invalid network mode \"{value}\"")
    return value


def check_unique_targets(targets: list[str]) -> None:
    """Two mounts on one target: the container's create refuses them, said here in the step's terms."""
    seen: set[str] = set()
    for t in targets:
        if t in seen:
            raise InvalidArgument(f"duplicate mount target {t}")
        seen.add(t)


@dataclass(frozen=True)
class CacheUsage:
    """One cache mount as ``docker system df -v`` and ``builder prune`` list it."""

    name: str              # the directory under build-cache/ (the record's ID)
    id: str                # the cache id the Dockerfile gave
    size: int
    created: float
    last_used: float
    in_use: bool


class CacheMounts:
    """The persistent directories of ``RUN --mount=type=cache``, by cache key, with BuildKit's sharing modes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._guard = threading.Lock()  # creation and prune; flock does the per-cache exclusion

    def _name(self, key: str, n: int) -> str:
        digest = hashlib.sha256(key.encode()).hexdigest()
        return digest if n == 0 else f"{digest}-{n}"

    def _open(self, name: str, m: RunMount) -> int:
        """The entry's lock fd, the entry made first (its data dir with the mount's mode and owner) when missing."""
        entry = self.root / name
        with self._guard:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not entry.is_dir():
                entry.mkdir(mode=0o700)
                data = entry / "data"
                data.mkdir()
                os.chmod(data, 0o755 if m.mode is None else m.mode & 0o7777)
                os.chown(data, m.uid or 0, m.gid or 0)
                now = time.time()
                (entry / "meta.json").write_text(json.dumps({"ID": m.cache_id, "Key": m.cache_key, "Created": now,
                                                             "LastUsed": now}))
            return os.open(entry / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)

    @contextlib.contextmanager
    def use(self, m: RunMount) -> Iterator[Path]:
        """The cache's data directory, held for the block: ``shared`` with other users, ``locked`` alone (waits
        for the holder), ``private`` alone or in a fresh copy when the cache is busy (mount.go getRefCacheDir)."""
        n = 0
        while True:
            name = self._name(m.cache_key, n)
            fd = self._open(name, m)
            try:
                if m.sharing == "private":
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        os.close(fd)
                        n += 1
                        continue
                    fcntl.flock(fd, fcntl.LOCK_SH)  # taken: later private users move on, prune keeps off
                else:
                    fcntl.flock(fd, fcntl.LOCK_EX if m.sharing == "locked" else fcntl.LOCK_SH)
                if os.fstat(fd).st_nlink == 0:  # pruned between open and lock: make it again
                    os.close(fd)
                    continue
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
            try:
                self._touch(self.root / name)
                yield self.root / name / "data"
                return
            finally:
                os.close(fd)

    def _touch(self, entry: Path) -> None:
        meta = self._meta(entry)
        meta["LastUsed"] = time.time()
        tmp = entry / "meta.json.tmp"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, entry / "meta.json")

    def _meta(self, entry: Path) -> dict[str, Any]:
        try:
            doc = json.loads((entry / "meta.json").read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _entries(self) -> list[Path]:
        try:
            return sorted(p for p in self.root.iterdir() if p.is_dir() and not p.is_symlink())
        except FileNotFoundError:
            return []

    def _usage(self, entry: Path, in_use: bool) -> CacheUsage:
        meta = self._meta(entry)
        return CacheUsage(entry.name, str(meta.get("ID") or ""), _tree_size(entry / "data"),
                          float(meta.get("Created") or 0), float(meta.get("LastUsed") or 0), in_use)

    def usage(self) -> list[CacheUsage]:
        """Every cache mount, its size, and whether a RUN holds it now."""
        out = []
        for entry in self._entries():
            fd = _open_lock(entry)
            in_use = False
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    in_use = True
                finally:
                    os.close(fd)
            out.append(self._usage(entry, in_use))
        return out

    def prune(self, until_s: float = 0.0, keep_bytes: int = 0) -> list[CacheUsage]:
        """Remove the caches no RUN holds: those unused for ``until_s`` seconds (all with 0), least recently used
        first, while more than ``keep_bytes`` remain (buildkit cacheManager.prune's keepDuration/keepBytes)."""
        removed: list[CacheUsage] = []
        with self._guard:
            idle: list[tuple[CacheUsage, int]] = []
            for entry in self._entries():
                fd = _open_lock(entry)
                if fd is None:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                idle.append((self._usage(entry, False), fd))
            try:
                total = sum(u.size for u, _ in idle)
                cutoff = time.time() - until_s
                for usage, _fd in sorted(idle, key=lambda item: item[0].last_used):
                    if until_s and usage.last_used > cutoff:
                        continue
                    if keep_bytes and total <= keep_bytes:
                        break
                    # unlink the lock first, so that a user who opened it before sees st_nlink 0 and starts over
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.root / usage.name / "lock")
                    shutil.rmtree(self.root / usage.name, ignore_errors=True)  # rmtree never follows symlinks
                    total -= usage.size
                    removed.append(usage)
            finally:
                for _, fd in idle:
                    os.close(fd)
        return removed


def _open_lock(entry: Path) -> int | None:
    try:
        return os.open(entry / "lock", os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ELOOP):
            return None
        raise


def _tree_size(top: Path) -> int:
    """Bytes in a tree (each inode once), never following a symlink a RUN step left there."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total
