"""``docker exec`` against berthd through the real docker CLI and docker-py: output and exit codes, -e/-w/-u,
-d, -i, -it (a pty, its size), the container's namespaces, capabilities and filesystem, error wording, events,
exec inspect and the container's ExecIDs."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from berth.testing.daemon import DOCKER
from berth.testing.rootfs import FIXTURES

pytestmark = [pytest.mark.root, pytest.mark.docker_cli]

BUSYBOX = FIXTURES / "busybox-docker-save.tar"


@pytest.fixture(scope="module")
def daemon(shared_berthd: Any) -> Any:
    shared_berthd.docker("load", "-i", str(BUSYBOX))
    return shared_berthd


@pytest.fixture(scope="module")
def box(daemon: Any) -> Iterator[str]:
    """A long-running container to exec into."""
    cid = daemon.docker("run", "-d", "--name", "xbox", "--hostname", "xhost", "-e", "FROM_RUN=1",
                        "busybox", "sleep", "3000").stdout.strip()
    # -u names are resolved from the container's own (live) /etc/passwd; the fixture's has only root
    daemon.docker("exec", cid, "sh", "-c", "echo nobody:x:65534:65534:nobody:/home:/bin/false >> /etc/passwd")
    yield cid
    daemon.docker("rm", "-f", cid, check=False)


def _status(daemon: Any, path: str) -> tuple[int, Any]:
    conn = daemon.http()
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def test_output_and_exit_codes(daemon: Any, box: str) -> None:
    res = daemon.docker("exec", "xbox", "echo", "hi")
    assert (res.returncode, res.stdout, res.stderr) == (0, "hi\n", "")
    res = daemon.docker("exec", "xbox", "sh", "-c", "echo out; echo err >&2; exit 5", check=False)
    assert (res.returncode, res.stdout, res.stderr) == (5, "out\n", "err\n")


def test_missing_command(daemon: Any, box: str) -> None:
    res = daemon.docker("exec", "xbox", "nosuch", check=False)
    assert res.returncode == 126, res
    assert ('OCI runtime exec failed: exec failed: unable to start container process: exec: "nosuch": '
            "executable file not found in $PATH: unknown") in res.stdout + res.stderr
    res = daemon.docker("exec", "-w", "/nosuchdir", "xbox", "pwd", check=False)
    assert res.returncode == 126 and "chdir to cwd" in res.stdout + res.stderr


def test_env_workdir_user(daemon: Any, box: str) -> None:
    res = daemon.docker("exec", "-e", "A=1", "-e", "FROM_RUN=2", "xbox", "sh", "-c",
                        "echo $A $FROM_RUN $HOME $HOSTNAME")
    assert res.stdout == "1 2 /root xhost\n"
    env = daemon.docker("exec", "xbox", "env").stdout.split()
    init_env = daemon.docker("exec", "xbox", "cat", "/proc/1/environ").stdout.split("\0")
    assert sorted(env) == sorted(e for e in init_env if e) and "FROM_RUN=1" in env  # the container's, no TERM
    assert daemon.docker("exec", "-w", "/etc", "xbox", "pwd").stdout == "/etc\n"
    assert daemon.docker("exec", "xbox", "pwd").stdout == "/\n"
    assert daemon.docker("exec", "-u", "nobody", "xbox", "id", "-u").stdout == "65534\n"
    assert daemon.docker("exec", "-u", "1000:1001", "xbox", "sh", "-c", "id -u; id -g").stdout == "1000\n1001\n"
    assert daemon.docker("exec", "-u", "nobody", "xbox", "sh", "-c", "echo $HOME").stdout == "/home\n"
    res = daemon.docker("exec", "-u", "nosuchuser", "xbox", "true", check=False)
    assert res.returncode == 126 and "unable to find user nosuchuser" in res.stdout + res.stderr


def test_detached(daemon: Any, box: str) -> None:
    res = daemon.docker("exec", "-d", "-w", "/tmp", "-e", "X=y", "xbox", "sh", "-c", "sleep 0.2; echo $X > f")
    assert res.stdout == ""
    deadline = time.monotonic() + 10
    while daemon.docker("exec", "xbox", "cat", "/tmp/f", check=False).stdout != "y\n":
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_stdin(daemon: Any, box: str) -> None:
    res = daemon.docker("exec", "-i", "xbox", "sh", "-c", "cat; echo done", input="line1\nline2\n")
    assert res.stdout == "line1\nline2\ndone\n"
    # without -i the process gets no stdin at all (/dev/null-like EOF)
    assert daemon.docker("exec", "xbox", "cat", input="ignored").stdout == ""


def test_tty_via_script(daemon: Any, box: str) -> None:
    inner = shlex.join([DOCKER, "exec", "-it", "xbox", "sh", "-c", "tty; stty size; echo $TERM; exit 3"])
    # script's stdin stays open (at EOF it would type ^D into the pty and may drop the last output)
    proc = subprocess.Popen(["script", "-qfec", f"stty rows 33 cols 111; {inner}", "/dev/null"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=daemon.docker_env())
    try:
        assert proc.stdout is not None and proc.stdin is not None
        out = proc.stdout.read().decode(errors="replace").replace("\r", "")
        assert proc.wait(timeout=60) == 3, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                f.close()
    lines = out.split("\n")
    assert any(line.startswith("/dev/pts/") for line in lines), out
    assert "33 111" in lines and "xterm" in lines, out


def test_tty_resize_via_api(daemon: Any, box: str) -> None:
    client = daemon.client()
    try:
        api = client.api
        eid = api.exec_create("xbox", "sh", stdin=True, tty=True)["Id"]
        sock = api.exec_start(eid, tty=True, socket=True)
        raw = sock._sock
        try:
            api.exec_resize(eid, height=50, width=60)
            raw.sendall(b"stty size; exit 6\n")
            data = b""
            raw.settimeout(20)
            while chunk := raw.recv(4096):
                data += chunk
        finally:
            sock.close()
        assert b"50 60" in data, data
        assert api.exec_inspect(eid)["ExitCode"] == 6
    finally:
        client.close()


def test_tty_interactive_shell(daemon: Any, box: str) -> None:
    inner = shlex.join([DOCKER, "exec", "-it", "xbox", "sh"])
    proc = subprocess.run(["script", "-qfec", inner, "/dev/null"], input=b"echo in-$((6*7))\nexit 4\n",
                          capture_output=True, env=daemon.docker_env(), timeout=60, check=False)
    out = proc.stdout.decode(errors="replace")
    assert "in-42" in out and proc.returncode == 4, out


def test_namespaces_and_capabilities(daemon: Any, box: str) -> None:
    assert daemon.docker("exec", "xbox", "hostname").stdout == "xhost\n"
    ps = daemon.docker("exec", "xbox", "ps", "-o", "pid,comm").stdout.split("\n")[1:]
    procs = [line.split() for line in ps if line.strip()]
    assert ["1", "sleep"] in procs and len(procs) == 2, procs  # the init and ps itself, nothing of the host
    pattern = "^(Cap|NoNewPrivs|Seccomp)"
    init_caps = daemon.docker("exec", "xbox", "grep", "-E", pattern, "/proc/1/status").stdout
    own_caps = daemon.docker("exec", "xbox", "grep", "-E", pattern, "/proc/self/status").stdout
    assert init_caps == own_caps and "CapEff:\t00000000a80425fb" in own_caps, own_caps
    assert "Seccomp:\t2" in own_caps
    priv = daemon.docker("exec", "--privileged", "xbox", "grep", "CapEff", "/proc/self/status").stdout
    assert priv != "CapEff:\t00000000a80425fb\n"
    # the container's own filesystem: a file written by one exec is seen by the next, not on the host
    daemon.docker("exec", "xbox", "sh", "-c", "echo inside > /marker")
    assert daemon.docker("exec", "xbox", "cat", "/marker").stdout == "inside\n"
    # the container's cgroup and seccomp: same cgroup as the init; Seccomp filter mode like the init
    cg = daemon.docker("exec", "xbox", "sh", "-c", "cat /proc/1/cgroup; echo --; cat /proc/self/cgroup").stdout
    a, b = cg.split("--\n")
    assert a == b, cg


def test_container_user_and_no_new_privileges(daemon: Any) -> None:
    cid = daemon.docker("run", "-d", "-u", "1000", "--security-opt", "no-new-privileges", "busybox",
                        "sleep", "300").stdout.strip()
    try:
        assert daemon.docker("exec", cid, "id", "-u").stdout == "1000\n"  # the container's user by default
        assert daemon.docker("exec", "-u", "0", cid, "id", "-u").stdout == "0\n"
        nnp = daemon.docker("exec", cid, "grep", "NoNewPrivs", "/proc/self/status").stdout
        assert nnp == "NoNewPrivs:\t1\n"
    finally:
        daemon.docker("rm", "-f", cid)


def test_no_fd_leaks(daemon: Any, box: str) -> None:
    fds = daemon.docker("exec", "xbox", "ls", "/proc/self/fd").stdout.split()
    assert fds == ["0", "1", "2", "3"], fds  # 3 is ls's own handle on the directory


def test_stopped_and_missing(daemon: Any) -> None:
    cid = daemon.docker("create", "busybox", "true").stdout.strip()
    try:
        res = daemon.docker("exec", cid, "true", check=False)
        assert res.returncode == 1
        assert f"Error response from daemon: container {cid} is not running" in res.stderr
    finally:
        daemon.docker("rm", cid)
    res = daemon.docker("exec", "nosuchcontainer", "true", check=False)
    assert res.returncode == 1 and "No such container: nosuchcontainer" in res.stderr
    status, body = _status(daemon, "/exec/nosuchexec/json")
    assert status == 404 and body["message"] == "No such exec instance: nosuchexec"


def test_docker_py_exec_run(daemon: Any, box: str) -> None:
    client = daemon.client()
    try:
        container = client.containers.get("xbox")
        for _ in range(20):  # output that follows the 101 header must never be lost (engine-api §0.3)
            assert container.exec_run(["echo", "hello"]) == (0, b"hello\n")
        code, out = container.exec_run(["sh", "-c", "echo a; echo b >&2; exit 7"], demux=True)
        assert code == 7 and out == (b"a\n", b"b\n")
        code, out = container.exec_run("id -u", user="nobody", workdir="/tmp", environment={"K": "v"})
        assert (code, out) == (0, b"65534\n")
        assert container.exec_run("sh -c 'echo $K; pwd'", environment={"K": "v"}, workdir="/tmp").output == b"v\n/tmp\n"
        code, out = container.exec_run("tty", tty=True)
        assert code == 0 and out.startswith(b"/dev/pts/")
        assert container.exec_run("sleep 0.1", detach=True).exit_code is None
    finally:
        client.close()


def test_exec_inspect_events_and_exec_ids(daemon: Any, box: str) -> None:
    client = daemon.client()
    try:
        api = client.api
        since = time.time() - 1
        eid = api.exec_create("xbox", ["sleep", "30"])["Id"]
        info = api.exec_inspect(eid)
        assert info["Running"] is False and info["ExitCode"] is None and info["Pid"] == 0
        assert info["ProcessConfig"] == {"tty": False, "entrypoint": "sleep", "arguments": ["30"],
                                         "privileged": False, "user": ""}
        assert info["ContainerID"] == box
        api.exec_start(eid, detach=True)
        info = api.exec_inspect(eid)
        assert info["Running"] is True and info["Pid"] > 0
        ids = api.inspect_container("xbox")["ExecIDs"]
        api.exec_resize(eid, height=10, width=10)  # not a tty: accepted, nothing to do
        subprocess.run(["kill", str(info["Pid"])], check=True)
        deadline = time.monotonic() + 10
        while api.exec_inspect(eid)["Running"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert api.exec_inspect(eid)["ExitCode"] == 143
        res = daemon.docker("exec", "xbox", "true")
        assert res.returncode == 0
        events = daemon.docker("events", "--since", str(since), "--until", str(time.time()), "--format",
                               "{{.Action}} {{index .Actor.Attributes \"execID\"}}").stdout.splitlines()
        assert f"exec_create: sleep 30 {eid}" in events and f"exec_start: sleep 30 {eid}" in events
        assert f"exec_die {eid}" in events and any(e.startswith("exec_create: true ") for e in events)
        with pytest.raises(docker.errors.APIError) as err:
            api.exec_start(eid, detach=True)
        assert err.value.status_code == 409 and f"Exec command {eid} has already run" in str(err.value)
        assert ids is not None and eid in ids
        deadline = time.monotonic() + 10  # an exec's end is recorded just after its stream closes
        while left := api.inspect_container("xbox")["ExecIDs"] or []:
            assert time.monotonic() < deadline, [api.exec_inspect(e) for e in left]
            time.sleep(0.05)
    finally:
        client.close()


def test_paused_container(daemon: Any, box: str) -> None:
    daemon.docker("pause", "xbox")
    try:
        res = daemon.docker("exec", "xbox", "true", check=False)
        assert res.returncode == 1 and "is paused, unpause the container before exec" in res.stderr
    finally:
        daemon.docker("unpause", "xbox")
