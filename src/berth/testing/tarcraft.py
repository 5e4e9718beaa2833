"""Hostile layer tars for tests: the T1-T28 matrix of shared/reference/security.md §1.1 as recipes.

Each recipe builds its layers in memory (built with CPython's ``tarfile`` writer, which is independent of
berth's own tar reader, plus raw bytes where a recipe needs a malformed archive). A recipe is applied as:
every layer but the last must apply cleanly; the last either applies or raises ``InvalidArgument`` whose
message contains ``error``. The golden invariant for all of them: nothing outside the extraction root
changes. Extraction happens into ``<base>/root`` next to a victim file ``<base>/victim/hello``; recipes that
need absolute host paths (T10) get ``base``.

Decisions recorded here (berth's choices where Docker and containerd differ):
* T1/T2/T7/T11: names and hardlink targets that climb out of the root are errors (Docker), not clamped.
* T11b/T14b: a symlink that climbs out resolves in-root; missing in-root directories reached through a
  symlink are not created, so the entry fails with "no such file" and nothing is written.
* T28: a hardlink to a file that exists only in a lower layer works. berth applies onto the merged view
  (mounted overlay or copy), where the lower file is visible; the kernel copies it up. Docker's overlay2
  (extracting into an empty diff dir) would fail instead.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import zstandard

MTIME = 1_700_000_000
Layers = Callable[[Path], list[bytes]]

# A v2 file capability blob granting cap_net_bind_service (permitted + effective), as setcap writes it.
CAP_NET_BIND_SERVICE = bytes.fromhex("0100000200040000000000000000000000000000")


@dataclass(frozen=True)
class Member:
    """One tar member: a ``TarInfo`` plus its data (only regular files carry data)."""

    info: tarfile.TarInfo
    data: bytes = b""


def _info(name: str, kind: bytes, mode: int, uid: int = 0, gid: int = 0, **pax: str) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.uid, ti.gid = uid, gid
    ti.mtime = MTIME
    ti.pax_headers = dict(pax)
    return ti


def file(name: str, data: bytes = b"", mode: int = 0o644, uid: int = 0, gid: int = 0,
         xattrs: dict[str, bytes] | None = None, uname: str = "") -> Member:
    pax = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in (xattrs or {}).items()}
    ti = _info(name, tarfile.REGTYPE, mode, uid, gid, **pax)
    ti.size = len(data)
    ti.uname = uname
    return Member(ti, data)


def directory(name: str, mode: int = 0o755, uid: int = 0, gid: int = 0,
              xattrs: dict[str, bytes] | None = None) -> Member:
    pax = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape") for k, v in (xattrs or {}).items()}
    return Member(_info(name, tarfile.DIRTYPE, mode, uid, gid, **pax))


def symlink(name: str, target: str) -> Member:
    ti = _info(name, tarfile.SYMTYPE, 0o777)
    ti.linkname = target
    return Member(ti)


def hardlink(name: str, target: str, mode: int = 0o644) -> Member:
    ti = _info(name, tarfile.LNKTYPE, mode)
    ti.linkname = target
    return Member(ti)


def device(name: str, kind: bytes, major: int = 0, minor: int = 0, mode: int = 0o600) -> Member:
    ti = _info(name, kind, mode)
    ti.devmajor, ti.devminor = major, minor
    return Member(ti)


def raw_type(name: str, kind: bytes, data: bytes = b"") -> Member:
    """A member with an arbitrary typeflag (for the allow-list cases)."""
    ti = _info(name, kind, 0o644)
    ti.size = len(data)
    return Member(ti, data)


def tar(members: Iterable[Member], fmt: Literal[0, 1, 2] = tarfile.PAX_FORMAT, end: bool = True) -> bytes:
    """Serialize members; ``end`` appends the two zero blocks of a complete archive."""
    out = io.BytesIO()
    for m in members:
        out.write(m.info.tobuf(fmt, "utf-8", "surrogateescape"))
        if m.data:
            out.write(m.data)
            out.write(bytes(-len(m.data) % 512))
    if end:
        out.write(bytes(1024))
    return out.getvalue()


def global_header() -> bytes:
    """A PAX global header (typeflag ``g``), which Docker ignores."""
    ti = tarfile.TarInfo("pax_global_header")
    ti.type = tarfile.XGLTYPE
    payload = b"30 comment=berth global header\n"
    ti.size = len(payload)
    return ti.tobuf(tarfile.USTAR_FORMAT) + payload + bytes(-len(payload) % 512)


def pax_record_header(size: int) -> bytes:
    """A PAX extended header whose payload is ``size`` bytes of one comment record."""
    body_len = size - len(" comment=\n")
    digits = len(str(size))
    record = f"{size} comment=".encode() + b"a" * (body_len - digits) + b"\n"
    ti = tarfile.TarInfo("PaxHeader")
    ti.type = tarfile.XHDTYPE
    ti.size = len(record)
    return ti.tobuf(tarfile.USTAR_FORMAT) + record + bytes(-len(record) % 512)


def zeros_bomb(size: int, name: str = "zeros") -> bytes:
    """A gzip stream of one tar member with ``size`` zero bytes, built from repeated 1 MiB gzip members."""
    mib = 1 << 20
    assert size % mib == 0
    ti = _info(name, tarfile.REGTYPE, 0o644)
    ti.size = size
    chunk = gzip.compress(bytes(mib), 9, mtime=0)
    return (gzip.compress(ti.tobuf(tarfile.PAX_FORMAT), mtime=0) + chunk * (size // mib)
            + gzip.compress(bytes(1024), mtime=0))


@dataclass(frozen=True)
class Recipe:
    """One hostile case: build its layers for an extraction base dir; ``error`` is for the last layer."""

    key: str
    doc: str
    layers: Layers
    error: str | None = None
    host_paths: tuple[str, ...] = field(default_factory=tuple)


def _one(*members: Member) -> Layers:
    return lambda base: [tar(members)]


def _two(lower: list[Member], upper: list[Member]) -> Layers:
    return lambda base: [tar(lower), tar(upper)]


def _t10(base: Path) -> list[bytes]:
    perm400 = str(base / "victim" / "perm400")
    return [tar([symlink("sketchy", perm400), hardlink("sketchylink", "sketchy", mode=0o777)])]


def _t10b(base: Path) -> list[bytes]:
    perm400 = str(base / "victim" / "perm400")
    return [tar([symlink("sketchy", perm400), file("sketchy", b"x", mode=0o777)])]


def _t25d(base: Path) -> list[bytes]:
    return [tar([file("n" * 65536, b"x")])]


def _t25e(base: Path) -> list[bytes]:
    return [pax_record_header(2 << 20) + tar([file("after-pax", b"x")])]


def _t26(base: Path) -> list[bytes]:
    blob = gzip.compress(tar([file("a", b"x" * 100_000), file("b", b"y" * 100_000)]), mtime=0)
    return [blob[: len(blob) // 2]]


def _t26d(base: Path) -> list[bytes]:
    blob = zstandard.ZstdCompressor().compress(tar([file("a", b"x" * 100_000), file("b", b"y" * 100_000)]))
    return [blob[: len(blob) // 2]]


def _t26b(base: Path) -> list[bytes]:
    data = tar([file("big", b"z" * 5000)], end=False)
    return [data[:2048]]


def _t26c(base: Path) -> list[bytes]:
    return [tar([file("a", b"hello")]) + b"trailing garbage after the end-of-archive blocks" * 30]


def _t27(base: Path) -> list[bytes]:
    long_dir = "gnu-" + "l" * 150
    gnu = tar([directory(long_dir), file(f"{long_dir}/file", b"gnu"),
               symlink("longlink", f"{long_dir}/file"), hardlink("hardlong", f"{long_dir}/file")],
              fmt=tarfile.GNU_FORMAT)
    return [global_header() + gnu]


def deep_tree(depth: int, comp: str = "dddd") -> list[Member]:
    """Directories nested ``depth`` deep (the full path exceeds PATH_MAX when depth*len(comp) is large)."""
    members = [directory("/".join([comp] * i)) for i in range(1, depth + 1)]
    members.append(file("/".join([comp] * depth) + "/bottom", b"deep"))
    return members


BOMB_SIZE = 256 << 20
MANY_FILES = 20_000
DEEP = 1200

_R = [
    Recipe("T1", "entry name ../victim/dotdot", _one(file("../victim/dotdot", b"pwn")), "invalid entry name"),
    Recipe("T1b", "entry name ../../pwned", _one(file("../../pwned", b"pwn")), "invalid entry name"),
    Recipe("T1c", "entry name ..", _one(file("..", b"pwn")), "invalid entry name"),
    Recipe("T2", "/etc/passwd is root-relative; /../victim is refused",
           _one(file("/etc/passwd", b"root:x:0:0::/:/bin/sh\n"), file("/../victim/slash-dotdot", b"pwn")),
           "invalid entry name", ("/etc/passwd",)),
    Recipe("T2b", "absolute name lands in the root", _one(file("/etc/passwd", b"root:x:0:0::/:/bin/sh\n")),
           None, ("/etc/passwd",)),
    Recipe("T3", "write through an absolute symlink stays in-root",
           _one(directory("etc"), symlink("localetc", "/etc"), file("/localetc/unbroken", b"ok")),
           None, ("/etc/unbroken",)),
    Recipe("T4", "symlink target /dummy/../etc",
           _one(directory("etc"), directory("dummy"), symlink("localetc", "/dummy/../etc"),
                file("localetc/x", b"x")), None, ("/etc/x",)),
    Recipe("T4b", "symlink target climbing far up",
           _one(directory("etc"), symlink("localetc", "../../../../../../etc"), file("localetc/x", b"x")),
           None, ("/etc/x",)),
    Recipe("T4c", "symlink target upandout/../../../etc",
           _one(directory("etc"), directory("upandout"), symlink("localetc", "upandout/../../../etc"),
                file("localetc/x", b"x")), None, ("/etc/x",)),
    Recipe("T4d", "symlink chain /dummy/etc->/etc, localetc->./dummy/etc",
           _one(directory("etc"), directory("dummy"), symlink("/dummy/etc", "/etc"),
                symlink("localetc", "./dummy/etc"), file("localetc/x", b"x")), None, ("/etc/x",)),
    Recipe("T5", "SymlinkOverridePath: dir replaced by symlink to / then written through",
           _one(directory("foo"), directory("foo/tmp"), file("foo/tmp/berth-t5-b", b"1"), symlink("foo", "/"),
                file("foo/tmp/berth-t5-b", b"2"), directory("foo"), directory("foo/tmp"),
                file("foo/tmp/berth-t5-b", b"3")), None, ("/tmp/berth-t5-b",)),
    Recipe("T6", "symlink to / then a write below it",
           _one(symlink("d", "/"), file("d/etc/berth-t6-x", b"x")), None, ("/etc/berth-t6-x",)),
    Recipe("T7", "hardlink to ../victim/hello", _one(hardlink("dotdot", "../victim/hello")),
           "invalid hardlink target"),
    Recipe("T7b", "hardlink to /../victim/hello", _one(hardlink("slash-dotdot", "/../victim/hello")),
           "invalid hardlink target"),
    Recipe("T7c", "hardlink to ../../../../../etc/passwd", _one(hardlink("x", "../../../../../etc/passwd")),
           "invalid hardlink target", ("/etc/passwd",)),
    Recipe("T8", "hardlink whose parent is an escaping symlink resolves in-root",
           _one(directory("etc"), file("etc/passwd", b"in-root"), symlink("d1", "../../etc"),
                hardlink("mypasswd", "/d1/passwd")), None, ("/etc/passwd",)),
    Recipe("T9", "hardlink to a symlink links the symlink node",
           _one(directory("etc"), file("etc/passwd", b"in-root"), symlink("passwdlink", "/etc/passwd"),
                hardlink("localpasswd", "/passwdlink")), None, ("/etc/passwd",)),
    Recipe("T10", "hardlink to a symlink to a host file must not chmod the host file", _t10),
    Recipe("T10b", "file replacing a symlink to a host file must not chmod it", _t10b),
    Recipe("T11", "hardlink to ../victim then write below it",
           _one(hardlink("loophole-victim", "../victim"), file("loophole-victim/file", b"x")),
           "invalid hardlink target"),
    Recipe("T11b", "symlink to ../victim then write below it",
           _one(symlink("loophole-victim", "../victim"), file("loophole-victim/file", b"x")),
           "no such file"),
    Recipe("T12", "whiteout .wh..", _one(file(".wh..")), "invalid whiteout entry"),
    Recipe("T12b", "whiteout .wh...", _one(file(".wh...")), "invalid whiteout entry"),
    Recipe("T12c", "whiteout etc/.wh..", _one(directory("etc"), file("etc/.wh..")), "invalid whiteout entry"),
    Recipe("T12d", "whiteout etc/.wh...", _one(directory("etc"), file("etc/.wh...")), "invalid whiteout entry"),
    Recipe("T12e", "whiteout .wh.", _one(file(".wh.")), "invalid whiteout entry"),
    Recipe("T13", "whiteout of a symlink removes only the symlink",
           _two([directory("etc"), file("etc/passwd", b"in-root"), symlink("localetc", "/etc")],
                [file(".wh.localetc")]), None, ("/etc/passwd",)),
    Recipe("T14", "whiteout below a symlink resolves in-root",
           _two([directory("etc"), file("etc/whitedout", b"w"), file("etc/keep", b"k"), symlink("localetc", "/etc")],
                [file("localetc/.wh.whitedout")])),
    Recipe("T14b", "whiteout below a symlink to ../victim touches nothing outside",
           _two([symlink("localvictim", "../victim")], [file("localvictim/.wh.hello")])),
    Recipe("T15", "only the basename prefix .wh. is special", _one(file(".wh.etc/somefile", b"s"))),
    Recipe("T16", "opaque dir, marker before the new child",
           _two([directory("bin"), file("bin/a"), file("bin/b"), directory("bin/tools"), file("bin/tools/x")],
                [directory("bin"), file("bin/.wh..wh..opq"), file("bin/new", b"n")])),
    Recipe("T16b", "opaque dir, marker after the new child",
           _two([directory("bin"), file("bin/a"), file("bin/b"), directory("bin/tools"), file("bin/tools/x")],
                [directory("bin"), file("bin/new", b"n"), file("bin/.wh..wh..opq")])),
    Recipe("T16c", "opaque dir hides lower grandchildren under a same-layer subdir",
           _two([directory("bin"), file("bin/a"), directory("bin/tools"), file("bin/tools/x")],
                [directory("bin"), directory("bin/tools"), file("bin/.wh..wh..opq"), file("bin/tools/y", b"y")])),
    Recipe("T17", "whiteout after a same-layer file does not remove it",
           _two([file("a", b"lower")], [file("a", b"upper"), file(".wh.a")])),
    Recipe("T17b", "whiteout before a same-layer file",
           _two([file("a", b"lower")], [file(".wh.a"), file("a", b"upper")])),
    Recipe("T17c", "whiteout of a same-layer dir hides only its lower children",
           _two([directory("a"), file("a/old", b"o")], [directory("a"), file("a/new", b"n"), file(".wh.a")])),
    Recipe("T18", "duplicate entries: last wins, dirs merge",
           _one(file("a", b"1"), file("a", b"2"), directory("d", mode=0o700), file("d/x", b"x"),
                directory("d", mode=0o750))),
    Recipe("T19", "file replaced by a dir", _two([file("a", b"f")], [directory("a"), file("a/b", b"b")])),
    Recipe("T19b", "dir replaced by a file", _two([directory("a"), file("a/x", b"x")], [file("a", b"file")])),
    Recipe("T19c", "escaping symlink replaced by a dir (DirectoryOverrideSymlink)",
           _two([symlink("a", "../victim")], [directory("a"), file("a/pwned", b"p")])),
    Recipe("T20", "implied parents through a lower symlink to / are created in-root",
           _two([symlink("x", "/")], [file("x/berth-t20-y/z", b"z")]), None, ("/berth-t20-y",)),
    Recipe("T21", "device nodes and fifos",
           _one(directory("dev"), device("dev/mem", tarfile.CHRTYPE, 1, 1, 0o640),
                device("dev/sda", tarfile.BLKTYPE, 8, 0, 0o660), device("dev/fifo", tarfile.FIFOTYPE))),
    Recipe("T22", "setuid/setgid/sticky and world-writable modes survive",
           _one(directory("bin"), file("bin/su", b"su", mode=0o4755), file("bin/sg", b"sg", mode=0o2755, gid=42),
                directory("tmp", mode=0o1777), directory("ww", mode=0o777))),
    Recipe("T23", "xattrs: trusted.* dropped, security.capability and user.* kept",
           _one(file("f", b"f", xattrs={"security.capability": CAP_NET_BIND_SERVICE, "user.x": b"1",
                                         "trusted.overlay.opaque": b"y", "trusted.overlay.redirect": b"/etc",
                                         "security.selinux": b"system_u:object_r:bin_t:s0\0"}),
                directory("d", xattrs={"trusted.overlay.opaque": b"y", "user.d": b"2"}))),
    Recipe("T24", "numeric ids up to 2^32-2 win over names",
           _one(file("a", b"a", uid=4294967294, gid=4294967294, uname="nobody"), file("b", b"b", uid=0, uname="bin"))),
    Recipe("T24b", "uid 2^32-1 refused", _one(file("a", b"a", uid=4294967295)), "out of range"),
    Recipe("T24c", "negative uid refused", lambda base: [tar([file("a", b"a", uid=-5)], fmt=tarfile.GNU_FORMAT)],
           "out of range"),
    Recipe("T25", "gzip bomb: one entry of zeros streams with bounded memory",
           lambda base: [zeros_bomb(BOMB_SIZE)]),
    Recipe("T25b", "many empty files", lambda base: [tar([file(f"many/{i}") for i in range(MANY_FILES)])]),
    Recipe("T25c", "deep directories beyond PATH_MAX", lambda base: [tar(deep_tree(DEEP))]),
    Recipe("T25d", "64 KiB name component", _t25d, "file name too long"),
    Recipe("T25e", "2 MiB PAX header", _t25e, "extended header too large"),
    Recipe("T26", "truncated gzip", _t26, "unexpected EOF"),
    Recipe("T26b", "truncated tar data", _t26b, "unexpected EOF"),
    Recipe("T26d", "truncated zstd", _t26d, "unexpected EOF"),
    Recipe("T26c", "garbage after the end-of-archive blocks is hashed, not parsed", _t26c),
    Recipe("T27", "PAX global header ignored; GNU longname/longlink", _t27),
    Recipe("T27b", "GNU sparse typeflag S refused", _one(raw_type("sparse", b"S", b"x")), "unhandled tar header"),
    Recipe("T27c", "volume header typeflag V refused", _one(raw_type("vol", b"V")), "unhandled tar header"),
    Recipe("T27d", "unknown typeflag Z refused", _one(raw_type("zed", b"Z", b"zz")), "unhandled tar header"),
    Recipe("T28", "hardlink to a file that exists only in a lower layer (allowed on the merged view)",
           _two([file("lowerfile", b"lower")], [hardlink("newlink", "lowerfile")])),
]

RECIPES: dict[str, Recipe] = {r.key: r for r in _R}
