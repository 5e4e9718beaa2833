"""Round trips: changes made in a merged view, written back as a layer tar, re-applied elsewhere, same tree."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from berth.layers.apply import apply_layer
from berth.layers.diff import write_overlay_diff, write_tree, write_tree_diff
from berth.testing import tarcraft as tc

FIXTURE = Path("/work/shared/fixtures/multilayer-docker-save.tar")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="layer apply needs root (chown, mknod, overlay mounts)"),
    pytest.mark.skipif(not FIXTURE.exists(), reason="shared fixtures are not present"),
]

# Every kind of change a container or a build step makes, as one layer applied to the fixture image.
CHANGES = tc.tar([
    tc.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnew:x:1000:1000::/home/new:/bin/sh\n"),
    tc.file("etc/.wh.group"),                                   # delete a file
    tc.file(".wh.proc"),                                        # delete a directory
    tc.file("data/keep/added", b"added\n", uid=1000, gid=1000),  # add to an existing dir
    tc.directory("data/keep/new"), tc.file("data/keep/new/x", b"x"),  # file -> dir
    tc.file("srv", b"srv is a file now\n"),                      # dir -> file
    tc.file(".wh.root"), tc.directory("root", mode=0o700), tc.file("root/.profile", b"PS1=x\n"),  # recreate
    tc.directory("opt/app"), tc.file("opt/app/.wh..wh..opq"), tc.file("opt/app/only", b"only\n"),  # opaque
    tc.symlink("usr-link", "/bin/busybox"),
    tc.file("bin/newsuid", b"suid", mode=0o4755), tc.hardlink("bin/hl", "bin/newsuid"),
    tc.hardlink("bin/busybox-hl", "bin/busybox"),                # hardlink to a lower file (copy-up)
    tc.file("bin/capped", b"cap", mode=0o755,
            xattrs={"security.capability": tc.CAP_NET_BIND_SERVICE, "user.note": b"hi"}),
    tc.directory("run"), tc.device("run/fifo", tarfile.FIFOTYPE), tc.device("run/null", tarfile.CHRTYPE, 1, 3, 0o666),
    tc.directory("tmp", mode=0o1777),                             # attribute change of a lower dir
    tc.directory("deep/a/b/c"), tc.file("deep/a/b/c/" + "long" * 40, b"long name\n"),
])

Listing = dict[str, tuple[object, ...]]


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    """The members of a tar as CPython's reader sees them (an independent parser)."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: m for m in tf}


def listing(root: Path) -> Listing:
    """Everything about every node under ``root`` that a layer carries (hardlinks as shared inode groups)."""
    out: Listing = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            extra: object = None
            if stat.S_ISREG(st.st_mode):
                extra = (hashlib.sha256(p.read_bytes()).hexdigest(), st.st_nlink,
                         inodes.setdefault(st.st_ino, rel) if st.st_nlink > 1 else None)
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            xattrs = {} if stat.S_ISLNK(st.st_mode) else {
                k: os.getxattr(p, k) for k in os.listxattr(p) if k.startswith("user.") or k == "security.capability"}
            out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_rdev, int(st.st_mtime), extra, sorted(xattrs.items()))
    return out


def fixture_tree(dst: Path) -> Path:
    dst.mkdir()
    with tarfile.open(FIXTURE) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))[0]  # type: ignore[arg-type]
        for name in manifest["Layers"]:
            apply_layer(dst, tf.extractfile(name))  # type: ignore[arg-type]
    return dst


@contextmanager
def overlay(lowers: list[Path], merged: Path, upper: Path | None = None, work: Path | None = None) -> Iterator[Path]:
    opts = "lowerdir=" + ":".join(map(str, lowers))
    if upper is not None:
        opts += f",upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], check=True)
    try:
        yield merged
    finally:
        subprocess.run(["umount", str(merged)], check=True)


def test_overlay_diff_round_trip(tmp_path: Path) -> None:
    lower = fixture_tree(tmp_path / "lower")
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    with overlay([lower], merged, upper, work):
        apply_layer(merged, io.BytesIO(CHANGES))
    out = io.BytesIO()
    digest = write_overlay_diff(upper, out)
    assert digest.hex == hashlib.sha256(out.getvalue()).hexdigest()
    names = list(members(out.getvalue()))
    assert "root/.wh..wh..opq" in names and "etc/.wh.group" in names and "proc" not in names
    assert not [n for n in names if "trusted.overlay" in n]

    again = fixture_tree(tmp_path / "again")
    result = apply_layer(again, io.BytesIO(out.getvalue()))
    assert result.diff_id == digest
    with overlay([upper, lower], merged):
        want = listing(merged)
    assert listing(again) == want
    assert {"run/null", "run/fifo", "root/.profile", "opt/app/only", "bin/hl", "data/keep/new/x"} <= set(want)
    assert "opt/app/suid" not in want and "proc" not in want and "etc/group" not in want


def test_tree_diff_round_trip(tmp_path: Path) -> None:
    lower = fixture_tree(tmp_path / "lower")
    upper = fixture_tree(tmp_path / "upper")
    apply_layer(upper, io.BytesIO(CHANGES))
    out = io.BytesIO()
    digest = write_tree_diff(lower, upper, out)
    names = set(members(out.getvalue()))
    assert {".wh.proc", "etc/.wh.group", "srv", "bin/hl"} <= names
    assert "bin/busybox" in names  # its link count changed: it is written so that bin/busybox-hl can link to it
    assert "etc/group" not in names and "bin/sh" not in names  # unchanged entries stay out

    again = fixture_tree(tmp_path / "again")
    assert apply_layer(again, io.BytesIO(out.getvalue())).diff_id == digest
    assert listing(again) == listing(upper)


def test_tree_diff_without_lower_is_the_whole_tree(tmp_path: Path) -> None:
    upper = fixture_tree(tmp_path / "upper")
    a, b = io.BytesIO(), io.BytesIO()
    assert write_tree_diff(None, upper, a) == write_tree(upper, b)
    assert a.getvalue() == b.getvalue()


def test_write_tree_round_trip_and_is_deterministic(tmp_path: Path) -> None:
    src = fixture_tree(tmp_path / "src")
    apply_layer(src, io.BytesIO(CHANGES))
    first, second = io.BytesIO(), io.BytesIO()
    digest = write_tree(src, first)
    assert write_tree(src, second) == digest and first.getvalue() == second.getvalue()
    dst = tmp_path / "dst"
    dst.mkdir()
    assert apply_layer(dst, io.BytesIO(first.getvalue())).diff_id == digest
    assert listing(dst) == listing(src)
    # Real tar reads it too, long names and all.
    listed = subprocess.run(["tar", "-tf", "-"], input=first.getvalue(), capture_output=True, check=True).stdout
    assert b"deep/a/b/c/" + b"long" * 40 in listed


def test_diff_never_follows_symlinks_in_the_tree(tmp_path: Path) -> None:
    """A container may leave symlinks to host paths in its upperdir; the diff stores them as links."""
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "passwd").symlink_to("/etc/passwd")
    (upper / "hostroot").symlink_to("/")
    out = io.BytesIO()
    write_overlay_diff(upper, out)
    found = members(out.getvalue())
    assert set(found) == {"passwd", "hostroot"}
    assert found["passwd"].issym() and found["passwd"].linkname == "/etc/passwd"
