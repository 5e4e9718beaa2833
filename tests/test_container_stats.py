"""docker stats / top / update against berthd with the real docker CLI and docker-py, and the pure parsers of
``berth.engine.stats``."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from berth.engine import stats
from berth.errors import Conflict, InvalidArgument
from berth.kernel import cgroups
from berth.runtime import linux
from berth.runtime.monitor import runtime_root
from berth.testing.rootfs import FIXTURES

BUSYBOX = FIXTURES / "busybox-docker-save.tar"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def daemon(shared_berthd: Any) -> Any:
    shared_berthd.docker("load", "-i", str(BUSYBOX))
    return shared_berthd


@pytest.fixture
def running(daemon: Any) -> Iterator[str]:
    name = f"x3-{uuid.uuid4().hex[:10]}"
    daemon.docker("run", "-d", "--name", name, "busybox", "sh", "-c", "sleep 300 & sleep 301 & wait")
    try:
        yield name
    finally:
        daemon.docker("rm", "-f", name, check=False)


def _cgroup_file(daemon: Any, name: str, controller: str, v1: str, v2: str) -> str:
    cid = json.loads(daemon.docker("inspect", name).stdout)[0]["Id"]
    group = cgroups.open_cgroup(linux.state(cid, runtime_root(daemon.exec_root)).cgroup_path)
    if isinstance(group, cgroups.CgroupV2):
        return (group.dir / v2).read_text().strip()
    assert isinstance(group, cgroups.CgroupV1)
    return (group.dirs[controller] / v1).read_text().strip()


# --- pure pieces ------------------------------------------------------------------------------------------------------


def test_parse_ps_output_like_dockerd() -> None:
    out = ("UID PID PPID C STIME TTY TIME CMD\n"
           "root 10 1 0 10:00 ? 00:00:00 sleep 300\n"
           "root 11 1 0 10:00 ? 00:00:00 other thing\n"
           "root - - 0 10:00 ? 00:00:00 -\n"
           "root 12 10 0 10:00 ? 00:00:00 sh -c a b\n")
    got = stats.parse_ps_output(out, {10, 12})
    assert got["Titles"] == ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    assert [p[1] for p in got["Processes"]] == ["10", "12"]
    assert got["Processes"][1][-1] == "sh -c a b"
    with pytest.raises(stats.InternalError):
        stats.parse_ps_output("UID CMD\nroot x\n", {1})
    stats.validate_ps_args("-eo pid,comm")
    with pytest.raises(InvalidArgument):
        stats.validate_ps_args("-o pid,ppid -o user= PID")


def test_read_networks_of_this_process() -> None:
    nets = stats.read_networks(os.getpid())
    assert "lo" not in nets
    for counters in nets.values():
        assert set(counters) >= {"rx_bytes", "tx_bytes", "rx_packets", "tx_packets"}


def test_merge_update_rules() -> None:
    host: dict[str, Any] = {"Memory": 0, "MemorySwap": 0, "NanoCpus": 0, "CpuQuota": 0, "CpuPeriod": 0,
                            "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0}, "AutoRemove": False}
    with pytest.raises(Conflict, match="memoryswap"):
        stats.merge_update(dict(host), {"Memory": 64 * MIB})
    h = dict(host, Memory=64 * MIB)
    stats.merge_update(h, {"Memory": 100 * MIB})  # within the 2x swap Docker gave it at create
    assert h["Memory"] == 100 * MIB and h["MemorySwap"] == 128 * MIB
    with pytest.raises(Conflict, match="Nano CPUs cannot be updated"):
        stats.merge_update(dict(host, CpuQuota=50000), {"NanoCpus": 10**9})
    h = dict(host)
    stats.merge_update(h, {"CpuShares": 512, "PidsLimit": 0, "RestartPolicy": {"Name": "on-failure",
                                                                                "MaximumRetryCount": 3}})
    assert h["CpuShares"] == 512 and h["PidsLimit"] == 0 and h["RestartPolicy"]["MaximumRetryCount"] == 3
    with pytest.raises(Conflict, match="AutoRemove"):
        stats.merge_update(dict(host, AutoRemove=True), {"RestartPolicy": {"Name": "always"}})
    with pytest.raises(InvalidArgument):
        stats.merge_update(dict(host), {"RestartPolicy": {"Name": "sometimes"}})


# --- stats ---------------------------------------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.docker_cli
def test_stats_cli_no_stream(daemon: Any, running: str) -> None:
    out = daemon.docker("stats", "--no-stream", "--format", "{{.Name}}|{{.CPUPerc}}|{{.MemUsage}}|{{.PIDs}}",
                        running).stdout.strip()
    name, cpu, mem, pids = out.split("|")
    assert name == running and cpu.endswith("%") and "/" in mem and int(pids) >= 3


@pytest.mark.root
@pytest.mark.docker_cli
def test_stats_docker_py(daemon: Any, running: str) -> None:
    api = daemon.client().api
    doc = api.stats(running, stream=False)
    assert doc["name"] == "/" + running and len(doc["id"]) == 64
    assert doc["memory_stats"]["usage"] > 0 and doc["memory_stats"]["limit"] > 0
    assert doc["pids_stats"]["current"] >= 3
    assert doc["cpu_stats"]["system_cpu_usage"] > doc["precpu_stats"]["system_cpu_usage"] > 0
    assert doc["cpu_stats"]["online_cpus"] >= 1 and doc["preread"] < doc["read"]
    one = api.stats(running, stream=False, one_shot=True)
    assert one["preread"] == "0001-01-01T00:00:00Z" and one["cpu_stats"]["cpu_usage"]["total_usage"] > 0

    stream = api.stats(running, stream=True, decode=True)
    first, second = next(stream), next(stream)
    assert second["preread"] == first["read"]
    assert second["precpu_stats"]["cpu_usage"]["total_usage"] == first["cpu_stats"]["cpu_usage"]["total_usage"]


@pytest.mark.root
@pytest.mark.docker_cli
def test_stats_of_stopped_container_are_zero(daemon: Any) -> None:
    name = f"x3-{uuid.uuid4().hex[:10]}"
    daemon.docker("create", "--name", name, "busybox", "true")
    try:
        doc = daemon.client().api.stats(name, stream=False)
        assert doc["read"] == "0001-01-01T00:00:00Z" and doc["memory_stats"] == {} and doc["pids_stats"] == {}
        assert doc["cpu_stats"]["cpu_usage"]["total_usage"] == 0 and doc["name"] == "/" + name
        out = daemon.docker("stats", "--no-stream", "--format", "{{.MemUsage}} {{.PIDs}}", name).stdout
        assert out.strip() == "0B / 0B 0"
        res = daemon.docker("stats", "--no-stream", "nosuchcontainer", check=False)
        assert res.returncode != 0 and "No such container" in res.stderr
    finally:
        daemon.docker("rm", "-f", name, check=False)


# --- top -----------------------------------------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.docker_cli
def test_top(daemon: Any, running: str) -> None:
    out = daemon.docker("top", running).stdout
    assert out.splitlines()[0].split()[:2] == ["UID", "PID"]
    assert "sleep 300" in out and "sleep 301" in out
    deadline = time.monotonic() + 10  # the shell's background child shows as "sh" until it has exec'd sleep
    while True:
        procs = daemon.client().api.top(running, ps_args="-o pid,comm")
        comms = sorted(p[1] for p in procs["Processes"])
        if comms == ["sh", "sleep", "sleep"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert procs["Titles"] == ["PID", "COMMAND"]
    assert comms == ["sh", "sleep", "sleep"]
    host_pids = {int(p[0]) for p in procs["Processes"]}
    assert os.getpid() not in host_pids
    res = daemon.docker("top", running, "-o", "ppid=PID", check=False)
    assert res.returncode != 0 and 'specifying "ppid=PID" is not allowed' in res.stderr

    name = f"x3-{uuid.uuid4().hex[:10]}"
    daemon.docker("create", "--name", name, "busybox", "true")
    try:
        res = daemon.docker("top", name, check=False)
        assert res.returncode != 0 and "is not running" in res.stderr
    finally:
        daemon.docker("rm", name)


# --- update --------------------------------------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.docker_cli
def test_update_running_container(daemon: Any, running: str) -> None:
    daemon.docker("update", "--memory", "64m", "--memory-swap", "128m", "--cpus", "0.5", "--pids-limit", "50",
                  "--restart", "on-failure:2", running)
    host = json.loads(daemon.docker("inspect", running).stdout)[0]["HostConfig"]
    assert (host["Memory"], host["MemorySwap"], host["NanoCpus"], host["PidsLimit"]) == (
        64 * MIB, 128 * MIB, 500_000_000, 50)
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    assert daemon.client().api.stats(running, stream=False, one_shot=True)["memory_stats"]["limit"] == 64 * MIB
    assert _cgroup_file(daemon, running, "pids", "pids.max", "pids.max") == "50"
    quota = _cgroup_file(daemon, running, "cpu", "cpu.cfs_quota_us", "cpu.max")
    assert quota.split()[0] == "50000"

    daemon.client().api.update_container(running, mem_limit="96m")  # docker-py; swap stays 128m
    assert _cgroup_file(daemon, running, "memory", "memory.limit_in_bytes", "memory.max") == str(96 * MIB)
    res = daemon.docker("update", "--cpu-quota", "20000", running, check=False)
    assert res.returncode != 0 and "CPU Quota cannot be updated as NanoCPUs has already been set" in res.stderr
    res = daemon.docker("update", "--memory", "1g", running, check=False)
    assert res.returncode != 0 and "Memory limit should be smaller than already set memoryswap limit" in res.stderr


@pytest.mark.root
@pytest.mark.docker_cli
def test_update_stopped_container_applies_at_start(daemon: Any, tmp_path: Path) -> None:
    name = f"x3-{uuid.uuid4().hex[:10]}"
    daemon.docker("create", "--name", name, "busybox", "sleep", "300")
    try:
        daemon.docker("update", "--pids-limit", "33", "--restart", "always", name)
        daemon.docker("start", name)
        assert _cgroup_file(daemon, name, "pids", "pids.max", "pids.max") == "33"
        info = json.loads(daemon.docker("inspect", name).stdout)[0]
        assert info["HostConfig"]["RestartPolicy"]["Name"] == "always" and info["State"]["Running"]
        res = daemon.docker("update", "--restart", "always", "nosuch", check=False)
        assert res.returncode != 0 and "No such container" in res.stderr
    finally:
        daemon.docker("rm", "-f", name, check=False)
