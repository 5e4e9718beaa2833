"""Tests for berth.kernel.cgroups: values, host detection, fake-root v1/v2 writes, and the real hierarchies.

Root tests make a per-run parent cgroup ``berth-test-<random>`` at the root of every hierarchy, put only
processes they start in it, and kill those processes and remove the whole parent on teardown.
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from berth.errors import InternalError, InvalidArgument
from berth.kernel import cgroups as cg
from berth.kernel.cgroups import CgroupV1, CgroupV2, DeviceRule, Resources

MOUNTINFO_HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
MOUNTINFO_V2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
MOUNTINFO_V1 = "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"


# -- values ------------------------------------------------------------------------------------------------------


def test_resources_from_oci() -> None:
    res = Resources.from_oci(
        {
            "memory": {"limit": 64 << 20, "swap": 128 << 20},
            "cpu": {"quota": 50000, "period": 100000, "shares": 512, "cpus": "0", "mems": ""},
            "pids": {"limit": 10},
            "devices": [{"allow": False, "access": "rwm"}],
        }
    )
    assert res == Resources(
        memory=64 << 20,
        memory_swap=128 << 20,
        cpu_quota=50000,
        cpu_period=100000,
        cpu_shares=512,
        cpuset_cpus="0",
        pids_limit=10,
    )
    assert Resources.from_oci(None) == Resources()
    assert Resources.from_oci({}) == Resources()


@pytest.mark.parametrize(
    "bad",
    [
        {"memory": {"limit": "64m"}},
        {"memory": {"limit": 100 << 20, "swap": 50 << 20}},
        {"memory": {"limit": -5}},
        {"cpu": {"period": 10}},
        {"cpu": {"quota": 10}},
        {"pids": {"limit": True}},
        {"cpu": "lots"},
    ],
)
def test_resources_reject_bad_values(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        Resources.from_oci(bad)


def test_memoryswap_wording_matches_docker() -> None:
    with pytest.raises(InvalidArgument, match="Minimum memoryswap limit should be larger than memory limit"):
        Resources(memory=100, memory_swap=50)


def test_shares_to_weight_like_runc() -> None:
    assert cg.shares_to_weight(2) == 1
    assert cg.shares_to_weight(1024) == 39
    assert cg.shares_to_weight(262144) == 10000
    assert cg.shares_to_weight(0) == 0


def test_device_rule_lines() -> None:
    assert DeviceRule.from_oci({"allow": False, "access": "rwm"}).v1_line() == "a *:* rwm"
    rule = DeviceRule.from_oci({"allow": True, "type": "c", "major": 1, "minor": 3, "access": "wr"})
    assert rule.v1_line() == "c 1:3 rw"
    assert DeviceRule.from_oci({"allow": True, "type": "c", "major": 136, "access": "rwm"}).v1_line() == "c 136:* rwm"
    with pytest.raises(InvalidArgument):
        DeviceRule.from_oci({"allow": True, "type": "x"})
    with pytest.raises(InvalidArgument):
        DeviceRule.from_oci({"allow": True, "access": "rx"})


def test_device_filter_program_shape() -> None:
    rules = [DeviceRule(False), DeviceRule(True, "c", 1, 3, "rwm"), DeviceRule(True, "c", 136, None, "rw")]
    code = cg.device_filter_program(rules)
    assert len(code) % 8 == 0
    # prologue 6 + rule blocks (2 + tests), last rule first; the deny-all rule ends the program
    assert len(code) // 8 == 6 + (1 + 3 + 1 + 2) + (3 + 2) + 2
    # without a catch-all rule a final "deny" is appended
    assert len(cg.device_filter_program(rules[1:])) // 8 == 6 + 7 + 5 + 2


@pytest.mark.parametrize("path", ["", "/", "a/../b", ".."])
def test_bad_paths_are_refused(path: str, tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("")
    with pytest.raises(InvalidArgument):
        cg.open_cgroup(path, root=tmp_path)


# -- layout ------------------------------------------------------------------------------------------------------


def test_detect_from_mountinfo() -> None:
    assert cg.detect(MOUNTINFO_HYBRID) == "hybrid"
    assert cg.detect(MOUNTINFO_V2) == "v2"
    assert cg.detect(MOUNTINFO_V1) == "v1"
    hier = cg.parse_mountinfo(MOUNTINFO_HYBRID)
    assert [h.mountpoint.name for h in hier] == ["cpu", "memory", "systemd", "unified"]
    assert hier[2].controllers == frozenset({"name=systemd"})
    assert cg.parse_mountinfo(MOUNTINFO_V1)[0].controllers == frozenset({"cpu", "cpuacct"})


def test_detect_this_host() -> None:
    assert cg.detect() in ("v1", "v2", "hybrid")
    assert isinstance(cg.cgroup_ns_supported(), bool)


# -- fake roots: what gets written where -------------------------------------------------------------------------


def test_fake_v2_apply_writes_controller_files(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    group = cg.open_cgroup("berth/c1", root=tmp_path)
    assert isinstance(group, CgroupV2)
    group.create()
    # the kernel would fill the child's cgroup.controllers from the parent's subtree_control
    (tmp_path / "berth" / "c1" / "cgroup.controllers").write_text("cpuset cpu memory pids\n")
    (tmp_path / "berth" / "c1" / "memory.swap.max").write_text("max\n")
    warnings = group.apply(
        Resources(
            memory=64 << 20,
            memory_swap=96 << 20,
            cpu_quota=50000,
            cpu_shares=1024,
            cpuset_cpus="0",
            cpuset_mems="0",
            pids_limit=0,
        )
    )
    d = tmp_path / "berth" / "c1"
    assert warnings == []
    assert (d / "memory.max").read_text() == str(64 << 20)
    assert (d / "memory.swap.max").read_text() == str(32 << 20)
    assert (d / "cpu.max").read_text() == "50000 100000"
    assert (d / "cpu.weight").read_text() == "39"
    assert (d / "cpuset.cpus").read_text() == "0"
    assert (d / "pids.max").read_text() == "max"
    (d / "cpu.max").write_text("50000 100000\n")
    group.apply(Resources(cpu_period=200000))
    assert (d / "cpu.max").read_text() == "50000 200000"
    group.apply(Resources(memory=-1, memory_swap=-1, pids_limit=7))
    assert (d / "memory.max").read_text() == "max"
    assert (d / "memory.swap.max").read_text() == "max"
    assert (d / "pids.max").read_text() == "7"
    with pytest.raises(InvalidArgument, match="without memory limit"):
        group.apply(Resources(memory_swap=1 << 30))


def test_fake_v2_missing_controllers_warn(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("")
    group = cg.open_cgroup("berth/c2", root=tmp_path)
    group.create()
    (tmp_path / "berth" / "c2" / "cgroup.controllers").write_text("memory\n")
    warnings = group.apply(Resources(memory=64 << 20, memory_swap=128 << 20, pids_limit=5, cpu_shares=512))
    assert any("pids controller is not enabled" in w for w in warnings)
    assert any("cpu controller is not enabled" in w for w in warnings)
    assert cg.SWAP_WARNING in warnings
    assert not (tmp_path / "berth" / "c2" / "pids.max").exists()


def _fake_v1(root: Path) -> None:
    for name in ("memory", "cpu,cpuacct", "cpuset", "pids", "devices"):
        (root / name).mkdir()
    (root / "cpuset" / "cpuset.cpus").write_text("0-3\n")
    (root / "cpuset" / "cpuset.mems").write_text("0\n")


def test_fake_v1_create_copies_cpuset_and_applies(tmp_path: Path) -> None:
    _fake_v1(tmp_path)
    group = cg.open_cgroup("berth/c3", root=tmp_path)
    assert isinstance(group, CgroupV1)
    for d in group.all_dirs:
        d.mkdir(parents=True)
    for level in (tmp_path / "cpuset" / "berth", tmp_path / "cpuset" / "berth" / "c3"):
        (level / "cpuset.cpus").write_text("")  # v1 makes new cpusets with empty values
        (level / "cpuset.mems").write_text("")
    (tmp_path / "memory" / "berth" / "c3" / "memory.memsw.limit_in_bytes").write_text("9223372036854771712\n")
    group.create()
    assert (tmp_path / "cpuset" / "berth" / "cpuset.cpus").read_text() == "0-3"
    assert (tmp_path / "cpuset" / "berth" / "c3" / "cpuset.mems").read_text() == "0"
    warnings = group.apply(
        Resources(memory=64 << 20, memory_swap=128 << 20, cpu_quota=20000, cpu_period=50000, pids_limit=-1)
    )
    assert warnings == []
    mem = tmp_path / "memory" / "berth" / "c3"
    assert (mem / "memory.limit_in_bytes").read_text() == str(64 << 20)
    assert (mem / "memory.memsw.limit_in_bytes").read_text() == str(128 << 20)
    cpu = tmp_path / "cpu,cpuacct" / "berth" / "c3"
    assert (cpu / "cpu.cfs_quota_us").read_text() == "20000"
    assert (cpu / "cpu.cfs_period_us").read_text() == "50000"
    assert (tmp_path / "pids" / "berth" / "c3" / "pids.max").read_text() == "max"
    assert group.apply_devices([{"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"}]) == []
    assert (tmp_path / "devices" / "berth" / "c3" / "devices.allow").read_text() == "c 1:3 rwm"


def test_fake_v1_swap_warning_when_memsw_missing(tmp_path: Path) -> None:
    _fake_v1(tmp_path)
    group = cg.open_cgroup("c4", root=tmp_path)
    assert isinstance(group, CgroupV1)
    for d in group.all_dirs:
        d.mkdir()
    (tmp_path / "cpuset" / "c4" / "cpuset.cpus").write_text("0")
    (tmp_path / "cpuset" / "c4" / "cpuset.mems").write_text("0")
    assert group.apply(Resources(memory=64 << 20, memory_swap=128 << 20)) == [cg.SWAP_WARNING]
    assert (tmp_path / "memory" / "c4" / "memory.limit_in_bytes").read_text() == str(64 << 20)
    with pytest.raises(InternalError, match="freezer"):
        group.freeze()


# -- the real hierarchies ----------------------------------------------------------------------------------------

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not os.access("/sys/fs/cgroup", os.W_OK), reason="creating cgroups needs root"
)
UNIFIED = Path("/sys/fs/cgroup/unified")
is_hybrid = pytest.mark.skipif(
    os.geteuid() != 0 or cg.detect() != "hybrid", reason="needs a hybrid host (cgroup2 at /sys/fs/cgroup/unified)"
)


class Children:
    """Processes a test starts (each waits for one byte on stdin before its real work); all killed on teardown."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, code: str, stdout: bool = False) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import os, sys, time\nsys.stdin.buffer.read(1)\n" + code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    @staticmethod
    def go(proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None
        proc.stdin.write(b"g")
        proc.stdin.flush()

    def cleanup(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    stream.close()


@pytest.fixture
def parent() -> Iterator[str]:
    """A per-run parent cgroup path, removed from every hierarchy at teardown (its processes killed first)."""
    name = f"berth-test-{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        group = cg.open_cgroup(name)
        if group.pids():
            group.kill_all(signal.SIGKILL)
        group.destroy()


@pytest.fixture
def children() -> Iterator[Children]:
    kids = Children()
    try:
        yield kids
    finally:
        kids.cleanup()


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


@pytest.mark.root
@needs_root
def test_create_apply_add_stats_destroy(parent: str, children: Children) -> None:
    group = cg.open_cgroup(f"{parent}/c1")
    group.create()
    warnings = group.apply(
        Resources(memory=256 << 20, cpu_quota=50000, cpu_period=100000, cpu_shares=512, pids_limit=50)
    )
    assert warnings == []
    proc = children.start(
        "x = b'y' * (8 << 20)\nt = time.monotonic()\nwhile time.monotonic() - t < 0.2: pass\nsys.stdin.buffer.read(1)"
    )
    group.add(proc.pid)
    assert group.pids() == [proc.pid]
    assert f":/{parent}/c1" in Path(f"/proc/{proc.pid}/cgroup").read_text()
    children.go(proc)
    time.sleep(0.3)
    stats = group.stats()
    assert stats["memory_stats"]["usage"] >= 8 << 20
    assert stats["memory_stats"]["limit"] == 256 << 20
    assert stats["cpu_stats"]["cpu_usage"]["total_usage"] > 0
    assert stats["cpu_stats"]["system_cpu_usage"] > 0
    assert stats["pids_stats"] == {"current": 1, "limit": 50}
    children.go(proc)
    assert proc.wait(5) == 0
    group.destroy()
    layout = cg.detect()
    if layout in ("v1", "hybrid"):
        assert isinstance(group, CgroupV1)
        assert not any(d.exists() for d in group.all_dirs)
    if layout == "hybrid":
        assert not (UNIFIED / parent / "c1").exists()


@pytest.mark.root
@needs_root
def test_freeze_and_thaw_stop_a_busy_process(parent: str, children: Children) -> None:
    group = cg.open_cgroup(f"{parent}/c2")
    group.create()
    proc = children.start("while True: pass")
    group.add(proc.pid)
    children.go(proc)
    assert _wait_for(lambda: _cpu_ticks(proc.pid) > 0)
    group.freeze()
    if isinstance(group, CgroupV1) and "freezer" in group.dirs:
        assert (group.dirs["freezer"] / "freezer.state").read_text().strip() == "FROZEN"
    before = _cpu_ticks(proc.pid)
    time.sleep(0.3)
    assert _cpu_ticks(proc.pid) == before
    assert group.frozen()
    group.thaw()
    assert not group.frozen()
    assert _wait_for(lambda: _cpu_ticks(proc.pid) > before + 5, timeout=3)


@pytest.mark.root
@needs_root
def test_kill_all_on_a_paused_group(parent: str, children: Children) -> None:
    group = cg.open_cgroup(f"{parent}/c8")
    group.create()
    code = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\ntime.sleep(60)"
    proc = children.start(code, stdout=True)
    group.add(proc.pid)
    children.go(proc)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    group.freeze()
    group.kill_all(signal.SIGTERM)  # ignored by the child; the pause must survive it
    assert group.frozen()
    group.kill_all(signal.SIGKILL)  # must reach a frozen task
    assert proc.wait(5) == -signal.SIGKILL
    assert _wait_for(lambda: group.pids() == [])


@pytest.mark.root
@needs_root
def test_memory_limit_oom_kills_and_is_counted(parent: str, children: Children) -> None:
    group = cg.open_cgroup(f"{parent}/c3")
    group.create()
    assert group.apply(Resources(memory=50 << 20, memory_swap=50 << 20)) == []
    proc = children.start("x = b'x' * (200 << 20)")
    group.add(proc.pid)
    assert group.oom_kill_count() == 0
    children.go(proc)
    assert proc.wait(20) == -signal.SIGKILL
    assert group.oom_kill_count() >= 1


@pytest.mark.root
@needs_root
def test_memory_limit_below_usage_is_refused(parent: str, children: Children) -> None:
    if cg.detect() == "v2":
        pytest.skip("v2 reclaims or OOM-kills instead of refusing a lower memory.max")
    group = cg.open_cgroup(f"{parent}/c4")
    group.create()
    proc = children.start("x = b'x' * (40 << 20)\nprint('ready', flush=True)\nsys.stdin.buffer.read(1)", stdout=True)
    group.add(proc.pid)
    children.go(proc)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    with pytest.raises(InvalidArgument, match="unable to set memory limit"):
        group.apply(Resources(memory=4 << 20))


FORK_BOMB = """
kids, fails = [], 0
for _ in range(50):
    try:
        pid = os.fork()
    except BlockingIOError:
        fails += 1
        continue
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    kids.append(pid)
print(len(kids), fails, flush=True)
for pid in kids:
    os.kill(pid, 9)
    os.waitpid(pid, 0)
"""


@pytest.mark.root
@needs_root
def test_pids_limit_bounds_a_fork_bomb(parent: str, children: Children) -> None:
    group = cg.open_cgroup(f"{parent}/c5")
    group.create()
    assert group.apply(Resources(pids_limit=10)) == []
    proc = children.start(FORK_BOMB, stdout=True)
    group.add(proc.pid)
    children.go(proc)
    assert proc.stdout is not None
    forked, failed = (int(x) for x in proc.stdout.readline().split())
    assert proc.wait(10) == 0
    assert forked <= 9
    assert failed >= 41


@pytest.mark.root
@needs_root
def test_kill_all_reaches_every_process(parent: str, children: Children) -> None:
    group = cg.open_cgroup(f"{parent}/c6")
    group.create()
    procs = [children.start("time.sleep(60)") for _ in range(3)]
    for proc in procs:
        group.add(proc.pid)
        children.go(proc)
    assert sorted(group.pids()) == sorted(p.pid for p in procs)
    group.kill_all(signal.SIGTERM)
    assert [p.wait(5) for p in procs] == [-signal.SIGTERM] * 3
    # grandchildren the test never sees directly die too
    shell = children.start("os.system('sleep 60 & sleep 60 & wait')")
    group.add(shell.pid)
    children.go(shell)
    assert _wait_for(lambda: len(group.pids()) >= 4)
    group.kill_all(signal.SIGKILL)
    assert shell.wait(5) == -signal.SIGKILL
    assert _wait_for(lambda: group.pids() == [])
    group.destroy()


@pytest.mark.root
@needs_root
def test_v1_device_rules_deny_and_allow(parent: str, children: Children, tmp_path: Path) -> None:
    if cg.detect() == "v2":
        pytest.skip("v1 devices controller not mounted")
    group = cg.open_cgroup(f"{parent}/c7")
    group.create()
    assert group.apply_devices(DEVICE_RULES) == []
    assert isinstance(group, CgroupV1)
    listed = (group.dirs["devices"] / "devices.list").read_text().splitlines()
    assert sorted(listed) == ["b *:* m", "c *:* m", "c 1:3 rwm", "c 1:5 r"]
    _check_device_access(group, children, tmp_path)


# Docker-like: deny everything, mknod anything, /dev/null fully, /dev/zero read-only, and an explicit deny at the end
DEVICE_RULES: list[dict[str, object]] = [
    {"allow": False, "access": "rwm"},
    {"allow": True, "type": "c", "access": "m"},
    {"allow": True, "type": "b", "access": "m"},
    {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
    {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "r"},
    {"allow": False, "type": "c", "major": 10, "minor": 229, "access": "rwm"},
]
DEVICE_PROBE = """
out = []
def attempt(fn):
    try:
        fn()
        out.append('ok')
    except OSError as e:
        out.append(str(e.errno))
attempt(lambda: os.close(os.open('/dev/null', os.O_RDWR)))
attempt(lambda: os.close(os.open('/dev/zero', os.O_RDONLY)))
attempt(lambda: os.close(os.open('/dev/zero', os.O_WRONLY)))
attempt(lambda: os.close(os.open('/dev/full', os.O_RDONLY)))
attempt(lambda: os.mknod(NODE, 0o600 | 0o020000, os.makedev(1, 1)))
attempt(lambda: os.close(os.open(NODE, os.O_RDONLY)))
print(' '.join(out), flush=True)
"""


def _check_device_access(group: cg.Cgroup, children: Children, tmp_path: Path) -> None:
    proc = children.start(f"NODE = {str(tmp_path / 'mem')!r}\n" + DEVICE_PROBE, stdout=True)
    group.add(proc.pid)
    children.go(proc)
    assert proc.stdout is not None
    eperm = str(errno.EPERM)
    assert proc.stdout.readline().decode().split() == ["ok", "ok", eperm, eperm, "ok", eperm]
    assert proc.wait(5) == 0


@pytest.mark.root
@is_hybrid
def test_v2_on_the_unified_mount(parent: str, children: Children) -> None:
    group = cg.open_cgroup(f"{parent}/u1", root=UNIFIED)
    assert isinstance(group, CgroupV2)
    group.create()
    warnings = group.apply(Resources(memory=64 << 20, pids_limit=5))
    assert any("memory controller is not enabled" in w for w in warnings)
    assert any("pids controller is not enabled" in w for w in warnings)
    proc = children.start("while True: pass")
    group.add(proc.pid)
    children.go(proc)
    assert group.pids() == [proc.pid]
    assert group.stats()["cpu_stats"]["cpu_usage"]["total_usage"] >= 0
    assert _wait_for(lambda: _cpu_ticks(proc.pid) > 0)
    group.freeze()
    before = _cpu_ticks(proc.pid)
    time.sleep(0.3)
    assert _cpu_ticks(proc.pid) == before
    group.thaw()
    assert _wait_for(lambda: _cpu_ticks(proc.pid) > before)
    group.kill_all(signal.SIGKILL)  # cgroup.kill
    assert proc.wait(5) == -signal.SIGKILL
    assert _wait_for(lambda: group.pids() == [])
    group.destroy()
    assert not (UNIFIED / parent / "u1").exists()


@pytest.mark.root
@is_hybrid
def test_v2_ebpf_device_filter(parent: str, children: Children, tmp_path: Path) -> None:
    group = cg.open_cgroup(f"{parent}/u2", root=UNIFIED)
    group.create()
    warnings = group.apply_devices(DEVICE_RULES)
    if warnings:
        pytest.skip(f"eBPF device programs unavailable here: {warnings[0]}")
    _check_device_access(group, children, tmp_path)
