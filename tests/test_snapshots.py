"""One conformance suite that every snapshotter (overlayfs, copy) passes, plus implementation specifics."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from berth.errors import Conflict, InvalidArgument, NotFound
from berth.kernel import fsops
from berth.kernel import mount as km
from berth.kernel.mount import Mount
from berth.snapshots.base import Kind, LocalSnapshotter, Snapshotter, open_snapshotter
from berth.snapshots.copy import CopySnapshotter
from berth.snapshots.overlay import MAX_DEPTH, OverlaySnapshotter

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="snapshots are mounted; mount(2) needs root"),
]

KINDS = ["overlayfs", "copy"]






@pytest.fixture(params=KINDS)
def sn(request: pytest.FixtureRequest, area: Path) -> Iterator[LocalSnapshotter]:
    if request.param == "overlayfs" and not km.overlay_supported(area):
        pytest.skip("overlayfs not usable here")
    s = open_snapshotter(area / "snapshots", request.param)
    assert isinstance(s, LocalSnapshotter)
    assert s.name == request.param
    yield s
    s.close()


class Mounter:
    """Mounts snapshots on fresh targets under the test's tmp dir."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.n = 0

    @contextlib.contextmanager
    def at(self, mounts: list[Mount]) -> Iterator[Path]:
        self.n += 1
        target = self.base / f"mnt{self.n}"
        target.mkdir()
        with km.mounted(mounts, target) as t:
            yield t


@pytest.fixture
def mnt(area: Path) -> Mounter:
    return Mounter(area)


def _base(sn: Snapshotter, mnt: Mounter, name: str = "base", files: dict[str, bytes] | None = None) -> None:
    files = files if files is not None else {"a": b"A", "b": b"B", "dir/c": b"C"}
    with mnt.at(sn.prepare(f"extract-{name}")) as root:
        for rel, data in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
    sn.commit(name, f"extract-{name}")


def _tree(root: Path) -> dict[str, bytes | None]:
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = None
        for name in filenames:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root)] = Path(p).read_bytes() if os.path.isfile(p) else b"<special>"
    return out


def _disk(root: Path) -> set[str]:
    """Every path in the snapshotter's root except its database files."""
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if not rel.startswith("metadata.db"):
                found.add(rel)
    return found


# ---- conformance -------------------------------------------------------------------------------------


def test_root_is_private(sn: LocalSnapshotter) -> None:
    assert stat.S_IMODE(os.stat(sn.root).st_mode) == 0o700


def test_prepare_commit_stat_walk(sn: Snapshotter, mnt: Mounter) -> None:
    _base(sn, mnt)
    info = sn.stat("base")
    assert (info.key, info.parent, info.kind) == ("base", None, Kind.COMMITTED)
    assert info.created > 0
    with pytest.raises(NotFound, match="snapshot extract-base: not found"):
        sn.stat("extract-base")
    sn.prepare("work", "base")
    assert sn.stat("work").parent == "base"
    assert sn.stat("work").kind is Kind.ACTIVE
    assert {(i.key, i.parent, i.kind) for i in sn.walk()} == {
        ("base", None, Kind.COMMITTED),
        ("work", "base", Kind.ACTIVE),
    }


def test_layered_writes_and_deletes(sn: Snapshotter, mnt: Mounter) -> None:
    _base(sn, mnt)
    with mnt.at(sn.prepare("l2-extract", "base")) as root:
        assert (root / "a").read_bytes() == b"A"
        (root / "a").write_bytes(b"A2")
        (root / "b").unlink()
        (root / "dir" / "c").unlink()
        (root / "dir").rmdir()
        (root / "new").write_bytes(b"N")
    sn.commit("l2", "l2-extract")
    with mnt.at(sn.prepare("l3-extract", "l2")) as root:
        assert _tree(root) == {"a": b"A2", "new": b"N"}
        (root / "dir").mkdir()
        (root / "dir" / "fresh").write_bytes(b"F")
    sn.commit("l3", "l3-extract")
    with mnt.at(sn.view("v3", "l3")) as root:
        assert _tree(root) == {"a": b"A2", "new": b"N", "dir": None, "dir/fresh": b"F"}
    with mnt.at(sn.view("v1", "base")) as root:
        assert _tree(root) == {"a": b"A", "b": b"B", "dir": None, "dir/c": b"C"}


def test_views_are_read_only(sn: Snapshotter, mnt: Mounter) -> None:
    _base(sn, mnt)
    _base(sn, mnt, "top", {})
    assert sn.stat("top").parent is None
    with mnt.at(sn.prepare("t-extract", "base")) as root:
        (root / "t").write_bytes(b"T")
    sn.commit("two", "t-extract")
    for key, parent in (("v-one", "base"), ("v-two", "two"), ("v-none", None)):
        with mnt.at(sn.view(key, parent)) as root, pytest.raises(OSError):
            (root / "x").write_bytes(b"x")
        assert sn.stat(key).kind is Kind.VIEW
    with mnt.at(sn.mounts("two")) as root:
        assert (root / "t").read_bytes() == b"T"
        with pytest.raises(OSError):
            (root / "x").write_bytes(b"x")


def test_siblings_are_isolated(sn: Snapshotter, mnt: Mounter) -> None:
    _base(sn, mnt)
    m1, m2 = sn.prepare("c1", "base"), sn.prepare("c2", "base")
    with mnt.at(m1) as r1, mnt.at(m2) as r2:
        (r1 / "a").write_bytes(b"one")
        assert (r2 / "a").read_bytes() == b"A"
    with mnt.at(sn.mounts("c1")) as r1:
        assert (r1 / "a").read_bytes() == b"one"


def test_errors(sn: Snapshotter, mnt: Mounter) -> None:
    _base(sn, mnt)
    sn.prepare("active", "base")
    with pytest.raises(Conflict, match="snapshot active: already exists"):
        sn.prepare("active", "base")
    with pytest.raises(Conflict):
        sn.view("base")
    with pytest.raises(NotFound, match="parent snapshot missing: not found"):
        sn.prepare("x", "missing")
    with pytest.raises(InvalidArgument, match="not committed"):
        sn.prepare("x", "active")
    with pytest.raises(Conflict, match="snapshot base: already exists"):
        sn.commit("base", "active")
    sn.view("v", "base")
    with pytest.raises(InvalidArgument, match="not active"):
        sn.commit("vv", "v")
    with pytest.raises(InvalidArgument):
        sn.commit("again", "base")
    with pytest.raises(NotFound):
        sn.commit("n", "missing")
    with pytest.raises(NotFound):
        sn.mounts("missing")
    with pytest.raises(NotFound):
        sn.usage("missing")
    with pytest.raises(InvalidArgument):
        sn.prepare("")
    assert {i.key for i in sn.walk()} == {"base", "active", "v"}


def test_remove(sn: LocalSnapshotter, mnt: Mounter) -> None:
    before = _disk(sn.root)
    _base(sn, mnt)
    sn.prepare("child", "base")
    sn.view("view", "base")
    with pytest.raises(Conflict, match="cannot remove snapshot base: it has children"):
        sn.remove("base")
    with pytest.raises(NotFound):
        sn.remove("missing")
    sn.remove("child")
    with pytest.raises(Conflict):
        sn.remove("base")
    sn.remove("view")
    sn.remove("base")
    assert list(sn.walk()) == []
    assert _disk(sn.root) == before
    with pytest.raises(NotFound):
        sn.stat("base")


def test_keys_are_arbitrary_strings(sn: Snapshotter, mnt: Mounter) -> None:
    key = "sha256:" + "ab" * 32
    weird = "extract-7f3a/../x y:z,lowerdir=/etc-" + key
    _base(sn, mnt, key)
    with mnt.at(sn.prepare(weird, key)) as root:
        assert (root / "a").read_bytes() == b"A"
    assert sn.stat(weird).parent == key


def test_usage(sn: Snapshotter, mnt: Mounter) -> None:
    _base(sn, mnt, files={"a": b"x" * 1000, "b": b"y" * 24})
    assert sn.usage("base") == 1024
    with mnt.at(sn.prepare("c", "base")) as root:
        (root / "big").write_bytes(b"z" * (1 << 20))
        os.link(root / "big", root / "big-link")  # a hardlink is counted once
    assert sn.usage("c") >= 1 << 20
    assert sn.usage("c") <= (1 << 20) + 1024
    sn.commit("c2", "c")
    assert sn.usage("c2") >= 1 << 20


def test_special_files_survive_layering(sn: Snapshotter, mnt: Mounter) -> None:
    with mnt.at(sn.prepare("x")) as root:
        (root / "bin").mkdir(mode=0o755)
        su = root / "bin" / "su"
        su.write_bytes(b"#!su")
        os.chown(su, 0, 0)
        os.chmod(su, 0o4755)
        (root / "owned").write_bytes(b"o")
        os.chown(root / "owned", 1234, 5678)
        os.link(root / "owned", root / "owned-link")
        os.symlink("/etc/passwd", root / "abs-link")
        os.symlink("../nowhere", root / "dangling")
        os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.mkfifo(root / "fifo", 0o640)
        os.setxattr(root / "owned", "user.note", b"kept")
        os.setxattr(root / "bin" / "su", "security.capability", _CAP_NET_RAW)
        (root / "locked").mkdir(mode=0o500)
        os.chmod(root / "locked", 0o500)
        os.utime(root / "owned", ns=(1_000_000_000, 2_000_000_000))
    sn.commit("x1", "x")
    with mnt.at(sn.prepare("y", "x1")) as root:
        st = os.lstat(root / "bin" / "su")
        assert stat.S_IMODE(st.st_mode) == 0o4755
        assert os.getxattr(root / "bin" / "su", "security.capability") == _CAP_NET_RAW
        st = os.lstat(root / "owned")
        assert (st.st_uid, st.st_gid, st.st_mtime_ns) == (1234, 5678, 2_000_000_000)
        assert st.st_ino == os.lstat(root / "owned-link").st_ino
        assert os.getxattr(root / "owned", "user.note") == b"kept"
        assert os.readlink(root / "abs-link") == "/etc/passwd"
        assert os.readlink(root / "dangling") == "../nowhere"
        st = os.lstat(root / "null")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
        assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)
        assert stat.S_IMODE(os.lstat(root / "locked").st_mode) == 0o500


# security.capability v2 with cap_net_raw permitted+effective
_CAP_NET_RAW = bytes.fromhex("01000002" "00200000" "00000000" "00000000" "00000000")


def test_reopen_keeps_everything(sn: LocalSnapshotter, mnt: Mounter) -> None:
    _base(sn, mnt)
    sn.prepare("c", "base")
    again = type(sn)(sn.root)
    try:
        assert {(i.key, i.parent, i.kind) for i in again.walk()} == {
            ("base", None, Kind.COMMITTED),
            ("c", "base", Kind.ACTIVE),
        }
        with mnt.at(again.mounts("c")) as root:
            assert (root / "a").read_bytes() == b"A"
    finally:
        again.close()


def test_concurrent_prepares(sn: Snapshotter, mnt: Mounter) -> None:
    _base(sn, mnt)
    keys = [f"k{i % 8}" for i in range(16)]  # every key is asked for twice

    def attempt(key: str) -> str:
        try:
            sn.prepare(key, "base")
        except Conflict:
            return "conflict"
        return "ok"

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, keys))
    assert results.count("ok") == 8 and results.count("conflict") == 8
    assert {i.key for i in sn.walk()} == {"base", *keys}


def _crash_in_child(sn: LocalSnapshotter, step: str, op: str, *args: str) -> None:
    """Run ``op`` in a forked child that dies (os._exit) at ``step``: a real crash, no cleanup runs."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        try:
            child = type(sn)(sn.root)
            if step == "rename":
                os.rename = lambda *a, **k: os._exit(17)
            elif step == "rmtree":
                fsops.remove_at = lambda *a, **k: os._exit(17)
            getattr(child, op)(*args)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 17


def test_cleanup_after_crashed_prepare(sn: LocalSnapshotter, mnt: Mounter) -> None:
    _base(sn, mnt)
    before = _disk(sn.root)
    _crash_in_child(sn, "rename", "prepare", "doomed", "base")
    assert _disk(sn.root) != before
    sn.cleanup()
    assert _disk(sn.root) == before
    with pytest.raises(NotFound):
        sn.stat("doomed")
    sn.prepare("doomed", "base")  # the key is free again


def test_cleanup_after_crashed_remove(sn: LocalSnapshotter, mnt: Mounter) -> None:
    _base(sn, mnt)
    before = _disk(sn.root)
    sn.prepare("gone", "base")
    _crash_in_child(sn, "rmtree", "remove", "gone")
    with pytest.raises(NotFound):
        sn.stat("gone")
    sn.cleanup()
    assert _disk(sn.root) == before


def test_cleanup_keeps_live_snapshots(sn: LocalSnapshotter, mnt: Mounter) -> None:
    _base(sn, mnt)
    sn.prepare("c", "base")
    before = _disk(sn.root)
    sn.cleanup()
    assert _disk(sn.root) == before


# ---- implementation specifics -------------------------------------------------------------------------


def test_open_snapshotter_auto_and_unknown(area: Path) -> None:
    s = open_snapshotter(area / "snaps")
    try:
        assert s.name == ("overlayfs" if km.overlay_supported(area / "snaps") else "copy")
    finally:
        assert isinstance(s, LocalSnapshotter)
        s.close()
    with pytest.raises(InvalidArgument, match="unknown snapshotter"):
        open_snapshotter(area / "snaps", "zfs")


def test_overlay_mount_shapes(area: Path) -> None:
    s = OverlaySnapshotter(area / "ov")
    try:
        assert s.prepare("base") == [Mount("bind", str(s.root / "s" / "1" / "fs"), ("rbind", "rw"))]
        s.commit("l1", "base")
        assert s.view("v1", "l1") == [Mount("bind", str(s.root / "s" / "1" / "fs"), ("rbind", "ro"))]
        (m,) = s.prepare("c", "l1")
        assert m.type == "overlay"
        assert f"lowerdir={s.root}/s/1/fs" in m.options
        assert f"upperdir={s.root}/s/3/fs" in m.options
        assert f"workdir={s.root}/s/3/work" in m.options
        s.commit("l2", "c")
        (m,) = s.view("v2", "l2")
        assert f"lowerdir={s.root}/s/3/fs:{s.root}/s/1/fs" in m.options
        assert not any(o.startswith("upperdir") for o in m.options)
    finally:
        s.close()


def test_overlay_refuses_root_with_separators(area: Path) -> None:
    with pytest.raises(InvalidArgument):
        OverlaySnapshotter(area / "a:b")


def test_overlay_deep_chain(area: Path, mnt: Mounter) -> None:
    if not km.overlay_supported(area):
        pytest.skip("overlayfs not usable here")
    s = OverlaySnapshotter(area / "deep")
    try:
        parent = None
        for i in range(130):  # past one page of lowerdir paths at this tmp root
            s.prepare(f"e{i}", parent)
            fs = s.root / "s" / str(i + 1) / "fs"
            (fs / f"f{i}").write_text(str(i))
            s.commit(f"l{i}", f"e{i}")
            parent = f"l{i}"
        with mnt.at(s.prepare("top", parent)) as root:
            assert (root / "f0").read_text() == "0"
            assert (root / "f129").read_text() == "129"
        s._check_depth(list(range(MAX_DEPTH - 1)))
        with pytest.raises(InvalidArgument, match="max depth exceeded"):
            s._check_depth(list(range(MAX_DEPTH)))
    finally:
        s.close()


def test_copy_view_shares_parent_tree(area: Path, mnt: Mounter) -> None:
    s = CopySnapshotter(area / "cp")
    try:
        _base(s, mnt)
        assert s.view("v", "base") == s.mounts("base")
        assert s.usage("v") == 0
    finally:
        s.close()


@pytest.mark.root
def test_remove_at_never_enters_a_mounted_filesystem(tmp_path: Path) -> None:
    """A tree being removed with something mounted inside (a volume, a tmpfs): the mount's content stays, EXDEV."""
    import errno
    import os
    import subprocess

    from berth.kernel import fsops

    inner = tmp_path / "tree" / "sub" / "mnt"
    inner.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(inner)], check=True)
    try:
        (inner / "precious").write_text("keep me")
        (tmp_path / "tree" / "other").write_text("x")
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(OSError) as info:
                fsops.remove_at(fd, "tree")
        finally:
            os.close(fd)
        assert info.value.errno == errno.EXDEV and (inner / "precious").read_text() == "keep me"
    finally:
        subprocess.run(["umount", str(inner)], check=True)
