"""The build context of a classic (v1) build: the ``POST /build`` body unpacked into a directory, and COPY/ADD planning.

``open_context`` turns the request body (a tar, maybe gzip/bzip2/xz/zstd; a bare Dockerfile; or nothing) into a
``BuildContext``: a private directory holding the context minus what ``.dockerignore`` excludes, and the Dockerfile's
bytes. ``resolve_sources``, ``content_digest`` and ``copy_tar`` then implement COPY/ADD on it: which context paths a
source names, the cache key of the copy, and the tar (with Docker's COPY naming rules) that the engine extracts into
the container's root filesystem.

The body is hostile input: entries are unpacked relative to directory fds with in-root resolution
(``berth.kernel.fsops``), names that climb out are refused, symlinks are stored as symlinks and never followed out of
the context; devices, fifos and ownership are not unpacked (COPY gives files to root or ``--chown``). COPY sources
resolve symlinks in-root (moby's ``FollowSymlinkInScope``); symlinks inside a copied directory stay symlinks.

Imports: errors, dockerignore, layers, kernel.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import posixpath
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO, cast

from berth.dockerignore import BadPattern, Matcher, fnmatch, has_wildcards, parse
from berth.errors import InternalError, InvalidArgument
from berth.kernel import fsops
from berth.layers.compression import open_decompressed, read_full

BLOCK = 512
CHUNK = 1 << 20
DEFAULT_DOCKERFILE = "Dockerfile"
IGNORE_FILE = ".dockerignore"
MAX_LINKS = 255  # moby/sys/symlink's limit when following links in scope


@dataclass(frozen=True)
class BuildContext:
    """An unpacked build context; ``close()`` (or ``with``) deletes ``root``."""

    root: Path  # the extracted context directory (files excluded by .dockerignore already removed)
    dockerfile: bytes  # the Dockerfile's content
    dockerfile_name: str  # as found in the context ("dockerfile" after the lowercase fallback)

    def close(self) -> None:
        """Remove the context directory (never following a symlink inside it)."""
        parent = os.open(self.root.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fsops.remove_at(parent, self.root.name)
        finally:
            os.close(parent)

    def __enter__(self) -> BuildContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Source:
    """One COPY/ADD source: a context path with every symlink already resolved in-root."""

    rel: str  # path relative to the context root ("" for the root itself), no symlink in it
    is_dir: bool
    name: str = field(default="")  # the name the source had in the instruction (a symlink's own name)

    @property
    def base(self) -> str:
        """The file name a single-file copy into a directory gets (moby: ``filepath.Base(source.path)``)."""
        return self.name or posixpath.basename(self.rel)


# -- request body ---------------------------------------------------------------------------------------------------


class _Padded(io.RawIOBase):
    """``head`` then ``stream``, then zeros up to a block boundary and two end-of-archive blocks.

    ``docker build -f -`` sends a tar without end-of-archive blocks whose last member is not padded
    (engine-api.md gotcha #14); the padding makes that a well-formed tar and is ignored after a real end.
    """

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._pending = head
        self._stream: BinaryIO | None = stream
        self._count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        if not self._pending and self._stream is not None:
            data = self._stream.read(len(b))
            if data:
                self._pending = data
            else:
                self._stream = None
                self._pending = bytes(-self._count % BLOCK + 2 * BLOCK)
        n = min(len(b), len(self._pending))
        b[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self._count += n
        return n


def _is_tar_header(block: bytes) -> bool:
    """Whether ``block`` starts a tar archive: a header with a valid checksum, or an end-of-archive block."""
    if len(block) < BLOCK:
        return False
    if block[:BLOCK] == bytes(BLOCK):
        return True
    try:
        tarfile.TarInfo.frombuf(block[:BLOCK], "utf-8", "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


def open_context(stream: BinaryIO, workdir: Path, dockerfile: str = DEFAULT_DOCKERFILE) -> BuildContext:
    """Unpack a ``POST /build`` body into a fresh directory under ``workdir``; the caller closes the result.

    The body is a tar (compressed or not, maybe without end-of-archive blocks), a bare Dockerfile (any body that
    is not a tar: the context is then empty), or empty. The Dockerfile and the ignore files are read before the
    excluded paths are removed, so a ``.dockerignore`` that lists them (as ``docker build -f -`` does) is fine.
    """
    root = Path(tempfile.mkdtemp(prefix="context-", dir=workdir))
    try:
        body = open_decompressed(stream)
        head = read_full(body, BLOCK)
        if head and not _is_tar_header(head):
            return BuildContext(root, head + body.read(), dockerfile)
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if head:
                _extract(root_fd, cast(BinaryIO, io.BufferedReader(_Padded(head, body), CHUNK)))
            name, content = _read_dockerfile(root_fd, dockerfile)
            _remove_excluded(root_fd, _ignore_patterns(root_fd, name))
        finally:
            os.close(root_fd)
        return BuildContext(root, content, name)
    except BaseException:
        BuildContext(root, b"", dockerfile).close()
        raise


def _outside(cleaned: str) -> bool:
    return cleaned == ".." or cleaned.startswith("../")


def _read_in_root(root_fd: int, path: str) -> bytes | None:
    """A regular file's bytes, resolving ``path`` in-root; None if there is no such regular file."""
    try:
        fd = fsops.open_in_root(root_fd, path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        parts = []
        while data := os.read(fd, CHUNK):
            parts.append(data)
        return b"".join(parts)
    finally:
        os.close(fd)


def _read_dockerfile(root_fd: int, name: str) -> tuple[str, bytes]:
    """Mirror of moby's ``withDockerfileFromContext``: the named file, or "dockerfile" when the default is missing."""
    cleaned = posixpath.normpath(name.lstrip("/")) if name.strip("/") else "."
    if _outside(cleaned):
        raise InvalidArgument(f"forbidden path outside the build context: {name} ()")
    content = _read_in_root(root_fd, cleaned)
    found = name
    if content is None and name == DEFAULT_DOCKERFILE:
        found = name.lower()
        content = _read_in_root(root_fd, found)
    if content is None:
        raise InvalidArgument(f"Cannot locate specified Dockerfile: {name}")
    if not content:
        raise InvalidArgument(f"the Dockerfile ({found}) cannot be empty")
    return found, content


def _ignore_patterns(root_fd: int, dockerfile: str) -> list[str]:
    """``<Dockerfile>.dockerignore`` beside the Dockerfile (BuildKit's rule, it wins), else ``.dockerignore``."""
    for candidate in (dockerfile.lstrip("/") + IGNORE_FILE, IGNORE_FILE):
        data = _read_in_root(root_fd, candidate)
        if data is not None:
            return parse(data)
    return []


# -- extraction -----------------------------------------------------------------------------------------------------


def _clean_member(name: str, what: str) -> str:
    if "\0" in name:
        raise InvalidArgument(f"{what} {name!r}")
    cleaned = posixpath.normpath(name.lstrip("/")) if name.strip("/") else "."
    if _outside(cleaned):
        raise InvalidArgument(f"{what} {name!r}: outside the build context")
    return cleaned


def _extract(root_fd: int, stream: BinaryIO) -> None:
    """Unpack a tar into the directory ``root_fd``: dirs, regular files, symlinks and hardlinks, all in-root."""
    dirs: dict[str, tuple[int, int]] = {}  # path -> (mode, mtime): set last, deepest first
    entry = ""
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                entry = member.name
                name = _clean_member(member.name, "invalid tar entry")
                if name == "." or not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
                    continue  # the root's own attributes, devices and fifos are not part of a context
                parent, _, base = name.rpartition("/")
                pfd = fsops.open_dir(root_fd, fsops.split(parent), create=True)
                try:
                    existing = fsops.lstat_at(pfd, base)
                    if existing is not None and not (member.isdir() and stat.S_ISDIR(existing.st_mode)):
                        fsops.remove_at(pfd, base)
                        existing = None
                    mtime_ns = int(member.mtime) * 1_000_000_000
                    if member.isdir():
                        if existing is None:
                            fsops.mkdir_at(pfd, base, 0o700)
                        dirs[name] = (member.mode & 0o7777, mtime_ns)
                    elif member.isreg():
                        _write_file(pfd, base, member.mode & 0o7777, mtime_ns, tar.extractfile(member))
                    elif member.issym():
                        fsops.symlink_at(member.linkname, pfd, base)
                        fsops.utime_at(pfd, base, mtime_ns, mtime_ns)
                    else:
                        _hardlink(root_fd, pfd, base, member.linkname)
                finally:
                    os.close(pfd)
            entry = ""
            for name in sorted(dirs, key=lambda p: p.count("/"), reverse=True):
                mode, mtime_ns = dirs[name]
                parent, _, base = name.rpartition("/")
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    pfd = fsops.open_dir(root_fd, fsops.split(parent))
                    try:
                        st = fsops.lstat_at(pfd, base)
                        if st is not None and stat.S_ISDIR(st.st_mode):
                            fsops.chmod_at(pfd, base, mode)
                            fsops.utime_at(pfd, base, mtime_ns, mtime_ns)
                    finally:
                        os.close(pfd)
    except tarfile.TarError as e:
        raise InvalidArgument(f"failed to read the build context: {e}") from e
    except OSError as e:
        kind = InternalError if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS) else InvalidArgument
        raise kind(f"failed to extract the build context at {entry!r}: {e.strerror or e}") from e


def _write_file(pfd: int, base: str, mode: int, mtime_ns: int, data: IO[bytes] | None) -> None:
    fd = fsops.create_at(pfd, base)
    try:
        if data is not None:
            while chunk := data.read(CHUNK):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)
        os.utime(fd, ns=(mtime_ns, mtime_ns))
    finally:
        os.close(fd)


def _hardlink(root_fd: int, pfd: int, base: str, linkname: str) -> None:
    target = _clean_member(linkname, "invalid hardlink target")
    tparent, _, tbase = target.rpartition("/")
    if target == ".":
        raise InvalidArgument(f"invalid hardlink target {linkname!r}")
    try:
        tfd = fsops.open_dir(root_fd, fsops.split(tparent))
    except (FileNotFoundError, NotADirectoryError) as e:
        raise InvalidArgument(f"invalid hardlink target {linkname!r}: no such file") from e
    try:
        st = fsops.lstat_at(tfd, tbase)
        if st is None or stat.S_ISDIR(st.st_mode) or st.st_dev != os.fstat(root_fd).st_dev:
            raise InvalidArgument(f"invalid hardlink target {linkname!r}")
        fsops.link_at(tfd, tbase, pfd, base)
    finally:
        os.close(tfd)


# -- walking a context without following symlinks -------------------------------------------------------------------


def _open_real_dir(root_fd: int, rel: str) -> int:
    """A readable fd for the directory ``rel``, every component a real directory (no symlink is followed)."""
    return fsops.open_real_dir(root_fd, fsops.split(rel), readable=True)


def _lstat(root_fd: int, rel: str) -> os.stat_result:
    """The node ``rel`` itself (a final symlink not followed), below real directories only."""
    parent, _, base = rel.rpartition("/")
    fd = _open_real_dir(root_fd, parent)
    try:
        return os.stat(base, dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(fd)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def _walk(root_fd: int, top: str) -> Iterator[tuple[str, os.stat_result]]:
    """Everything below the directory ``top`` (not ``top`` itself), parents first, names sorted, no symlink followed."""
    stack = [top]
    while stack:
        rel = stack.pop()
        fd = _open_real_dir(root_fd, rel)
        try:
            names = sorted(os.listdir(fd))
            entries = [(n, os.stat(n, dir_fd=fd, follow_symlinks=False)) for n in names]
        finally:
            os.close(fd)
        subdirs = []
        for n, st in entries:
            path = _join(rel, n)
            yield path, st
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(path)
        stack.extend(reversed(subdirs))


def _remove_excluded(root_fd: int, patterns: list[str]) -> None:
    """Delete what the patterns exclude; with "!" exceptions, excluded directories keep their excepted files."""
    if not patterns:
        return
    try:
        matcher = Matcher(patterns)
    except BadPattern as e:
        raise InvalidArgument(f"error reading .dockerignore: {e}") from e
    emptied: list[str] = []  # excluded directories entered for their exceptions, parents first
    stack: list[tuple[str, bool]] = [("", False)]
    while stack:
        rel, rel_excluded = stack.pop()
        fd = _open_real_dir(root_fd, rel)
        try:
            for name in sorted(os.listdir(fd)):
                path = _join(rel, name)
                excluded = matcher.excluded(path, rel_excluded)
                st = fsops.lstat_at(fd, name)
                if st is None:
                    continue
                if stat.S_ISDIR(st.st_mode) and matcher.has_exceptions():
                    stack.append((path, excluded))
                    if excluded:
                        emptied.append(path)
                elif excluded:
                    fsops.remove_at(fd, name)
                elif stat.S_ISDIR(st.st_mode):
                    stack.append((path, False))
        finally:
            os.close(fd)
    for path in reversed(emptied):
        parent, _, base = path.rpartition("/")
        fd = _open_real_dir(root_fd, parent)
        try:
            with contextlib.suppress(OSError):  # not empty: an exception kept something inside
                os.rmdir(base, dir_fd=fd)
        finally:
            os.close(fd)


# -- COPY / ADD -----------------------------------------------------------------------------------------------------


def _resolve(root_fd: int, path: str) -> tuple[str, os.stat_result] | None:
    """``path`` with symlinks resolved in-root (moby's ``FollowSymlinkInScope``) and its lstat; None if missing."""
    pending = [p for p in path.split("/") if p and p != "."]
    pending.reverse()
    done: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if done:
                done.pop()  # clamps at the context root
            continue
        try:
            fd = _open_real_dir(root_fd, "/".join(done))
        except (FileNotFoundError, NotADirectoryError):
            return None  # a file used as a directory
        try:
            child = fsops.lstat_at(fd, part)
            target = os.readlink(part, dir_fd=fd) if child is not None and stat.S_ISLNK(child.st_mode) else None
        finally:
            os.close(fd)
        if child is None:
            return None
        if target is not None:
            links += 1
            if links > MAX_LINKS:
                raise InvalidArgument(f"too many links in {path}")
            if target.startswith("/"):
                done = []
            pending.extend(reversed([p for p in target.split("/") if p and p != "."]))
            continue
        done.append(part)
    rel = "/".join(done)
    if not done:
        return rel, os.fstat(root_fd)
    parent, _, base = rel.rpartition("/")
    try:
        fd = _open_real_dir(root_fd, parent)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        st = fsops.lstat_at(fd, base)
    finally:
        os.close(fd)
    return None if st is None else (rel, st)


def _source(root_fd: int, orig: str, instruction: str) -> Source:
    """Mirror of moby's ``calcCopyInfo`` for one non-wildcard path."""
    cleaned = posixpath.normpath(orig) if orig else "."
    if _outside(cleaned):
        raise InvalidArgument(f"{instruction} failed: forbidden path outside the build context: {orig} ()")
    found = _resolve(root_fd, cleaned)
    if found is None:
        raise InvalidArgument(f"{instruction} failed: file not found in build context or excluded by .dockerignore: "
                              f"stat {orig}: file does not exist")
    rel, st = found
    name = "" if cleaned == "." else posixpath.basename(cleaned)
    return Source(rel=rel, is_dir=stat.S_ISDIR(st.st_mode), name=name)


def resolve_sources(root: Path, srcs: Sequence[str], instruction: str = "COPY") -> list[Source]:
    """The context paths that COPY/ADD sources name (moby's ``getCopyInfosForSourcePaths``).

    A leading "/" or "./" is dropped; wildcards (``filepath.Match`` on the whole relative path, so ``*`` never
    crosses "/") pick every matching path of the context; symlinks in a source path resolve inside the context.
    """
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        out: list[Source] = []
        for orig in srcs:
            path = orig.removeprefix("/").removeprefix("./")
            if has_wildcards(path):
                for rel, _ in _walk(root_fd, ""):
                    try:
                        hit = fnmatch(path, rel)
                    except BadPattern:
                        hit = False  # moby ignores the error and matches nothing
                    if hit:
                        out.append(_source(root_fd, rel, instruction))
            else:
                out.append(_source(root_fd, path, instruction))
        if not out:
            raise InvalidArgument(f"{instruction} failed: no source files were specified")
        return out
    finally:
        os.close(root_fd)


def check_dest(sources: Sequence[Source], dest: str, instruction: str = "COPY") -> None:
    """Several sources need a directory destination written with a trailing "/" (moby's ``createCopyInstruction``)."""
    if len(sources) > 1 and not dest.endswith("/"):
        raise InvalidArgument(f"When using {instruction} with more than one source file, the destination must be "
                              "a directory and end with a /")


@dataclass(frozen=True)
class _Entry:
    """One node to copy: where it is in the context and the name it gets below the destination directory."""

    rel: str
    name: str
    st: os.stat_result


def _entries(root_fd: int, source: Source, top_name: str) -> Iterator[_Entry]:
    """The nodes a source copies: a file as ``top_name``, a directory's contents below "" (never the dir itself)."""
    if not source.is_dir:
        yield _Entry(source.rel, top_name, _lstat(root_fd, source.rel))
        return
    for rel, st in _walk(root_fd, source.rel):
        yield _Entry(rel, rel[len(source.rel) + 1 :] if source.rel else rel, st)


def _read_entry(root_fd: int, rel: str) -> BinaryIO:
    parent, _, base = rel.rpartition("/")
    pfd = _open_real_dir(root_fd, parent)
    try:
        fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
    finally:
        os.close(pfd)
    return os.fdopen(fd, "rb", buffering=CHUNK)


def _readlink(root_fd: int, rel: str) -> str:
    parent, _, base = rel.rpartition("/")
    pfd = _open_real_dir(root_fd, parent)
    try:
        return os.readlink(base, dir_fd=pfd)
    finally:
        os.close(pfd)


def _copyable(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)


def _tarsum(root_fd: int, rel: str, st: os.stat_result) -> str:
    """One entry's tarsum v1 (moby pkg/tarsum ``v1TarHeaderSelect``), as the context tar the CLI sends carries it:
    the name relative to the context, permission bits, owner 0:0, size, type, link target; then the content."""
    kind = "5" if stat.S_ISDIR(st.st_mode) else "2" if stat.S_ISLNK(st.st_mode) else "0"
    mode = st.st_mode & 0o7777
    link = _readlink(root_fd, rel) if kind == "2" else ""
    size = st.st_size if kind == "0" else 0
    name = rel + "/" if kind == "5" else rel
    h = hashlib.sha256("".join(k + v for k, v in (
        ("name", name), ("mode", str(mode)), ("uid", "0"), ("gid", "0"), ("size", str(size)), ("typeflag", kind),
        ("linkname", link), ("uname", ""), ("gname", ""), ("devmajor", "0"), ("devminor", "0"))).encode(
            "utf-8", "surrogateescape"))
    if kind == "0":
        with _read_entry(root_fd, rel) as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
    return h.hexdigest()


def _hash_list(prefix: str, items: Sequence[str]) -> str:
    """moby's ``hashStringSlice``."""
    return f"{prefix}:{hashlib.sha256(','.join(items).encode()).hexdigest()}"


def source_hash(root: Path, sources: Sequence[Source]) -> str:
    """What dockerd's classic builder records for a COPY/ADD source and caches on: ``file:<tarsum>`` for one file,
    ``dir:<hash of its entries' sums>`` for a directory, ``multi:<hash of those>`` for several sources (moby
    builder/dockerfile/copy.go). Names, modes, link targets and contents count; mtimes and owners do not."""
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        hashes = []
        for source in sources:
            if not source.is_dir:
                hashes.append("file:" + _tarsum(root_fd, source.rel, _lstat(root_fd, source.rel)))
                continue
            sums = sorted(_tarsum(root_fd, rel, st) for rel, st in _walk(root_fd, source.rel) if _copyable(st))
            hashes.append(_hash_list("dir", sums))
    finally:
        os.close(root_fd)
    return hashes[0] if len(hashes) == 1 else _hash_list("multi", hashes)


def copy_tar(root: Path, sources: Sequence[Source], dest: str, dest_is_dir: bool, out: BinaryIO, *,
             chown: tuple[int, int] | None = None, chmod: int | None = None, instruction: str = "COPY") -> str:
    """Write the tar of a COPY to ``out`` and return the absolute image directory it must be extracted into.

    Mirrors moby's ``performCopyForInfo``: a directory source copies its contents into ``dest``; a file source
    goes to ``dest/<name>`` when ``dest`` ends with "/" or is an existing directory (``dest_is_dir``), else it
    becomes the file ``dest``. Entries belong to 0:0 (or ``chown``); ``chmod`` replaces the mode of every file and
    directory copied (BuildKit's ``--chmod``); modes, symlinks, hardlinks and mtimes are otherwise kept. The returned
    directory is not an entry of the tar: the caller creates it when missing (0755, owned by ``chown`` if given).
    """
    check_dest(sources, dest, instruction)
    if not dest.startswith("/"):
        raise InvalidArgument(f"{instruction}: destination must be absolute: {dest}")
    into_dir = dest.endswith("/") or dest_is_dir
    cleaned = posixpath.normpath(dest)
    cleaned = "/" if cleaned.startswith("//") else cleaned
    single_file = len(sources) == 1 and not sources[0].is_dir and not into_dir
    target_dir = posixpath.dirname(cleaned) if single_file else cleaned
    uid, gid = chown or (0, 0)
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            written: set[str] = set()
            for source in sources:
                top = posixpath.basename(cleaned) if single_file else source.base
                links: dict[tuple[int, int], str] = {}  # (dev, ino) -> first name, for hardlinks within a source
                for e in _entries(root_fd, source, top):
                    if not _copyable(e.st) or not e.name:
                        continue
                    info = tarfile.TarInfo(e.name)
                    info.uid, info.gid = uid, gid
                    info.uname = info.gname = ""
                    info.mtime = int(e.st.st_mtime)
                    mode = stat.S_IMODE(e.st.st_mode)
                    if stat.S_ISLNK(e.st.st_mode):
                        info.type = tarfile.SYMTYPE
                        info.linkname = _readlink(root_fd, e.rel)
                        info.mode = 0o777
                        tar.addfile(info)
                    elif stat.S_ISDIR(e.st.st_mode):
                        info.type = tarfile.DIRTYPE
                        info.mode = mode if chmod is None else chmod
                        tar.addfile(info)
                    else:
                        info.mode = mode if chmod is None else chmod
                        key = (e.st.st_dev, e.st.st_ino)
                        first = links.get(key) if e.st.st_nlink > 1 and source.is_dir else None
                        if first is not None and first in written:
                            info.type = tarfile.LNKTYPE
                            info.linkname = first
                            tar.addfile(info)
                        else:
                            links.setdefault(key, e.name)
                            info.size = e.st.st_size
                            with _read_entry(root_fd, e.rel) as f:
                                tar.addfile(info, f)
                    written.add(e.name)
    finally:
        os.close(root_fd)
    return target_dir


def is_archive(path: Path) -> bool:
    """Whether ADD extracts this local file (moby's ``archive.IsArchivePath``): a tar, maybe gzip/bzip2/xz/zstd.

    The last component is not followed (pass a resolved ``Source.rel`` joined to the context root).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return False
        try:
            with open_decompressed(cast(BinaryIO, f)) as body:
                head = read_full(body, BLOCK)
        except (InvalidArgument, OSError, EOFError):
            return False
    # Go's tar reader reports io.EOF (not an archive) for an archive that is only end-of-archive blocks
    return len(head) >= BLOCK and head[:BLOCK] != bytes(BLOCK) and _is_tar_header(head)
