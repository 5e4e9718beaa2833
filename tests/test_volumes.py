"""Volumes as objects: the local driver, the records, mount planning, and the ``/volumes`` API through the real
docker CLI, docker-py and the berth CLI (one berthd for the API tests)."""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from berth.cli.command import Context
from berth.cli.main import execute
from berth.engine.spec import MountPoint, bind_mount_point, mount_point_from_api, plan_mounts
from berth.errors import InvalidArgument, NotImplementedYet
from berth.metadata.volumes import VolumeDB, VolumeRecord
from berth.testing import rootfs
from berth.testing.daemon import BerthDaemon, running
from berth.volumes.store import LocalDriver, validate_name, validate_options

# --- the local driver ---------------------------------------------------------------------------------------------


def test_names_and_options_follow_the_local_driver() -> None:
    validate_name("ab")
    with pytest.raises(InvalidArgument, match="volume name is too short"):
        validate_name("v")
    with pytest.raises(InvalidArgument, match=r'^"a/b" includes invalid characters for a local volume name'):
        validate_name("a/b")
    validate_options({"type": "tmpfs", "device": "tmpfs", "o": "size=1m", "uid": "1000", "mode": "0750"})
    with pytest.raises(InvalidArgument, match=r'^invalid option: "bogus"$'):
        validate_options({"bogus": "1"})
    with pytest.raises(InvalidArgument, match=r'^missing required option: "device"$'):
        validate_options({"type": "tmpfs"})
    with pytest.raises(InvalidArgument, match="quota size requested but no quota support"):
        validate_options({"size": "10m"})
    with pytest.raises(InvalidArgument, match="not a numeric ID"):
        validate_options({"uid": "alice"})
    with pytest.raises(InvalidArgument, match="not an octal file mode"):
        validate_options({"mode": "999"})


def test_driver_layout_size_and_remove(tmp_path: Path) -> None:
    drv = LocalDriver(tmp_path / "volumes")
    data = drv.create("vol1", {})
    assert data == tmp_path / "volumes" / "vol1" / "_data" and data.is_dir()
    assert oct((tmp_path / "volumes" / "vol1").stat().st_mode & 0o777) == "0o701"
    assert drv.is_empty("vol1") and drv.size("vol1") == 0
    (data / "a").write_bytes(b"x" * 100)
    os.link(data / "a", data / "hard")
    (data / "d").mkdir()
    (data / "d" / "b").write_bytes(b"y" * 10)
    os.symlink("/etc/passwd", data / "link")  # counted as the link itself, never followed
    assert drv.size("vol1") == 110 + len("/etc/passwd")
    assert drv.names() == ["vol1"]
    drv.remove("vol1")
    assert not (tmp_path / "volumes" / "vol1").exists() and Path("/etc/passwd").exists()


def test_fill_copies_in_root_and_keeps_metadata(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "only-in-image").write_text("img\n")
    (root / "data" / "sub").mkdir(parents=True)
    (root / "data" / "f").write_text("hello\n")
    os.chown(root / "data" / "f", 1000, 1001)
    os.chmod(root / "data" / "f", 0o4751)  # after chown, which clears set-id bits
    os.chown(root / "data", 1000, 1000)
    os.chmod(root / "data", 0o750)
    os.symlink("../f", root / "data" / "sub" / "rel")
    os.mkfifo(root / "data" / "fifo")
    os.symlink("/etc", root / "www")  # absolute: must mean the image's /etc
    os.symlink("../../../../../..", root / "up")  # climbs out: clamps at the root
    drv = LocalDriver(tmp_path / "volumes")
    drv.create("v1", {})
    assert drv.fill("v1", root, "/data")
    data = drv.path("v1")
    st = (data / "f").stat()
    assert (data / "f").read_text() == "hello\n" and (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (1000, 1001,
                                                                                                      0o4751)
    top = data.stat()
    assert (top.st_uid, top.st_gid, top.st_mode & 0o777) == (1000, 1000, 0o750)
    assert os.readlink(data / "sub" / "rel") == "../f"
    assert (data / "fifo").is_fifo()
    drv.create("v2", {})
    assert drv.fill("v2", root, "/www")
    assert sorted(os.listdir(drv.path("v2"))) == ["only-in-image"]
    drv.create("v3", {})
    assert drv.fill("v3", root, "/up/etc")  # resolves to the image's /etc, not the host's
    assert sorted(os.listdir(drv.path("v3"))) == ["only-in-image"]
    drv.create("v4", {})
    assert not drv.fill("v4", root, "/missing") and drv.is_empty("v4")


def test_volume_records(tmp_path: Path) -> None:
    db = VolumeDB(tmp_path / "berth.db")
    rec = VolumeRecord("vol1", "local", 1.5, {"a": "b"}, {"uid": "1"}, anonymous=True)
    assert db.insert(rec)
    assert not db.insert(VolumeRecord("vol1", "local", 2.0))
    assert db.get("vol1") == rec and db.get("nope") is None
    assert [r.name for r in db.all()] == ["vol1"]
    db.delete("vol1")
    assert db.all() == []
    db.close()


# --- mount planning (pure) ----------------------------------------------------------------------------------------


def test_bind_entries_become_mount_points() -> None:
    assert bind_mount_point("/a:/b:ro,rslave") == MountPoint("bind", "/b", "/a", mode="ro,rslave", rw=False,
                                                             propagation="rslave", create_source=True)
    assert bind_mount_point("named:/d") == MountPoint("volume", "/d", name="named", driver="local", mode="z")
    assert bind_mount_point("/anon") == MountPoint("volume", "/anon", driver="local", mode="z")
    assert bind_mount_point("n2:/d:ro,nocopy").no_copy
    with pytest.raises(InvalidArgument, match=r"field BindOptions must not be specified"):
        bind_mount_point("n2:/d:shared")
    with pytest.raises(InvalidArgument, match=r"field VolumeOptions must not be specified"):
        bind_mount_point("/a:/d:nocopy")
    with pytest.raises(InvalidArgument, match=r"^invalid volume specification: 'n:rel': invalid mount config for "
                                              r"type \"volume\": invalid mount path: 'rel' mount path must be "
                                              r"absolute$"):
        bind_mount_point("n:rel")


def test_api_mounts_become_mount_points(tmp_path: Path) -> None:
    mp = mount_point_from_api({"Type": "volume", "Source": "v9", "Target": "/d", "ReadOnly": True,
                               "VolumeOptions": {"NoCopy": True, "Labels": {"k": "v"},
                                                 "DriverConfig": {"Name": "local", "Options": {"uid": "5"}}}})
    assert (mp.name, mp.rw, mp.no_copy, mp.labels, mp.driver_options) == ("v9", False, True, (("k", "v"),),
                                                                          (("uid", "5"),))
    with pytest.raises(InvalidArgument, match=r'"volume": field BindOptions must not be specified'):
        mount_point_from_api({"Type": "volume", "Target": "/d", "BindOptions": {"Propagation": "shared"}})
    with pytest.raises(InvalidArgument, match=r'"bind": bind source path does not exist: /nope-x'):
        mount_point_from_api({"Type": "bind", "Source": "/nope-x", "Target": "/d"})
    tm = mount_point_from_api({"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {"SizeBytes": 1 << 20}})
    assert tm.tmpfs_options == "size=1m"
    assert MountPoint.from_record(mp.record()) == MountPoint("volume", "/d", name="v9", driver="local", mode="z",
                                                             rw=False, no_copy=True)


def test_plan_orders_sources_and_refuses_duplicates() -> None:
    other = [MountPoint("volume", "/shared", "/x/_data", "sv", "local", "z"),
             MountPoint("volume", "/data", "/y/_data", "old", "local")]
    plan = plan_mounts({"Volumes": {"/img": {}, "/data": {}}},
                       {"VolumesFrom": ["c1:ro"], "Binds": ["mine:/data"], "Tmpfs": {"/t": ""}},
                       lambda ref: other if ref == "c1" else [])
    by_dest = {p.destination: p for p in plan}
    assert sorted(by_dest) == ["/data", "/img", "/shared"]
    assert by_dest["/data"].name == "mine"  # the container's own mount wins over --volumes-from
    assert by_dest["/shared"].rw is False and by_dest["/shared"].no_copy
    assert by_dest["/img"].name == "" and by_dest["/img"].mode == ""
    with pytest.raises(InvalidArgument, match=r"^Duplicate mount point: /t$"):
        plan_mounts({}, {"Binds": ["/a:/t"], "Tmpfs": {"/t": ""}}, lambda ref: [])
    with pytest.raises(InvalidArgument, match=r"^invalid mode: shared$"):
        plan_mounts({}, {"VolumesFrom": ["c1:shared"]}, lambda ref: [])
    with pytest.raises(NotImplementedYet):
        plan_mounts({}, {"Mounts": [{"Type": "volume", "Target": "/d", "VolumeOptions": {"Subpath": "x"}}]},
                    lambda ref: [])


# --- the API ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon() -> Iterator[BerthDaemon]:
    if os.geteuid() != 0:
        pytest.skip("needs root: the daemon mounts")
    with running(BerthDaemon()) as d:
        yield d


def api(d: BerthDaemon, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = d.http()
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else None
    finally:
        conn.close()


@pytest.mark.docker_cli
def test_create_inspect_list_remove_with_the_docker_cli(daemon: BerthDaemon) -> None:
    assert daemon.docker("volume", "create", "--label", "team=a", "cli1").stdout == "cli1\n"
    daemon.docker("volume", "create", "--label", "team=b", "-o", "type=tmpfs", "-o", "device=tmpfs", "cli2")
    doc = json.loads(daemon.docker("volume", "inspect", "cli1").stdout)[0]
    assert doc["Name"] == "cli1" and doc["Driver"] == "local" and doc["Scope"] == "local"
    assert doc["Labels"] == {"team": "a"} and doc["Options"] is None
    assert doc["Mountpoint"] == str(daemon.data_root / "volumes" / "cli1" / "_data")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)", doc["CreatedAt"])
    assert daemon.docker("volume", "create", "cli1").stdout == "cli1\n"  # exists: returned as it is
    assert daemon.docker("volume", "ls", "-q", "-f", "label=team=b").stdout == "cli2\n"
    assert daemon.docker("volume", "ls", "-q", "-f", "name=cli").stdout.split() == ["cli1", "cli2"]
    assert daemon.docker("volume", "ls", "-q", "-f", "driver=other").stdout == ""
    res = daemon.docker("volume", "ls", "-f", "bogus=1", check=False)
    assert res.returncode == 1 and "invalid filter 'bogus'" in res.stderr
    res = daemon.docker("volume", "create", "-o", "bogus=1", "cli3", check=False)
    assert res.returncode == 1 and 'create cli3: invalid option: "bogus"' in res.stderr
    res = daemon.docker("volume", "create", "-d", "nfsplugin", "cli3", check=False)
    assert 'error looking up volume plugin nfsplugin: plugin "nfsplugin" not found' in res.stderr
    res = daemon.docker("volume", "inspect", "nope1", check=False)
    assert res.returncode == 1 and "get nope1: no such volume" in res.stderr
    res = daemon.docker("volume", "rm", "nope1", check=False)
    assert res.returncode == 1 and "get nope1: no such volume" in res.stderr
    daemon.docker("volume", "rm", "-f", "nope1")
    daemon.docker("volume", "rm", "cli1", "cli2")
    assert "cli1" not in daemon.docker("volume", "ls", "-q").stdout


@pytest.mark.docker_cli
def test_dangling_prune_and_system_df(daemon: BerthDaemon) -> None:
    assert api(daemon, "POST", "/volumes/create", {"Name": "used1"})[0] == 201
    status, anon = api(daemon, "POST", "/volumes/create", {})
    assert status == 201 and anon["Labels"] == {"com.docker.volume.anonymous": ""} and len(anon["Name"]) == 64
    api(daemon, "POST", "/volumes/create", {"Name": "keep1", "Labels": {"keep": "yes"}})
    api(daemon, "POST", "/volumes/create", {"Name": "opts1", "DriverOpts": {"type": "tmpfs", "device": "tmpfs"}})
    (Path(api(daemon, "GET", "/volumes/used1")[1]["Mountpoint"]) / "f").write_bytes(b"z" * 1000)
    # a container record that mounts used1 (created, never started: a record is what makes a reference)
    daemon.docker("load", "-i", str(rootfs.FIXTURES / "busybox-docker-save.tar"))
    daemon.docker("create", "--name", "user1", "-v", "used1:/d", "busybox", "true")
    try:
        dangling = daemon.docker("volume", "ls", "-q", "-f", "dangling=true").stdout.split()
        assert "used1" not in dangling and {"keep1", anon["Name"], "opts1"} <= set(dangling)
        assert daemon.docker("volume", "ls", "-q", "-f", "dangling=false").stdout.split() == ["used1"]
        res = daemon.docker("volume", "ls", "-f", "dangling=maybe", check=False)
        assert "invalid filter 'dangling=[maybe]'" in res.stderr
        df = api(daemon, "GET", "/system/df")[1]["Volumes"]
        usage = {v["Name"]: v["UsageData"] for v in df}
        assert usage["used1"] == {"Size": 1000, "RefCount": 1} and "opts1" not in usage
        assert "Local Volumes" in daemon.docker("system", "df").stdout
        # Docker 23+: prune takes anonymous volumes only, unless all=true
        out = daemon.docker("volume", "prune", "-f").stdout
        assert out.startswith(f"Deleted Volumes:\n{anon['Name']}\n")
        out = daemon.docker("volume", "prune", "-af", "--filter", "label!=keep").stdout
        assert "keep1" not in out and "used1" not in out and "opts1" not in out
        status, report = api(daemon, "POST", '/volumes/prune?filters={"all":["1"]}')
        assert status == 200 and report["VolumesDeleted"] == ["keep1"]
        status, err = api(daemon, "POST", '/volumes/prune?filters={"all":["x"]}')
        assert status == 400 and "invalid filter 'all'" in err["message"]
    finally:
        daemon.docker("rm", "user1")
    daemon.docker("volume", "rm", "used1", "opts1")


def test_docker_py(daemon: BerthDaemon) -> None:
    client = daemon.client()
    vol = client.volumes.create("py1", labels={"x": "1"})
    assert vol.name == "py1" and client.volumes.get("py1").attrs["Labels"] == {"x": "1"}
    assert "py1" in [v.name for v in client.volumes.list()]
    assert [v.name for v in client.volumes.list(filters={"label": "x=1"})] == ["py1"]
    vol.remove()
    client.volumes.create("py2")
    report = client.volumes.prune(filters={"all": "true"})
    assert "py2" in (report["VolumesDeleted"] or [])
    import docker.errors
    with pytest.raises(docker.errors.NotFound):
        client.volumes.get("py2")


def test_berth_cli(daemon: BerthDaemon) -> None:
    def berth(*args: str, stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        code = execute(["-H", daemon.host, *args], Context(stdin=io.StringIO(stdin), stdout=out, stderr=err))
        return code, out.getvalue(), err.getvalue()

    assert berth("volume", "create", "--label", "a=b", "--opt", "uid=1000", "bv1") == (0, "bv1\n", "")
    code, out, _ = berth("volume", "ls")
    assert code == 0 and out.splitlines()[0].split() == ["DRIVER", "VOLUME", "NAME"] and "bv1" in out
    code, out, _ = berth("volume", "inspect", "-f", "{{.Name}} {{.Options.uid}}", "bv1")
    assert (code, out) == (0, "bv1 1000\n")
    code, _, err = berth("volume", "rm", "nope2")
    assert code == 1 and "get nope2: no such volume" in err
    code, out, _ = berth("volume", "prune", "-a", stdin="n\n")
    assert code == 0 and "WARNING! This will remove all local volumes" in out
    assert berth("volume", "rm", "bv1") == (0, "bv1\n", "")
