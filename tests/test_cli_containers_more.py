"""``berth port|top|stats|cp|diff|commit|export|update``: the pure pieces (port lines, Go number parsing, the
update body, moby's copy rules, stats figures) and the real executable against a real berthd, compared with the
real docker CLI on the same daemon wherever both must print the same thing."""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth.cli import archive
from berth.cli.command import CliError, CommandParser
from berth.cli.containers_more import (
    UPDATE,
    StatsEntry,
    commit_params,
    diff_lines,
    go_parse_int,
    parse_cpus,
    port_lines,
    restart_policy,
    split_cp_arg,
    stats_frame,
    top_text,
    update_body,
)
from berth.testing.daemon import BerthDaemon
from berth.testing.rootfs import FIXTURES

BERTH = str(Path(sys.executable).with_name("berth"))
BUSYBOX = FIXTURES / "busybox-docker-save.tar"


# ---- pure pieces --------------------------------------------------------------------------------------

def test_port_lines() -> None:
    ports = {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}, {"HostIp": "::1", "HostPort": "8080"}],
             "10/tcp": [{"HostIp": "0.0.0.0", "HostPort": "9"}], "9/udp": None}
    assert port_lines(ports, "8080", "web") == ["127.0.0.1:8080", "[::1]:8080"]
    assert port_lines(ports, "", "web") == ["10/tcp -> 0.0.0.0:9", "8080/tcp -> 127.0.0.1:8080",
                                            "8080/tcp -> [::1]:8080"]  # natural order: 10 after 9, before 8080
    for wanted, message in (("9/udp", "Error: No public port '9/udp' published for web"),
                            ("7", "Error: No public port '7' published for web"),
                            ("x", 'Error: invalid port (x): strconv.ParseUint: parsing "x": invalid syntax'),
                            ("70000", 'Error: invalid port (70000): strconv.ParseUint: parsing "70000": value out of '
                                      "range")):
        with pytest.raises(CliError) as info:
            port_lines(ports, wanted, "web")
        assert info.value.message == message and info.value.status == 1


def test_go_numbers_and_restart_policy() -> None:
    assert go_parse_int("512") == 512 and go_parse_int("-1") == -1 and go_parse_int("0x10") == 16
    assert go_parse_int("010") == 8
    assert go_parse_int("x") == 'strconv.ParseInt: parsing "x": invalid syntax'
    assert go_parse_int("70000", 16, signed=False) == 'strconv.ParseUint: parsing "70000": value out of range'
    assert parse_cpus("1.5") == 1_500_000_000 and parse_cpus("3/2") == 1_500_000_000
    assert parse_cpus("abc") == "failed to parse abc as a rational number"
    assert parse_cpus("0.0000000001") == "value is too precise"
    assert restart_policy("on-failure:3") == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert restart_policy("") == {"Name": "", "MaximumRetryCount": 0}
    with pytest.raises(CliError, match="no policy provided before colon"):
        restart_policy(":3")


def _update_ns(argv: list[str]) -> argparse.Namespace:
    p = CommandParser("berth update", UPDATE)
    assert UPDATE.configure is not None
    UPDATE.configure(p)
    return p.parse([*argv, "box"])


def test_update_body() -> None:
    body = update_body(_update_ns(["-m", "64m", "--memory-swap", "-1", "--cpus", "0.5", "-c", "512",
                                   "--pids-limit", "100", "--cpuset-cpus", "0", "--restart", "always"]))
    assert body["Memory"] == 64 << 20 and body["MemorySwap"] == -1 and body["NanoCpus"] == 500_000_000
    assert body["CpuShares"] == 512 and body["PidsLimit"] == 100 and body["CpusetCpus"] == "0"
    assert body["RestartPolicy"] == {"Name": "always", "MaximumRetryCount": 0} and body["CpuQuota"] == 0
    assert update_body(_update_ns(["--cpus", "1"]))["PidsLimit"] is None
    with pytest.raises(CliError) as info:
        update_body(_update_ns([]))
    assert info.value.message == "you must provide one or more flags when using this command"
    with pytest.raises(CliError) as info:
        update_body(_update_ns(["-c", "x"]))
    assert info.value.status == 125 and info.value.message.startswith(
        'invalid argument "x" for "-c, --cpu-shares" flag: strconv.ParseInt: parsing "x": invalid syntax\n\n'
        "Usage:  berth update [OPTIONS] CONTAINER [CONTAINER...]")


def test_top_diff_commit_and_cp_args() -> None:
    text = top_text(["UID", "PID", "CMD"], [["root", "1", "sleep 30"]])
    assert text == "UID" + " " * 17 + "PID" + " " * 17 + "CMD\nroot" + " " * 16 + "1" + " " * 19 + "sleep 30\n"
    assert diff_lines([{"Kind": 0, "Path": "/etc"}, {"Kind": 1, "Path": "/new"}, {"Kind": 2, "Path": "/x"}]) == \
        "C /etc\nA /new\nD /x\n"
    assert diff_lines(None) == ""
    ns = argparse.Namespace(message="m", author="a", change=["ENV A=1"], pause=False)
    params = commit_params("web", "myimg", ns)
    assert params["repo"] == "docker.io/library/myimg" and params["tag"] == "latest" and params["pause"] is False
    assert params["changes"] == ["ENV A=1"]
    with pytest.raises(CliError, match="refusing to create a tag with a digest reference"):
        commit_params("web", "foo@sha256:" + "a" * 64, ns)
    assert split_cp_arg("web:/etc") == ("web", "/etc")
    assert split_cp_arg("/a:b") == ("", "/a:b") and split_cp_arg("./a:b") == ("", "./a:b")
    assert split_cp_arg("file") == ("", "file")


def test_copy_rules() -> None:
    assert archive.split_path_dir_entry("/a/b/") == ("/a", "b")
    assert archive.split_path_dir_entry("/a/b/.") == ("/a/b", ".")
    assert archive.preserve_trailing_dot_or_separator("/a/b", "a/b/.") == "/a/b/."
    assert archive.preserve_trailing_dot_or_separator("/a/b", "b/") == "/a/b/"
    assert archive.rebase_name("/a/link/", "/a/real") == ("/a/real/", "link")
    src_file, src_dir = archive.CopyInfo("/s/f", True, False), archive.CopyInfo("/s/d", True, True)
    assert archive.prepare_archive_copy(b"", src_file, archive.CopyInfo("/t", True, True)) == ("/t", b"")
    for src, dst, message in ((src_dir, archive.CopyInfo("/t/f", True, False), "cannot copy directory"),
                              (src_file, archive.CopyInfo("/t/new/"), "no such directory")):
        with pytest.raises(archive.CopyError, match=message):
            archive.prepare_archive_copy(b"", src, dst)


def _tar(*members: tuple[str, bytes | str | None]) -> io.BytesIO:
    """name → file content (bytes), symlink target (str) or a directory (None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, what in members:
            info = tarfile.TarInfo(name)
            if what is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(what, str):
                info.type, info.linkname = tarfile.SYMTYPE, what
                tar.addfile(info)
            else:
                info.size = len(what)
                tar.addfile(info, io.BytesIO(what))
    buf.seek(0)
    return buf


def test_untar_stays_inside(tmp_path: Path) -> None:
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    archive.untar(_tar(("d", None), ("d/f", b"x"), ("link", "/etc/passwd")), str(dest))
    assert (dest / "d" / "f").read_bytes() == b"x" and os.readlink(dest / "link") == "/etc/passwd"
    with pytest.raises(archive.CopyError):
        archive.untar(_tar(("esc", str(outside)), ("esc/owned", b"x")), str(dest))
    with pytest.raises(archive.CopyError):
        archive.untar(_tar(("../up", b"x")), str(dest / "d"))
    assert not list(outside.iterdir()) and not (dest / "up").exists()
    with pytest.raises(archive.CopyError, match="cannot overwrite directory"):
        archive.untar(_tar(("d", b"file now")), str(dest))


def test_copy_to_local_rebases(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_text("1")
    info = archive.copy_info_source_path(str(src) + "/.", follow_link=False)
    piped = archive.tar_resource(info)
    archive.copy_to(piped, info, str(tmp_path / "copy"))
    piped.close()
    assert (tmp_path / "copy" / "sub" / "f").read_text() == "1"


def test_stats_figures_and_frame() -> None:
    entry = StatsEntry("web")
    entry.set_reading({
        "name": "/web", "id": "a" * 64,
        "cpu_stats": {"cpu_usage": {"total_usage": 300}, "system_cpu_usage": 2000, "online_cpus": 2},
        "precpu_stats": {"cpu_usage": {"total_usage": 100}, "system_cpu_usage": 1000},
        "memory_stats": {"usage": 3 << 20, "limit": 64 << 20, "stats": {"inactive_file": 1 << 20}},
        "networks": {"eth0": {"rx_bytes": 1500, "tx_bytes": 500}},
        "blkio_stats": {"io_service_bytes_recursive": [{"op": "read", "value": 4096}, {"op": "Write", "value": 8}]},
        "pids_stats": {"current": 3}})
    assert entry.row(trunc=True) == {
        "Container": "web", "Name": "web", "ID": "a" * 12, "CPUPerc": "40.00%", "MemUsage": "2MiB / 64MiB",
        "MemPerc": "3.12%", "NetIO": "1.5kB / 500B", "BlockIO": "4.1kB / 8B", "PIDs": "3"}
    entry.set_error(RuntimeError("gone"), reset=True)
    assert entry.row(trunc=False)["MemUsage"] == "-- / --" and entry.row(trunc=False)["CPUPerc"] == "--"
    assert stats_frame("A\nB\n") == "\033[HA\nB\n\033[HA \033[K\nB \033[K\n \033[K\n\033[J"


# ---- against a real daemon ----------------------------------------------------------------------------

def _env(host: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "BERTH_"))}
    env["BERTH_HOST"] = host
    return env


def berth(d: BerthDaemon, *args: str, cwd: Path | None = None,
          input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([BERTH, *args], input=input, capture_output=True, env=_env(d.host), timeout=60,
                          check=False, cwd=cwd, stdin=None if input is not None else subprocess.DEVNULL)


def ok(d: BerthDaemon, *args: str, cwd: Path | None = None) -> str:
    res = berth(d, *args, cwd=cwd)
    assert res.returncode == 0, f"berth {' '.join(args)} exited {res.returncode}: {res.stdout!r} {res.stderr!r}"
    return res.stdout.decode()


def _docker(d: BerthDaemon, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["/usr/local/bin/docker", *args], capture_output=True, env=d.docker_env(), timeout=60,
                          check=False, cwd=cwd, stdin=subprocess.DEVNULL)


def same_as_docker(d: BerthDaemon, *args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    """``berth ARGS`` and ``docker ARGS`` on one daemon: same status, stdout, and stderr (docker → berth)."""
    res, other = berth(d, *args, cwd=cwd), _docker(d, *args, cwd=cwd)
    mine = (res.returncode, res.stdout.decode(), res.stderr.decode())
    # docker cp logs (logrus) a tar writer cut short by an error, depending on timing: not part of the answer
    shown = "".join(line for line in other.stderr.decode().splitlines(keepends=True) if not line.startswith("time="))
    theirs = (other.returncode, other.stdout.decode(), shown.replace("docker", "berth"))
    assert mine == theirs, f"berth {' '.join(args)} differs from docker"
    return mine


@pytest.fixture(scope="module")
def daemon(shared_berthd: BerthDaemon) -> BerthDaemon:
    shared_berthd.docker("load", "-i", str(BUSYBOX))
    return shared_berthd


@pytest.fixture(scope="module")
def web(daemon: BerthDaemon) -> Iterator[str]:
    """A running container with one port published on 127.0.0.1, one on all addresses, one only exposed."""
    ok(daemon, "run", "-d", "--name", "c3-web", "-p", "127.0.0.1::8080", "-p", "9090", "--expose", "7000",
       "busybox", "sleep", "300")
    try:
        yield "c3-web"
    finally:
        berth(daemon, "rm", "-f", "c3-web")


@pytest.mark.root
@pytest.mark.docker_cli
@pytest.mark.parametrize("args", [(), ("8080",), ("8080/tcp",), ("9090",), ("7000",), ("7000/udp",), ("abc",),
                                  ("70000",), ("1", "2")])
def test_port_matches_docker(daemon: BerthDaemon, web: str, args: tuple[str, ...]) -> None:
    same_as_docker(daemon, "port", web, *args)
    same_as_docker(daemon, "container", "port", web, *args)


@pytest.mark.root
@pytest.mark.docker_cli
def test_port_answers_like_docker(daemon: BerthDaemon, web: str) -> None:
    host = ok(daemon, "port", web, "8080").strip()
    assert host.startswith("127.0.0.1:") and int(host.rpartition(":")[2]) > 0
    res = berth(daemon, "port", web, "7000")
    assert (res.returncode, res.stderr.decode()) == (1, f"Error: No public port '7000' published for {web}\n")
    same_as_docker(daemon, "port", "c3-nosuch", "80")
    same_as_docker(daemon, "port")


@pytest.mark.root
@pytest.mark.docker_cli
def test_top_and_diff_match_docker(daemon: BerthDaemon, web: str) -> None:
    _, out, _ = same_as_docker(daemon, "top", web)
    assert out.startswith("UID ") and "sleep 300" in out
    same_as_docker(daemon, "top", web, "-o", "pid,comm")
    same_as_docker(daemon, "container", "top", web)
    same_as_docker(daemon, "top", "c3-nosuch")
    ok(daemon, "exec", web, "sh", "-c", "echo x > /tmp/c3-made; mkdir -p /c3-new")
    _, out, _ = same_as_docker(daemon, "diff", web)
    assert "A /tmp/c3-made\n" in out and "A /c3-new\n" in out
    same_as_docker(daemon, "container", "diff", web)
    same_as_docker(daemon, "diff", "c3-nosuch")
    same_as_docker(daemon, "diff")


@pytest.mark.root
@pytest.mark.docker_cli
def test_commit(daemon: BerthDaemon, web: str) -> None:
    image_id = ok(daemon, "commit", "-a", "c3 author", "-m", "c3 message", "-c", "ENV C3=1", web, "c3-img:v1").strip()
    try:
        assert image_id.startswith("sha256:") and len(image_id) == 71
        shown = ok(daemon, "image", "inspect", "-f", "{{.Id}}|{{.Author}}|{{.Comment}}|{{.Config.Env}}", "c3-img:v1")
        assert shown == f"{image_id}|c3 author|c3 message|[PATH=/bin C3=1]\n" or "C3=1" in shown
        for args in (("commit", web, "BAD"), ("commit", web, "c3-x@sha256:" + "a" * 64), ("commit", "c3-nosuch"),
                     ("commit", "-c", "BOGUS x", web, "c3-y"), ("commit",)):
            same_as_docker(daemon, *args)
        assert ok(daemon, "container", "commit", "-p=false", web).startswith("sha256:")
    finally:
        berth(daemon, "rmi", "c3-img:v1")


@pytest.mark.root
@pytest.mark.docker_cli
def test_update(daemon: BerthDaemon) -> None:
    ok(daemon, "run", "-d", "--name", "c3-upd", "busybox", "sleep", "300")
    try:
        assert ok(daemon, "update", "--cpus", "0.5", "-c", "512", "--pids-limit", "100", "--restart", "on-failure:2",
                  "c3-upd") == "c3-upd\n"
        shown = ok(daemon, "inspect", "-f", "{{.HostConfig.NanoCpus}} {{.HostConfig.CpuShares}} "
                   "{{.HostConfig.PidsLimit}} {{.HostConfig.RestartPolicy.Name}}", "c3-upd")
        assert shown == "500000000 512 100 on-failure\n"
        for args in ((), ("--cpu-shares", "x"), ("--restart", "always:x"), ("--restart", "bogus"), ("-m", "lots"),
                     ("--cpus", "abc"), ("--cpus", "0.0000000001")):
            same_as_docker(daemon, "update", *args, "c3-upd")
        res = berth(daemon, "update", "--bogus", "c3-upd")  # CommandParser adds "berth: " where docker 28 does not
        assert res.returncode == 125 and b"unknown flag: --bogus\n\nUsage:  berth update" in res.stderr
        same_as_docker(daemon, "update", "--pids-limit", "200", "c3-upd", "c3-nosuch")
        same_as_docker(daemon, "container", "update", "--cpu-shares", "256", "c3-upd")
        same_as_docker(daemon, "update")
    finally:
        berth(daemon, "rm", "-f", "c3-upd")


@pytest.mark.root
@pytest.mark.docker_cli
def test_stats(daemon: BerthDaemon, web: str) -> None:
    ok(daemon, "run", "--name", "c3-stopped", "busybox", "true")
    try:
        # a stopped container's figures are all zero: the whole table is deterministic
        same_as_docker(daemon, "stats", "--no-stream", "c3-stopped")
        same_as_docker(daemon, "container", "stats", "--no-stream", "--no-trunc", "c3-stopped")
        same_as_docker(daemon, "stats", "--no-stream", "--format", "json", "c3-stopped")
        same_as_docker(daemon, "stats", "--no-stream", "c3-nosuch", web)
        fmt = "{{.Container}} {{.Name}} {{.ID}} {{.PIDs}}"
        assert ok(daemon, "stats", "--no-stream", "--format", fmt, web).startswith(f"{web} {web} ")
        mine = ok(daemon, "stats", "--no-stream", web).splitlines()
        theirs = _docker(daemon, "stats", "--no-stream", web).stdout.decode().splitlines()
        columns = [re.split(r"\s{2,}", lines[0]) for lines in (mine, theirs)]  # widths follow the figures
        assert columns[0] == columns[1] and len(mine) == len(theirs) == 2
        assert mine[1].split()[:2] == theirs[1].split()[:2]
        mine_json = json.loads(ok(daemon, "stats", "--no-stream", "--format", "json", web))
        theirs_json = json.loads(_docker(daemon, "stats", "--no-stream", "--format", "json", web).stdout)
        assert sorted(mine_json) == sorted(theirs_json) and mine_json["PIDs"] == theirs_json["PIDs"] == "1"
        names = ok(daemon, "stats", "--no-stream", "-a", "--format", "{{.Name}}").split()
        assert web in names and "c3-stopped" in names
        assert "c3-stopped" not in ok(daemon, "stats", "--no-stream", "--format", "{{.Name}}").split()
        # streaming: frames of cursor-home, the table, erase; it keeps going until stopped
        proc = subprocess.Popen([BERTH, "stats", "--format", "{{.Name}}", web], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=_env(daemon.host), stdin=subprocess.DEVNULL)
        time.sleep(1.5)
        proc.kill()
        out = proc.communicate(timeout=10)[0].decode()
        frame = f"\033[H{web}\n\033[H{web} \033[K\n \033[K\n\033[J"
        assert out.startswith(frame + frame)
    finally:
        berth(daemon, "rm", "-f", "c3-stopped")


@pytest.mark.root
@pytest.mark.docker_cli
def test_cp_errors_as_upstream(daemon: BerthDaemon, web: str, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("hi\n")
    (tmp_path / "d").mkdir()
    ok(daemon, "exec", web, "sh", "-c", "echo c > /tmp/c3-file")
    for args in (("c3-web:/nosuch", "."), ("c3-nosuch:/etc", "."), ("a", "b"), ("c3-web:/a", "c3-web:/b"),
                 ("c3-web:/etc/passwd", "/c3-nonexist/x"), ("f", "c3-web:/c3-nonexist/dir/"),
                 ("f", "c3-web:/tmp/c3-file/"), ("c3-nosuchfile", "c3-web:/tmp"), ("f", "c3-web:/c3-nonexist/x"),
                 ("d", "c3-web:/tmp/c3-file"), ("c3-web:/tmp/", "./f"), ("c3-web:/etc/passwd", "./none/"),
                 ("", "c3-web:/x"), ("c3-web:/x", ""), ("only-one",)):
        same_as_docker(daemon, "cp", *args, cwd=tmp_path)
    res = berth(daemon, "cp", "-", "c3-web:/tmp/c3-file", input=b"")
    assert (res.returncode, res.stderr) == (1, b'destination "c3-web:/tmp/c3-file" must be a directory\n')


@pytest.mark.root
@pytest.mark.docker_cli
def test_cp_both_ways(daemon: BerthDaemon, web: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "one").write_text("1\n")
    (src / "exec").write_text("#!/bin/sh\n")
    (src / "exec").chmod(0o751)
    os.symlink("sub", src / "link")
    assert ok(daemon, "cp", str(src), "c3-web:/tmp/c3-tree") == ""
    assert ok(daemon, "exec", web, "cat", "/tmp/c3-tree/sub/one") == "1\n"
    assert ok(daemon, "exec", web, "stat", "-c", "%a", "/tmp/c3-tree/exec") == "751\n"
    assert ok(daemon, "exec", web, "readlink", "/tmp/c3-tree/link") == "sub\n"
    ok(daemon, "cp", f"{src}/.", "c3-web:/tmp/c3-dot")  # contents, not the folder
    assert ok(daemon, "exec", web, "ls", "/tmp/c3-dot") == "exec\nlink\nsub\n"
    ok(daemon, "cp", str(src / "sub" / "one"), "c3-web:/tmp/c3-dot/")  # into an existing folder
    assert ok(daemon, "exec", web, "cat", "/tmp/c3-dot/one") == "1\n"
    ok(daemon, "container", "cp", "-L", str(src / "link"), "c3-web:/tmp/c3-followed")
    assert ok(daemon, "exec", web, "cat", "/tmp/c3-followed/one") == "1\n"
    back = tmp_path / "back"
    ok(daemon, "cp", "c3-web:/tmp/c3-tree", str(back))
    assert (back / "sub" / "one").read_text() == "1\n" and os.readlink(back / "link") == "sub"
    assert (back / "exec").stat().st_mode & 0o777 == 0o751
    ok(daemon, "cp", "c3-web:/tmp/c3-tree/.", str(tmp_path / "dotback"))
    assert sorted(os.listdir(tmp_path / "dotback")) == ["exec", "link", "sub"]
    ok(daemon, "exec", web, "ln", "-sf", "/tmp/c3-tree/sub/one", "/tmp/c3-link")
    ok(daemon, "cp", "c3-web:/tmp/c3-link", str(tmp_path / "l1"))
    ok(daemon, "cp", "-L", "c3-web:/tmp/c3-link", str(tmp_path / "l2"))
    assert os.readlink(tmp_path / "l1") == "/tmp/c3-tree/sub/one" and (tmp_path / "l2").read_text() == "1\n"
    tar_out = berth(daemon, "cp", "c3-web:/tmp/c3-tree/sub", "-")
    with tarfile.open(fileobj=io.BytesIO(tar_out.stdout)) as tar:
        assert sorted(tar.getnames()) == ["sub", "sub/one"]
    res = berth(daemon, "cp", "-", "c3-web:/tmp", input=tar_out.stdout)
    assert res.returncode == 0 and ok(daemon, "exec", web, "cat", "/tmp/sub/one") == "1\n"


@pytest.mark.root
@pytest.mark.docker_cli
def test_export(daemon: BerthDaemon, web: str, tmp_path: Path) -> None:
    out = tmp_path / "web.tar"
    assert ok(daemon, "export", "-o", str(out), web) == ""
    assert out.stat().st_mode & 0o777 == 0o600
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    assert {"bin/sh", "etc/passwd"} <= names
    piped = berth(daemon, "container", "export", web)
    assert piped.returncode == 0 and len(piped.stdout) == out.stat().st_size
    for args in (("-o", "/c3-nonexist/x.tar", web), ("-o", str(tmp_path), web), ("c3-nosuch",), ()):
        same_as_docker(daemon, "export", *args)
    assert not (tmp_path / "c3-nosuch.tar").exists()
