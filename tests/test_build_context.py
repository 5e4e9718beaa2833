"""berth.build.context: unpacking POST /build bodies, .dockerignore, COPY source resolution, digests and COPY tars."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import stat
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
import zstandard

from berth.build.context import (
    BuildContext,
    Source,
    copy_tar,
    is_archive,
    open_context,
    resolve_sources,
    source_hash,
)
from berth.errors import InvalidArgument

Entry = tuple[str, str, bytes | str, int]  # (kind f/d/l/h, name, content or link target, mode)


def make_tar(entries: list[Entry], *, mtime: int = 1_600_000_000) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, name, data, mode in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, mtime
            if kind == "f":
                assert isinstance(data, bytes)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"d": tarfile.DIRTYPE, "l": tarfile.SYMTYPE, "h": tarfile.LNKTYPE}[kind]
            if kind in "lh":
                assert isinstance(data, str)
                info.linkname = data
            tar.addfile(info)
    return buf.getvalue()


def truncated(entries: list[Entry]) -> bytes:
    """What ``docker build -f -`` sends: no end-of-archive blocks, the last member's data not padded."""
    raw = make_tar(entries)
    last = entries[-1][2]
    assert isinstance(last, bytes)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        end = tar.getmembers()[-1].offset_data + len(last)
    return raw[:end]


BASIC: list[Entry] = [
    ("f", "Dockerfile", b"FROM scratch\nCOPY . /\n", 0o644),
    ("d", "src", b"", 0o755),
    ("f", "src/app.py", b"print('hi')\n", 0o755),
    ("l", "src/link", "app.py", 0o777),
    ("l", "passwd", "/etc/passwd", 0o777),
    ("h", "src/hard", "src/app.py", 0o644),
    ("f", ".wh.keepme", b"not a whiteout\n", 0o600),
]


def ctx_of(tmp_path: Path, body: bytes, dockerfile: str = "Dockerfile") -> BuildContext:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return open_context(io.BytesIO(body), work, dockerfile)


def tree(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "l:" + os.readlink(p)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = f"d:{stat.S_IMODE(st.st_mode):o}"
            else:
                out[rel] = f"f:{stat.S_IMODE(st.st_mode):o}:" + p.read_bytes().decode()
    return out


@pytest.mark.parametrize("codec", ["none", "gzip", "bzip2", "xz", "zstd", "truncated"])
def test_open_context_unpacks(tmp_path: Path, codec: str) -> None:
    raw = make_tar(BASIC)
    body = {"none": raw, "gzip": gzip.compress(raw), "bzip2": bz2.compress(raw), "xz": lzma.compress(raw),
            "zstd": zstandard.ZstdCompressor().compress(raw), "truncated": truncated(BASIC)}[codec]
    with ctx_of(tmp_path, body) as ctx:
        assert ctx.dockerfile == b"FROM scratch\nCOPY . /\n" and ctx.dockerfile_name == "Dockerfile"
        t = tree(ctx.root)
        assert t["src/app.py"] == "f:755:print('hi')\n"
        assert t["src/link"] == "l:app.py" and t["passwd"] == "l:/etc/passwd"
        assert t[".wh.keepme"] == "f:600:not a whiteout\n"
        assert (ctx.root / "src/hard").stat().st_ino == (ctx.root / "src/app.py").stat().st_ino
        assert (ctx.root / "src/app.py").stat().st_mtime == 1_600_000_000
        root = ctx.root
    assert not root.exists()


def test_truncated_last_member_keeps_its_bytes(tmp_path: Path) -> None:
    entries: list[Entry] = [("f", "a", b"x" * 700, 0o644), ("f", ".dockerfile.0123", b"FROM busybox\n", 0o644)]
    with ctx_of(tmp_path, truncated(entries), ".dockerfile.0123") as ctx:
        assert ctx.dockerfile == b"FROM busybox\n"
        assert (ctx.root / "a").read_bytes() == b"x" * 700


def test_plain_dockerfile_body(tmp_path: Path) -> None:
    with ctx_of(tmp_path, b"FROM busybox\nRUN true\n") as ctx:
        assert ctx.dockerfile == b"FROM busybox\nRUN true\n"
        assert list(ctx.root.iterdir()) == []


def test_dockerfile_lookup(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"^Cannot locate specified Dockerfile: Dockerfile$"):
        ctx_of(tmp_path, b"")
    lower = make_tar([("f", "dockerfile", b"FROM a\n", 0o644)])
    with ctx_of(tmp_path, lower) as ctx:
        assert ctx.dockerfile_name == "dockerfile"
    with pytest.raises(InvalidArgument, match=r"^Cannot locate specified Dockerfile: other$"):
        ctx_of(tmp_path, lower, "other")
    with pytest.raises(InvalidArgument, match=r"^forbidden path outside the build context: \.\./\.\./Dockerfile \(\)$"):
        ctx_of(tmp_path, lower, "../../Dockerfile")
    with pytest.raises(InvalidArgument, match=r"^the Dockerfile \(Dockerfile\) cannot be empty$"):
        ctx_of(tmp_path, make_tar([("f", "Dockerfile", b"", 0o644)]))
    # a Dockerfile symlink to /etc/passwd resolves inside the context (moby TestSymlinkDockerfile)
    with pytest.raises(InvalidArgument, match=r"^Cannot locate specified Dockerfile: Dockerfile$"):
        ctx_of(tmp_path, make_tar([("l", "Dockerfile", "/etc/passwd", 0o777)]))
    with ctx_of(tmp_path, make_tar([("d", "sub", b"", 0o755), ("f", "sub/Df", b"FROM b\n", 0o644)]), "sub/Df") as c:
        assert c.dockerfile == b"FROM b\n"
    assert list((tmp_path / "work").iterdir()) == []  # failures leave nothing behind


def test_hostile_members(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "hello").write_text("hi")
    df: Entry = ("f", "Dockerfile", b"FROM a\n", 0o644)
    for bad in ([("f", "../victim/dotdot", b"x", 0o644)], [("f", "a/../../victim/x", b"x", 0o644)],
                [("f", "x", b"x", 0o644), ("h", "hl", "../victim/hello", 0o644)]):
        with pytest.raises(InvalidArgument):
            ctx_of(tmp_path, make_tar([df, *bad]))
    # symlinks to outside are data; writes through them stay in the context (or fail), never reach the victim
    for entries in ([("l", "v", str(victim), 0o777), ("f", "v/pwned", b"x", 0o644)],
                    [("l", "v", "../../../../../../" + str(victim), 0o777), ("f", "v/pwned", b"x", 0o644)],
                    [("d", "d", b"", 0o755), ("l", "d/up", "../..", 0o777), ("f", "d/up/pwned", b"x", 0o644)]):
        with contextlib.suppress(InvalidArgument):
            ctx_of(tmp_path, make_tar([df, *entries])).close()
        assert sorted(p.name for p in victim.iterdir()) == ["hello"]
        assert not (tmp_path / "pwned").exists()
    assert (victim / "hello").read_text() == "hi"
    # an absolute member name is context-relative
    with ctx_of(tmp_path, make_tar([df, ("f", "/etc/abs", b"x", 0o644)])) as ctx:
        assert (ctx.root / "etc/abs").read_bytes() == b"x"


def test_dockerignore(tmp_path: Path) -> None:
    entries: list[Entry] = [
        ("f", "Dockerfile", b"FROM a\n", 0o644),
        ("f", ".dockerignore", b"# comment\n*.log\nbuild\n!build/keep\nDockerfile\n.dockerignore\nsecret/**\n", 0o644),
        ("f", "app.log", b"l", 0o644), ("f", "app.py", b"p", 0o644),
        ("d", "build", b"", 0o755), ("f", "build/keep", b"k", 0o644), ("f", "build/drop", b"d", 0o644),
        ("d", "build/sub", b"", 0o755), ("f", "build/sub/x", b"x", 0o644),
        ("d", "secret", b"", 0o755), ("f", "secret/key", b"k", 0o600),
        ("d", "logs", b"", 0o755), ("f", "logs/a.log", b"l", 0o644),
    ]
    with ctx_of(tmp_path, make_tar(entries)) as ctx:
        assert ctx.dockerfile == b"FROM a\n"  # read before it was removed
        # "*.log" matches at the root only, as in Docker
        assert sorted(tree(ctx.root)) == ["app.py", "build", "build/keep", "logs", "logs/a.log", "secret"]


def test_dockerfile_specific_ignore_wins(tmp_path: Path) -> None:
    entries: list[Entry] = [
        ("d", "ci", b"", 0o755), ("f", "ci/app.Dockerfile", b"FROM a\n", 0o644),
        ("f", "ci/app.Dockerfile.dockerignore", b"b\n", 0o644),
        ("f", ".dockerignore", b"a\n", 0o644), ("f", "a", b"a", 0o644), ("f", "b", b"b", 0o644),
    ]
    with ctx_of(tmp_path, make_tar(entries), "ci/app.Dockerfile") as ctx:
        assert (ctx.root / "a").exists() and not (ctx.root / "b").exists()


@pytest.fixture
def context(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    (root / "dir/sub").mkdir(parents=True)
    (root / "a.txt").write_text("A")
    (root / "b.txt").write_text("B")
    (root / "dir/x").write_text("X")
    (root / "dir/sub/y").write_text("Y")
    os.chmod(root / "dir/x", 0o751)
    os.symlink("/etc/passwd", root / "dir/passwd")
    os.link(root / "dir/x", root / "dir/x2")
    os.symlink("dir", root / "dirlink")
    os.symlink("/a.txt", root / "abslink")
    os.symlink("/etc/passwd", root / "passwd")
    return root


def test_resolve_sources(context: Path) -> None:
    assert resolve_sources(context, ["a.txt"]) == [Source("a.txt", False, "a.txt")]
    assert resolve_sources(context, ["/dir/", "./dir/sub"]) == [
        Source("dir", True, "dir"), Source("dir/sub", True, "sub")]
    assert resolve_sources(context, ["."]) == [Source("", True, "")]
    assert [s.rel for s in resolve_sources(context, ["*.txt"])] == ["a.txt", "b.txt"]
    assert [s.rel for s in resolve_sources(context, ["d*/s?b"])] == ["dir/sub"]
    # symlinks resolve inside the context: abslink -> /a.txt is the context's a.txt
    assert resolve_sources(context, ["abslink"]) == [Source("a.txt", False, "abslink")]
    assert resolve_sources(context, ["dirlink/x"]) == [Source("dir/x", False, "x")]
    with pytest.raises(InvalidArgument, match=r"^COPY failed: file not found in build context or excluded by "
                                              r"\.dockerignore: stat nope: file does not exist$"):
        resolve_sources(context, ["nope"])
    with pytest.raises(InvalidArgument, match=r"^ADD failed: file not found"):
        resolve_sources(context, ["passwd"], "ADD")  # /etc/passwd in the context does not exist
    with pytest.raises(InvalidArgument, match=r"^COPY failed: forbidden path outside the build context: \.\./x \(\)$"):
        resolve_sources(context, ["../x"])
    with pytest.raises(InvalidArgument, match=r"^COPY failed: no source files were specified$"):
        resolve_sources(context, ["*.none"])


def extract(tmp_path: Path, data: bytes) -> dict[str, str]:
    out = Path(tempfile.mkdtemp(prefix="out-", dir=tmp_path))
    subprocess.run(["tar", "-x", "-p", "--numeric-owner", "-C", str(out)], input=data, check=True)
    return tree(out)


def run_copy(context: Path, srcs: list[str], dest: str, dest_is_dir: bool = False,
             **kw: object) -> tuple[str, bytes]:
    buf = io.BytesIO()
    target = copy_tar(context, resolve_sources(context, srcs), dest, dest_is_dir, buf, **kw)  # type: ignore[arg-type]
    return target, buf.getvalue()


def test_copy_directory_copies_contents(tmp_path: Path, context: Path) -> None:
    target, data = run_copy(context, ["dir"], "/app")
    assert target == "/app"
    assert extract(tmp_path, data) == {
        "passwd": "l:/etc/passwd", "sub": "d:755", "sub/y": "f:644:Y", "x": "f:751:X", "x2": "f:751:X"}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["x2"].islnk() and members["x2"].linkname == "x"
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())
    assert members["x"].mtime == int((context / "dir/x").stat().st_mtime)


def test_copy_file_naming(tmp_path: Path, context: Path) -> None:
    assert run_copy(context, ["a.txt"], "/etc/renamed")[0] == "/etc"
    _, data = run_copy(context, ["a.txt"], "/etc/renamed")
    assert extract(tmp_path, data) == {"renamed": "f:644:A"}
    assert run_copy(context, ["a.txt"], "/etc/")[0] == "/etc"
    assert run_copy(context, ["a.txt"], "/etc", dest_is_dir=True)[0] == "/etc"
    _, data = run_copy(context, ["abslink"], "/d/")
    assert extract(tmp_path, data) == {"abslink": "f:644:A"}  # a source symlink is followed (in-root), keeps its name
    assert run_copy(context, ["a.txt"], "/")[0] == "/"


def test_copy_multiple_sources(tmp_path: Path, context: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"^When using COPY with more than one source file, the destination "
                                              "must be a directory and end with a /$"):
        run_copy(context, ["*.txt"], "/dst")
    target, data = run_copy(context, ["*.txt", "dir/sub"], "/dst/", chown=(1000, 1001), chmod=0o600)
    assert target == "/dst"
    assert extract(tmp_path, data) == {"a.txt": "f:600:A", "b.txt": "f:600:B", "y": "f:600:Y"}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert {(m.uid, m.gid) for m in tar.getmembers()} == {(1000, 1001)}


def test_source_hash(context: Path) -> None:
    srcs = resolve_sources(context, ["dir", "a.txt"])
    first = source_hash(context, srcs)
    assert first.startswith("multi:") and len(first) == 70
    assert source_hash(context, resolve_sources(context, ["dir"])).startswith("dir:")
    os.utime(context / "dir/sub/y", (1, 1))
    assert source_hash(context, srcs) == first  # mtimes do not count
    os.chmod(context / "dir/sub/y", 0o600)
    second = source_hash(context, srcs)
    assert second != first
    (context / "dir/sub/y").write_text("Z")
    third = source_hash(context, srcs)
    assert third not in (first, second)
    os.unlink(context / "dir/passwd")
    os.symlink("/etc/shadow", context / "dir/passwd")
    assert source_hash(context, srcs) != third
    assert source_hash(context, resolve_sources(context, ["a.txt"])) != source_hash(
        context, resolve_sources(context, ["b.txt"]))


def test_is_archive(tmp_path: Path) -> None:
    raw = make_tar([("f", "x", b"x", 0o644)])
    for name, data in [("t.tar", raw), ("t.tgz", gzip.compress(raw)), ("t.bz2", bz2.compress(raw)),
                       ("t.xz", lzma.compress(raw))]:
        (tmp_path / name).write_bytes(data)
        assert is_archive(tmp_path / name), name
    (tmp_path / "plain.gz").write_bytes(gzip.compress(b"just text" * 100))
    (tmp_path / "plain").write_bytes(b"just text")
    os.symlink(tmp_path / "t.tar", tmp_path / "link")
    assert not is_archive(tmp_path / "plain.gz")
    assert not is_archive(tmp_path / "plain")
    assert not is_archive(tmp_path / "link")
    assert not is_archive(tmp_path / "missing")
