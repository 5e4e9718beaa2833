"""Tests for berth.kernel.mount: option parsing, bind/overlay/tmpfs mounts, and the long-lowerdir path."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from berth.errors import InvalidArgument
from berth.kernel import mount as km
from berth.kernel.mount import Mount, MountError

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mount(2) needs root")






def test_parse_options_splits_flags_propagation_and_data() -> None:
    flags, prop, data = km.parse_options(["rbind", "ro", "nosuid", "rprivate", "size=64k", "mode=755"])
    assert flags == km.MS_BIND | km.MS_REC | km.MS_RDONLY | km.MS_NOSUID
    assert prop == km.MS_PRIVATE | km.MS_REC
    assert data == ["size=64k", "mode=755"]
    flags, _, _ = km.parse_options(["ro", "rw", "suid"])
    assert flags == 0


def test_mount_value_checks() -> None:
    with pytest.raises(InvalidArgument):
        Mount("", "x")
    assert Mount("bind", "/a", ("rbind", "ro")).readonly
    assert Mount("bind", "/a", ("rbind", "ro")).is_bind
    assert not Mount("overlay", "overlay", ("lowerdir=/a:/b",)).readonly


@pytest.mark.root
@needs_root
def test_bind_rw_and_ro(area: Path) -> None:
    src, target = area / "src", area / "target"
    src.mkdir()
    target.mkdir()
    (src / "f").write_text("hello")
    with km.mounted([Mount("bind", str(src), ("rbind", "rw"))], target) as t:
        assert (t / "f").read_text() == "hello"
        (t / "g").write_text("new")
        assert km.is_mountpoint(target)
    assert (src / "g").read_text() == "new"
    assert not km.is_mountpoint(target)
    with km.mounted([Mount("bind", str(src), ("rbind", "ro", "nosuid"))], target) as t:
        with pytest.raises(OSError) as err:
            (t / "h").write_text("x")
        assert err.value.errno == errno.EROFS
    assert km.mounts_under(area) == []


@pytest.mark.root
@needs_root
def test_mounted_unmounts_on_error(area: Path) -> None:
    target = area / "t"
    target.mkdir()
    with pytest.raises(RuntimeError), km.mounted([Mount("tmpfs", "tmpfs", ("size=1m", "mode=700"))], target):
        assert km.is_mountpoint(target)
        raise RuntimeError("boom")
    assert not km.is_mountpoint(target)


@pytest.mark.root
@needs_root
def test_mount_all_is_all_or_nothing(area: Path) -> None:
    target = area / "t"
    target.mkdir()
    good = Mount("tmpfs", "tmpfs", ("size=1m",))
    bad = Mount("bind", str(area / "missing"), ("rbind",))
    with pytest.raises(MountError) as err:
        km.mount_all([good, bad], target)
    assert err.value.errno == errno.ENOENT
    assert "missing" in str(err.value)
    assert not km.is_mountpoint(target)


@pytest.mark.root
@needs_root
def test_unmount_not_mounted_reports_einval(area: Path) -> None:
    with pytest.raises(MountError) as err:
        km.unmount(area)
    assert err.value.errno == errno.EINVAL


@pytest.mark.root
@needs_root
def test_overlay_supported_is_cached_bool(area: Path) -> None:
    first = km.overlay_supported(area)
    assert isinstance(first, bool)
    assert km.overlay_supported(area) is first
    assert not any(p.name.startswith(".overlay-check-") for p in area.iterdir())


def _overlay_or_skip(area: Path) -> None:
    if not km.overlay_supported(area):
        pytest.skip("overlayfs not usable here")


@pytest.mark.root
@needs_root
def test_overlay_layers_and_whiteout(area: Path) -> None:
    _overlay_or_skip(area)
    low1, low2, up, work, merged = (area / n for n in ("l1", "l2", "up", "work", "m"))
    for d in (low1, low2, up, work, merged):
        d.mkdir()
    (low1 / "a").write_text("base")
    (low1 / "b").write_text("gone soon")
    (low2 / "a").write_text("override")
    m = Mount("overlay", "overlay", (f"lowerdir={low2}:{low1}", f"upperdir={up}", f"workdir={work}"))
    with km.mounted([m], merged) as t:
        assert (t / "a").read_text() == "override"
        (t / "b").unlink()
        (t / "c").write_text("new")
    assert (low1 / "b").exists()
    whiteout = os.lstat(up / "b")
    assert os.major(whiteout.st_rdev) == 0 and os.minor(whiteout.st_rdev) == 0
    assert (up / "c").read_text() == "new"


@pytest.mark.root
@needs_root
def test_overlay_lowerdir_longer_than_a_page(area: Path) -> None:
    _overlay_or_skip(area)
    # 150 long layer paths give ~9 KiB of options, well past one page
    lowers = []
    for i in range(150):
        d = area / ("layer-with-a-deliberately-long-directory-name-" + f"{i:04d}")
        d.mkdir()
        (d / f"f{i}").write_text(str(i))
        (d / "same").write_text(str(i))
        lowers.append(str(d))
    up, work, merged = area / "up", area / "work", area / "m"
    for d in (up, work, merged):
        d.mkdir()
    opts = ("lowerdir=" + ":".join(reversed(lowers)), f"upperdir={up}", f"workdir={work}")
    assert len(",".join(opts)) > km.PAGE_LIMIT
    with km.mounted([Mount("overlay", "overlay", opts)], merged) as t:
        assert (t / "f0").read_text() == "0"
        assert (t / "f149").read_text() == "149"
        assert (t / "same").read_text() == "149"  # the first lowerdir is the top one
        (t / "new").write_text("x")
    assert (up / "new").read_text() == "x"
    ro = ("lowerdir=" + ":".join(reversed(lowers)), "ro")
    with km.mounted([Mount("overlay", "overlay", ro)], merged) as t:
        assert (t / "f7").read_text() == "7"
        with pytest.raises(OSError):
            (t / "other").write_text("x")


def test_long_options_for_other_filesystems_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument):
        km.mount(Mount("tmpfs", "tmpfs", ("x" * 5000,)), tmp_path)


def test_unescape_mountinfo() -> None:
    assert km._unescape(r"/a\040b\011c\134d") == "/a b\tc\\d"
