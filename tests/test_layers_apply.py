"""apply_layer and its parts: compression sniffing, tar parsing, attributes, and the dirfd resolver."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from berth.errors import InvalidArgument
from berth.kernel import fsops
from berth.layers.apply import apply_layer
from berth.layers.compression import detect, open_decompressed
from berth.testing import tarcraft as tc

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="layer apply needs root (chown, mknod)")

SAMPLE = tc.tar([
    tc.directory("etc", mode=0o755), tc.file("etc/os-release", b"ID=berth\n"),
    tc.directory("bin"), tc.file("bin/tool", b"\x7fELF" + bytes(70_000), mode=0o755),
    tc.hardlink("bin/tool2", "bin/tool"), tc.symlink("bin/sh", "tool"),
    tc.file("a/" + "x" * 120 + "/" + "y" * 120, b"long path\n"),
])


# -- compression -----------------------------------------------------------------------------------

def test_detect_by_magic() -> None:
    assert detect(gzip.compress(b"x")[:4]) == "gzip"
    assert detect(zstandard.ZstdCompressor().compress(b"x")[:4]) == "zstd"
    assert detect(SAMPLE[:4]) == "none"
    assert detect(b"") == "none"


@pytest.mark.parametrize("kind", ["none", "gzip", "gzip-multi", "zstd", "zstd-multi"])
def test_open_decompressed_round_trips(kind: str) -> None:
    data = os.urandom(300_000) + bytes(3_000_000)
    blob = {
        "none": lambda: data,
        "gzip": lambda: gzip.compress(data),
        "gzip-multi": lambda: gzip.compress(data[:1000]) + gzip.compress(data[1000:]),
        "zstd": lambda: zstandard.ZstdCompressor().compress(data),
        "zstd-multi": lambda: zstandard.ZstdCompressor().compress(data[:5]) + zstandard.ZstdCompressor().compress(
            data[5:]),
    }[kind]()
    assert open_decompressed(io.BytesIO(blob)).read() == data


def test_gzip_trailing_garbage_and_truncation_are_errors() -> None:
    blob = gzip.compress(b"hello" * 1000)
    with pytest.raises(InvalidArgument, match="gzip"):
        open_decompressed(io.BytesIO(blob + b"garbage")).read()
    with pytest.raises(InvalidArgument, match="unexpected EOF"):
        open_decompressed(io.BytesIO(blob[:-10])).read()
    with pytest.raises(InvalidArgument):
        open_decompressed(io.BytesIO(blob[:10] + b"\xff" * 50 + blob[60:])).read()


def test_zstd_truncation_and_junk_are_errors() -> None:
    blob = zstandard.ZstdCompressor(write_checksum=True).compress(os.urandom(200_000))
    with pytest.raises(InvalidArgument, match="unexpected EOF"):
        open_decompressed(io.BytesIO(blob[:-1])).read()
    with pytest.raises(InvalidArgument, match="zstd"):
        open_decompressed(io.BytesIO(blob + b"junk after the frame")).read()


# -- apply -----------------------------------------------------------------------------------------

@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


@needs_root
@pytest.mark.parametrize("compress", [lambda b: b, gzip.compress, zstandard.ZstdCompressor().compress],
                         ids=["plain", "gzip", "zstd"])
def test_apply_sample_any_compression(root: Path, compress: object) -> None:
    blob = compress(SAMPLE)  # type: ignore[operator]
    result = apply_layer(root, io.BytesIO(blob))
    assert result.diff_id.hex == hashlib.sha256(SAMPLE).hexdigest() and result.size == len(SAMPLE)
    assert (root / "etc/os-release").read_bytes() == b"ID=berth\n"
    assert (root / "bin/tool2").samefile(root / "bin/tool") and os.lstat(root / "bin/tool").st_nlink == 2
    assert os.readlink(root / "bin/sh") == "tool"
    assert (root / ("a/" + "x" * 120 + "/" + "y" * 120)).read_bytes() == b"long path\n"
    for p in ("etc", "etc/os-release", "bin/tool", "bin/sh"):
        assert int(os.lstat(root / p).st_mtime) == tc.MTIME, p  # dir times restored after their children


@needs_root
def test_apply_over_existing_tree_replaces_and_merges(root: Path) -> None:
    (root / "etc").mkdir(mode=0o700)
    (root / "etc" / "keep").write_text("lower")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_text("old")
    hard = root / "bin" / "old-name"
    os.link(root / "bin" / "tool", hard)
    apply_layer(root, io.BytesIO(SAMPLE))
    assert (root / "etc" / "keep").read_text() == "lower"  # dir over dir merges
    assert stat.S_IMODE(os.lstat(root / "etc").st_mode) == 0o755
    assert hard.read_text() == "old"  # replaced by unlink+create, never written through another link


@needs_root
def test_root_entry_and_empty_stream(root: Path) -> None:
    os.chmod(root, 0o711)
    layer = tc.tar([tc.directory(".", mode=0o777), tc.directory("./x")])
    apply_layer(root, io.BytesIO(layer))
    assert stat.S_IMODE(os.lstat(root).st_mode) == 0o711 and (root / "x").is_dir()
    assert apply_layer(root, io.BytesIO(b"")).diff_id.hex == hashlib.sha256(b"").hexdigest()


@needs_root
def test_whiteout_of_missing_path_is_a_no_op(root: Path) -> None:
    apply_layer(root, io.BytesIO(tc.tar([tc.file("nothing/here/.wh.gone"), tc.file(".wh.absent")])))
    assert os.listdir(root) == []


@needs_root
def test_bad_checksum_is_invalid_tar_header(root: Path) -> None:
    layer = bytearray(tc.tar([tc.file("a", b"x")]))
    layer[0] ^= 0x01
    with pytest.raises(InvalidArgument, match="invalid tar header"):
        apply_layer(root, io.BytesIO(bytes(layer)))


@needs_root
def test_pax_mtime_and_base256_size(root: Path) -> None:
    m = tc.file("frac", b"x")
    m.info.pax_headers = {"mtime": "1700000000.5"}
    gnu_member = tc.file("gnu", b"y", uid=0o7777777 + 5)
    apply_layer(root, io.BytesIO(tc.tar([m]) + b""))
    assert os.lstat(root / "frac").st_mtime_ns == 1_700_000_000_500_000_000
    apply_layer(root, io.BytesIO(tc.tar([gnu_member], fmt=tarfile.GNU_FORMAT)))  # uid in base-256
    assert os.lstat(root / "gnu").st_uid == 0o7777777 + 5


@needs_root
def test_zero_block_then_junk_is_invalid(root: Path) -> None:
    layer = tc.tar([tc.file("a", b"x")], end=False) + bytes(512) + tc.tar([tc.file("b")], end=False)
    with pytest.raises(InvalidArgument, match="invalid tar header"):
        apply_layer(root, io.BytesIO(layer))


# -- the resolver without openat2 ------------------------------------------------------------------

@pytest.fixture
def no_openat2(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(fsops, "_openat2_works", False)
    yield


def test_openat2_is_available_here() -> None:
    assert fsops.have_openat2()  # kernel 6.x; the fallback is tested below either way


def _fd(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


@pytest.mark.parametrize("use_openat2", [True, False])
def test_open_in_root_clamps(tmp_path: Path, use_openat2: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not use_openat2:
        monkeypatch.setattr(fsops, "_openat2_works", False)
    r = tmp_path / "r"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "passwd").write_text("in-root")
    (tmp_path / "outside").write_text("host")
    (r / "abs").symlink_to("/etc")
    (r / "rel").symlink_to("../../../../etc")
    (r / "esc").symlink_to("../outside")
    (r / "loop").symlink_to("loop")
    rfd = _fd(r)
    try:
        for path in ("abs/passwd", "rel/passwd", "../../etc/passwd", "/etc/../../etc/passwd"):
            fd = fsops.open_in_root(rfd, path, os.O_RDONLY)
            try:
                assert os.read(fd, 100) == b"in-root", path
            finally:
                os.close(fd)
        with pytest.raises(FileNotFoundError):
            fsops.open_in_root(rfd, "esc", os.O_RDONLY)
        with pytest.raises(OSError):
            fsops.open_in_root(rfd, "loop", os.O_RDONLY)
        dfd = fsops.open_dir(rfd, ["abs", "new", "deeper"], create=True)
        os.close(dfd)
        assert (r / "etc" / "new" / "deeper").is_dir()
        with pytest.raises(FileNotFoundError):  # never mkdir inside a symlink's target path
            fsops.open_dir(rfd, ["esc-dir", "x"], create=False)
    finally:
        os.close(rfd)


def test_walk_dir_does_not_create_through_symlink_targets(tmp_path: Path) -> None:
    r = tmp_path / "r"
    r.mkdir()
    (r / "link").symlink_to("/missing/dir")
    rfd = _fd(r)
    try:
        with pytest.raises(FileNotFoundError):
            fsops.walk_dir(rfd, ["link", "x"], create=True)
        assert not (r / "missing").exists()
    finally:
        os.close(rfd)


def test_remove_at_is_iterative_and_never_follows(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    d = tmp_path / "d"
    d.mkdir()
    fd = _fd(d)
    for _ in range(1500):  # deeper than Python's recursion limit and PATH_MAX
        os.mkdir("x", dir_fd=fd)
        nxt = os.open("x", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    os.symlink(str(outside), "up", dir_fd=fd)
    os.close(fd)
    (d / "link").symlink_to(outside)
    fd = _fd(tmp_path)
    try:
        fsops.remove_at(fd, "d")
    finally:
        os.close(fd)
    assert not d.exists() and (outside / "keep").read_text() == "keep"


@needs_root
@pytest.mark.parametrize("key", ["T3", "T4", "T4b", "T4c", "T4d", "T5", "T6", "T8", "T11b", "T14", "T14b", "T20"])
def test_symlink_recipes_with_the_fallback_walker(key: str, tmp_path: Path, no_openat2: None) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "victim").mkdir()
    (tmp_path / "victim" / "hello").write_text("hello")
    layers = tc.RECIPES[key].layers(tmp_path)
    for layer in layers[:-1]:
        apply_layer(tmp_path / "root", io.BytesIO(layer))
    try:
        apply_layer(tmp_path / "root", io.BytesIO(layers[-1]))
    except InvalidArgument as e:
        want = tc.RECIPES[key].error
        assert want is not None and want.lower() in str(e).lower()
    else:
        assert tc.RECIPES[key].error is None
    assert sorted(os.listdir(tmp_path / "victim")) == ["hello"]
    assert not os.path.lexists("/etc/x") and not os.path.lexists("/berth-t20-y")
