"""Running containers through the real docker CLI and docker-py: run, exit codes, stdin, stop/kill/wait,
restart policies, live restore across a daemon SIGKILL, and the default isolation."""

from __future__ import annotations

import concurrent.futures
import glob
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from berth.testing.rootfs import FIXTURES

pytestmark = [pytest.mark.root, pytest.mark.docker_cli]

BUSYBOX = FIXTURES / "busybox-docker-save.tar"


@pytest.fixture(scope="module")
def daemon(shared_berthd: Any) -> Any:
    shared_berthd.docker("load", "-i", str(BUSYBOX))
    return shared_berthd


def test_run_echo(daemon: Any) -> None:
    res = daemon.docker("run", "--rm", "busybox", "echo", "hi")
    assert res.stdout == "hi\n"


def test_exit_codes(daemon: Any) -> None:
    assert daemon.docker("run", "--rm", "busybox", "sh", "-c", "exit 3", check=False).returncode == 3
    res = daemon.docker("run", "--rm", "busybox", "nosuchcommand", check=False)
    assert res.returncode == 127, res.stderr
    assert 'exec: "nosuchcommand": executable file not found in $PATH' in res.stderr
    res = daemon.docker("run", "--rm", "busybox", "sh", "-c", "sleep 60 & kill -9 $!; wait $!", check=False)
    assert res.returncode == 137


def test_stdout_and_stderr_are_separate(daemon: Any) -> None:
    res = daemon.docker("run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2")
    assert res.stdout == "out\n" and res.stderr == "err\n"


def test_stdin(daemon: Any) -> None:
    res = daemon.docker("run", "--rm", "-i", "busybox", "sh", "-c", "cat; echo done", input="line1\nline2\n")
    assert res.stdout == "line1\nline2\ndone\n"


def test_detached_stop_kill_wait(daemon: Any) -> None:
    cid = daemon.docker("run", "-d", "--name", "sleeper", "busybox", "sleep", "300").stdout.strip()
    info = json.loads(daemon.docker("inspect", cid).stdout)[0]
    assert info["State"]["Status"] == "running" and info["State"]["Pid"] > 0
    assert os.path.exists(f"/proc/{info['State']['Pid']}")
    assert "sleeper" in daemon.docker("ps", "--format", "{{.Names}}").stdout
    t0 = time.monotonic()
    daemon.docker("stop", "-t", "1", "sleeper")
    assert time.monotonic() - t0 < 8
    info = json.loads(daemon.docker("inspect", cid).stdout)[0]
    assert info["State"]["Status"] == "exited" and info["State"]["ExitCode"] == 137
    assert daemon.docker("stop", "sleeper").returncode == 0  # 304: already stopped, no error
    daemon.docker("start", "sleeper")
    daemon.docker("kill", "sleeper")
    assert daemon.docker("wait", "sleeper").stdout.strip() == "137"
    res = daemon.docker("kill", "sleeper", check=False)
    assert res.returncode == 1 and "is not running" in res.stderr
    daemon.docker("rm", "sleeper")


def test_rm_force_running(daemon: Any) -> None:
    daemon.docker("run", "-d", "--name", "doomed", "busybox", "sleep", "300")
    res = daemon.docker("rm", "doomed", check=False)
    assert res.returncode == 1 and "stop the container before removing or force remove" in res.stderr
    daemon.docker("rm", "-f", "doomed")
    assert "doomed" not in daemon.docker("ps", "-a", "--format", "{{.Names}}").stdout


def test_restart_policy_on_failure(daemon: Any) -> None:
    daemon.docker("run", "-d", "--name", "flaky", "--restart", "on-failure:2", "busybox", "sh", "-c", "exit 1")
    deadline = time.time() + 15
    info: dict[str, Any] = {}
    while time.time() < deadline:
        info = json.loads(daemon.docker("inspect", "flaky").stdout)[0]
        if info["RestartCount"] == 2 and info["State"]["Status"] == "exited":
            break
        time.sleep(0.2)
    assert info["RestartCount"] == 2 and info["State"]["ExitCode"] == 1
    daemon.docker("rm", "-f", "flaky")


def test_docker_py_run(daemon: Any) -> None:
    client = daemon.client()
    assert client.containers.run("busybox", "echo hi", remove=True) == b"hi\n"
    c = client.containers.run("busybox", "sleep 300", detach=True)
    c.reload()
    assert c.status == "running"
    c.kill()
    assert c.wait()["StatusCode"] == 137
    c.remove()


def test_default_isolation(daemon: Any) -> None:
    out = daemon.docker("run", "--rm", "busybox", "sh", "-c",
                        "grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/1/status; hostname; echo pid=$$; ls /proc/1/fd;"
                        " ls /proc | grep -cE '^[0-9]+$'").stdout
    assert "CapEff:\t00000000a80425fb" in out and "CapPrm:\t00000000a80425fb" in out
    assert "CapBnd:\t00000000a80425fb" in out and "CapInh:\t0000000000000000" in out
    assert "pid=1" in out
    lines = out.splitlines()
    assert len(lines[5]) == 12  # hostname = short ID
    for probe in ("unshare -U true", "mount -t tmpfs x /mnt", "echo x > /proc/sys/kernel/hostname"):
        res = daemon.docker("run", "--rm", "busybox", "sh", "-c", probe, check=False)
        assert res.returncode != 0, probe
    res = daemon.docker("run", "--rm", "busybox", "sh", "-c", "wc -c < /proc/timer_list; stat -c %t:%T /proc/keys")
    assert res.stdout.split() == ["0", "1:3"]  # masked: /dev/null bound over them


def test_concurrent_runs(daemon: Any) -> None:
    cgroups_before = set(glob.glob("/sys/fs/cgroup/*/berth/*"))
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda i: daemon.docker("run", "--rm", "busybox", "true", check=False).returncode,
                                range(50)))
    assert results == [0] * 50
    assert daemon.docker("ps", "-aq").stdout.strip() == ""
    # nothing leaked: no rootfs mounts, no runtime state, no container cgroups
    assert str(daemon.exec_root) not in Path("/proc/self/mountinfo").read_text()
    assert not list((daemon.exec_root / "runtime").glob("*/state.json"))
    leftover = [p for p in set(glob.glob("/sys/fs/cgroup/*/berth/*")) - cgroups_before if os.path.isdir(p)]
    assert leftover == []


def test_live_restore_after_sigkill(berthd: Any) -> None:
    berthd.docker("load", "-i", str(BUSYBOX))
    loop = "while true; do echo tick; sleep 0.2; done"
    berthd.docker("run", "-d", "--name", "survivor", "busybox", "sh", "-c", loop)
    pid = json.loads(berthd.docker("inspect", "survivor").stdout)[0]["State"]["Pid"]
    berthd.kill()
    time.sleep(0.5)
    assert os.path.exists(f"/proc/{pid}")
    berthd.start()
    info = json.loads(berthd.docker("inspect", "survivor").stdout)[0]
    assert info["State"]["Status"] == "running" and info["State"]["Pid"] == pid
    berthd.docker("stop", "-t", "1", "survivor")
    assert json.loads(berthd.docker("inspect", "survivor").stdout)[0]["State"]["Status"] == "exited"


def test_tty_run(daemon: Any) -> None:
    inner = "stty cols 100 rows 30; /usr/local/bin/docker run --rm -it busybox sh -c 'tty; stty size'"
    cmd = ["script", "-qfec", inner, "/dev/null"]
    res = subprocess.run(cmd, env=daemon.docker_env(), capture_output=True, timeout=60, input=b"")
    out = res.stdout.decode(errors="replace")
    assert "/dev/pts/0" in out, out


def test_logs(daemon: Any) -> None:
    daemon.docker("run", "--name", "talker", "busybox", "sh", "-c", "echo one; echo two >&2; echo three")
    res = daemon.docker("logs", "talker")
    assert res.stdout == "one\nthree\n" and res.stderr == "two\n"
    tail = daemon.docker("logs", "--tail", "1", "talker")
    assert tail.stdout + tail.stderr in ("three\n", "two\n")  # two pipes: their relative order is not fixed
    stamped = daemon.docker("logs", "-t", "talker").stdout.splitlines()
    assert stamped[0].endswith(" one") and stamped[0][:4].isdigit()
    daemon.docker("rm", "talker")
    cid = daemon.docker("run", "-d", "busybox", "sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.2; done").stdout
    assert daemon.docker("logs", "-f", cid.strip(), timeout=20).stdout == "1\n2\n3\n"
    res = daemon.docker("run", "--rm", "--log-opt", "max-size=nope", "busybox", "true", check=False)
    assert res.returncode == 125 and "invalid size: 'nope'" in res.stderr


def test_pause_unpause_restart(daemon: Any) -> None:
    daemon.docker("run", "-d", "--name", "napper", "busybox", "sleep", "300")
    daemon.docker("pause", "napper")
    info = json.loads(daemon.docker("inspect", "napper").stdout)[0]
    assert info["State"]["Status"] == "paused" and info["State"]["Paused"] is True
    assert "(Paused)" in daemon.docker("ps", "--format", "{{.Status}}", "--filter", "name=napper").stdout
    res = daemon.docker("pause", "napper", check=False)
    assert res.returncode == 1 and "is already paused" in res.stderr
    daemon.docker("unpause", "napper")
    pid = json.loads(daemon.docker("inspect", "napper").stdout)[0]["State"]["Pid"]
    daemon.docker("restart", "-t", "0", "napper")
    info = json.loads(daemon.docker("inspect", "napper").stdout)[0]
    assert info["State"]["Status"] == "running" and info["State"]["Pid"] != pid
    daemon.docker("rm", "-f", "napper")


def test_events_for_a_run(daemon: Any) -> None:
    since = str(int(time.time()) - 1)
    daemon.docker("run", "--rm", "--name", "evented", "-l", "tier=web", "busybox", "true")
    until = str(int(time.time()) + 1)
    out = daemon.docker("events", "--since", since, "--until", until, "--filter", "container=evented",
                        "--format", "{{.Action}} {{index .Actor.Attributes \"tier\"}}").stdout.split("\n")
    for action in ("create web", "start web", "die web", "destroy web"):
        assert action in out, out


def test_privileged_gets_every_capability_the_daemon_has(daemon: Any) -> None:
    """`--privileged` asks for all capabilities; where the daemon's bounding set lacks some (this VM has no
    CAP_SYS_RESOURCE) the container gets what the daemon can give instead of failing to start."""
    with open("/proc/self/status", encoding="utf-8") as fh:
        bounding = next(line.split()[1] for line in fh if line.startswith("CapBnd:"))
    out = daemon.docker("run", "--rm", "--privileged", "busybox", "grep", "CapEff", "/proc/self/status").stdout
    assert out.split() == ["CapEff:", bounding]
    out = daemon.docker("run", "--rm", "--cap-add", "ALL", "busybox", "grep", "CapEff", "/proc/self/status").stdout
    assert out.split() == ["CapEff:", bounding]
