"""The hostile-layer matrix (security.md §1.1, T1-T28): nothing outside the extraction root may change."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from berth.errors import InvalidArgument
from berth.kernel import fsops
from berth.layers.apply import ApplyResult, apply_layer
from berth.layers.compression import detect
from berth.testing import tarcraft
from berth.testing.tarcraft import RECIPES

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="layer apply needs root (chown, mknod, trusted xattrs)"),
]

HOST_PATHS = ("/pwned", "/victim", "/etc/unbroken", "/etc/x", "/etc/passwd", "/etc/shadow", "/tmp/berth-t5-b",
              "/etc/berth-t6-x", "/berth-t20-y", "/dotdot", "/slash-dotdot")
Snapshot = dict[str, tuple[object, ...]]


def _node(path: Path) -> tuple[object, ...]:
    st = os.lstat(path)
    extra: object = None
    if stat.S_ISREG(st.st_mode):
        extra = hashlib.sha256(path.read_bytes()).hexdigest()
    elif stat.S_ISLNK(st.st_mode):
        extra = os.readlink(path)
    xattrs = {} if stat.S_ISLNK(st.st_mode) else {k: os.getxattr(path, k) for k in os.listxattr(path)}
    return (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_nlink, st.st_ino, extra,
            sorted(xattrs.items()))


def snapshot_outside(base: Path, extra_host: tuple[str, ...] = ()) -> Snapshot:
    """Every node under ``base`` except ``base/root``, plus named host paths (absent is recorded too)."""
    snap: Snapshot = {".": _node(base)}
    for dirpath, dirnames, filenames in os.walk(base):
        if Path(dirpath) == base:
            dirnames[:] = [d for d in dirnames if d != "root"]
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            snap[str(p.relative_to(base))] = _node(p)
    for host in (*HOST_PATHS, *extra_host, str(base.parent / "pwned"), str(base.parent / "victim")):
        snap["host:" + host] = _node(Path(host)) if os.path.lexists(host) else ("absent",)
    return snap


@pytest.fixture
def base(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "root").mkdir()
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "hello").write_bytes(b"hello\n")
    (tmp_path / "victim" / "perm400").write_bytes(b"keep my mode\n")
    (tmp_path / "victim" / "perm400").chmod(0o400)
    (tmp_path / "victim" / "also-exists").write_bytes(b"also\n")
    yield tmp_path
    # pytest's own cleanup recurses and cannot remove the 1200-deep tree of T25c.
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsops.remove_at(fd, "root")
    finally:
        os.close(fd)


def run_recipe(key: str, base: Path) -> tuple[ApplyResult | InvalidArgument, bytes]:
    """Apply the recipe's layers; the outcome of the last one, and its bytes."""
    layers = RECIPES[key].layers(base)
    for layer in layers[:-1]:
        apply_layer(base / "root", io.BytesIO(layer))
    try:
        return apply_layer(base / "root", io.BytesIO(layers[-1])), layers[-1]
    except InvalidArgument as e:
        return e, layers[-1]


def _read(p: Path) -> bytes:
    return p.read_bytes()


def _t16(root: Path) -> bool:
    return sorted(os.listdir(root / "bin")) == ["new"]


def _t21(root: Path) -> bool:
    mem, sda, fifo = (os.lstat(root / "dev" / n) for n in ("mem", "sda", "fifo"))
    assert stat.S_ISCHR(mem.st_mode) and mem.st_rdev == os.makedev(1, 1) and stat.S_IMODE(mem.st_mode) == 0o640
    assert stat.S_ISBLK(sda.st_mode) and sda.st_rdev == os.makedev(8, 0)
    return stat.S_ISFIFO(fifo.st_mode)


def _t22(root: Path) -> bool:
    modes = {n: stat.S_IMODE(os.lstat(root / n).st_mode) for n in ("bin/su", "bin/sg", "tmp", "ww")}
    assert modes == {"bin/su": 0o4755, "bin/sg": 0o2755, "tmp": 0o1777, "ww": 0o777}
    return os.lstat(root / "bin/sg").st_gid == 42


def _t23(root: Path) -> bool:
    f = {k: os.getxattr(root / "f", k) for k in os.listxattr(root / "f")}
    assert f["security.capability"] == tarcraft.CAP_NET_BIND_SERVICE
    assert f["user.x"] == b"1"
    assert not [k for k in f if k.startswith("trusted.")]
    d = set(os.listxattr(root / "d"))
    return "user.d" in d and not [k for k in d if k.startswith("trusted.")]


def _t25c(root: Path) -> bool:
    fd = os.open(root, os.O_PATH)
    for _ in range(tarcraft.DEEP):
        nxt = os.open("dddd", os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    try:
        return os.stat("bottom", dir_fd=fd).st_size == 4
    finally:
        os.close(fd)


def _t27(root: Path) -> bool:
    long_dir = root / ("gnu-" + "l" * 150)
    assert _read(long_dir / "file") == b"gnu"
    assert os.readlink(root / "longlink") == long_dir.name + "/file"
    return (root / "hardlong").samefile(long_dir / "file")


EXPECT: dict[str, Callable[[Path], bool]] = {
    "T2b": lambda r: _read(r / "etc/passwd").startswith(b"root:x:0:0"),
    "T3": lambda r: _read(r / "etc/unbroken") == b"ok",
    "T4": lambda r: _read(r / "etc/x") == b"x",
    "T4b": lambda r: _read(r / "etc/x") == b"x",
    "T4c": lambda r: _read(r / "etc/x") == b"x",
    "T4d": lambda r: _read(r / "etc/x") == b"x",
    "T5": lambda r: (_read(r / "tmp/berth-t5-b"), _read(r / "foo/tmp/berth-t5-b")) == (b"2", b"3"),
    "T6": lambda r: _read(r / "etc/berth-t6-x") == b"x",
    "T8": lambda r: (r / "mypasswd").samefile(r / "etc/passwd"),
    "T9": lambda r: (os.readlink(r / "localpasswd") == "/etc/passwd"
                     and os.lstat(r / "localpasswd").st_ino == os.lstat(r / "passwdlink").st_ino),
    "T10": lambda r: (r / "sketchylink").is_symlink(),
    "T10b": lambda r: stat.S_IMODE(os.lstat(r / "sketchy").st_mode) == 0o777,
    "T13": lambda r: (not os.path.lexists(r / "localetc") and _read(r / "etc/passwd") == b"in-root"),
    "T14": lambda r: (not os.path.lexists(r / "etc/whitedout") and (r / "etc/keep").exists()),
    "T14b": lambda r: (r / "localvictim").is_symlink(),
    "T15": lambda r: _read(r / ".wh.etc/somefile") == b"s",
    "T16": _t16,
    "T16b": _t16,
    "T16c": lambda r: (os.listdir(r / "bin"), os.listdir(r / "bin/tools")) == (["tools"], ["y"]),
    "T17": lambda r: _read(r / "a") == b"upper",
    "T17b": lambda r: _read(r / "a") == b"upper",
    "T17c": lambda r: os.listdir(r / "a") == ["new"],
    "T18": lambda r: (_read(r / "a") == b"2" and stat.S_IMODE(os.lstat(r / "d").st_mode) == 0o750
                      and (r / "d/x").exists()),
    "T19": lambda r: _read(r / "a/b") == b"b",
    "T19b": lambda r: _read(r / "a") == b"file",
    "T19c": lambda r: (not (r / "a").is_symlink() and _read(r / "a/pwned") == b"p"),
    "T20": lambda r: (_read(r / "berth-t20-y/z") == b"z" and (r / "x").is_symlink()),
    "T21": _t21,
    "T22": _t22,
    "T23": _t23,
    "T24": lambda r: (os.lstat(r / "a").st_uid, os.lstat(r / "a").st_gid, os.lstat(r / "b").st_uid)
    == (4294967294, 4294967294, 0),
    "T25b": lambda r: len(os.listdir(r / "many")) == tarcraft.MANY_FILES,
    "T25c": _t25c,
    "T27": _t27,
    "T28": lambda r: ((r / "newlink").samefile(r / "lowerfile") and _read(r / "newlink") == b"lower"),
}


@pytest.mark.parametrize("key", [k for k in RECIPES if k != "T25"])
def test_hostile_recipe(key: str, base: Path) -> None:
    recipe = RECIPES[key]
    before = snapshot_outside(base, recipe.host_paths)
    outcome, last = run_recipe(key, base)
    assert snapshot_outside(base, recipe.host_paths) == before, "something outside the root changed"
    if recipe.error is not None:
        assert isinstance(outcome, InvalidArgument), f"{key}: expected an error, got {outcome}"
        assert recipe.error.lower() in str(outcome).lower()
        return
    assert isinstance(outcome, ApplyResult), f"{key}: {outcome}"
    if detect(last[:4]) == "none":
        assert outcome.diff_id.hex == hashlib.sha256(last).hexdigest()
        assert outcome.size == len(last)
    check = EXPECT.get(key)
    if check is not None:
        assert check(base / "root"), f"{key}: unexpected result in the root"


def test_every_matrix_row_has_a_recipe() -> None:
    assert {f"T{i}" for i in range(1, 29)} <= set(RECIPES)


_BOMB_CHILD = """
import io, os, resource, sys
from berth.layers.compression import detect
from berth.kernel import fsops
from berth.layers.apply import apply_layer
from berth.testing.tarcraft import zeros_bomb, BOMB_SIZE
blob = zeros_bomb(BOMB_SIZE)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
res = apply_layer(sys.argv[1], io.BytesIO(blob))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after, res.size, os.stat(os.path.join(sys.argv[1], "zeros")).st_size)
"""


def test_t25_gzip_bomb_streams_with_bounded_memory(base: Path) -> None:
    before = snapshot_outside(base)
    out = subprocess.run([sys.executable, "-c", _BOMB_CHILD, str(base / "root")], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    rss_before, rss_after, size, file_size = (int(x) for x in out)
    assert file_size == tarcraft.BOMB_SIZE
    assert size > tarcraft.BOMB_SIZE
    assert rss_after - rss_before < 48 * 1024, f"RSS grew by {rss_after - rss_before} KiB"
    assert snapshot_outside(base) == before


def test_t6_concurrent_symlink_swap(base: Path) -> None:
    """An attacker swaps an in-root dir for a symlink to the victim while layers are applied into it."""
    root = base / "root"
    (root / "dir").mkdir()
    before = snapshot_outside(base)
    layer = tarcraft.tar([tarcraft.file(f"dir/sub{i}/f", b"x") for i in range(300)])
    stop = threading.Event()

    def attacker() -> None:
        targets = [str(base / "victim"), "../victim", "/"]
        i = 0
        while not stop.is_set():
            try:
                os.rename(root / "dir", root / "dir.real")
                os.symlink(targets[i % 3], root / "dir")
                time.sleep(0)
                os.unlink(root / "dir")
                os.rename(root / "dir.real", root / "dir")
            except OSError:
                pass
            i += 1

    thread = threading.Thread(target=attacker)
    thread.start()
    outcomes: list[str] = []
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                apply_layer(root, io.BytesIO(layer))
                outcomes.append("ok")
            except InvalidArgument:
                outcomes.append("error")
    finally:
        stop.set()
        thread.join()
    assert outcomes  # success and "no such file" (the swapped-in symlink leads nowhere in-root) both happen
    assert snapshot_outside(base) == before
    assert not os.path.lexists("/sub0")


def test_recipes_build_valid_tars_where_meant(base: Path) -> None:
    """Sanity check of the recipes themselves: CPython's reader parses the well-formed ones."""
    for key in ("T3", "T16", "T21", "T23"):
        for layer in RECIPES[key].layers(base):
            with tarfile.open(fileobj=io.BytesIO(layer)) as tf:
                assert tf.getmembers()
