"""The local end of ``berth cp``: moby's archive copy rules (``github.com/moby/go-archive`` copy.go) on the host.

A copy is a tar stream between the local filesystem and ``/containers/{id}/archive``. Which entries the stream
holds, what they are renamed to, and which directory it is extracted into follow the source and destination
``CopyInfo`` exactly as docker's CLI decides them, so ``cp a/ ctr:/b``, ``cp a/. ctr:/b`` and ``cp ctr:/a/. b``
land where docker lands them. Extraction refuses any entry whose path would resolve outside the destination.
Errors are ``CopyError`` with Go's wording (``lstat /x: no such file or directory``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
import tarfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any, BinaryIO


class CopyError(Exception):
    """A local copy failure; the message is docker's."""


ERR_NOT_DIRECTORY = "not a directory"
ERR_DIR_NOT_EXISTS = "no such directory"
ERR_CANNOT_COPY_DIR = "cannot copy directory"


@dataclass(frozen=True)
class CopyInfo:
    """What one end of a copy is: its path, whether it exists, whether it is a directory, and the name its
    entries take in the archive (``rebase_name``) when a symlink was followed to find it."""

    path: str
    exists: bool = False
    is_dir: bool = False
    rebase_name: str = ""


def go_error(op: str, err: OSError, path: str | None = None) -> CopyError:
    """An ``os.PathError`` message: ``lstat /a: no such file or directory``."""
    shown = path if path is not None else (err.filename if err.filename is not None else "")
    reason = os.strerror(err.errno).lower() if err.errno else str(err)
    return CopyError(f"{op} {shown}: {reason}")


def clean(path: str) -> str:
    """Go's ``filepath.Clean``."""
    if not path:
        return "."
    cleaned = posixpath.normpath(path)
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned  # POSIX keeps "//", Go does not


def base(path: str) -> str:
    """Go's ``filepath.Base``."""
    if not path:
        return "."
    path = path.rstrip("/")
    if not path:
        return "/"
    return path.rsplit("/", 1)[-1]


def _specifies_current_dir(path: str) -> bool:
    return base(path) == "."


def _has_trailing_separator(path: str) -> bool:
    return path.endswith("/")


def asserts_directory(path: str) -> bool:
    return _has_trailing_separator(path) or _specifies_current_dir(path)


def preserve_trailing_dot_or_separator(cleaned: str, original: str) -> str:
    """``PreserveTrailingDotOrSeparator``: put back a trailing ``/.`` or ``/`` that cleaning removed."""
    if not _specifies_current_dir(cleaned) and _specifies_current_dir(original):
        if not _has_trailing_separator(cleaned):
            cleaned += "/"
        cleaned += "."
    if not _has_trailing_separator(cleaned) and _has_trailing_separator(original):
        cleaned += "/"
    return cleaned


def split_path_dir_entry(path: str) -> tuple[str, str]:
    """``SplitPathDirEntry``: (directory, base) of the cleaned path, a trailing ``.`` kept."""
    cleaned = clean(path)
    if _specifies_current_dir(path):
        cleaned += "/."
    return _dir(cleaned), base(cleaned)


def _dir(path: str) -> str:
    """Go's ``filepath.Dir``."""
    head = path[: path.rfind("/") + 1] if "/" in path else ""
    return clean(head) if head else "."


def rebase_name(path: str, resolved: str) -> tuple[str, str]:
    """``GetRebaseName``: the resolved path with the original's trailing ``/.`` or ``/``, and the name the
    archive's first entry must take when following a link changed the last component."""
    if _specifies_current_dir(path) and not _specifies_current_dir(resolved):
        resolved += "/."
    if _has_trailing_separator(path) and not _has_trailing_separator(resolved):
        resolved += "/"
    return resolved, (base(path) if base(path) != base(resolved) else "")


def eval_symlinks(path: str) -> str:
    """Go's ``filepath.EvalSymlinks``: every link resolved, the path must exist."""
    try:
        return os.path.realpath(path, strict=True)
    except OSError as err:
        raise go_error("lstat", err) from None


def local_path(path: str) -> str:
    """docker cp's ``resolveLocalPath``: absolute, with the original trailing ``/.`` or ``/``."""
    return preserve_trailing_dot_or_separator(clean(os.path.abspath(path)), path)


def copy_info_source_path(path: str, follow_link: bool) -> CopyInfo:
    """``CopyInfoSourcePath``: symlinks before the last separator resolved (the last one too with ``-L``)."""
    if follow_link:
        resolved, rebase = rebase_name(path, eval_symlinks(path))
    else:
        head, tail = path[: path.rfind("/") + 1], path[path.rfind("/") + 1:]
        resolved_dir = eval_symlinks(head or ".")
        resolved = resolved_dir.rstrip("/") + "/" + tail
        rebase = base(path) if _has_trailing_separator(path) and base(path) != base(resolved) else ""
    try:
        st = os.lstat(resolved)
    except OSError as err:
        raise go_error("lstat", err, resolved) from None
    return CopyInfo(resolved, True, stat.S_ISDIR(st.st_mode), rebase)


def copy_info_destination_path(path: str) -> CopyInfo:
    """``CopyInfoDestinationPath``: a destination that is a symlink means its target; a missing one is fine
    when its parent directory exists."""
    original = path
    try:
        st: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as err:
        raise go_error("lstat", err, path) from None
    hops = 0
    while st is not None and stat.S_ISLNK(st.st_mode):
        if hops > 10:
            raise CopyError("too many symlinks in " + original)
        hops += 1
        target = os.readlink(path)
        if not target.startswith("/"):
            target = posixpath.join(split_path_dir_entry(path)[0], target)
        path = clean(target)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
    if st is None:
        parent = split_path_dir_entry(path)[0]
        try:
            parent_st = os.stat(parent)
        except OSError as err:
            raise go_error("stat", err, parent) from None
        if not stat.S_ISDIR(parent_st.st_mode):
            raise CopyError(ERR_NOT_DIRECTORY)
        return CopyInfo(path)
    return CopyInfo(path, True, stat.S_ISDIR(st.st_mode))


# ---- streams ------------------------------------------------------------------------------------------

class Piped:
    """A tar written by a worker thread into a pipe; read it like a file, then ``check()`` for the worker's
    failure (a truncated stream is only an error once the worker says why)."""

    def __init__(self, produce: Callable[[IO[bytes]], None]) -> None:
        rfd, wfd = os.pipe()
        self.reader: BinaryIO = os.fdopen(rfd, "rb")
        self._writer: BinaryIO = os.fdopen(wfd, "wb")
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(produce,), daemon=True)
        self._thread.start()

    def _run(self, produce: Callable[[IO[bytes]], None]) -> None:
        try:
            produce(self._writer)
        except BrokenPipeError:
            pass  # the reader stopped early; its own error tells the story
        except BaseException as err:
            self.error = err
        finally:
            with contextlib.suppress(OSError):
                self._writer.close()

    def read(self, size: int = -1) -> bytes:
        return self.reader.read(size)

    def close(self) -> None:
        self.reader.close()
        self._thread.join(timeout=30)

    def check(self) -> None:
        self._thread.join(timeout=30)
        if self.error is not None:
            raise self.error


def tar_resource(info: CopyInfo) -> Piped:
    """``TarResource``: the source (file or tree) as a tar whose first entry is its base name (or
    ``rebase_name``); ``dir/.`` gives ``./`` and ``./child`` entries, like docker's TarWithOptions."""
    try:
        os.lstat(info.path)
    except OSError as err:
        raise go_error("lstat", err, info.path) from None
    source_dir, source_base = split_path_dir_entry(info.path)
    arcname = info.rebase_name or source_base

    def produce(out: IO[bytes]) -> None:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            tar.add(posixpath.join(source_dir, source_base), arcname=arcname, recursive=True)

    return Piped(produce)


def rebase_archive_entries(source: Any, old_base: str, new_base: str) -> Piped:
    """``RebaseArchiveEntries``: the first ``old_base`` in each entry name (and hard link target) becomes
    ``new_base`` (Go's ``strings.Replace(name, old, new, 1)``)."""
    if old_base == "/":
        old_base = ""

    def produce(out: IO[bytes]) -> None:
        with tarfile.open(fileobj=source, mode="r|*") as src, \
                tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as dst:
            for member in src:
                data = src.extractfile(member) if member.isreg() else None
                member.name = member.name.replace(old_base, new_base, 1)
                if member.islnk():
                    member.linkname = member.linkname.replace(old_base, new_base, 1)
                dst.addfile(member, data)

    return Piped(produce)


def prepare_archive_copy(content: Any, src: CopyInfo, dst: CopyInfo) -> tuple[str, Any]:
    """``PrepareArchiveCopy``: the directory to extract into, and the (possibly renamed) archive."""
    dst_dir, dst_base = split_path_dir_entry(dst.path)
    _, src_base = split_path_dir_entry(src.path)
    if dst.exists and dst.is_dir:
        return dst.path, content
    if dst.exists and src.is_dir:
        raise CopyError(ERR_CANNOT_COPY_DIR)
    if not dst.exists and not src.is_dir and asserts_directory(dst.path):
        raise CopyError(ERR_DIR_NOT_EXISTS)
    return dst_dir, rebase_archive_entries(content, src.rebase_name or src_base, dst_base)


# ---- extraction ---------------------------------------------------------------------------------------

class _Tar(tarfile.TarFile):
    """Untar with ``NoLchown``: files belong to whoever runs the copy, like docker cp's CopyTo."""

    def chown(self, tarinfo: tarfile.TarInfo, targetpath: Any, numeric_owner: bool) -> None:
        return None


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def untar(content: Any, dest: str) -> None:
    """``Untar`` with ``NoOverwriteDirNonDir``: extract below ``dest``; entries and hard links that would land
    outside it (through ``..`` or a symlink met on the way) are refused, as is replacing a directory with a
    non-directory or the reverse."""
    root = os.path.realpath(dest)
    dirs: list[tuple[tarfile.TarInfo, str]] = []
    with _Tar.open(fileobj=content, mode="r|*") as tar:
        for member in tar:
            name = clean(member.name)
            if name == ".." or name.startswith("../"):
                raise CopyError(f"invalid path in archive: {member.name!r} escapes {dest}")
            name = name.lstrip("/")
            if name in ("", "."):
                continue
            target = os.path.join(root, name)
            parent = os.path.realpath(os.path.dirname(target))
            if not _inside(root, parent):
                raise CopyError(f"invalid hardlink/symlink or path in archive: {member.name!r} escapes {dest}")
            target = os.path.join(parent, os.path.basename(target))
            if member.islnk():
                link = os.path.realpath(os.path.join(root, clean("/" + member.linkname).lstrip("/")))
                if not _inside(root, link):
                    raise CopyError(f"invalid hardlink in archive: {member.linkname!r} escapes {dest}")
                member.linkname = os.path.relpath(link, root)
            if not os.path.exists(parent):
                os.makedirs(parent, 0o755, exist_ok=True)
            _make_room(target, member)
            if member.isdir():
                if not os.path.isdir(target):
                    os.mkdir(target, 0o700)
                dirs.append((member, target))
                continue
            member.name = os.path.relpath(target, root)
            tar.extract(member, root, set_attrs=True, numeric_owner=True, filter="fully_trusted")
        # directories last, deepest first: their times would move as their children were written
        for member, target in reversed(dirs):
            with contextlib.suppress(OSError):
                os.chmod(target, member.mode & 0o7777)
                os.utime(target, (member.mtime, member.mtime))


def _make_room(target: str, member: tarfile.TarInfo) -> None:
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if member.isdir():
            return
        raise CopyError(f'cannot overwrite directory "{target}" with non-directory "{member.name}"')
    if member.isdir():
        raise CopyError(f'cannot overwrite non-directory "{target}" with directory "{member.name}"')
    try:
        os.unlink(target)
    except OSError as err:
        if err.errno != errno.ENOENT:
            raise go_error("unlinkat", err, target) from None


def copy_to(content: Any, src: CopyInfo, dst_path: str) -> None:
    """``CopyTo``: extract an archive of ``src`` so that it lands at ``dst_path``."""
    dst = copy_info_destination_path(dst_path)
    dst_dir, archive = prepare_archive_copy(content, src, dst)
    try:
        untar(archive, dst_dir)
    finally:
        if isinstance(archive, Piped):
            archive.close()
    if isinstance(archive, Piped):
        archive.check()
