"""The ``local`` volume driver: a directory per volume under the data root, or a filesystem mounted there.

Owns this layout (no other module joins paths under it)::

    <data-root>/volumes/            mode 0701
    └── <name>/                     mode 0701, one per volume (names: [a-zA-Z0-9][a-zA-Z0-9_.-]+)
        └── _data/                  the volume's content (0755 root, or the ``uid``/``gid``/``mode`` options);
                                    for a volume made with ``type``/``device`` options, the mount point of that
                                    filesystem while a container uses it

Options follow Docker's local driver: ``type``, ``device`` and ``o`` are mount(8)'s ``-t``, device and ``-o``
(``type=tmpfs device=tmpfs o=size=10m``, ``type=none device=/path o=bind``), mounted at first use and unmounted
after the last; ``size`` needs quota support, which berth does not have. berth adds ``uid``, ``gid`` and ``mode``,
applied to ``_data`` (after mounting, for a mounted volume that is not a bind) so non-root images can write.

Imports: errors, kernel.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

from berth.errors import InternalError, InvalidArgument
from berth.kernel import fsops
from berth.kernel.mount import Mount, MountError, is_mountpoint, mount, unmount

DRIVER = "local"
DATA = "_data"
NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
NAME_CHARS = "[a-zA-Z0-9][a-zA-Z0-9_.-]"
MOUNT_OPTS = ("type", "o", "device", "size")
BERTH_OPTS = ("uid", "gid", "mode")
# moby local_unix.go mandatoryOpts: an option and the ones it needs beside it
REQUIRED_WITH = {"device": ("type",), "type": ("device",), "o": ("device", "type")}


def validate_name(name: str) -> None:
    """moby ``Root.validateName``."""
    if len(name) == 1:
        raise InvalidArgument("volume name is too short, names should be at least two alphanumeric characters")
    if not NAME_RE.match(name):
        raise InvalidArgument(f'"{name}" includes invalid characters for a local volume name, only "{NAME_CHARS}" '
                              "are allowed. If you intended to pass a host directory, use absolute path")


def validate_options(opts: Mapping[str, str]) -> None:
    """moby ``Root.validateOpts`` plus berth's ``uid``/``gid``/``mode``."""
    for key in opts:
        if key not in MOUNT_OPTS and key not in BERTH_OPTS:
            raise InvalidArgument(f'invalid option: "{key}"')
    size = opts.get("size")
    if size is not None and size.strip() not in ("", "0"):
        raise InvalidArgument("quota size requested but no quota support")
    for key, needs in REQUIRED_WITH.items():
        if key in opts:
            for other in needs:
                if other not in opts:
                    raise InvalidArgument(f'missing required option: "{other}"')
    for key in ("uid", "gid"):
        if key in opts and not (opts[key].isdigit() and int(opts[key]) < 2**32 - 1):
            raise InvalidArgument(f'invalid option "{key}": {opts[key]!r} is not a numeric ID')
    if "mode" in opts:
        _mode(opts["mode"])


def _mode(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        value = -1
    if not 0 <= value <= 0o7777:
        raise InvalidArgument(f'invalid option "mode": {text!r} is not an octal file mode')
    return value


def needs_mount(opts: Mapping[str, str]) -> bool:
    return bool(opts.get("type") or opts.get("device"))


def _is_bind(opts: Mapping[str, str]) -> bool:
    return any(o in ("bind", "rbind") for o in opts.get("o", "").split(","))


class LocalDriver:
    """Volumes as directories under ``root`` (``<data-root>/volumes``)."""

    name = DRIVER

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        """The volume's ``_data`` directory: what containers mount (Docker's ``Mountpoint``)."""
        return self.root / name / DATA

    def create(self, name: str, opts: Mapping[str, str]) -> Path:
        """Make the volume's directories (idempotent) and apply ``uid``/``gid``/``mode`` to ``_data``."""
        validate_name(name)
        self.root.mkdir(mode=0o701, parents=True, exist_ok=True)
        top = self.root / name
        top.mkdir(mode=0o701, exist_ok=True)
        data = top / DATA
        try:
            data.mkdir(mode=0o755)
        except FileExistsError:
            return data
        self._apply_owner(data, opts)
        return data

    def _apply_owner(self, data: Path, opts: Mapping[str, str]) -> None:
        if "uid" in opts or "gid" in opts:
            os.chown(data, int(opts.get("uid", "-1")), int(opts.get("gid", "-1")), follow_symlinks=False)
        if "mode" in opts:
            os.chmod(data, _mode(opts["mode"]), follow_symlinks=False)

    def mount(self, name: str, opts: Mapping[str, str]) -> bool:
        """Mount a ``type``/``device`` volume on its ``_data`` unless it is mounted already; True if mounted now."""
        data = self.create(name, opts)
        if not needs_mount(opts) or is_mountpoint(data):
            return False
        device = opts.get("device", "")
        if not device:
            raise InternalError(f"error while mounting volume '{data}': missing device in volume options")
        options = tuple(o for o in opts.get("o", "").split(",") if o)
        try:
            mount(Mount(opts.get("type") or "none", device, options), data)
        except (MountError, InvalidArgument) as e:
            raise InternalError(f"error while mounting volume '{data}': failed to mount local volume: {e}") from None
        if not _is_bind(opts):
            self._apply_owner(data, opts)
        return True

    def unmount(self, name: str) -> None:
        """Unmount the volume's filesystem if one is mounted there."""
        data = self.path(name)
        while is_mountpoint(data):
            try:
                unmount(data)
            except MountError:
                unmount(data, detach=True)

    def is_mounted(self, name: str) -> bool:
        return is_mountpoint(self.path(name))

    def remove(self, name: str) -> None:
        """Unmount, then delete the volume's directory tree (never following a symlink in it)."""
        validate_name(name)
        self.unmount(name)
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fsops.remove_at(fd, name)
            finally:
                os.close(fd)

    def is_empty(self, name: str) -> bool:
        try:
            with os.scandir(self.path(name)) as it:
                return next(it, None) is None
        except FileNotFoundError:
            return True

    def size(self, name: str) -> int:
        """Bytes in the volume (each hard-linked inode once), like moby's ``directory.Size``; -1 if unreadable."""
        seen: set[tuple[int, int]] = set()
        total = 0
        try:
            top = os.open(self.path(name), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return -1
        stack = [top]
        try:
            while stack:
                fd = stack.pop()
                try:
                    for entry in os.scandir(fd):
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        if stat.S_ISDIR(st.st_mode):
                            with contextlib.suppress(OSError):
                                stack.append(os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                                                     | os.O_CLOEXEC, dir_fd=fd))
                        elif (st.st_dev, st.st_ino) not in seen:
                            if st.st_nlink > 1:
                                seen.add((st.st_dev, st.st_ino))
                            total += st.st_size
                finally:
                    os.close(fd)
        finally:
            for fd in stack:
                os.close(fd)
        return total

    def fill(self, name: str, root: Path, path: str) -> bool:
        """Copy the directory ``path`` inside ``root`` (resolved as if ``root`` were ``/``: an image symlink never
        leads out) into the volume: content, owners, modes, times and xattrs, and the directory's own owner and
        mode onto ``_data``. False when ``path`` is not a directory there. The caller checked the volume is empty.
        """
        root_fd = os.open(root, fsops.DIR_PATH_FLAGS)
        try:
            try:
                src = fsops.open_in_root(root_fd, path, _DIR_READ)
            except (FileNotFoundError, NotADirectoryError):
                return False
        finally:
            os.close(root_fd)
        try:
            dst = os.open(self.path(name), _DIR_READ | os.O_NOFOLLOW)
        except BaseException:
            os.close(src)
            raise
        _copy_tree(src, dst)  # closes both
        return True

    def names(self) -> list[str]:
        """Volume directories present on disk (to find ones no record owns)."""
        try:
            return sorted(p.name for p in self.root.iterdir() if NAME_RE.match(p.name))
        except FileNotFoundError:
            return []


_DIR_READ = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_SKIP_XATTRS = ("trusted.overlay.", "security.selinux")


def _copy_meta(st: os.stat_result, dir_fd: int, name: str, fd: int | None = None) -> None:
    """Owner, then mode (chown clears set-id bits), then times; ``fd`` when the node is open."""
    if fd is not None:
        os.fchown(fd, st.st_uid, st.st_gid)
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        return
    fsops.chown_at(dir_fd, name, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        fsops.chmod_at(dir_fd, name, stat.S_IMODE(st.st_mode))
    fsops.utime_at(dir_fd, name, st.st_atime_ns, st.st_mtime_ns)


def _copy_xattrs(src_dir: int, dst_dir: int, name: str) -> None:
    with contextlib.suppress(OSError):
        for key, value in fsops.xattrs_at(src_dir, name).items():
            if not key.startswith(_SKIP_XATTRS):
                with contextlib.suppress(OSError):
                    fsops.set_xattr_at(dst_dir, name, key, value)


def _copy_file(src_dir: int, dst_dir: int, name: str, st: os.stat_result) -> None:
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src_dir)
    try:
        dst = fsops.create_at(dst_dir, name, 0o600)
        try:
            while os.sendfile(dst, src, None, 1 << 30):
                pass
            _copy_meta(st, dst_dir, name, dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _copy_entry(src_dir: int, dst_dir: int, name: str, st: os.stat_result) -> bool:
    """Copy one non-directory node; False for what is not copied (sockets)."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        _copy_file(src_dir, dst_dir, name, st)
    elif stat.S_ISLNK(mode):
        fsops.symlink_at(os.readlink(name, dir_fd=src_dir), dst_dir, name)
        _copy_meta(st, dst_dir, name)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
        fsops.mknod_at(dst_dir, name, mode, st.st_rdev)
        _copy_meta(st, dst_dir, name)
    else:
        return False
    return True


def _copy_tree(src_top: int, dst_top: int) -> None:
    """Copy the tree under ``src_top`` into ``dst_top`` (both read-only directory fds, closed here).

    Depth-first with an explicit stack (one pair of fds per level), so a deep hostile tree cannot exhaust
    Python's recursion; every name is opened relative to its parent's fd with ``O_NOFOLLOW``.
    """
    stack: list[tuple[int, int, list[str], os.stat_result]] = [
        (src_top, dst_top, sorted(os.listdir(src_top)), os.fstat(src_top))]
    try:
        while stack:
            src, dst, names, dir_st = stack[-1]
            if not names:
                stack.pop()
                _copy_meta(dir_st, dst, ".", dst)
                os.close(src)
                os.close(dst)
                continue
            name = names.pop(0)
            st = os.stat(name, dir_fd=src, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                fsops.mkdir_at(dst, name, 0o700)
                _copy_xattrs(src, dst, name)
                sub_src = os.open(name, _DIR_READ | os.O_NOFOLLOW, dir_fd=src)
                try:
                    sub_dst = os.open(name, _DIR_READ | os.O_NOFOLLOW, dir_fd=dst)
                except BaseException:
                    os.close(sub_src)
                    raise
                stack.append((sub_src, sub_dst, sorted(os.listdir(sub_src)), st))
            elif _copy_entry(src, dst, name, st) and not stat.S_ISLNK(st.st_mode):
                _copy_xattrs(src, dst, name)
    finally:
        for src, dst, _names, _st in stack:
            os.close(src)
            os.close(dst)

