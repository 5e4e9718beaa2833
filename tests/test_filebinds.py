"""Single-file binds that follow the file (moby#15793): inotify and the new mount API in berth.kernel, the
follower on a plain mount namespace, and end to end through the real docker CLI (mv/editor replace, in-place
write, :ro kept, a vanished file, daemon SIGKILL + restart, runc, watches and mounts released at stop)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from berth.engine.filebinds import FileBind, file_binds, follow
from berth.kernel import inotify
from berth.kernel import mount as kmount
from berth.runtime import oci_cli
from berth.runtime.state import process_start_time
from berth.testing.rootfs import FIXTURES
from berth.testing.waiting import until

BUSYBOX = FIXTURES / "busybox-docker-save.tar"


def _replace(path: Path, text: str) -> None:
    """What ``mv`` and editors do: a new inode under the old name."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
    tmp.write_text(text)
    os.rename(tmp, path)


# --- kernel pieces ------------------------------------------------------------------------------------------

def test_inotify_reports_a_rename_into_a_watched_directory(tmp_path: Path) -> None:
    fd = inotify.init()
    try:
        wd = inotify.add_watch(fd, tmp_path, inotify.IN_MOVED_TO | inotify.IN_CREATE | inotify.IN_ONLYDIR)
        assert inotify.read_events(fd) == []
        (tmp_path / "new").write_text("x")
        os.rename(tmp_path / "new", tmp_path / "conf.txt")
        events = inotify.read_events(fd)
        assert [(e.wd, e.name) for e in events] == [(wd, "new"), (wd, "conf.txt")]
        assert events[0].mask & inotify.IN_CREATE and events[1].mask & inotify.IN_MOVED_TO
        assert inotify.add_watch(fd, tmp_path, inotify.IN_CREATE) == wd  # one watch per inode
        inotify.rm_watch(fd, wd)
        assert any(e.mask & inotify.IN_IGNORED for e in inotify.read_events(fd))
        with pytest.raises(OSError):
            inotify.add_watch(fd, tmp_path / "conf.txt", inotify.IN_CREATE | inotify.IN_ONLYDIR)
    finally:
        os.close(fd)


def test_file_binds_are_the_regular_file_sources(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    (tmp_path / "d").mkdir()
    host = {"Binds": [f"{tmp_path}/f:/etc/f:ro", f"{tmp_path}/d:/d"],
            "Mounts": [{"Type": "bind", "Source": f"{tmp_path}/f", "Target": "/g"},
                       {"Type": "tmpfs", "Target": "/t"}]}
    assert file_binds(host) == [FileBind(f"{tmp_path}/f", "/g", False), FileBind(f"{tmp_path}/f", "/etc/f", True)]
    assert file_binds({"Binds": ["relative:/x"]}) == []  # not valid here: nothing to follow
    assert file_binds({"Binds": ["vol:/data", f"{tmp_path}/f:/f"]}) == [FileBind(f"{tmp_path}/f", "/f", False)]
    assert file_binds({}) == []


# --- the follower on a bare mount namespace --------------------------------------------------------------------

@pytest.fixture
def private_ns(tmp_path: Path) -> Iterator[tuple[Path, Path, int]]:
    """A process in its own mount namespace with ``src/conf.txt`` bound read-only on ``target``."""
    if os.geteuid() != 0:
        pytest.skip("needs root: mount namespaces")
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.txt").write_text("v1\n")
    target = tmp_path / "target"
    target.write_text("")
    script = (f"mount --bind {src}/conf.txt {target} && mount -o remount,bind,ro {target} && echo ok && "
              "exec sleep 60")
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ok\n"
        yield src / "conf.txt", target, proc.pid
    finally:
        proc.kill()
        proc.wait()


def _in_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread of its own, as the daemon does (setns leaves that thread in the container)."""
    box: list[Any] = []
    t = threading.Thread(target=lambda: box.append(fn()))
    t.start()
    t.join()
    return box[0]


def _mountinfo(pid: int, point: Path) -> list[str]:
    return [ln for ln in Path(f"/proc/{pid}/mountinfo").read_text().splitlines() if ln.split(" ")[4] == str(point)]


@pytest.mark.root
def test_follow_rebinds_read_only_with_no_leftovers(private_ns: tuple[Path, Path, int]) -> None:
    src, target, pid = private_ns
    seen = Path(f"/proc/{pid}/root{target}")
    bind = FileBind(str(src), str(target), readonly=True)
    start = process_start_time(pid)
    assert _in_thread(lambda: follow(bind, pid, start)).result == "same"
    _replace(src, "v2\n")
    assert seen.read_text() == "v1\n"  # what every bind mount does: the old inode stays
    assert _in_thread(lambda: follow(bind, pid, start)).result == "rebound"
    assert seen.read_text() == "v2\n"
    lines = _mountinfo(pid, target)
    assert len(lines) == 1 and lines[0].split(" ")[5].startswith("ro"), lines  # one mount, still read-only
    assert "shared:" not in lines[0]
    assert not kmount.is_mountpoint(target)  # the daemon's own namespace never sees it
    _replace(src, "v3\n")
    assert _in_thread(lambda: follow(bind, pid, (start or 0) + 1)).result == "gone"  # a reused PID is no target
    os.unlink(src)
    assert _in_thread(lambda: follow(bind, pid, start)).result == "missing"
    assert seen.read_text() == "v2\n"  # the last content stays until the name comes back


# --- end to end ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def daemon(shared_berthd: Any) -> Any:
    shared_berthd.docker("load", "-i", str(BUSYBOX))
    return shared_berthd


@pytest.fixture
def www(tmp_path: Path) -> Path:
    d = tmp_path / "www"
    d.mkdir()
    (d / "conf.txt").write_text("v1\n")
    return d


def _inotify_watches(pid: int) -> int:
    count = 0
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        with contextlib.suppress(OSError):
            count += sum(1 for ln in info.read_text().splitlines() if ln.startswith("inotify wd:"))
    return count


def _fds_under(pid: int, root: Path) -> list[str]:
    out = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith(str(root)):
                out.append(target)
    return out


def _cat(daemon: Any, name: str, path: str = "/www/conf.txt") -> str:
    res = daemon.docker("exec", name, "cat", path, check=False)
    return str(res.stdout)


def _served(daemon: Any, name: str) -> str:
    res = daemon.docker("exec", name, "wget", "-qO-", "http://127.0.0.1:8080/conf.txt", check=False)
    return str(res.stdout)


def _run_httpd(daemon: Any, www: Path, *extra: str) -> str:
    name = f"fb-{uuid.uuid4().hex[:8]}"
    # NET_ADMIN: to bring lo up for httpd whatever the network setup gives the container
    daemon.docker("run", "-d", "--name", name, "--cap-add", "NET_ADMIN", *extra, "-v",
                  f"{www}/conf.txt:/www/conf.txt:ro", "busybox", "sh", "-c",
                  "ip link set lo up; exec httpd -f -p 127.0.0.1:8080 -h /www")
    return name


@pytest.mark.root
@pytest.mark.docker_cli
def test_replaced_file_is_followed(daemon: Any, www: Path) -> None:
    conf = www / "conf.txt"
    name = _run_httpd(daemon, www)
    try:
        assert _cat(daemon, name) == "v1\n"
        # mv over the name (the acceptance in moby#15793): Docker keeps serving v1
        (www / "new").write_text("v2\n")
        os.rename(www / "new", conf)
        until(lambda: _cat(daemon, name) == "v2\n", what="v2 after mv")
        until(lambda: _served(daemon, name) == "v2\n", what="httpd serving v2")
        # an editor's save: temp file, then rename
        _replace(conf, "v3\n")
        until(lambda: _cat(daemon, name) == "v3\n", what="v3 after an editor-style save")
        # in place: the same inode, visible at once
        conf.write_text("v4\n")
        assert _cat(daemon, name) == "v4\n"
        # :ro is kept by the new bind
        res = daemon.docker("exec", name, "sh", "-c", "echo x > /www/conf.txt", check=False)
        assert res.returncode != 0 and "Read-only file system" in res.stderr
        mounts = daemon.docker("exec", name, "grep", "/www/conf.txt", "/proc/self/mountinfo").stdout.splitlines()
        assert len(mounts) == 1, mounts  # no stacked stale binds
        # the name vanishes: the last content stays; it comes back: followed again
        conf.unlink()
        time.sleep(0.3)
        assert _cat(daemon, name) == "v4\n"
        (www / "back").write_text("v5\n")
        os.rename(www / "back", conf)
        until(lambda: _cat(daemon, name) == "v5\n", what="v5 after the file came back")
        assert _fds_under(daemon.pid, www) == []  # no open_tree fd left behind
        assert _inotify_watches(daemon.pid) >= 1
        daemon.docker("stop", "-t", "0", name)
        until(lambda: _inotify_watches(daemon.pid) == 0, what="the watch dropped at stop")
        # a restarted container is followed again
        daemon.docker("start", name)
        _replace(conf, "v6\n")
        until(lambda: _cat(daemon, name) == "v6\n", what="v6 after docker start")
    finally:
        daemon.docker("rm", "-f", name, check=False)
    until(lambda: _inotify_watches(daemon.pid) == 0, what="no watch once the container is gone")


@pytest.mark.root
@pytest.mark.docker_cli
def test_runc_container_follows_too(daemon: Any, www: Path) -> None:
    if oci_cli.binary_for("runc") is None:
        pytest.skip("runc is not installed (apt-get install runc)")
    name = _run_httpd(daemon, www, "--runtime", "runc")
    try:
        assert _cat(daemon, name) == "v1\n"
        _replace(www / "conf.txt", "v2\n")
        until(lambda: _cat(daemon, name) == "v2\n", what="v2 in a runc container")
    finally:
        daemon.docker("rm", "-f", name, check=False)


@pytest.mark.root
@pytest.mark.docker_cli
def test_followed_across_a_daemon_crash(berthd: Any, www: Path) -> None:
    berthd.docker("load", "-i", str(BUSYBOX))
    conf = www / "conf.txt"
    name = _run_httpd(berthd, www)
    try:
        assert _cat(berthd, name) == "v1\n"
        berthd.kill()
        _replace(conf, "v2\n")  # while no daemon watches: applied when the next one starts
        berthd.start()
        until(lambda: _cat(berthd, name) == "v2\n", what="the replacement made while berthd was down")
        _replace(conf, "v3\n")
        until(lambda: _cat(berthd, name) == "v3\n", what="v3 after the restart")
    finally:
        berthd.docker("rm", "-f", name, check=False)
