"""The ``Runtime`` protocol: one conformance test over berth's library and the runc/crun binaries, and
``docker run --runtime`` end to end (echo, exit codes, kill, pause, the default isolation battery, and
exec/top/stats/update/health under runc)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from berth.daemon.config import parse_args
from berth.errors import NotFound
from berth.kernel import ns
from berth.kernel.cgroups import detect, open_cgroup
from berth.runtime import oci_cli
from berth.runtime.linux import exit_code
from berth.runtime.spec import default_spec
from berth.testing.bundle import make_bundle, unpack_busybox
from berth.testing.rootfs import FIXTURES

RUNTIMES = ["berth", "runc", "crun"]
BUSYBOX = FIXTURES / "busybox-docker-save.tar"


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack_busybox(tmp_path_factory.mktemp("busybox") / "rootfs")


@pytest.fixture(params=RUNTIMES)
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[oci_cli.Runtime]:
    if os.geteuid() != 0:
        pytest.skip("needs root: namespaces, mounts and cgroups")
    name = request.param
    if name != "berth" and oci_cli.binary_for(name) is None:
        pytest.skip(f"{name} is not installed (apt-get install {name})")
    if name == "crun" and detect() == "hybrid":
        pytest.skip("crun refuses hybrid cgroup hosts (v1 with controllers on the v2 mount too)")
    rt = oci_cli.runtime_for(name, tmp_path / "exec", tmp_path / "exec" / "runtime")
    # the init outlives create and is reparented to the nearest subreaper: this process, so it can reap it
    ns.set_child_subreaper(True)
    try:
        yield rt
    finally:
        ns.set_child_subreaper(False)


class Box:
    """Containers made in one test, removed (killed) at the end even on failure."""

    def __init__(self, rt: oci_cli.Runtime, rootfs: Path, tmp_path: Path) -> None:
        self.rt, self.rootfs, self.tmp = rt, rootfs, tmp_path
        self.parent = f"berth-rt-test-{uuid.uuid4().hex[:8]}"
        self.ids: list[str] = []

    def create(self, args: list[str]) -> tuple[str, int, int]:
        """Create ``args`` with its stdout on a pipe; returns (id, pid, read end)."""
        cid = f"c{uuid.uuid4().hex[:10]}"
        spec = default_spec(args, cgroups_path=f"/{self.parent}/{cid}")
        bundle = make_bundle(self.tmp / cid, spec, self.rootfs)
        r, w = os.pipe()
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            pid = self.rt.create(cid, bundle, stdio=(null, w, w))
        finally:
            os.close(w)
            os.close(null)
        self.ids.append(cid)
        return cid, pid, r

    def cleanup(self) -> None:
        for cid in self.ids:
            with contextlib.suppress(NotFound):
                self.rt.delete(cid, force=True)
        with contextlib.suppress(Exception):  # best effort: the parent may never have been created
            open_cgroup(self.parent).destroy()


@pytest.fixture
def box(runtime: oci_cli.Runtime, rootfs: Path, tmp_path: Path) -> Iterator[Box]:
    b = Box(runtime, rootfs, tmp_path)
    try:
        yield b
    finally:
        b.cleanup()


def _reap(pid: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            return exit_code(status)
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not exit")


def _read_all(fd: int) -> bytes:
    out = b""
    while chunk := os.read(fd, 65536):
        out += chunk
    os.close(fd)
    return out


@pytest.mark.root
def test_lifecycle_conformance(box: Box) -> None:
    rt = box.rt
    cid, pid, out = box.create(["sh", "-c", "echo hello; exec sleep 30"])
    st = rt.state(cid)
    assert (st.id, st.pid, st.status) == (cid, pid, "created")
    assert st.cgroup_path == f"{box.parent}/{cid}"
    rt.start(cid)
    assert os.read(out, 100) == b"hello\n"
    assert rt.state(cid).status == "running"
    assert pid in open_cgroup(st.cgroup_path).pids()
    rt.kill(cid, signal.SIGTERM)  # PID 1 without a handler ignores SIGTERM
    time.sleep(0.1)
    assert rt.state(cid).status == "running"
    rt.kill(cid, signal.SIGKILL)
    assert _reap(pid) == 137
    assert _read_all(out) == b""
    assert rt.state(cid).status == "stopped"
    rt.delete(cid)
    with pytest.raises(NotFound):
        rt.state(cid)
    with pytest.raises(NotFound):
        rt.delete(cid)


@pytest.mark.root
def test_exit_codes_conformance(box: Box) -> None:
    for args, want in ((["true"], 0), (["sh", "-c", "exit 3"], 3), (["sh", "-c", "exit 255"], 255)):
        cid, pid, out = box.create(args)
        box.rt.start(cid)
        assert _reap(pid) == want, args
        _read_all(out)
        box.rt.delete(cid)


@pytest.mark.root
def test_missing_executable_conformance(box: Box) -> None:
    """Failing at create (runc) or in the init after start (berth) are both fine; silence is not."""
    try:
        cid, pid, out = box.create(["/no/such/binary"])
        box.rt.start(cid)
        code = _reap(pid)
        _read_all(out)
    except Exception as e:  # each runtime raises its own kind
        assert "no such file or directory" in str(e).lower()
    else:
        assert code == 127


# --- through berthd -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(shared_berthd: Any) -> Any:
    if oci_cli.binary_for("runc") is None:
        pytest.skip("runc is not installed (apt-get install runc)")
    shared_berthd.docker("load", "-i", str(BUSYBOX))
    return shared_berthd


@pytest.mark.root
@pytest.mark.docker_cli
def test_docker_run_with_runc(daemon: Any) -> None:
    assert daemon.docker("run", "--rm", "--runtime", "runc", "busybox", "echo", "hi").stdout == "hi\n"
    res = daemon.docker("run", "--rm", "--runtime", "runc", "busybox", "sh", "-c", "echo err >&2; exit 7",
                        check=False)
    assert (res.returncode, res.stderr) == (7, "err\n")
    res = daemon.docker("run", "--rm", "--runtime", "nope", "busybox", "true", check=False)
    assert res.returncode == 125 and "unknown or invalid runtime name: nope" in res.stderr
    res = daemon.docker("run", "--rm", "--runtime", "runc", "busybox", "/no/such", check=False)
    assert res.returncode == 127, res.stderr


@pytest.mark.root
@pytest.mark.docker_cli
def test_runc_container_kill_pause_inspect(daemon: Any) -> None:
    cid = daemon.docker("run", "-d", "--runtime", "runc", "busybox", "sleep", "60").stdout.strip()
    try:
        info = json.loads(daemon.docker("inspect", cid).stdout)[0]
        assert info["HostConfig"]["Runtime"] == "runc" and info["State"]["Pid"] > 0
        daemon.docker("pause", cid)
        assert json.loads(daemon.docker("inspect", cid).stdout)[0]["State"]["Status"] == "paused"
        daemon.docker("unpause", cid)
        daemon.docker("kill", cid)
        assert daemon.docker("wait", cid).stdout.strip() == "137"
    finally:
        daemon.docker("rm", "-f", cid, check=False)


@pytest.mark.root
@pytest.mark.docker_cli
def test_default_isolation_under_runc(daemon: Any) -> None:
    run = ("run", "--rm", "--runtime", "runc", "busybox")
    out = daemon.docker(*run, "sh", "-c",
                        "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/1/status; hostname; echo pid=$$; ls /proc/1/fd;"
                        " ls /proc | grep -cE '^[0-9]+$'").stdout
    assert "CapEff:\t00000000a80425fb" in out and "CapPrm:\t00000000a80425fb" in out
    assert "CapBnd:\t00000000a80425fb" in out and "CapInh:\t0000000000000000" in out
    assert "pid=1" in out
    assert len(out.splitlines()[5]) == 12  # hostname = short ID
    for probe in ("unshare -U true", "mount -t tmpfs x /mnt", "echo x > /proc/sys/kernel/hostname"):
        res = daemon.docker(*run, "sh", "-c", probe, check=False)
        assert res.returncode != 0, probe
    res = daemon.docker(*run, "sh", "-c", "wc -c < /proc/timer_list; stat -c %t:%T /proc/keys")
    assert res.stdout.split() == ["0", "1:3"]  # masked: /dev/null bound over them


@pytest.mark.root
def test_info_lists_runtimes(daemon: Any) -> None:
    info = daemon.client().info()
    assert info["Runtimes"]["runc"] == {"path": "runc"} and "berth" in info["Runtimes"]
    assert info["DefaultRuntime"] == "berth"


def test_daemon_runtime_flags() -> None:
    config, _ = parse_args(["--default-runtime", "mine", "--add-runtime", "mine=/usr/sbin/runc"])
    assert config.default_runtime == "mine" and config.extra_runtimes == (("mine", "/usr/sbin/runc"),)
    assert parse_args([])[0].default_runtime == "berth"
    for argv in (["--default-runtime", "nope"], ["--add-runtime", "x"], ["--add-runtime", "berth=/bin/true"]):
        with pytest.raises(SystemExit):
            parse_args(argv)


@pytest.mark.root
@pytest.mark.docker_cli
def test_default_runtime_flag(berthd_factory: Any) -> None:
    if oci_cli.binary_for("runc") is None:
        pytest.skip("runc is not installed (apt-get install runc)")
    d = berthd_factory(extra_args=("--default-runtime", "mine", "--add-runtime", "mine=runc"))
    d.docker("load", "-i", str(BUSYBOX))
    assert d.client().info()["DefaultRuntime"] == "mine"
    cid = d.docker("run", "-d", "busybox", "sleep", "60").stdout.strip()
    try:
        assert json.loads(d.docker("inspect", cid).stdout)[0]["HostConfig"]["Runtime"] == "mine"
        assert (d.exec_root / "runtime-runc" / cid).is_dir()  # runc's state, not berth's
        d.docker("stop", "-t", "1", cid)
        assert d.docker("wait", cid).stdout.strip() == "137"
    finally:
        d.docker("rm", "-f", cid, check=False)


def _until(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)
    return value


@pytest.mark.root
@pytest.mark.docker_cli
def test_exec_top_stats_health_under_runc(daemon: Any) -> None:
    """The verbs that join or read a running container find runc's init and cgroup, not berth-runtime's."""
    cid = daemon.docker("run", "-d", "--runtime", "runc", "--health-cmd", "test -f /tmp/ok", "--health-interval",
                        "200ms", "--health-retries", "1", "busybox", "sh", "-c",
                        "touch /tmp/ok; exec sleep 60").stdout.strip()
    try:
        out = daemon.docker("exec", cid, "sh", "-c", "cat /proc/1/comm; ls /tmp; id -u").stdout
        assert out.split() == ["sleep", "ok", "0"]  # its PID and mount namespaces, its user
        assert daemon.docker("exec", cid, "sh", "-c", "exit 3", check=False).returncode == 3
        assert daemon.docker("exec", "-t", cid, "echo", "tty").stdout == "tty\r\n"
        res = daemon.docker("exec", cid, "/no/such", check=False)
        assert res.returncode == 126 and "no such file or directory" in res.stdout, res  # dockerd's 126
        caps = daemon.docker("exec", cid, "grep", "CapEff", "/proc/self/status").stdout
        assert caps.split() == ["CapEff:", "00000000a80425fb"]
        top = daemon.docker("top", cid).stdout
        assert "sleep 60" in top, top
        stats = daemon.docker("stats", "--no-stream", "--format", "{{.MemUsage}}|{{.PIDs}}", cid).stdout.strip()
        mem, pids = stats.split("|")
        assert int(pids) >= 1 and not mem.startswith("0B"), stats
        daemon.docker("update", "--memory", "64m", "--memory-swap", "128m", cid)  # reaches runc's live cgroup
        limit = daemon.docker("stats", "--no-stream", "--format", "{{.MemUsage}}", cid).stdout
        assert limit.strip().endswith("/ 64MiB"), limit
        _until(lambda: json.loads(daemon.docker("inspect", cid).stdout)[0]["State"].get("Health", {})
               .get("Status") == "healthy")
        daemon.docker("exec", cid, "rm", "/tmp/ok")
        _until(lambda: json.loads(daemon.docker("inspect", cid).stdout)[0]["State"]["Health"]["Status"]
               == "unhealthy")
    finally:
        daemon.docker("rm", "-f", cid, check=False)
