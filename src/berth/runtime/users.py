"""``USER`` and ``--group-add`` to numbers, from the IMAGE's own /etc/passwd and /etc/group read as data.

Semantics follow runc's ``libcontainer/user.GetExecUser`` and ``GetAdditionalGroups`` (what Docker calls):
``""`` means uid 0 looked up in passwd, ``name`` and ``uid`` select a passwd entry (first match wins), a numeric
uid or gid without an entry is used as is, supplementary groups come from /etc/group membership only when no
group was given. Hardening beyond runc (security.md §1.2): anything that looks like a number is a number, so an
out-of-range value is refused and never falls back to a name lookup; ids found in the files are range-checked too.

The files are opened inside the rootfs with in-root resolution (``fsops.open_in_root``): a symlinked
/etc/passwd resolves inside the image, never to the host's. Only regular files are read (an image could ship a
device node or a FIFO there), at most ``MAX_FILE`` bytes. The host's ``pwd``/``grp`` modules are never used.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from berth.errors import InvalidArgument
from berth.kernel import fsops

MIN_ID = 0
MAX_ID = 2**31 - 1
MAX_FILE = 4 * 1024 * 1024
RANGE_ERROR = f"uids and gids must be in range {MIN_ID}-{MAX_ID}"
_NUMERIC = re.compile(r"^[+-]?[0-9]+$")


@dataclass(frozen=True)
class ExecUser:
    """The numeric identity a container process runs as, and the HOME its passwd entry names."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    home: str = "/"

    def __post_init__(self) -> None:
        for v in (self.uid, self.gid, *self.additional_gids):
            if not MIN_ID <= v <= MAX_ID:
                raise InvalidArgument(RANGE_ERROR)


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def _number(text: str) -> int | None:
    """``text`` as an integer if it looks like one (sign and digits, any size), else None."""
    if not _NUMERIC.match(text):
        return None
    try:
        return int(text)
    except ValueError:  # more digits than int() converts: out of range either way
        return MAX_ID + 1


def _checked(value: int) -> int:
    if not MIN_ID <= value <= MAX_ID:
        raise InvalidArgument(RANGE_ERROR)
    return value


def read_in_root(rootfs: Path | str, path: str) -> str:
    """The text of regular file ``path`` inside ``rootfs`` ("" when absent or not a regular file)."""
    root_fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            # O_PATH first: opening a device node or FIFO for reading could block or have side effects
            pfd = fsops.open_in_root(root_fd, path, os.O_PATH | os.O_CLOEXEC)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):  # a symlink loop is as good as no file
                return ""
            raise
    finally:
        os.close(root_fd)
    try:
        if not stat.S_ISREG(os.fstat(pfd).st_mode):
            return ""
        fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    finally:
        os.close(pfd)
    with os.fdopen(fd, "rb") as f:
        return f.read(MAX_FILE).decode("utf-8", errors="replace")


def _fields(text: str) -> list[list[str]]:
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "+", "-")):  # comments and NIS compat entries
            continue
        out.append(line.split(":"))
    return out


def parse_passwd(text: str) -> list[PasswdEntry]:
    """``name:pass:uid:gid:gecos:home:shell`` lines; malformed lines are skipped (runc would read them as 0)."""
    out = []
    for f in _fields(text):
        if len(f) < 4:
            continue
        uid, gid = _number(f[2]), _number(f[3])
        if uid is None or gid is None:
            continue
        out.append(PasswdEntry(f[0], uid, gid, f[5] if len(f) > 5 else ""))
    return out


def parse_group(text: str) -> list[GroupEntry]:
    """``name:pass:gid:member,member`` lines; malformed lines are skipped."""
    out = []
    for f in _fields(text):
        if len(f) < 3:
            continue
        gid = _number(f[2])
        if gid is None:
            continue
        members = tuple(m.strip() for m in f[3].split(",") if m.strip()) if len(f) > 3 else ()
        out.append(GroupEntry(f[0], gid, members))
    return out


def exec_user(user: str, passwd: Sequence[PasswdEntry], groups: Sequence[GroupEntry]) -> ExecUser:
    """runc's GetExecUser over parsed files (defaults uid 0, gid 0, HOME "/")."""
    user_arg, _, rest = (user or "").partition(":")
    group_arg = rest.split(":", 1)[0]
    uid_num, gid_num = _number(user_arg), _number(group_arg)
    uid, gid, home = 0, 0, "/"
    if user_arg == "":
        match = next((p for p in passwd if p.uid == 0), None)
    elif uid_num is not None:
        match = next((p for p in passwd if p.uid == uid_num), None)
    else:
        match = next((p for p in passwd if p.name == user_arg), None)
    login = ""
    if match is not None:
        login, uid, gid, home = match.name, _checked(match.uid), _checked(match.gid), match.home or "/"
    elif user_arg:
        if uid_num is None:
            raise InvalidArgument(f"unable to find user {user_arg}: no matching entries in passwd file")
        uid = _checked(uid_num)
    sgids: tuple[int, ...] = ()
    if group_arg:
        if gid_num is not None:
            gid = _checked(gid_num)  # a number is a gid, whatever group names the file holds
        else:
            g = next((g for g in groups if g.name == group_arg), None)
            if g is None:
                raise InvalidArgument(f"unable to find group {group_arg}: no matching entries in group file")
            gid = _checked(g.gid)
    elif login:
        sgids = tuple(_checked(g.gid) for g in groups if login in g.members)
    return ExecUser(uid, gid, sgids, home)


def additional_groups(group_add: Sequence[str], groups: Sequence[GroupEntry]) -> tuple[int, ...]:
    """runc's GetAdditionalGroups: names or numbers, first match wins, deduplicated in request order."""
    out: list[int] = []
    for ag in group_add:
        if not isinstance(ag, str) or not ag:
            raise InvalidArgument(f"Unable to find group {ag}: no matching entries in group file")
        num = _number(ag)
        g = next((g for g in groups if g.name == ag or str(g.gid) == ag), None)
        if g is not None:
            gid = _checked(g.gid)
        elif num is not None:
            gid = _checked(num)
        else:
            raise InvalidArgument(f"Unable to find group {ag}: no matching entries in group file")
        if gid not in out:
            out.append(gid)
    return tuple(out)


def resolve_user(rootfs: Path | str, user: str, group_add: Sequence[str] = ()) -> ExecUser:
    """``user[:group]`` plus ``group_add`` to numbers, reading the image's files inside ``rootfs``."""
    passwd = parse_passwd(read_in_root(rootfs, "/etc/passwd"))
    needs_groups = bool(group_add) or ":" in (user or "") or bool(passwd)
    groups = parse_group(read_in_root(rootfs, "/etc/group")) if needs_groups else []
    base = exec_user(user, passwd, groups)
    extra = additional_groups(group_add, groups) if group_add else ()
    return ExecUser(base.uid, base.gid, tuple(dict.fromkeys(base.additional_gids + extra)), base.home)


def ensure_dir(rootfs: Path | str, path: str, mode: int = 0o755) -> None:
    """Create directory ``path`` (and parents) inside ``rootfs`` like Docker's WORKDIR setup, never outside it."""
    root_fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fd = fsops.walk_dir(root_fd, fsops.split(path), create=True, mode=mode)
        except NotADirectoryError:
            raise InvalidArgument(f"Cannot mkdir: {path} is not a directory") from None
        except OSError as e:  # e.g. a symlink on the way to a missing directory: targets are never created
            raise InvalidArgument(f"Cannot mkdir: {path}: {e.strerror}") from None
        os.close(fd)
    finally:
        os.close(root_fd)
