"""Containers without a process yet: create, inspect, ps, rename, rm, prune through the real docker CLI."""

from __future__ import annotations

import json
import sqlite3
import threading
from typing import Any

import pytest

from berth.testing.rootfs import FIXTURES

pytestmark = [pytest.mark.root, pytest.mark.docker_cli]

BUSYBOX = FIXTURES / "busybox-docker-save.tar"
MULTI = FIXTURES / "multilayer-docker-save.tar"


@pytest.fixture
def daemon(berthd: Any) -> Any:
    berthd.docker("load", "-i", str(BUSYBOX))
    berthd.docker("load", "-i", str(MULTI))
    return berthd


def test_create_inspect_ps_rm(daemon: Any) -> None:
    args = ("create", "--name", "first", "-e", "A=1", "-l", "team=x", "busybox", "echo", "hi")
    cid = daemon.docker(*args).stdout.strip()
    assert len(cid) == 64
    info = json.loads(daemon.docker("inspect", "first").stdout)[0]
    assert info["Id"] == cid and info["Name"] == "/first"
    assert info["Path"] == "echo" and info["Args"] == ["hi"]
    assert info["State"]["Status"] == "created" and info["State"]["Running"] is False
    assert info["Config"]["Env"] == ["PATH=/bin", "A=1"]
    assert info["Config"]["Hostname"] == cid[:12]
    assert info["Config"]["Labels"] == {"team": "x"}
    assert info["HostConfig"]["LogConfig"]["Type"] == "json-file"
    assert info["HostConfig"]["NetworkMode"] == "bridge"
    assert daemon.docker("ps", "-q").stdout.strip() == ""
    ps = daemon.docker("ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}} {{.Status}} {{.Command}}").stdout
    assert ps.strip() == f'{cid} first Created "echo hi"'
    daemon.docker("rm", "first")
    res = daemon.docker("inspect", "first", check=False)
    assert res.returncode == 1 and "No such object: first" in res.stderr


def test_image_defaults_merge(daemon: Any) -> None:
    daemon.docker("create", "--name", "merged", "berth-fixture/multilayer:1.0")
    info = json.loads(daemon.docker("inspect", "merged").stdout)[0]
    assert info["Path"] == "cat" and info["Args"] == ["/srv/greeting.txt"]
    assert info["Config"]["WorkingDir"] == "/srv"
    assert info["Config"]["ExposedPorts"] == {"8080/tcp": {}}
    daemon.docker("create", "--name", "entry", "--entrypoint", "ls", "berth-fixture/multilayer:1.0")
    info = json.loads(daemon.docker("inspect", "entry").stdout)[0]
    assert info["Path"] == "ls" and info["Args"] == []


def test_names_and_conflicts(daemon: Any) -> None:
    cid = daemon.docker("create", "--name", "dup", "busybox", "true").stdout.strip()
    res = daemon.docker("create", "--name", "dup", "busybox", "true", check=False)
    assert res.returncode == 1
    assert (f'Conflict. The container name "/dup" is already in use by container "{cid}". You have to remove '
            "(or rename) that container to be able to reuse that name.") in res.stderr
    res = daemon.docker("create", "--name", "bad name", "busybox", "true", check=False)
    assert "Invalid container name (bad name)" in res.stderr
    daemon.docker("rename", "dup", "renamed")
    assert daemon.docker("ps", "-a", "--format", "{{.Names}}").stdout.strip() == "renamed"
    auto = daemon.docker("create", "busybox", "true").stdout.strip()
    name = json.loads(daemon.docker("inspect", auto).stdout)[0]["Name"]
    assert name.count("_") >= 1
    assert daemon.docker("inspect", "--format", "{{.Id}}", auto[:8]).stdout.strip() == auto


def test_concurrent_creates_with_one_name(daemon: Any) -> None:
    results: list[int] = []

    def create() -> None:
        results.append(daemon.docker("create", "--name", "race", "busybox", "true", check=False).returncode)
    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [0] + [1] * 5
    assert daemon.docker("ps", "-a", "-q").stdout.split() != []


@pytest.mark.parametrize("args,message", [
    (["-e", "=foo"], "invalid environment variable: =foo"),
    (["--stop-signal", "NOPE"], "Invalid signal: NOPE"),
    (["--restart", "always:3"], "maximum retry count can only be used with 'on-failure'"),
])
def test_bad_input_is_400_and_leaves_nothing(daemon: Any, args: list[str], message: str) -> None:
    res = daemon.docker("create", *args, "busybox", "true", check=False)
    assert res.returncode != 0 and message in res.stderr, res.stderr
    assert daemon.docker("ps", "-a", "-q").stdout.strip() == ""


def test_unknown_image_and_container(daemon: Any) -> None:
    api = daemon.client().api
    r = api._post_json(api._url("/containers/create"), data={"Image": "nosuch:1", "Cmd": ["true"]})
    assert r.status_code == 404 and r.json()["message"] == "No such image: nosuch:1"
    res = daemon.docker("rm", "ghost", check=False)
    assert "No such container: ghost" in res.stderr
    r = api._post(api._url("/containers/create"), data="{bad", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    body = {"Image": "busybox", "Cmd": ["true"],
            "HostConfig": {"AutoRemove": True, "RestartPolicy": {"Name": "always"}}}
    r = api._post_json(api._url("/containers/create"), data=body)
    assert r.status_code == 400
    assert r.json()["message"] == "can't create 'AutoRemove' container with restart policy"
    assert daemon.docker("ps", "-a", "-q").stdout.strip() == ""


def test_rmi_conflicts_with_containers(daemon: Any) -> None:
    cid = daemon.docker("create", "busybox", "true").stdout.strip()
    res = daemon.docker("rmi", "busybox", check=False)
    assert res.returncode == 1
    assert f"container {cid[:12]} is using its referenced image" in res.stderr
    assert "Untagged: busybox:latest" in daemon.docker("rmi", "-f", "busybox").stdout
    daemon.docker("rm", cid)


def test_filters_and_prune(daemon: Any) -> None:
    daemon.docker("create", "--name", "alpha", "-l", "k=1", "busybox", "true")
    daemon.docker("create", "--name", "beta", "berth-fixture/multilayer:1.0")
    names = lambda *f: sorted(daemon.docker("ps", "-a", "--format", "{{.Names}}", *f).stdout.split())  # noqa: E731
    assert names("--filter", "label=k=1") == ["alpha"]
    assert names("--filter", "ancestor=busybox") == ["alpha"]
    assert names("--filter", "status=created") == ["alpha", "beta"]
    assert names("--filter", "name=^/beta$") == ["beta"]
    out = daemon.docker("container", "prune", "-f").stdout
    assert "Deleted Containers:" in out
    assert names() == []
    info = json.loads(daemon.docker("info", "--format", "{{json .}}").stdout)
    assert info["Containers"] == 0


def test_orphans_of_an_interrupted_rm_are_reaped_at_start(daemon: Any) -> None:
    cid = daemon.docker("create", "busybox", "true").stdout.strip()
    daemon.terminate()
    with sqlite3.connect(daemon.data_root / "berth.db") as db:  # the record went, the cleanup did not
        db.execute("DELETE FROM containers WHERE id = ?", (cid,))
    assert (daemon.data_root / "containers" / cid).exists()
    assert _snapshot_rows(daemon, cid)
    daemon.start()
    assert not (daemon.data_root / "containers" / cid).exists()
    assert _snapshot_rows(daemon, cid) == []


def _snapshot_rows(daemon: Any, key: str) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    for path in (daemon.data_root / "snapshots").glob("*/metadata.db"):
        with sqlite3.connect(path) as db:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            rows += [r for t in tables for r in db.execute(f"SELECT * FROM {t}") if key in map(str, r)]
    return rows
