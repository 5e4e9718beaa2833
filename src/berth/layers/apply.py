"""Apply one image layer (a tar stream, maybe gzip/zstd) onto a directory that shows the merged lower layers.

The model is containerd's "naive" applier over a merged view (a mounted overlay or a full copy): whiteouts
become real removals, ``DIR/.wh..wh..opq`` removes the children of DIR that this layer did not unpack, and
everything else is unlink-and-create. Layer content is hostile input, so:

* every file operation is relative to a directory fd; parents are resolved in-root by ``berth.kernel.fsops``
  (absolute symlinks restart at the root, ``..`` clamps) and the last component is never followed;
* entry names and hardlink targets that climb out of the root are refused (Docker's behaviour);
* chmod/chown/utimes never follow symlinks; hardlink entries get no attributes of their own (CVE-2021-32760);
* ``trusted.*`` xattrs are dropped (overlay metadata injection), uid/gid must fit in 32 bits minus one;
* the tar is parsed here (ustar, GNU long names, PAX) with an explicit typeflag allow-list, bounded
  metadata sizes and streaming data, so a decompression bomb never sits in memory.

A failed apply raises ``InvalidArgument`` (or ``InternalError`` for host trouble such as ENOSPC) and leaves
a partial tree that the caller discards. The diff ID is the sha256 of the whole uncompressed stream,
including any bytes after the end-of-archive blocks.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import re
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from berth.errors import BerthError, InternalError, InvalidArgument
from berth.kernel import fsops
from berth.layers.compression import detect, open_decompressed
from berth.oci.digest import Digest

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
CHUNK = 1 << 20
MAX_META = 1 << 20  # Go's archive/tar limit for PAX and GNU long-name records
MAX_ID = 2**32 - 2  # (uid_t)-1 means "leave unchanged" to chown
PARENT_CACHE = 128

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
OPAQUE = ".wh..wh..opq"

REGULAR = (b"0", b"\0", b"7")
HEADER_ONLY = (b"1", b"2", b"3", b"4", b"5", b"6")
_DEVICE_KIND = {b"3": stat.S_IFCHR, b"4": stat.S_IFBLK, b"6": stat.S_IFIFO}
_HOST_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EMFILE, errno.ENFILE, errno.ENOMEM)
_PAX_TIME = re.compile(rb"^(-?)(\d+)(?:\.(\d+))?$")
_DECIMAL = re.compile(rb"^\d+$")
_BEST_EFFORT_XATTR_ERRNOS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL, errno.EACCES)


@dataclass(frozen=True)
class ApplyResult:
    """What applying a layer produced: its diff ID and the uncompressed size."""

    diff_id: Digest
    size: int


@dataclass(frozen=True)
class _Header:
    name: str
    linkname: str
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    atime_ns: int
    devmajor: int
    devminor: int
    xattrs: dict[str, bytes] = field(default_factory=dict)


class _Source:
    """Buffered reader over the uncompressed stream that hashes and counts every byte it pulls."""

    def __init__(self, stream: BinaryIO | None) -> None:
        if stream is not None:
            self._readinto: Callable[[memoryview], int | None] = stream.readinto  # type: ignore[attr-defined]
        self._hash = hashlib.sha256()
        self.size = 0
        self._buf = bytearray(CHUNK)
        self._mv = memoryview(self._buf)
        self._pos = 0
        self._end = 0
        self.entry_left = 0  # data bytes of the current entry not yet consumed

    def _fill(self) -> int:
        if self._pos < self._end:
            return self._end - self._pos
        n = self._readinto(self._mv)
        if not n:
            return 0
        self._hash.update(self._mv[:n])
        self.size += n
        self._pos, self._end = 0, n
        return n

    def read_block(self) -> bytes | None:
        """The next 512-byte block, ``None`` at a clean EOF; a partial block is an error."""
        out = bytearray()
        while len(out) < BLOCK:
            avail = self._fill()
            if not avail:
                if not out:
                    return None
                raise InvalidArgument("unexpected EOF")
            k = min(avail, BLOCK - len(out))
            out += self._mv[self._pos : self._pos + k]
            self._pos += k
        return bytes(out)

    def read_exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            avail = self._fill()
            if not avail:
                raise InvalidArgument("unexpected EOF")
            k = min(avail, n - len(out))
            out += self._mv[self._pos : self._pos + k]
            self._pos += k
        self.entry_left -= n
        return bytes(out)

    def copy_to(self, fd: int, n: int) -> None:
        self.entry_left -= n
        while n > 0:
            avail = self._fill()
            if not avail:
                raise InvalidArgument("unexpected EOF")
            k = min(avail, n)
            view = self._mv[self._pos : self._pos + k]
            while view:
                view = view[os.write(fd, view) :]
            self._pos += k
            n -= k

    def skip(self, n: int) -> None:
        while n > 0:
            avail = self._fill()
            if not avail:
                raise InvalidArgument("unexpected EOF")
            k = min(avail, n)
            self._pos += k
            n -= k

    def drain(self) -> None:
        """Read (and hash) whatever follows the end-of-archive marker."""
        while self._fill():
            self._pos = self._end

    def digest(self) -> Digest:
        return Digest("sha256", self._hash.hexdigest())


class _FileSource(_Source):
    """An uncompressed layer that is a regular file already verified to hash to ``digest`` (a content-store blob).

    Nothing is hashed again (the diff ID is the blob's digest), and the part of a file body that is not buffered
    yet goes file to file inside the kernel (sendfile) instead of through this process.
    """

    def __init__(self, fd: int, digest: Digest) -> None:
        super().__init__(None)
        self._fd = fd
        self._off = 0  # blob offset of the byte after the buffered ones
        self._digest = digest

    def _fill(self) -> int:
        if self._pos < self._end:
            return self._end - self._pos
        n = os.preadv(self._fd, [self._mv], self._off)
        if not n:
            return 0
        self._off += n
        self.size += n
        self._pos, self._end = 0, n
        return n

    def copy_to(self, fd: int, n: int) -> None:
        buffered = min(n, self._end - self._pos)
        super().copy_to(fd, buffered)
        self.entry_left -= n - buffered
        n -= buffered
        while n > 0:
            k = os.sendfile(fd, self._fd, self._off, n)
            if not k:
                raise InvalidArgument("unexpected EOF")
            self._off += k
            self.size += k
            n -= k

    def drain(self) -> None:
        self.size = self._off = max(self._off, os.fstat(self._fd).st_size)
        self._pos = self._end = 0

    def digest(self) -> Digest:
        return self._digest


def _source(stream: BinaryIO, verified: Digest | None) -> _Source:
    """A ``_FileSource`` when ``stream`` is an uncompressed file of known digest, else a hashing ``_Source``."""
    if verified is not None and verified.algorithm == "sha256":
        try:
            fd = stream.fileno()
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        except (AttributeError, OSError, ValueError):
            regular = False
        if regular and detect(os.pread(fd, 8, 0)) == "none":
            return _FileSource(fd, verified)
    return _Source(open_decompressed(stream))


def _number(raw: bytes) -> int:
    """A tar numeric field: octal text (space/NUL padded) or GNU base-256 (possibly negative)."""
    if raw and raw[0] & 0x80:
        value = int.from_bytes(bytes([raw[0] & 0x7F]) + raw[1:], "big")
        if raw[0] & 0x40:  # sign bit of the base-256 form
            value -= 1 << (len(raw) * 8 - 1)
        return value
    text = raw.strip(b" \0")
    if not text:
        return 0
    if text.translate(None, b"01234567"):
        raise InvalidArgument("invalid tar header")
    return int(text, 8)


def _cstr(raw: bytes) -> bytes:
    return raw.split(b"\0", 1)[0]


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        if not data[pos:].strip(b"\0"):
            break  # some writers pad the record block with NULs
        sp = data.find(b" ", pos, pos + 20)
        length_text = data[pos:sp] if sp > 0 else b""
        if not _DECIMAL.match(length_text):
            raise InvalidArgument("invalid tar header: bad PAX record")
        length = int(length_text)
        record = data[pos : pos + length]
        if length <= len(length_text) + 1 or len(record) != length or not record.endswith(b"\n"):
            raise InvalidArgument("invalid tar header: bad PAX record")
        key, eq, value = record[sp - pos + 1 : -1].partition(b"=")
        if not eq or not key:
            raise InvalidArgument("invalid tar header: bad PAX record")
        out[key] = value
        pos += length
    return out


def _pax_time(raw: bytes) -> int:
    m = _PAX_TIME.match(raw)
    if not m:
        raise InvalidArgument("invalid tar header: bad PAX time")
    frac = (m.group(3) or b"")[:9].ljust(9, b"0")
    ns = int(m.group(2)) * 1_000_000_000 + int(frac)
    return -ns if m.group(1) else ns


def _pax_int(raw: bytes, what: str) -> int:
    if not _DECIMAL.match(raw):
        raise InvalidArgument(f"invalid tar header: bad PAX {what}")
    return int(raw)


def _checksum_ok(block: bytes) -> bool:
    want = _number(block[148:156])
    unsigned = sum(block) - sum(block[148:156]) + 8 * 0x20
    if want == unsigned:
        return True
    signed = unsigned - 256 * sum(1 for c in block if c & 0x80) + 256 * sum(1 for c in block[148:156] if c & 0x80)
    return want == signed


def _headers(src: _Source) -> Iterator[_Header]:
    """Parse tar headers; the consumer reads the entry data (``src.entry_left``) before asking for more."""
    pax: dict[bytes, bytes] = {}
    long_name: bytes | None = None
    long_link: bytes | None = None
    while True:
        block = src.read_block()
        if block is None:
            return
        if block == ZERO_BLOCK:
            second = src.read_block()
            if second is not None and second != ZERO_BLOCK:
                raise InvalidArgument("invalid tar header")
            return
        if not _checksum_ok(block):
            raise InvalidArgument("invalid tar header")
        typeflag = block[156:157]
        size = _number(block[124:136])
        if size < 0:
            raise InvalidArgument("invalid tar header")
        if typeflag in (b"x", b"g", b"L", b"K"):
            if size > MAX_META:
                raise InvalidArgument("invalid tar header: extended header too large")
            src.entry_left = size
            data = src.read_exact(size)
            src.skip(-size % BLOCK)
            if typeflag == b"x":
                pax = _parse_pax(data)  # replaces, like Go: many headers must not add up in memory
            elif typeflag == b"L":
                long_name = _cstr(data)
            elif typeflag == b"K":
                long_link = _cstr(data)
            continue  # b"g": global headers are ignored, like Docker
        magic = block[257:265]
        name = _cstr(block[0:100])
        if magic[:6] == b"ustar\0":
            prefix = _cstr(block[345:500])
            if prefix:
                name = prefix + b"/" + name
        linkname = _cstr(block[157:257])
        uid = _number(block[108:116])
        gid = _number(block[116:124])
        mtime_ns = _number(block[136:148]) * 1_000_000_000
        atime_ns: int | None = None
        xattrs: dict[str, bytes] = {}
        if long_name is not None:
            name = long_name
        if long_link is not None:
            linkname = long_link
        for key, value in pax.items():
            if key == b"path":
                name = value
            elif key == b"linkpath":
                linkname = value
            elif key == b"size":
                size = _pax_int(value, "size")
            elif key == b"uid":
                uid = _pax_int(value, "uid")
            elif key == b"gid":
                gid = _pax_int(value, "gid")
            elif key == b"mtime":
                mtime_ns = _pax_time(value)
            elif key == b"atime":
                atime_ns = _pax_time(value)
            elif key.startswith(b"SCHILY.xattr."):
                xattrs[_decode(key[len(b"SCHILY.xattr.") :])] = value
            elif key.startswith(b"GNU.sparse."):
                raise InvalidArgument("unhandled tar header type: GNU sparse file")
        pax, long_name, long_link = {}, None, None
        if typeflag not in REGULAR and typeflag not in HEADER_ONLY:
            raise InvalidArgument(f"unhandled tar header type {typeflag[0] if typeflag else 0}")
        if typeflag == b"\0" and name.endswith(b"/"):
            typeflag = b"5"  # pre-POSIX tars mark directories with a trailing slash only
        if not (0 <= uid <= MAX_ID and 0 <= gid <= MAX_ID):
            raise InvalidArgument(f"invalid tar header: uid/gid out of range for {_show(_decode(name))}")
        data_len = 0 if typeflag in HEADER_ONLY else size
        src.entry_left = data_len
        yield _Header(
            name=_decode(name),
            linkname=_decode(linkname),
            type=typeflag,
            mode=_number(block[100:108]) & 0o7777,
            uid=uid,
            gid=gid,
            size=data_len,
            mtime_ns=mtime_ns,
            atime_ns=mtime_ns if atime_ns is None else atime_ns,
            devmajor=_number(block[329:337]) if typeflag in (b"3", b"4") else 0,
            devminor=_number(block[337:345]) if typeflag in (b"3", b"4") else 0,
            xattrs=xattrs,
        )
        src.skip(src.entry_left + (-data_len % BLOCK))
        src.entry_left = 0


def _show(name: str) -> str:
    """An entry name for an error message (names can be 64 KiB long)."""
    return repr(name if len(name) <= 200 else name[:200] + "...")


def _clean(name: str, what: str) -> str:
    """Root-relative, normalized archive path; ``"."`` for the root; refuses names that climb out."""
    if "\0" in name:
        raise InvalidArgument(f"{what} {_show(name)}")
    cleaned = posixpath.normpath(name.lstrip("/")) if name.strip("/") else "."
    if cleaned == ".." or cleaned.startswith("../"):
        raise InvalidArgument(f"{what} {_show(name)}")
    return cleaned


class _Applier:
    """State of one layer apply: the root fd, a cache of resolved parent dirs, what this layer unpacked."""

    def __init__(self, root_fd: int) -> None:
        self.root_fd = root_fd
        self.root_dev = os.fstat(root_fd).st_dev
        self._dirs: OrderedDict[str, tuple[int, int]] = OrderedDict()  # archive dir path -> (O_PATH fd, ino)
        self.unpacked: set[tuple[int, str]] = set()  # (parent dir inode, name) created by this layer
        self.dir_times: dict[str, tuple[int, int]] = {}

    def close(self) -> None:
        self.invalidate()

    def invalidate(self) -> None:
        """Forget resolved dirs: a directory or symlink went away, so paths may resolve differently now."""
        for fd, _ in self._dirs.values():
            os.close(fd)
        self._dirs.clear()

    def _remember(self, path: str, fd: int) -> tuple[int, int]:
        old = self._dirs.pop(path, None)
        if old is not None:
            os.close(old[0])
        entry = (fd, os.fstat(fd).st_ino)
        self._dirs[path] = entry
        while len(self._dirs) > PARENT_CACHE:
            os.close(self._dirs.popitem(last=False)[1][0])
        return entry

    def dir(self, path: str, *, create: bool) -> tuple[int, int]:
        """(fd, inode) of the directory at archive path ``path`` ("." is the root), resolved in-root."""
        hit = self._dirs.get(path)
        if hit is not None:
            self._dirs.move_to_end(path)
            return hit
        parts = [] if path == "." else path.split("/")
        return self._remember(path, fsops.open_dir(self.root_fd, parts, create=create))

    def remove(self, pfd: int, name: str) -> None:
        st = fsops.lstat_at(pfd, name)
        if st is None:
            return
        fsops.remove_at(pfd, name)
        if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
            self.invalidate()

    # -- entries -------------------------------------------------------------------------------------

    def apply(self, hdr: _Header, src: _Source) -> None:
        name = _clean(hdr.name, "invalid entry name")
        if name == ".":
            return  # the root's own attributes belong to the snapshot, not the layer
        parent, _, base = name.rpartition("/")
        parent = parent or "."
        if name.startswith(WHITEOUT_META_PREFIX) and name != OPAQUE:
            return  # AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): never part of the image filesystem
        if base == OPAQUE:
            self.opaque(parent)
            return
        if base.startswith(WHITEOUT_PREFIX):
            self.whiteout(parent, base[len(WHITEOUT_PREFIX) :])
            return
        pfd, pino = self.dir(parent, create=True)
        try:
            self.create(pfd, base, name, hdr, src)
        except FileExistsError:
            existing = fsops.lstat_at(pfd, base)
            if existing is not None and stat.S_ISDIR(existing.st_mode) and hdr.type == b"5":
                self.attrs(pfd, base, hdr)  # dir over dir: merge, keeping the lower children
                self.dir_times[name] = (hdr.atime_ns, hdr.mtime_ns)
            else:
                self.remove(pfd, base)
                pfd, pino = self.dir(parent, create=True)
                self.create(pfd, base, name, hdr, src)
        self.unpacked.add((pino, base))

    def create(self, pfd: int, base: str, name: str, hdr: _Header, src: _Source) -> None:
        """Make the node for ``hdr``; raises ``FileExistsError`` before consuming any data if ``base`` exists."""
        kind = hdr.type
        if kind in REGULAR:
            self.regular(pfd, base, hdr, src)
        elif kind == b"5":
            fsops.mkdir_at(pfd, base, 0o700)
            self.attrs(pfd, base, hdr)
            self.dir_times[name] = (hdr.atime_ns, hdr.mtime_ns)
            self._remember(name, fsops.open_child_dir(pfd, base))
        elif kind == b"2":
            fsops.symlink_at(hdr.linkname, pfd, base)
            fsops.chown_at(pfd, base, hdr.uid, hdr.gid)
            fsops.utime_at(pfd, base, hdr.atime_ns, hdr.mtime_ns)
        elif kind == b"1":
            self.hardlink(pfd, base, hdr)
        else:
            fsops.mknod_at(pfd, base, _DEVICE_KIND[kind] | 0o600, os.makedev(hdr.devmajor, hdr.devminor))
            self.attrs(pfd, base, hdr)
            fsops.utime_at(pfd, base, hdr.atime_ns, hdr.mtime_ns)

    def regular(self, pfd: int, base: str, hdr: _Header, src: _Source) -> None:
        fd = fsops.create_at(pfd, base)
        try:
            src.copy_to(fd, hdr.size)
            os.fchown(fd, hdr.uid, hdr.gid)
            _set_xattrs(hdr.xattrs, lambda key, value: os.setxattr(fd, key, value))
            os.fchmod(fd, hdr.mode)  # after chown, which clears setuid/setgid
            os.utime(fd, ns=(hdr.atime_ns, hdr.mtime_ns))
        finally:
            os.close(fd)

    def attrs(self, pfd: int, base: str, hdr: _Header) -> None:
        """Owner, xattrs and mode of a non-symlink node, in the order that keeps setuid and capabilities."""
        fsops.chown_at(pfd, base, hdr.uid, hdr.gid)
        _set_xattrs(hdr.xattrs, lambda key, value: fsops.set_xattr_at(pfd, base, key, value))
        fsops.chmod_at(pfd, base, hdr.mode)

    def hardlink(self, pfd: int, base: str, hdr: _Header) -> None:
        target = _clean(hdr.linkname, "invalid hardlink target")
        if target == ".":
            raise InvalidArgument(f"invalid hardlink target {_show(hdr.linkname)}")
        tparent, _, tbase = target.rpartition("/")
        try:
            tfd, _ = self.dir(tparent or ".", create=False)
        except (FileNotFoundError, NotADirectoryError) as e:
            raise InvalidArgument(f"invalid hardlink target {_show(hdr.linkname)}: no such file") from e
        st = fsops.lstat_at(tfd, tbase)
        if st is None or stat.S_ISDIR(st.st_mode) or st.st_dev != self.root_dev:
            raise InvalidArgument(f"invalid hardlink target {_show(hdr.linkname)}")
        fsops.link_at(tfd, tbase, pfd, base)

    # -- whiteouts -----------------------------------------------------------------------------------

    def whiteout(self, parent: str, name: str) -> None:
        if name in ("", ".", "..") or "/" in name:
            raise InvalidArgument(f"invalid whiteout entry {_show(posixpath.join(parent, WHITEOUT_PREFIX + name))}")
        try:
            pfd, pino = self.dir(parent, create=False)
        except (FileNotFoundError, NotADirectoryError):
            return  # nothing below to hide
        if (pino, name) in self.unpacked:
            # Whiteouts hide lower layers only; a same-layer directory keeps just its same-layer children.
            st = fsops.lstat_at(pfd, name)
            if st is not None and stat.S_ISDIR(st.st_mode):
                self.opaque(posixpath.join(parent, name) if parent != "." else name)
            return
        self.remove(pfd, name)

    def opaque(self, path: str) -> None:
        """Remove every child of ``path`` (recursively) that this layer did not unpack."""
        dfd, dino = self.dir(path, create=True)
        todo: list[tuple[int, int]] = [(os.dup(dfd), dino)]
        removed_any = False
        try:
            while todo:
                fd, ino = todo[-1]
                todo.pop()
                try:
                    for child in fsops.listdir_at(fd):
                        if (ino, child) not in self.unpacked:
                            fsops.remove_at(fd, child)
                            removed_any = True
                            continue
                        st = fsops.lstat_at(fd, child)
                        if st is not None and stat.S_ISDIR(st.st_mode):
                            todo.append((fsops.open_child_dir(fd, child), st.st_ino))
                finally:
                    os.close(fd)
        finally:
            for fd, _ in todo:
                os.close(fd)
        if removed_any:
            self.invalidate()

    def finish(self) -> None:
        """Directory times last: creating children above would have bumped them."""
        for path, (atime_ns, mtime_ns) in self.dir_times.items():
            parent, _, base = path.rpartition("/")
            try:
                pfd, _ = self.dir(parent or ".", create=False)
            except (FileNotFoundError, NotADirectoryError):
                continue
            st = fsops.lstat_at(pfd, base)
            if st is not None and stat.S_ISDIR(st.st_mode):
                fsops.utime_at(pfd, base, atime_ns, mtime_ns)


def _set_xattrs(xattrs: dict[str, bytes], setter: Callable[[str, bytes], None]) -> None:
    """Set the archive's xattrs except ``trusted.*``; other than capabilities and ``user.*``, best effort."""
    for key, value in xattrs.items():
        if key.startswith("trusted."):
            continue  # overlay metadata (opaque, redirect, origin) must not be injected
        try:
            setter(key, value)
        except OSError as e:
            required = key == "security.capability" or key.startswith("user.")
            if required or e.errno not in _BEST_EFFORT_XATTR_ERRNOS:
                raise


def _translate(err: OSError, entry: str) -> BerthError:
    msg = f"failed to extract {_show(entry)}: {err.strerror or err}"
    if err.errno in _HOST_ERRNOS:
        return InternalError(msg)
    return InvalidArgument(msg)


def apply_layer(root: str | os.PathLike[str], stream: BinaryIO, verified: Digest | None = None) -> ApplyResult:
    """Unpack the layer ``stream`` onto the merged view at ``root`` (see the module docstring).

    ``verified`` is the digest the caller already checked ``stream``'s raw bytes against (a content-store blob,
    read from its start); when those bytes are an uncompressed tar it is the diff ID, and they are not hashed again.
    """
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        src = _source(stream, verified)
        applier = _Applier(root_fd)
        entry = ""
        try:
            for hdr in _headers(src):
                entry = hdr.name
                applier.apply(hdr, src)
            entry = ""
            applier.finish()
            src.drain()
        except OSError as e:
            raise _translate(e, entry) from e
        except ValueError as e:  # an embedded NUL in a link target or xattr name
            raise InvalidArgument(f"invalid tar header: {_show(entry)}: {e}") from e
        finally:
            applier.close()
    finally:
        os.close(root_fd)
    return ApplyResult(src.digest(), src.size)
