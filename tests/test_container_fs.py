"""docker cp / diff / export / commit against berthd with the real docker CLI and docker-py, the static docker-cp
symlink cases of security.md §1.3, and the pure pieces of ``berth.engine.archive`` on temporary trees."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import tarfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from berth.engine import archive
from berth.kernel import cgroups
from berth.runtime import linux
from berth.runtime.monitor import runtime_root
from berth.testing import tarcraft
from berth.testing.daemon import request
from berth.testing.rootfs import FIXTURES

BUSYBOX = FIXTURES / "busybox-docker-save.tar"


@pytest.fixture(scope="module")
def daemon(shared_berthd: Any) -> Any:
    shared_berthd.docker("load", "-i", str(BUSYBOX))
    return shared_berthd


def _name() -> str:
    return f"x3-{uuid.uuid4().hex[:10]}"


def _cat(daemon: Any, ctr: str, path: str) -> bytes:
    """A file's bytes read back through GET archive (docker-py)."""
    chunks, st = daemon.client().api.get_archive(ctr, path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tf:
        member = tf.next()
        assert member is not None and member.isfile(), st
        data = tf.extractfile(member)
        assert data is not None
        return data.read()


def _cgroup_frozen(daemon: Any, cid: str) -> bool:
    return cgroups.open_cgroup(linux.state(cid, runtime_root(daemon.exec_root)).cgroup_path).frozen()


def _head(daemon: Any, ctr: str, path: str) -> tuple[int, dict[str, Any] | None]:
    status, headers, _ = request(daemon.http(), "HEAD", f"/containers/{ctr}/archive?path={path}")
    raw = headers.get(archive.STAT_HEADER.lower())
    return status, json.loads(base64.b64decode(raw)) if raw else None


# --- the pure pieces ------------------------------------------------------------------------------------------------


def test_request_split_follows_docker_resolve_path() -> None:
    r = archive._Request.parse("/data/hello.txt")
    assert (r.parent, r.base, r.go_base) == (("data",), "hello.txt", "hello.txt")
    r = archive._Request.parse("data/dir/")
    assert (r.parent, r.base, r.go_base, r.shown) == (("data", "dir"), "", "dir", "/data/dir/")
    r = archive._Request.parse("/data/dir/.")
    assert (r.parent, r.base, r.go_base) == (("data", "dir"), "", ".")
    r = archive._Request.parse("/a/../../b")
    assert (r.parent, r.base) == ((), "b")
    assert archive._Request.parse("/").go_base == "/"
    with pytest.raises(archive.InvalidArgument):
        archive._Request.parse("")


def test_go_file_mode_and_times() -> None:
    assert archive.go_file_mode(stat.S_IFDIR | 0o755) == 2147484141
    assert archive.go_file_mode(stat.S_IFREG | 0o644) == 0o644
    assert archive.go_file_mode(stat.S_IFLNK | 0o777) == (1 << 27) | 0o777
    assert archive.go_file_mode(stat.S_IFREG | stat.S_ISUID | 0o755) == (1 << 23) | 0o755
    assert archive.rfc3339_nano(1_704_067_200 * 10**9) == "2024-01-01T00:00:00Z"
    assert archive.rfc3339_nano(1_704_067_200 * 10**9 + 120_000_000) == "2024-01-01T00:00:00.12Z"


def test_canonical_stays_in_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "real" / "sub").mkdir(parents=True)
    os.symlink("/real", root / "abs")
    os.symlink("../../../../real", root / "rel")
    os.symlink("/", root / "top")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert archive.canonical(fd, ["abs", "sub"]) == ["real", "sub"]
        assert archive.canonical(fd, ["rel", "sub", "missing", "..", "x"]) == ["real", "sub", "x"]
        assert archive.canonical(fd, ["top", "..", "..", "real"]) == ["real"]
    finally:
        os.close(fd)


def test_tree_and_overlay_changes(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    for base in (old, new):
        (base / "etc").mkdir(parents=True)
        (base / "etc" / "passwd").write_text("root\n")
        (base / "etc" / "group").write_text("root\n")
        (base / "keep").mkdir()
        os.utime(base / "etc" / "passwd", (1, 1))
    (new / "etc" / "group").unlink()
    (new / "etc" / "passwd").write_text("root\nnew\n")
    (new / "added").mkdir()
    (new / "added" / "f").write_text("x")
    changes = archive.tree_changes(old, new)
    assert changes == [
        {"Path": "/added", "Kind": 1}, {"Path": "/added/f", "Kind": 1}, {"Path": "/etc", "Kind": 0},
        {"Path": "/etc/group", "Kind": 2}, {"Path": "/etc/passwd", "Kind": 0},
    ]
    assert [c["Kind"] for c in archive.tree_changes(None, new)] == [1] * 5


@pytest.mark.root
def test_overlay_changes_whiteouts(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc" / "group").write_text("g")
    (lower / "etc" / "passwd").write_text("p")
    (lower / "tmp").mkdir()
    (upper / "etc").mkdir(parents=True)
    os.mknod(upper / "etc" / "group", stat.S_IFCHR | 0o600, 0)  # overlay's whiteout
    (upper / "etc" / "passwd").write_text("p2")
    (upper / "tmp").mkdir()
    (upper / "tmp" / "new").write_text("n")
    got = archive.overlay_changes(upper, (lower,))
    assert {"Path": "/etc/group", "Kind": 2} in got and {"Path": "/etc/passwd", "Kind": 0} in got
    assert {"Path": "/tmp/new", "Kind": 1} in got and {"Path": "/tmp", "Kind": 0} in got


# --- docker cp ------------------------------------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.docker_cli
def test_cp_file_and_dir_both_directions_running(daemon: Any, tmp_path: Path) -> None:
    ctr = _name()
    daemon.docker("run", "-d", "--name", ctr, "busybox", "sleep", "300")
    try:
        (tmp_path / "hello.txt").write_text("hello\n")
        ctx = tmp_path / "ctx"
        (ctx / "sub").mkdir(parents=True)
        (ctx / "a.txt").write_text("a\n")
        (ctx / "sub" / "b").write_text("b\n")
        os.symlink("a.txt", ctx / "link")
        daemon.docker("cp", str(tmp_path / "hello.txt"), f"{ctr}:/tmp/")
        daemon.docker("cp", str(ctx), f"{ctr}:/tmp/newdir")  # missing destination: HEAD 404, PUT to the parent
        daemon.docker("cp", str(ctx), f"{ctr}:/tmp/newdir")  # existing destination: lands in newdir/ctx
        assert _cat(daemon, ctr, "/tmp/hello.txt") == b"hello\n"
        assert _cat(daemon, ctr, "/tmp/newdir/sub/b") == b"b\n"
        assert _cat(daemon, ctr, "/tmp/newdir/ctx/a.txt") == b"a\n"

        out = tmp_path / "out"
        out.mkdir()
        daemon.docker("cp", f"{ctr}:/tmp/hello.txt", str(out / "copy.txt"))
        daemon.docker("cp", f"{ctr}:/tmp/newdir", str(out / "back"))
        daemon.docker("cp", f"{ctr}:/tmp/newdir/.", str(out / "contents"))
        assert (out / "copy.txt").read_text() == "hello\n"
        assert (out / "back" / "sub" / "b").read_text() == "b\n"
        assert os.readlink(out / "back" / "link") == "a.txt"
        assert (out / "contents" / "a.txt").read_text() == "a\n"

        res = daemon.docker("cp", f"{ctr}:/tmp/nothere", str(out), check=False)
        assert res.returncode != 0 and "Could not find the file /tmp/nothere in container" in res.stderr
        res = daemon.docker("cp", str(tmp_path / "hello.txt"), f"{ctr}:/nodir/sub/x", check=False)
        assert res.returncode != 0

        daemon.docker("commit", ctr)  # pauses and resumes it
        info = json.loads(daemon.docker("inspect", ctr).stdout)[0]
        assert info["State"]["Status"] == "running" and _cgroup_frozen(daemon, info["Id"]) is False
    finally:
        daemon.docker("rm", "-f", ctr, check=False)


@pytest.mark.root
@pytest.mark.docker_cli
def test_cp_to_and_from_stopped_container(daemon: Any, tmp_path: Path) -> None:
    ctr = _name()
    daemon.docker("create", "--name", ctr, "--user", "1234:5678", "busybox", "cat", "/tmp/in.txt")
    try:
        (tmp_path / "local.txt").write_text("from the host\n")
        daemon.docker("cp", str(tmp_path / "local.txt"), f"{ctr}:/tmp/in.txt")
        daemon.docker("cp", "-a", str(tmp_path / "local.txt"), f"{ctr}:/tmp/owned.txt")
        assert daemon.docker("start", "-a", ctr).stdout == "from the host\n"
        chunks, _ = daemon.client().api.get_archive(ctr, "/tmp/owned.txt")
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tf:
            owned = tf.getmember("owned.txt")
        assert (owned.uid, owned.gid) == (1234, 5678)
        daemon.docker("cp", f"{ctr}:/etc/passwd", str(tmp_path / "passwd"))
        assert (tmp_path / "passwd").read_text().startswith("root:")
        res = daemon.docker("cp", f"{ctr}:/tmp/in.txt", "-")
        with tarfile.open(fileobj=io.BytesIO(res.stdout.encode())) as tf:
            assert tf.getnames() == ["in.txt"]
    finally:
        daemon.docker("rm", "-f", ctr, check=False)


@pytest.mark.root
@pytest.mark.docker_cli
def test_path_stat_header(daemon: Any) -> None:
    ctr = _name()
    daemon.docker("run", "--name", ctr, "busybox", "sh", "-c", "mkdir /data && echo hello > /data/hello.txt "
                  "&& ln -s /data /dlink")
    try:
        status, st = _head(daemon, ctr, "/data/hello.txt")
        assert status == 200 and st is not None
        assert (st["name"], st["size"], st["mode"], st["linkTarget"]) == ("hello.txt", 6, 0o644, "")
        assert st["mtime"].endswith("Z")
        status, st = _head(daemon, ctr, "/data/")
        assert status == 200 and st is not None and st["mode"] == 2147484141 and st["name"] == "data"
        status, st = _head(daemon, ctr, "/dlink")
        assert status == 200 and st is not None and st["mode"] & (1 << 27) and st["linkTarget"] == "/data"
        assert _head(daemon, ctr, "/data/missing") == (404, None)
        status, _, body = request(daemon.http(), "GET", f"/containers/{ctr}/archive?path=/nope")
        assert status == 404 and b"Could not find the file /nope in container" in body
        status, _, _ = request(daemon.http(), "HEAD", f"/containers/{ctr}/archive?path=")
        assert status == 400
    finally:
        daemon.docker("rm", "-f", ctr, check=False)


@pytest.mark.root
@pytest.mark.docker_cli
def test_cp_through_container_symlinks_stays_in_container(daemon: Any, tmp_path: Path) -> None:
    """security.md §1.3 static cases: /test -> /tmp, an absolute symlink component, a relative one that climbs."""
    marker = f"berth-x3-{uuid.uuid4().hex}"
    (tmp_path / marker).write_text("payload\n")
    host_tmp = Path("/tmp") / marker
    stopped = _name()
    daemon.docker("run", "--name", stopped, "busybox", "sh", "-c",
                  "ln -s /tmp /test && ln -s / /rootlink && ln -s ../../../../../../../tmp /esc")
    running = _name()
    daemon.docker("run", "-d", "--name", running, "busybox", "sleep", "300")
    try:
        links = tarcraft.tar([tarcraft.symlink("test", "/tmp"), tarcraft.symlink("rootlink", "/"),
                              tarcraft.symlink("esc", "../../../../../../../tmp")])
        assert daemon.client().api.put_archive(running, "/", links)
        for ctr in (stopped, running):
            daemon.docker("cp", str(tmp_path / marker), f"{ctr}:/test")
            assert _cat(daemon, ctr, f"/tmp/{marker}") == b"payload\n"
            for dest in ("/rootlink/tmp/", "/esc/"):
                daemon.docker("cp", str(tmp_path / marker), f"{ctr}:{dest}")
            assert not host_tmp.exists(), "docker cp followed a container symlink to the host"
            _, st = _head(daemon, ctr, "/esc")
            assert st is not None and st["linkTarget"] == "/tmp"
    finally:
        daemon.docker("rm", "-f", stopped, running, check=False)
        if host_tmp.exists():
            host_tmp.unlink()


@pytest.mark.root
@pytest.mark.docker_cli
def test_hostile_put_and_get_archive(daemon: Any, tmp_path: Path) -> None:
    """A tar that plants a symlink and writes through it, names that climb out, and reads through a symlink to a
    host path: everything resolves inside the container."""
    marker = f"berth-x3-{uuid.uuid4().hex}"
    secret = Path("/tmp") / f"{marker}-secret"
    secret.write_text("host secret\n")
    ctr = _name()
    daemon.docker("run", "-d", "--name", ctr, "busybox", "sleep", "300")
    api = daemon.client().api
    try:
        evil = tarcraft.tar([tarcraft.symlink("evil", "/tmp"), tarcraft.file(f"evil/{marker}", b"x")])
        assert api.put_archive(ctr, "/", evil)
        assert not (Path("/tmp") / marker).exists()
        assert _cat(daemon, ctr, f"/tmp/{marker}") == b"x"
        # the extraction point itself a symlink to a directory: followed, inside the container (dockerd too)
        assert api.put_archive(ctr, "/evil", tarcraft.tar([tarcraft.file(f"{marker}-via-link", b"y")]))
        assert not (Path("/tmp") / f"{marker}-via-link").exists()
        assert _cat(daemon, ctr, f"/tmp/{marker}-via-link") == b"y"

        climb = tarcraft.tar([tarcraft.file(f"../../../../tmp/{marker}-climb", b"x")])
        status, _, body = request(daemon.http(), "PUT", f"/containers/{ctr}/archive?path=/tmp", body=climb)
        assert status == 400 and b"outside of the destination" in body
        assert not (Path("/tmp") / f"{marker}-climb").exists()

        absolute = tarcraft.tar([tarcraft.file(f"/tmp/{marker}-abs", b"abs")])
        assert api.put_archive(ctr, "/etc", absolute)
        assert _cat(daemon, ctr, f"/etc/tmp/{marker}-abs") == b"abs"

        api.put_archive(ctr, "/", tarcraft.tar([tarcraft.symlink("leak", str(secret))]))
        status, _, body = request(daemon.http(), "GET", f"/containers/{ctr}/archive?path=/leak/.")
        assert status == 404 and b"host secret" not in body
        chunks, st = api.get_archive(ctr, "/leak")
        data = b"".join(chunks)
        assert b"host secret" not in data and st["linkTarget"] == str(secret)
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            assert [(m.name, m.issym()) for m in tf.getmembers()] == [("leak", True)]

        status, _, body = request(daemon.http(), "PUT", f"/containers/{ctr}/archive?path=/bin/sh",
                                  body=tarcraft.tar([tarcraft.file("x", b"x")]))
        assert status == 400 and b"extraction point is not a directory" in body
        status, _, _ = request(daemon.http(), "PUT", f"/containers/{ctr}/archive?path=/tmp", body=b"not a tar")
        assert status == 400
    finally:
        daemon.docker("rm", "-f", ctr, check=False)
        secret.unlink()


@pytest.mark.root
@pytest.mark.docker_cli
def test_symlink_exchange_race(daemon: Any) -> None:
    """CVE-2018-15664's race (security.md §1.3): the container keeps swapping /dir for a symlink to / or /tmp while
    the host copies into and out of /dir; nothing may land on, or be read from, the host."""
    marker = f"berth-x3-race-{uuid.uuid4().hex}"
    host_file = Path("/tmp") / marker
    host_file.write_text("HOST\n")
    ctr = _name()
    script = (f"mkdir /dir && echo CTR > /dir/{marker} && while :; do mv /dir /dir_; ln -s /tmp /dir; rm /dir; "
              "ln -s / /dir; rm /dir; mv /dir_ /dir; done")
    daemon.docker("run", "-d", "--name", ctr, "busybox", "sh", "-c", script)
    payload = tarcraft.tar([tarcraft.file(f"{marker}-in", b"x")])
    try:
        deadline = time.monotonic() + 2.0
        puts = gets = 0
        while time.monotonic() < deadline:
            status, _, _ = request(daemon.http(), "PUT", f"/containers/{ctr}/archive?path=/dir", body=payload)
            puts += status == 200
            status, _, body = request(daemon.http(), "GET", f"/containers/{ctr}/archive?path=/dir/{marker}")
            gets += status == 200
            assert b"HOST" not in body
        assert not (Path("/tmp") / f"{marker}-in").exists() and not (Path("/") / f"{marker}-in").exists()
        assert host_file.read_text() == "HOST\n"
        assert puts + gets > 0
    finally:
        daemon.docker("rm", "-f", ctr, check=False)
        host_file.unlink()
        for leftover in (Path("/tmp") / f"{marker}-in", Path("/") / f"{marker}-in"):
            if leftover.exists():
                leftover.unlink()


@pytest.mark.root
@pytest.mark.docker_cli
def test_no_overwrite_dir_non_dir(daemon: Any, tmp_path: Path) -> None:
    ctr = _name()
    daemon.docker("create", "--name", ctr, "busybox", "true")
    try:
        (tmp_path / "tmp").write_text("a file named like a directory\n")
        res = daemon.docker("cp", str(tmp_path / "tmp"), f"{ctr}:/", check=False)
        assert res.returncode != 0 and "cannot overwrite directory" in res.stderr
        status, _, body = request(
            daemon.http(), "PUT", f"/containers/{ctr}/archive?path=/bin&noOverwriteDirNonDir=true",
            body=tarcraft.tar([tarcraft.directory("sh")]))
        assert status == 400 and b"cannot overwrite non-directory" in body
    finally:
        daemon.docker("rm", "-f", ctr, check=False)


# --- diff, export, commit -------------------------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.docker_cli
def test_diff_export_commit(daemon: Any, tmp_path: Path) -> None:
    ctr = _name()
    repo = f"x3commit{uuid.uuid4().hex[:8]}"
    daemon.docker("run", "--name", ctr, "busybox", "sh", "-c",
                  "echo new > /tmp/new && rm /etc/group && echo more >> /etc/passwd")
    try:
        lines = set(daemon.docker("diff", ctr).stdout.splitlines())
        assert {"C /etc", "D /etc/group", "C /etc/passwd", "C /tmp", "A /tmp/new"} <= lines
        assert not {"A /etc/hostname", "A /etc/hosts", "A /etc/resolv.conf"} & lines  # init-layer mount points
        kinds = {c["Path"]: c["Kind"] for c in daemon.client().api.diff(ctr)}
        assert kinds["/tmp/new"] == 1 and kinds["/etc/group"] == 2 and kinds["/etc/passwd"] == 0

        daemon.docker("export", "-o", str(tmp_path / "exp.tar"), ctr)
        with tarfile.open(tmp_path / "exp.tar") as tf:
            names = set(tf.getnames())
            new = tf.extractfile("tmp/new")
            assert new is not None and new.read() == b"new\n"
        assert {"bin/busybox", "etc/passwd", "tmp/new"} <= names and "etc/group" not in names

        image_id = daemon.docker("commit", "-c", 'CMD ["cat", "/tmp/new"]', "-m", "a message", "-a", "someone",
                                 ctr, f"{repo}:v1").stdout.strip()
        assert image_id.startswith("sha256:")
        assert daemon.docker("run", "--rm", f"{repo}:v1").stdout == "new\n"
        assert daemon.docker("run", "--rm", f"{repo}:v1", "cat", "/etc/group", check=False).returncode == 1
        info = json.loads(daemon.docker("image", "inspect", f"{repo}:v1").stdout)[0]
        base = json.loads(daemon.docker("image", "inspect", "busybox").stdout)[0]
        assert info["Id"] == image_id and info["Comment"] == "a message" and info["Author"] == "someone"
        assert info["Config"]["Cmd"] == ["cat", "/tmp/new"]
        assert len(info["RootFS"]["Layers"]) == len(base["RootFS"]["Layers"]) + 1
        history = daemon.client().api.history(f"{repo}:v1")
        assert history[0]["Comment"] == "a message"
        assert _top_layer_names(daemon, f"{repo}:v1", tmp_path) >= {"tmp/new", "etc/passwd", "etc/.wh.group"}
        assert not {"etc/hostname", "etc/hosts", "etc/resolv.conf", "dev/console"} & _top_layer_names(
            daemon, f"{repo}:v1", tmp_path)  # the runtime's mount points stay out of the layer (init layer)

        # docker-py: no changes, a body config, no tag; then an unchanged container of the new image diffs empty
        plain = daemon.client().api.commit(ctr, conf={"Labels": {"x3": "yes"}})
        labels = daemon.client().api.inspect_image(plain["Id"])["Config"]["Labels"]
        assert labels == {"x3": "yes"}
        fresh = _name()
        daemon.docker("create", "--name", fresh, f"{repo}:v1")
        assert daemon.client().api.diff(fresh) is None
        daemon.docker("start", "-a", fresh)
        assert daemon.client().api.diff(fresh) is None  # only the runtime's mount points changed
        daemon.docker("rm", fresh)
        daemon.docker("rmi", f"{repo}:v1", plain["Id"])
    finally:
        daemon.docker("rm", "-f", ctr, check=False)


def _top_layer_names(daemon: Any, image: str, tmp_path: Path) -> set[str]:
    """The entry names of an image's top layer, read from ``docker save``."""
    daemon.docker("save", "-o", str(tmp_path / "saved.tar"), image)
    with tarfile.open(tmp_path / "saved.tar") as outer:
        manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        layer = outer.extractfile(manifest[0]["Layers"][-1])
        assert layer is not None
        with tarfile.open(fileobj=layer) as inner:
            return {n.rstrip("/") for n in inner.getnames()}


@pytest.mark.root
@pytest.mark.docker_cli
def test_copy_snapshotter_cp_diff_commit(berthd_factory: Any, tmp_path: Path) -> None:
    """The same verbs where snapshots are full copies: diff is a tree compare, commit a tree diff."""
    daemon = berthd_factory(storage_driver="copy")
    daemon.docker("load", "-i", str(BUSYBOX))
    daemon.docker("run", "--name", "c1", "busybox", "sh", "-c", "echo new > /tmp/new && rm /etc/group")
    lines = set(daemon.docker("diff", "c1").stdout.splitlines())
    assert lines == {"C /etc", "D /etc/group", "C /tmp", "A /tmp/new"}
    (tmp_path / "in.txt").write_text("copied\n")
    daemon.docker("cp", str(tmp_path / "in.txt"), "c1:/tmp/")
    assert _cat(daemon, "c1", "/tmp/in.txt") == b"copied\n"
    daemon.docker("commit", "c1", "x3copy:latest")
    assert _top_layer_names(daemon, "x3copy:latest", tmp_path) == {"etc", "etc/.wh.group", "tmp", "tmp/new",
                                                                    "tmp/in.txt"}
    out = daemon.docker("run", "--rm", "x3copy", "sh", "-c", "cat /tmp/new /tmp/in.txt; ls /etc/group", check=False)
    assert out.stdout == "new\ncopied\n" and out.returncode == 1
