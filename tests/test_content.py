"""Tests for berth.content.store: verified, atomic blob writes and the store's bookkeeping."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

import pytest

from berth.content.store import ContentStore
from berth.errors import InvalidArgument, NotFound
from berth.oci.digest import Digest


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "content")


def _ingest_files(store: ContentStore) -> list[str]:
    return os.listdir(store.root / "ingest")


def test_put_read_roundtrip(store: ContentStore) -> None:
    d = store.put(b"hello")
    assert d == Digest.of_bytes(b"hello")
    assert store.has(d)
    assert store.size(d) == 5
    assert store.read(d) == b"hello"
    with store.open(d) as f:
        assert f.read(2) == b"he"
    assert list(store.walk()) == [(d, 5)]
    assert store.disk_usage() == 5
    assert _ingest_files(store) == []


def test_layout_and_modes(store: ContentStore) -> None:
    d = store.put(b"x")
    assert stat.S_IMODE(os.stat(store.root).st_mode) == 0o700
    blob = store.root / "blobs" / "sha256" / d.hex
    assert stat.S_IMODE(os.stat(blob).st_mode) == 0o444


def test_missing_blob_is_not_found(store: ContentStore) -> None:
    d = Digest.of_bytes(b"nope")
    assert not store.has(d)
    with pytest.raises(NotFound, match=f"content {d}: not found"):
        store.size(d)
    with pytest.raises(NotFound):
        store.open(d)
    with pytest.raises(NotFound):
        store.read(d)
    store.delete(d)  # missing is fine


def test_put_with_wrong_expected_digest_leaves_nothing(store: ContentStore) -> None:
    wrong = Digest.of_bytes(b"other")
    with pytest.raises(InvalidArgument, match=r"unexpected commit digest sha256:[0-9a-f]{64}, expected " + str(wrong)):
        store.put(b"data", expected=wrong)
    assert not store.has(wrong)
    assert list(store.walk()) == []
    assert _ingest_files(store) == []


def test_size_is_checked_before_digest(store: ContentStore) -> None:
    data = b"0123456789"
    with store.writer(Digest.of_bytes(b"something else"), expected_size=11) as w:
        w.write(data)
        with pytest.raises(InvalidArgument, match="unexpected commit size 10, expected 11"):
            w.commit()
    assert list(store.walk()) == []
    assert _ingest_files(store) == []


def test_writer_streams_chunks_and_verifies(store: ContentStore) -> None:
    chunks = [os.urandom(1 << 16) for _ in range(8)]
    expected = Digest("sha256", hashlib.sha256(b"".join(chunks)).hexdigest())
    with store.writer(expected, expected_size=8 << 16) as w:
        for c in chunks:
            assert w.write(memoryview(c)) == len(c)
        assert w.offset == 8 << 16
        assert not store.has(expected)  # nothing visible before commit
        assert w.commit() == expected
    assert store.read(expected) == b"".join(chunks)


def test_writer_discards_without_commit_or_on_error(store: ContentStore) -> None:
    with store.writer() as w:
        w.write(b"abandoned")
        assert len(_ingest_files(store)) == 1
    assert _ingest_files(store) == []
    with pytest.raises(RuntimeError), store.writer() as w:
        w.write(b"half")
        raise RuntimeError("client went away")
    assert _ingest_files(store) == []
    assert list(store.walk()) == []


def test_commit_is_idempotent_when_blob_exists(store: ContentStore) -> None:
    d = store.put(b"same")
    mtime = os.stat(store.root / "blobs" / "sha256" / d.hex).st_mtime_ns
    time.sleep(0.01)
    assert store.put(b"same") == d
    with store.writer(d) as w:
        w.write(b"same")
        assert w.commit() == d
    assert os.stat(store.root / "blobs" / "sha256" / d.hex).st_mtime_ns == mtime
    assert _ingest_files(store) == []


def test_closed_writer_refuses_more(store: ContentStore) -> None:
    w = store.writer()
    w.write(b"a")
    w.commit()
    with pytest.raises(InvalidArgument):
        w.write(b"b")
    with pytest.raises(InvalidArgument):
        w.commit()


def test_clean_ingest_removes_crash_leftovers(store: ContentStore) -> None:
    w = store.writer()
    w.write(b"interrupted")
    # a crash: the writer is never committed nor discarded
    w._fd, fd = -1, w._fd
    os.close(fd)
    w._done = True
    assert len(_ingest_files(store)) == 1
    assert store.clean_ingest() == 1
    assert _ingest_files(store) == []
    assert list(store.walk()) == []


def test_delete_and_walk(store: ContentStore) -> None:
    a, b = store.put(b"a"), store.put(b"bb")
    assert dict(store.walk()) == {a: 1, b: 2}
    store.delete(a)
    assert not store.has(a)
    assert dict(store.walk()) == {b: 2}
    (store.root / "blobs" / "sha256" / "not-a-digest").write_bytes(b"junk")
    assert dict(store.walk()) == {b: 2}


def test_sha512_expected(store: ContentStore) -> None:
    d = Digest("sha512", hashlib.sha512(b"x").hexdigest())
    assert store.put(b"x", expected=d) == d
    assert store.read(d) == b"x"


def test_reopen_sees_blobs(store: ContentStore) -> None:
    d = store.put(b"persist")
    again = ContentStore(store.root)
    assert again.read(d) == b"persist"


def test_large_write_throughput(store: ContentStore) -> None:
    data = os.urandom(1 << 20) * 64  # 64 MiB
    start = time.monotonic()
    with store.writer(expected_size=len(data)) as w:
        for i in range(0, len(data), 1 << 22):
            w.write(memoryview(data)[i : i + (1 << 22)])
        d = w.commit()
    elapsed = time.monotonic() - start
    assert store.size(d) == len(data)
    assert elapsed < 5, f"64 MiB took {elapsed:.2f}s"


def _digest_of(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


def test_resumable_writer_continues_a_broken_download(store: ContentStore) -> None:
    data = os.urandom(3 << 20)
    digest = _digest_of(data)
    with store.resumable_writer(digest, len(data)) as w:
        assert w.offset == 0
        w.write(data[:1_000_000])  # the connection breaks here: leaving the block keeps the partial file
    assert store.clean_ingest() == 0  # a daemon restart keeps it too
    with store.resumable_writer(digest, len(data)) as w:
        assert w.offset == 1_000_000
        w.write(data[w.offset:])
        assert w.commit() == digest
    assert store.read(digest) == data
    assert os.listdir(store.root / "ingest") == []


def test_resumable_writer_never_keeps_or_serves_corrupt_content(store: ContentStore) -> None:
    data = b"x" * 5000
    digest = _digest_of(data)
    with store.resumable_writer(digest, len(data)) as w:
        w.write(b"y" * 100)  # a wrong prefix (a crash of the machine, a lying server)
    with store.resumable_writer(digest, len(data)) as w:
        assert w.offset == 100
        w.write(data[100:])
        with pytest.raises(InvalidArgument, match="unexpected commit digest"):
            w.commit()
    assert not store.has(digest) and os.listdir(store.root / "ingest") == []
    with store.resumable_writer(digest, len(data)) as w:  # the next attempt starts over and succeeds
        assert w.offset == 0
        w.write(data)
        w.commit()
    assert store.read(digest) == data


def test_resumable_writer_busy_and_oversized_partials(store: ContentStore) -> None:
    data = b"z" * 1000
    digest = _digest_of(data)
    with store.resumable_writer(digest, len(data)) as first:
        first.write(data[:10])
        with store.resumable_writer(digest, len(data)) as second:  # held by the first: a private temp file
            assert second.offset == 0
            second.write(data)
            second.commit()
    partial = store.root / "ingest" / f"sha256-{digest.hex}.partial"
    partial.write_bytes(b"z" * 2000)  # longer than the blob: cannot be a prefix of it
    with store.resumable_writer(digest, len(data)) as w:
        assert w.offset == 0
    old = time.time() - 2 * 24 * 3600
    os.utime(partial, (old, old))
    assert store.clean_ingest() == 1 and not partial.exists()
