"""The ``berth-runtime`` command line: OCI lifecycle, ``run`` exit codes, pid files, errors; plus spec round trips.

Lifecycle tests run under berth-runtime and runc alike (same states expected); exit-code details that runc
reports differently (it fails ``create`` for a missing command) run under berth-runtime only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth.errors import InvalidArgument
from berth.oci.runtime_spec import Rlimit, Spec
from berth.runtime.cli import parse_signal
from berth.runtime.spec import default_spec
from berth.runtime.users import resolve_user
from berth.testing.bundle import Harness, runtime_command, unpack_busybox


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack_busybox(tmp_path_factory.mktemp("busybox") / "rootfs")


def _harness(name: str, rootfs: Path, tmp_path: Path) -> Harness:
    if os.geteuid() != 0:
        pytest.skip("needs root: namespaces, mounts and cgroups")
    cmd = runtime_command(name)
    if cmd is None:
        pytest.skip(f"{name} is not installed (apt-get install {name})")
    return Harness(cmd, tmp_path / "work", rootfs)


@pytest.fixture(params=["berth-runtime", "runc"])
def rt(request: pytest.FixtureRequest, rootfs: Path, tmp_path: Path) -> Iterator[Harness]:
    h = _harness(request.param, rootfs, tmp_path)
    try:
        yield h
    finally:
        h.cleanup()


@pytest.fixture
def berth(rootfs: Path, tmp_path: Path) -> Iterator[Harness]:
    h = _harness("berth-runtime", rootfs, tmp_path)
    try:
        yield h
    finally:
        h.cleanup()


def _status(rt: Harness, cid: str) -> str:
    res = rt.cli("state", cid)
    assert res.returncode == 0, res.stderr
    return str(json.loads(res.stdout)["status"])


def _wait_status(rt: Harness, cid: str, want: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (got := _status(rt, cid)) != want:
        assert time.monotonic() < deadline, f"status stayed {got}, wanted {want}"
        time.sleep(0.02)


def _create(rt: Harness, args: list[str], *extra: str) -> str:
    cid, bundle = rt.bundle(args)
    res = rt.cli("create", "--bundle", os.fspath(bundle), *extra, cid, stdin=subprocess.DEVNULL,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, capture_output=False)
    assert res.returncode == 0
    return cid


# -- lifecycle (both runtimes) -------------------------------------------------------------------------------


@pytest.mark.root
def test_lifecycle(rt: Harness) -> None:
    cid = _create(rt, ["sleep", "60"])
    state = json.loads(rt.cli("state", cid).stdout)
    assert state["status"] == "created" and state["id"] == cid and state["pid"] > 0
    assert Path(state["bundle"]) == rt.workdir / cid
    assert rt.cli("start", cid).returncode == 0
    assert _status(rt, cid) == "running"
    assert rt.cli("kill", cid, "KILL").returncode == 0
    _wait_status(rt, cid, "stopped")
    assert rt.cli("delete", cid).returncode == 0
    assert rt.cli("state", cid).returncode != 0


@pytest.mark.root
def test_duplicate_id_and_delete_running_without_force(rt: Harness) -> None:
    cid = _create(rt, ["sleep", "60"])
    _, bundle = rt.bundle(["true"])
    dup = rt.cli("create", "--bundle", os.fspath(bundle), cid, stdin=subprocess.DEVNULL)
    assert dup.returncode != 0 and "exists" in dup.stderr
    assert rt.cli("start", cid).returncode == 0
    refused = rt.cli("delete", cid)
    assert refused.returncode != 0 and "running" in refused.stderr
    assert _status(rt, cid) == "running"
    assert rt.cli("delete", "--force", cid).returncode == 0
    assert rt.cli("state", cid).returncode != 0


@pytest.mark.root
def test_pid_file_and_signal_names(rt: Harness, tmp_path: Path) -> None:
    pid_file = tmp_path / "init.pid"
    cid = _create(rt, ["sleep", "60"], "--pid-file", os.fspath(pid_file))
    assert int(pid_file.read_text()) == json.loads(rt.cli("state", cid).stdout)["pid"]
    assert rt.cli("start", cid).returncode == 0
    assert rt.cli("kill", cid, "SIGKILL").returncode == 0
    _wait_status(rt, cid, "stopped")
    assert rt.cli("delete", cid).returncode == 0


@pytest.mark.root
def test_run_exit_status_and_stdout(rt: Harness) -> None:
    ok = rt.run(["sh", "-c", "echo hello from $(hostname)"], hostname="greeter")
    assert (ok.returncode, ok.stdout) == (0, "hello from greeter\n")
    assert rt.run(["sh", "-c", "exit 3"]).returncode == 3


@pytest.mark.root
def test_console_socket_receives_the_pty_master(rt: Harness) -> None:
    cid, bundle = rt.bundle(["sh", "-c", "tty; stat -c %t /dev/console; echo done"], terminal=True)
    path = os.fspath(rt.workdir / "console.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind(path)
        srv.listen(1)
        srv.settimeout(20)
        proc = subprocess.Popen([*rt.runtime, "--root", os.fspath(rt.state_root), "create", "--bundle",
                                 os.fspath(bundle), "--console-socket", path, cid], stdin=subprocess.DEVNULL)
        conn, _ = srv.accept()
        with conn:
            _, fds, _, _ = socket.recv_fds(conn, 1024, 1)
        assert proc.wait(timeout=20) == 0
    master = fds[0]
    try:
        assert rt.cli("start", cid).returncode == 0
        out = b""
        deadline = time.monotonic() + 10
        while b"done" not in out and time.monotonic() < deadline:
            try:
                out += os.read(master, 4096)
            except OSError:  # EIO once the last pty user is gone
                break
    finally:
        os.close(master)
    assert out.split() == [b"/dev/pts/0", b"88", b"done"]  # /dev/console is the pts (major 136 = 0x88)


# -- berth-runtime specifics ---------------------------------------------------------------------------------


@pytest.mark.root
def test_run_exec_failures(berth: Harness) -> None:
    missing = berth.run(["nosuch"])
    assert missing.returncode == 127
    assert 'exec: "nosuch": executable file not found in $PATH' in missing.stderr
    not_exec = berth.run(["/etc/passwd"])
    assert not_exec.returncode == 126 and "permission denied" in not_exec.stderr


@pytest.mark.root
def test_run_killed_by_signal_exits_128_plus_n(berth: Harness) -> None:
    cid, bundle = berth.bundle(["sleep", "60"])
    proc = subprocess.Popen([*berth.runtime, "--root", os.fspath(berth.state_root), "run", "-b", os.fspath(bundle),
                             cid], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while berth.cli("state", cid).returncode != 0 or _status(berth, cid) != "running":
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        assert berth.cli("kill", cid, "9").returncode == 0
        assert proc.wait(timeout=10) == 128 + signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert berth.cli("state", cid).returncode != 0  # foreground run deletes the container


@pytest.mark.root
def test_rlimits_above_the_hard_limit_are_clamped_with_a_warning(berth: Harness) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard >= 1 << 20:
        pytest.skip("the NOFILE hard limit is already at the kernel's maximum")
    cid, bundle = berth.bundle(["sh", "-c", "ulimit -Hn; ulimit -Sn"])
    spec = Spec.from_json((bundle / "config.json").read_text())
    limits = (Rlimit("RLIMIT_NOFILE", 1 << 20, 1 << 20), Rlimit("RLIMIT_NPROC", 77, 77))
    spec = dataclasses.replace(spec, process=dataclasses.replace(spec.process, rlimits=limits))
    (bundle / "config.json").write_text(spec.to_json())
    res = berth.cli("run", "-b", os.fspath(bundle), cid, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(hard), str(hard)]
    assert "RLIMIT_NOFILE" in res.stderr and "clamped" in res.stderr


@pytest.mark.root
def test_run_detached_then_state(berth: Harness) -> None:
    cid, bundle = berth.bundle(["sleep", "60"])
    res = berth.cli("run", "-d", "-b", os.fspath(bundle), cid, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, capture_output=False)
    assert res.returncode == 0
    assert _status(berth, cid) == "running"
    assert berth.cli("delete", "-f", cid).returncode == 0


@pytest.mark.root
def test_errors_are_reported(berth: Harness, tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    res = berth.cli("--log", os.fspath(log), "--log-format", "json", "state", "nosuch")
    assert res.returncode == 1 and "does not exist" in res.stderr
    assert json.loads(log.read_text().splitlines()[0])["level"] == "error"
    assert berth.cli("kill", "nosuch").returncode == 1
    assert berth.cli("create", "--bundle", os.fspath(tmp_path), "x").returncode == 1  # no config.json
    assert berth.cli("state", "../etc").returncode == 1


def test_spec_command_writes_a_loadable_default(tmp_path: Path) -> None:
    cmd = runtime_command("berth-runtime")
    assert cmd is not None
    res = subprocess.run([*cmd, "spec", "--bundle", os.fspath(tmp_path)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    spec = Spec.from_json((tmp_path / "config.json").read_text())
    assert spec.process.args == ("sh",) and spec.process.terminal
    again = subprocess.run([*cmd, "spec", "--bundle", os.fspath(tmp_path)], capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "exists" in again.stderr


# -- values (no root) ----------------------------------------------------------------------------------------


def test_spec_round_trip_and_docker_defaults() -> None:
    spec = default_spec(["sh", "-c", "true"], hostname="h", cgroupns=False)
    again = Spec.from_json(spec.to_json())
    assert again == spec
    assert len(spec.process.capabilities.bounding if spec.process.capabilities else ()) == 14
    assert {n.type for n in spec.linux.namespaces} == {"pid", "network", "ipc", "uts", "mount"}
    assert "/proc/kcore" in spec.linux.masked_paths and "/proc/sys" in spec.linux.readonly_paths
    assert spec.linux.seccomp is not None and spec.linux.seccomp["defaultAction"] == "SCMP_ACT_ERRNO"
    assert [m.destination for m in spec.mounts][:3] == ["/proc", "/dev", "/dev/pts"]


@pytest.mark.parametrize("doc, needle", [
    ({}, "process is required"),
    ({"process": {"args": []}}, "process.args"),
    ({"process": {"args": ["x"], "cwd": "rel"}}, "cwd"),
    ({"process": {"args": ["x"]}, "mounts": [{"destination": "rel"}]}, "destination"),
    ({"process": {"args": ["x"]}, "linux": {"namespaces": [{"type": "bogus"}]}}, "namespace type"),
    ({"process": {"args": ["x"]}, "hostname": "h"}, "uts"),
    ({"process": {"args": ["x"], "user": {"uid": "0"}}}, "uid"),
])
def test_spec_validation(doc: dict[str, object], needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle):
        Spec.from_json(json.dumps(doc))


def test_parse_signal() -> None:
    assert parse_signal("TERM") == parse_signal("SIGTERM") == parse_signal("15") == parse_signal("term") == 15
    with pytest.raises(InvalidArgument):
        parse_signal("NOPE")


def test_resolve_user_reads_the_image_files(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/app:/bin/sh\n")
    (tmp_path / "etc" / "group").write_text("root:x:0:\napp:x:1000:\nextra:x:2000:app\n")
    def ids(user: str) -> tuple[int, int, tuple[int, ...]]:
        u = resolve_user(tmp_path, user)
        return u.uid, u.gid, u.additional_gids
    assert ids("app") == (1000, 1000, (2000,))
    assert ids("app:root") == (1000, 0, ())  # an explicit group replaces the supplementary ones (runc)
    assert ids("4242:4243") == (4242, 4243, ())
    # a symlinked /etc/passwd pointing out of the root is resolved inside it
    (tmp_path / "etc" / "passwd").unlink()
    (tmp_path / "etc" / "passwd").symlink_to("/etc/shadow")
    assert ids("0") == (0, 0, ())
