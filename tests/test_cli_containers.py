"""The ``berth`` CLI's container commands: pure pieces (flag splitting, stdcopy, ports, times) and the real
executable against a real berthd, compared with the real docker CLI where both can show the same state."""

from __future__ import annotations

import io
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from berth.cli.command import CliError, CommandParser
from berth.cli.containers import (
    CREATE,
    EXEC,
    _leading_flags,
    create_body,
    display_ports,
    ram_in_bytes,
    timestamp_param,
)
from berth.cli.streams import Demux, StdinPump, parse_detach_keys
from berth.testing.daemon import BerthDaemon
from berth.testing.rootfs import FIXTURES

BERTH = str(Path(sys.executable).with_name("berth"))
BUSYBOX = FIXTURES / "busybox-docker-save.tar"


# ---- pure pieces --------------------------------------------------------------------------------------

def _parser(cmd: Any) -> CommandParser:
    p = CommandParser(f"berth {cmd.name}", cmd)
    cmd.configure(p)
    return p


def test_flags_stop_at_the_first_argument() -> None:
    p = _parser(CREATE)
    assert _leading_flags(p, ["-it", "-e", "A=1", "--name=x", "busybox", "sh", "-c", "exit 3"]) == (
        ["-it", "-e", "A=1", "--name=x"], ["busybox", "sh", "-c", "exit 3"])
    assert _leading_flags(p, ["-eA=1", "--", "-x"]) == (["-eA=1"], ["-x"])
    ns = p.parse(["-i", "-t", "-c", "512", "busybox", "sh", "-c", "exit 3", "--help"])
    assert ns.args == ["busybox", "sh", "-c", "exit 3", "--help"] and ns.cpu_shares == "512" and ns.tty
    ns = _parser(EXEC).parse(["-it", "box", "ls", "-la"])
    assert ns.args == ["box", "ls", "-la"] and ns.interactive and ns.tty
    with pytest.raises(CliError) as info:
        _parser(EXEC).parse(["box"])
    assert "requires at least 2 arguments" in info.value.message


def test_create_body_maps_flags(tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nFROM_FILE=1\n\n")
    argv = ["--name", "x", "-e", "A=1", "--env-file", str(env_file), "-w", "/w", "-u", "1000:1000",
            "--entrypoint", "/bin/sh", "-h", "host", "--init", "--restart", "on-failure:3", "-m", "64m",
            "--cpus", "1.5", "--cpu-shares", "512", "--cpuset-cpus", "0", "--pids-limit", "50", "--read-only",
            "--cap-add", "net_admin", "--cap-drop", "ALL", "--privileged", "--security-opt", "no-new-privileges",
            "--ulimit", "nofile=1024:2048", "--stop-signal", "SIGINT", "--stop-timeout", "5", "-l", "k=v",
            "--log-driver", "json-file", "--log-opt", "max-size=1m", "--network", "host", "-v", "/src:/dst:ro",
            "-v", "/anon", "--mount", "type=bind,source=/a,target=/b,readonly", "--tmpfs", "/t:size=1m",
            "-p", "127.0.0.1:8080:80/udp", "busybox", "echo", "hi"]
    ns = _parser(CREATE).parse(argv)
    body = create_body(Any, ns, run=False)  # type: ignore[arg-type]
    hc = body["HostConfig"]
    assert body["Env"] == ["FROM_FILE=1", "A=1"] and body["Cmd"] == ["echo", "hi"] and body["Image"] == "busybox"
    assert body["Entrypoint"] == ["/bin/sh"] and body["Hostname"] == "host" and body["User"] == "1000:1000"
    assert body["StopSignal"] == "SIGINT" and body["StopTimeout"] == 5 and body["Labels"] == {"k": "v"}
    assert body["Volumes"] == {"/anon": {}} and body["ExposedPorts"] == {"80/udp": {}}
    assert hc["Init"] is True and hc["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert hc["Memory"] == 64 << 20 and hc["NanoCpus"] == 1_500_000_000 and hc["CpuShares"] == 512
    assert hc["PidsLimit"] == 50 and hc["ReadonlyRootfs"] and hc["Privileged"] and hc["CpusetCpus"] == "0"
    assert hc["CapAdd"] == ["CAP_NET_ADMIN"] and hc["CapDrop"] == ["ALL"]
    assert hc["Ulimits"] == [{"Name": "nofile", "Hard": 2048, "Soft": 1024}]
    assert hc["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m"}} and hc["NetworkMode"] == "host"
    assert hc["Binds"] == ["/src:/dst:ro"] and hc["Tmpfs"] == {"/t": "size=1m"}
    assert hc["Mounts"] == [{"Type": "bind", "Source": "/a", "Target": "/b", "ReadOnly": True}]
    assert hc["PortBindings"] == {"80/udp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]}
    ns = _parser(CREATE).parse(["--entrypoint", "", "busybox"])
    assert create_body(Any, ns, run=False)["Entrypoint"] == [""]  # type: ignore[arg-type]
    with pytest.raises(CliError) as info:
        create_body(Any, _parser(CREATE).parse(["--restart", "sometimes", "busybox"]), run=False)  # type: ignore[arg-type]
    assert info.value.status == 125


def _body(argv: list[str]) -> dict[str, Any]:
    return create_body(Any, _parser(CREATE).parse(argv), run=False)  # type: ignore[arg-type]


def test_create_body_health_dns_and_volumes_from() -> None:
    body = _body(["--health-cmd", "wget -q localhost", "--health-interval", "1m30s", "--health-timeout", "500ms",
                  "--health-retries", "2", "--health-on-failure", "restart", "--dns-search", "corp",
                  "--dns-option", "ndots:2", "--volumes-from", "other:ro", "--network", "net1", "--ip", "10.9.0.5",
                  "busybox"])
    assert body["Healthcheck"] == {"Test": ["CMD-SHELL", "wget -q localhost"], "Interval": 90_000_000_000,
                                   "Timeout": 500_000_000, "Retries": 2}
    hc = body["HostConfig"]
    assert hc["HealthOnFailure"] == "restart" and hc["DnsSearch"] == ["corp"] and hc["DnsOptions"] == ["ndots:2"]
    assert hc["VolumesFrom"] == ["other:ro"]
    assert body["NetworkingConfig"]["EndpointsConfig"]["net1"]["IPAMConfig"] == {"IPv4Address": "10.9.0.5"}
    assert _body(["--no-healthcheck", "busybox"])["Healthcheck"] == {"Test": ["NONE"]}
    assert "Healthcheck" not in _body(["busybox"])
    for argv, message in ((["--no-healthcheck", "--health-retries", "1"], "--no-healthcheck conflicts with"),
                          (["--health-interval=-1s"], "--health-interval cannot be negative"),
                          (["--health-timeout", "soon"], 'time: invalid duration "soon"')):
        with pytest.raises(CliError) as info:
            _body([*argv, "busybox"])
        assert message in info.value.message and info.value.status == 125


def test_detach_keys_and_stdin_pump() -> None:
    assert parse_detach_keys("ctrl-p,ctrl-q") == b"\x10\x11"
    assert parse_detach_keys("ctrl-x,x,ctrl-@,ctrl-[") == b"\x18x\x00\x1b"
    with pytest.raises(CliError):
        parse_detach_keys("ctrl-xx")
    sent: list[bytes] = []
    closed: list[bool] = []
    pump = StdinPump(io.BytesIO(b"ab\x10c\x10\x11zz"), sent.append, lambda: closed.append(True), b"\x10\x11",
                     lambda: closed.append(False))
    pump._run()
    assert b"".join(sent) == b"ab\x10c" and pump.detached.is_set() and closed == [False]
    sent.clear()
    closed.clear()
    pump = StdinPump(io.BytesIO(b"plain\x10"), sent.append, lambda: closed.append(True), b"\x10\x11", lambda: None)
    pump._run()
    assert b"".join(sent) == b"plain\x10" and closed == [True] and not pump.detached.is_set()


def test_demux() -> None:
    out, err = io.BytesIO(), io.BytesIO()
    demux = Demux(out, err)
    stream = b"\x01\0\0\0\0\0\0\x03out" + b"\x02\0\0\0\0\0\0\x03err" + b"\x01\0\0\0\0\0\0\0"
    for i in range(len(stream)):  # one byte at a time: frames split anywhere
        demux.feed(stream[i:i + 1])
    assert out.getvalue() == b"out" and err.getvalue() == b"err"
    with pytest.raises(CliError, match="error from daemon in stream: boom"):
        Demux(out, err).feed(b"\x03\0\0\0\0\0\0\x04boom")


def test_display_ports_and_sizes() -> None:
    ports = [{"PrivatePort": 81, "Type": "tcp"}, {"PrivatePort": 80, "Type": "tcp"},
             {"IP": "0.0.0.0", "PrivatePort": 53, "PublicPort": 5353, "Type": "udp"},
             {"IP": "0.0.0.0", "PrivatePort": 443, "PublicPort": 443, "Type": "tcp"}]
    assert display_ports(ports) == "80-81/tcp, 0.0.0.0:443->443/tcp, 0.0.0.0:5353->53/udp"
    assert display_ports([]) == ""
    assert ram_in_bytes("512m") == 512 << 20 and ram_in_bytes("1g") == 1 << 30 and ram_in_bytes("100") == 100
    with pytest.raises(ValueError):
        ram_in_bytes("lots")


def test_timestamps() -> None:
    assert timestamp_param("10m", 1000.0) == "400"
    assert timestamp_param("1h30m", 10_000.0) == str(10_000 - 5400)
    assert timestamp_param("1704067200", 0) == "1704067200"
    assert timestamp_param("2024-01-01T00:00:00Z", 0) == "1704067200.000000000"
    assert timestamp_param("2024-01-01T00:00:00.5+01:00", 0) == "1704063600.500000000"
    with pytest.raises(CliError):
        timestamp_param("yesterday", 0)


# ---- against a real daemon ----------------------------------------------------------------------------

def _env(host: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "BERTH_"))}
    env["BERTH_HOST"] = host
    return env


def berth(d: BerthDaemon, *args: str, input: bytes | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    raw = subprocess.run([BERTH, *args], input=input, capture_output=True, env=_env(d.host), timeout=timeout,
                         check=False, stdin=None if input is not None else subprocess.DEVNULL)
    return subprocess.CompletedProcess(raw.args, raw.returncode, raw.stdout.decode(errors="replace"),
                                       raw.stderr.decode(errors="replace"))


def ok(d: BerthDaemon, *args: str, input: bytes | None = None) -> str:
    res = berth(d, *args, input=input)
    assert res.returncode == 0, f"berth {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def same_as_docker(d: BerthDaemon, *args: str) -> tuple[int, str, str]:
    """``berth ARGS`` and ``docker ARGS`` on the same daemon give the same status and output (ages may cross a
    boundary between the two runs, so retries)."""
    for attempt in range(3):
        res = berth(d, *args)
        mine = (res.returncode, res.stdout, res.stderr)
        other = d.docker(*args, check=False)
        theirs = (other.returncode, other.stdout, other.stderr.replace("docker", "berth"))
        if mine == theirs or attempt == 2:
            break
        time.sleep(0.5)
    assert mine == theirs, f"berth {' '.join(args)} differs from docker"
    return mine


@pytest.fixture(scope="module")
def daemon(shared_berthd: BerthDaemon) -> BerthDaemon:
    shared_berthd.docker("load", "-i", str(BUSYBOX))
    return shared_berthd




@pytest.mark.root
@pytest.mark.docker_cli
def test_run_foreground_output_and_exit_codes(daemon: BerthDaemon) -> None:
    assert ok(daemon, "run", "--rm", "busybox", "echo", "hi") == "hi\n"
    res = berth(daemon, "run", "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (res.returncode, res.stdout, res.stderr) == (3, "out\n", "err\n")
    res = berth(daemon, "run", "--rm", "busybox", "nosuchcommand")
    assert res.returncode == 127 and "executable file not found" in res.stderr
    res = berth(daemon, "run", "--rm", "-e", "A=1", "-w", "/tmp", "-u", "1000", "--entrypoint", "sh", "busybox",
                "-c", 'echo "$A $(pwd) $(id -u)"')
    assert res.stdout == "1 /tmp 1000\n"
    assert "x4-gone" not in ok(daemon, "ps", "-a", "--format", "{{.Names}}")


@pytest.mark.root
@pytest.mark.docker_cli
def test_run_stdin(daemon: BerthDaemon) -> None:
    res = berth(daemon, "run", "--rm", "-i", "busybox", "sh", "-c", "cat; echo done", input=b"line1\nline2\n")
    assert (res.returncode, res.stdout) == (0, "line1\nline2\ndone\n")


@pytest.mark.root
@pytest.mark.docker_cli
def test_detached_lifecycle(daemon: BerthDaemon) -> None:
    cid = ok(daemon, "run", "-d", "--name", "x4-life", "-l", "k=v", "busybox", "sh", "-c",
             "echo one; echo two >&2; exec sleep 300").strip()
    assert len(cid) == 64
    try:
        deadline = time.monotonic() + 10
        while "two" not in berth(daemon, "logs", "x4-life").stderr and time.monotonic() < deadline:
            time.sleep(0.1)
        res = berth(daemon, "logs", "x4-life")
        assert (res.stdout, res.stderr) == ("one\n", "two\n")
        same_as_docker(daemon, "logs", "--tail", "1", "x4-life")
        same_as_docker(daemon, "logs", "-t", "x4-life")
        assert ok(daemon, "ps", "--filter", "label=k=v", "-q") == cid[:12] + "\n"
        assert ok(daemon, "pause", "x4-life") == "x4-life\n"
        assert "(Paused)" in ok(daemon, "ps", "--filter", "name=x4-life")
        ok(daemon, "unpause", "x4-life")
        ok(daemon, "rename", "x4-life", "x4-life2")
        assert ok(daemon, "kill", "-s", "KILL", "x4-life2") == "x4-life2\n"
        assert ok(daemon, "wait", "x4-life2") == "137\n"
        ok(daemon, "start", "x4-life2")
        t0 = time.monotonic()
        assert ok(daemon, "stop", "-t", "1", "x4-life2") == "x4-life2\n"
        assert time.monotonic() - t0 < 8
        assert json.loads(ok(daemon, "inspect", "x4-life2"))[0]["State"]["ExitCode"] == 137
        assert ok(daemon, "inspect", "-f", "{{.State.Status}}", "x4-life2") == "exited\n"
        ok(daemon, "restart", "-t", "0", "x4-life2")
        assert ok(daemon, "container", "inspect", "-f", "{{.State.Running}}", "x4-life2") == "true\n"
        res = berth(daemon, "rm", "x4-life2")
        assert res.returncode == 1 and "stop the container before removing or force remove" in res.stderr
    finally:
        berth(daemon, "rm", "-f", "x4-life", "x4-life2")
    assert "x4-life" not in ok(daemon, "ps", "-a")


@pytest.mark.root
@pytest.mark.docker_cli
def test_create_start_attach_and_prune(daemon: BerthDaemon) -> None:
    cid = ok(daemon, "create", "--name", "x4-created", "busybox", "sh", "-c", "echo made; exit 4").strip()
    res = berth(daemon, "start", "-a", "x4-created")
    assert (res.returncode, res.stdout) == (4, "made\n")
    res = berth(daemon, "attach", "x4-created")
    assert res.returncode == 1 and res.stderr == "You cannot attach to a stopped container, start it first\n"
    res = berth(daemon, "container", "prune", "-f")
    assert res.returncode == 0 and cid in res.stdout and res.stdout.startswith("Deleted Containers:\n")
    assert "Total reclaimed space:" in res.stdout


@pytest.mark.root
@pytest.mark.docker_cli
def test_exec(daemon: BerthDaemon) -> None:
    ok(daemon, "run", "-d", "--name", "x4-exec", "busybox", "sleep", "300")
    try:
        assert ok(daemon, "exec", "x4-exec", "echo", "hi") == "hi\n"
        res = berth(daemon, "exec", "-e", "A=1", "-w", "/tmp", "x4-exec", "sh", "-c", 'echo "$A $(pwd)"; exit 4')
        assert (res.returncode, res.stdout) == (4, "1 /tmp\n")
        res = berth(daemon, "exec", "-i", "x4-exec", "cat", input=b"piped\n")
        assert (res.returncode, res.stdout) == (0, "piped\n")
        assert ok(daemon, "exec", "-d", "x4-exec", "touch", "/tmp/made") == ""
        deadline = time.monotonic() + 5
        while berth(daemon, "exec", "x4-exec", "test", "-f", "/tmp/made").returncode and time.monotonic() < deadline:
            time.sleep(0.1)
        assert berth(daemon, "exec", "x4-exec", "test", "-f", "/tmp/made").returncode == 0
        same_as_docker(daemon, "exec", "x4-exec", "nosuchcommand")
    finally:
        berth(daemon, "rm", "-f", "x4-exec")


def _on_pty(d: BerthDaemon, args: list[str], keys: list[bytes], timeout: float = 20) -> tuple[int, bytes]:
    """Run berth with a pseudo-terminal as stdin/stdout/stderr, typing ``keys`` (one write each, spaced)."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([BERTH, *args], stdin=secondary, stdout=secondary, stderr=secondary, env=_env(d.host),
                            start_new_session=True)
    os.close(secondary)
    out = b""
    try:
        deadline = time.monotonic() + timeout
        pending = list(keys)
        last = time.monotonic()
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.1)
            if ready:
                try:
                    data = os.read(primary, 65536)
                except OSError:
                    break
                if not data:
                    break
                out += data
            if pending and time.monotonic() - last > 0.5:
                os.write(primary, pending.pop(0))
                last = time.monotonic()
            if proc.poll() is not None and not ready:
                break
        return proc.wait(timeout=max(1.0, deadline - time.monotonic())), out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(primary)


@pytest.mark.root
@pytest.mark.docker_cli
def test_run_tty_with_script(daemon: BerthDaemon) -> None:
    command = f"{BERTH} run -it --rm busybox sh -c 'echo hi; tty; exit 5'"
    res = subprocess.run(["script", "-qfec", command, "/dev/null"], capture_output=True, env=_env(daemon.host),
                         stdin=subprocess.DEVNULL, timeout=60, check=False)
    assert res.returncode == 5, res
    assert b"hi\r\n/dev/pts/0\r\n" in res.stdout
    res = berth(daemon, "run", "-it", "--rm", "busybox", "true", input=b"")
    assert (res.returncode, res.stderr) == (1, "the input device is not a TTY\n")


@pytest.mark.root
@pytest.mark.docker_cli
def test_run_it_typed_input_and_detach(daemon: BerthDaemon) -> None:
    status, out = _on_pty(daemon, ["run", "-it", "--rm", "busybox", "sh"], [b"echo typed-$((1+2))\r", b"exit 3\r"])
    assert status == 3 and b"typed-3" in out, out
    try:
        status, out = _on_pty(daemon, ["run", "-it", "--name", "x4-detach", "busybox", "sh"], [b"\x10\x11"])
        assert status == 0, out
        assert ok(daemon, "inspect", "-f", "{{.State.Running}}", "x4-detach") == "true\n"
        status, out = _on_pty(daemon, ["attach", "x4-detach"], [b"echo back-$((2+2))\r", b"exit 6\r"])
        assert status == 6 and b"back-4" in out, out
    finally:
        berth(daemon, "rm", "-f", "x4-detach")


@pytest.mark.root
@pytest.mark.docker_cli
@pytest.mark.parametrize("args", [
    ("ps",), ("ps", "-a"), ("ps", "-a", "--no-trunc"), ("ps", "-q"), ("ps", "-a", "-q"), ("ps", "-a", "-s"),
    ("ps", "-n", "1"), ("ps", "-l"), ("ps", "--format", "json"), ("ps", "-a", "--filter", "status=exited"),
    ("ps", "-a", "--format", "table {{.Names}}\t{{.State}}\t{{.Labels}}\t{{.Networks}}\t{{.CreatedAt}}"),
    ("container", "ls", "-a"),
])
def test_ps_matches_docker(daemon: BerthDaemon, args: tuple[str, ...]) -> None:
    if "x4-ps-up" not in ok(daemon, "ps", "-a", "--format", "{{.Names}}"):
        ok(daemon, "run", "-d", "--name", "x4-ps-up", "-l", "a=b", "busybox", "sleep", "300")
        assert berth(daemon, "run", "--name", "x4-ps-done", "busybox", "sh", "-c", "exit 2").returncode == 2
        ok(daemon, "create", "--name", "x4-ps-new", "busybox", "echo", "a very long command line indeed")
    same_as_docker(daemon, *args)


@pytest.mark.root
@pytest.mark.docker_cli
@pytest.mark.parametrize("args", [
    ("logs", "nosuch"), ("stop", "nosuch"), ("kill", "nosuch"), ("rm", "nosuch"), ("rm", "-f", "nosuch"),
    ("wait", "nosuch"), ("start", "nosuch"), ("restart", "nosuch"), ("pause", "nosuch"), ("rename", "nosuch", "y"),
    ("inspect", "nosuch"), ("inspect", "-f", "{{.Id}}", "nosuch"), ("container", "inspect", "nosuch"),
    ("exec", "nosuch", "true"), ("attach", "nosuch"),
])
def test_errors_match_docker(daemon: BerthDaemon, args: tuple[str, ...]) -> None:
    status, _, err = same_as_docker(daemon, *args)
    assert status == (0 if args[:2] == ("rm", "-f") else 1) and "nosuch" in err


@pytest.mark.root
@pytest.mark.docker_cli
def test_run_errors(daemon: BerthDaemon) -> None:
    res = berth(daemon, "run", "--bogus", "busybox")
    assert res.returncode == 125 and "unknown flag: --bogus" in res.stderr
    ok(daemon, "create", "--name", "x4-taken", "busybox")
    try:
        res = berth(daemon, "run", "--name", "x4-taken", "busybox", "true")
        assert res.returncode == 125
        assert res.stderr.startswith('berth: Error response from daemon: Conflict. The container name "/x4-taken"')
        assert res.stderr.endswith("\n\nRun 'berth run --help' for more information\n")
    finally:
        berth(daemon, "rm", "x4-taken")
    res = berth(daemon, "run", "--pull", "never", "x4-no-such-image")
    assert res.returncode == 125 and "No such image" in res.stderr
    res = berth(daemon, "inspect", "--type", "bogus", "x")
    assert res.returncode == 1 and res.stderr.startswith('unknown type: "bogus"')


@pytest.mark.root
@pytest.mark.docker_cli
def test_run_health_flags_and_health_on_failure(daemon: BerthDaemon) -> None:
    """``berth run --health-*``: a failing probe turns the container unhealthy and ``--health-on-failure kill``
    (berth's own flag) ends it."""
    ok(daemon, "run", "-d", "--name", "x4-health", "--health-cmd", "exit 1", "--health-interval", "200ms",
       "--health-retries", "1", "--health-on-failure", "kill", "busybox", "sleep", "300")
    try:
        info = json.loads(ok(daemon, "inspect", "x4-health"))[0]
        assert info["Config"]["Healthcheck"]["Test"] == ["CMD-SHELL", "exit 1"]
        assert info["HostConfig"]["HealthOnFailure"] == "kill"
        deadline = time.monotonic() + 20
        while ok(daemon, "inspect", "-f", "{{.State.Status}}", "x4-health") == "running\n":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert ok(daemon, "inspect", "-f", "{{.State.Health.Status}}", "x4-health") == "unhealthy\n"
    finally:
        berth(daemon, "rm", "-f", "x4-health")
