"""The copy snapshotter: the fallback where overlayfs is missing; every active snapshot is a full copy.

``prepare`` copies the parent's whole tree into the new snapshot's ``fs`` (modes, owners, xattrs,
hardlinks, device nodes, fifos, symlinks, timestamps) and returns a read-write bind mount; ``commit``
only records it. A view needs no copy: it is a read-only bind of the parent's ``fs``, which cannot go
away while the view is its child. Whiteouts never exist here: deletions are real deletions.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from berth.kernel.mount import Mount
from berth.snapshots.base import Kind, LocalSnapshotter, _Row

# xattrs a plain copy must not carry: overlay metadata would confuse a later overlay mount
_SKIP_XATTR_PREFIXES = ("trusted.overlay.",)


class CopySnapshotter(LocalSnapshotter):
    """Snapshots as independent full copies (see the module docstring)."""

    name = "copy"

    def _populate(self, new_dir: Path, parent_chain: list[int], kind: Kind) -> None:
        if kind is Kind.ACTIVE and parent_chain:
            copy_tree(self._fs(parent_chain[0]), new_dir / "fs")

    def _bind(self, sid: int, readonly: bool) -> list[Mount]:
        return [Mount("bind", str(self._fs(sid)), ("rbind", "ro" if readonly else "rw"))]

    def _mounts(self, row: _Row, chain: list[int]) -> list[Mount]:
        if row.kind is Kind.ACTIVE:
            return self._bind(row.id, readonly=False)
        if row.kind is Kind.VIEW and chain:
            return self._bind(chain[0], readonly=True)
        return self._bind(row.id, readonly=True)


def copy_tree(src: Path, dst: Path) -> None:
    """Copy the tree ``src`` into the existing directory ``dst``, preserving everything a layer carries.

    Never follows a symlink; hardlinks inside ``src`` stay hardlinks; directory metadata is applied after
    the directory's contents, so read-only directories and their mtimes come out right.
    """
    links: dict[tuple[int, int], str] = {}
    # post-order walk without recursion: (src dir, dst dir, its stat, pending entries)
    root_st = os.lstat(src)
    stack: list[tuple[str, str, os.stat_result, list[os.DirEntry[str]]]] = [
        (os.fspath(src), os.fspath(dst), root_st, _entries(os.fspath(src)))
    ]
    while stack:
        sdir, ddir, dst_st, pending = stack[-1]
        if not pending:
            stack.pop()
            _copy_meta(sdir, ddir, dst_st)
            continue
        entry = pending.pop()
        s = entry.path
        d = os.path.join(ddir, entry.name)
        st = entry.stat(follow_symlinks=False)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            os.mkdir(d, 0o700)
            stack.append((s, d, st, _entries(s)))
            continue
        if st.st_nlink > 1 and not stat.S_ISDIR(mode):
            first = links.get((st.st_dev, st.st_ino))
            if first is not None:
                os.link(first, d, follow_symlinks=False)
                continue
            links[(st.st_dev, st.st_ino)] = d
        if stat.S_ISREG(mode):
            _copy_data(s, d)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(s), d)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            os.mknod(d, mode, st.st_rdev)
        else:
            continue
        _copy_meta(s, d, st)


def _entries(path: str) -> list[os.DirEntry[str]]:
    with os.scandir(path) as it:
        return list(it)


def _copy_data(src: str, dst: str) -> None:
    sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(sfd).st_size
            copied = 0
            try:
                # copy_file_range shares extents (reflinks) where the filesystem can
                while copied < size:
                    n = os.copy_file_range(sfd, dfd, size - copied)
                    if n == 0:
                        break
                    copied += n
            except OSError as err:
                if err.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                while True:
                    n = os.sendfile(dfd, sfd, None, 1 << 30)
                    if n == 0:
                        break
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def _copy_meta(src: str, dst: str, st: os.stat_result) -> None:
    """Owner, then mode (chown clears setuid), then xattrs (chown clears security.capability), then times."""
    os.lchown(dst, st.st_uid, st.st_gid)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError as err:
        if err.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        names = []
    for name in names:
        if name.startswith(_SKIP_XATTR_PREFIXES):
            continue
        value = os.getxattr(src, name, follow_symlinks=False)
        try:
            os.setxattr(dst, name, value, follow_symlinks=False)
        except OSError as err:
            # user.* cannot sit on symlinks or devices; a filesystem may lack a namespace
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
