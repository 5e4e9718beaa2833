"""Isolation battery for the default (Docker) spec, run side by side under berth-runtime and runc.

Each check runs a busybox container (plus a static C probe for syscalls busybox cannot make) and expects the
same answer from both runtimes: shared/reference/security.md §2 is the bar.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth.testing.bundle import Harness, build_probe, runtime_command, unpack_busybox

pytestmark = pytest.mark.root

RUNTIMES = ["berth-runtime", "runc"]


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.skip("needs root: namespaces, mounts and cgroups")
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc -static for the syscall probe")
    base = tmp_path_factory.mktemp("busybox")
    root = unpack_busybox(base / "rootfs")
    build_probe(root / "probe", base)
    return root


@pytest.fixture(params=RUNTIMES)
def rt(request: pytest.FixtureRequest, rootfs: Path, tmp_path: Path) -> Iterator[Harness]:
    cmd = runtime_command(request.param)
    if cmd is None:
        pytest.skip(f"{request.param} is not installed (apt-get install {request.param})")
    h = Harness(cmd, tmp_path / "work", rootfs)
    try:
        yield h
    finally:
        h.cleanup()


def sh(rt: Harness, script: str, **spec_kw: object) -> str:
    res = rt.run(["sh", "-c", script], **spec_kw)  # type: ignore[arg-type]
    assert res.returncode == 0, (res.returncode, res.stdout, res.stderr)
    return res.stdout


def test_capabilities_are_dockers_14(rt: Harness) -> None:
    caps = dict(line.split(":\t") for line in sh(rt, "grep Cap /proc/1/status").splitlines())
    assert caps == {"CapInh": "0000000000000000", "CapPrm": "00000000a80425fb", "CapEff": "00000000a80425fb",
                    "CapBnd": "00000000a80425fb", "CapAmb": "0000000000000000"}


def test_privileged_syscalls_fail_with_eperm(rt: Harness) -> None:
    out = sh(rt, "/probe keyctl; /probe socket 40; /probe unshare; /probe clone-newns; /probe mount; "
                 "unshare -U true 2>/dev/null; echo unshare=$?; mount -t tmpfs x /mnt 2>/dev/null; echo mount=$?")
    assert out.split() == ["EPERM"] * 5 + ["unshare=1", "mount=1"]


def test_proc_is_masked_and_readonly(rt: Harness) -> None:
    # /proc/kcore is not built into every kernel; /proc/keys and /proc/timer_list are on the same list
    out = sh(rt, "for f in /proc/kcore /proc/keys /proc/timer_list; do [ -e $f ] && stat -c %t:%T $f "
                 "&& head -c 16 $f | wc -c; done; /probe write /proc/sys/kernel/core_pattern; "
                 "[ -e /proc/sysrq-trigger ] && /probe write /proc/sysrq-trigger || echo EROFS; "
                 "stat -c %F /proc/acpi; ls /proc/acpi | wc -l; "
                 "/probe write /sys/kernel/rcu_expedited")
    words = out.split()
    masked = words[:-5]
    assert len(masked) >= 4 and masked == ["1:3", "0"] * (len(masked) // 2)
    assert words[-5:] == ["EROFS", "EROFS", "directory", "0", "EROFS"]


def test_hostname_and_pid_namespace(rt: Harness) -> None:
    assert sh(rt, "hostname; echo $$", hostname="probe-host").split() == ["probe-host", "1"]
    res = rt.run(["ls", "/proc"])
    assert res.returncode == 0, res.stderr
    assert [p for p in res.stdout.split() if p.isdigit()] == ["1"]  # ls itself; never a host process


def test_only_stdio_fds_reach_the_container(rt: Harness) -> None:
    # the init's fd table right after execve, seen from the host (a shell inside would add its own fds)
    cid, bundle = rt.bundle(["sleep", "30"])
    res = rt.cli("create", "--bundle", os.fspath(bundle), cid, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL, capture_output=False)
    assert res.returncode == 0
    pid = int(json.loads(rt.cli("state", cid).stdout)["pid"])
    assert rt.cli("start", cid).returncode == 0
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}/comm").read_text().strip() != "sleep":
        assert time.monotonic() < deadline, "the init never exec'd"
        time.sleep(0.01)
    fds = sorted(int(n) for n in os.listdir(f"/proc/{pid}/fd"))
    assert fds == [0, 1, 2], {n: os.readlink(f"/proc/{pid}/fd/{n}") for n in fds}
    assert rt.cli("delete", "--force", cid).returncode == 0


def test_devices_and_mounts(rt: Harness) -> None:
    out = sh(rt, "stat -c '%n %t:%T' /dev/null /dev/zero /dev/full /dev/random /dev/urandom /dev/tty; "
                 "readlink /dev/ptmx; readlink /dev/fd; "
                 "grep -E ' /(sys|sys/fs/cgroup/memory|proc/sys) ' /proc/self/mounts | cut -d' ' -f2,4 | cut -d, -f1")
    assert out.split("\n")[:6] == ["/dev/null 1:3", "/dev/zero 1:5", "/dev/full 1:7", "/dev/random 1:8",
                                   "/dev/urandom 1:9", "/dev/tty 5:0"]
    assert "pts/ptmx" in out and "/proc/self/fd" in out
    assert {"/sys ro", "/sys/fs/cgroup/memory ro", "/proc/sys ro"} <= set(out.splitlines())


def test_memory_limit_oom_kills(rt: Harness) -> None:
    limit = 32 * 1024 * 1024
    out = sh(rt, "/probe alloc 256; echo rc=$?; grep oom_kill /sys/fs/cgroup/memory/memory.oom_control || "
                 "grep oom_kill /sys/fs/cgroup/memory.events",
             resources={"memory": {"limit": limit, "swap": limit}})
    assert "rc=137" in out
    assert any(line.split()[0] == "oom_kill" and int(line.split()[1]) >= 1 for line in out.splitlines()
               if line.startswith("oom_kill ")), out


def test_pids_limit(rt: Harness) -> None:
    out = sh(rt, "/probe fork 40", resources={"pids": {"limit": 10}})
    word, count, err = out.split()
    assert word == "forked" and int(count) < 10 and err == "EAGAIN"


def test_hostile_rootfs_symlinks_never_touch_the_host(rt: Harness, tmp_path: Path) -> None:
    """CVE-2026-41579 / CVE-2015-3629 shapes: /dev or /proc in the image is a symlink out of the root."""
    outside = tmp_path / "outside"
    for name, link in (("dev", os.fspath(outside / "abs")), ("dev", "../../../../../../" + os.fspath(outside)[1:]),
                       ("proc", "/")):
        cid, bundle = rt.bundle(["true"])
        target = bundle / "rootfs" / name
        shutil.rmtree(target)
        target.symlink_to(link)
        res = rt.cli("run", "--bundle", os.fspath(bundle), cid, stdin=subprocess.DEVNULL)
        assert res.returncode != 0, (name, link)
        assert not outside.exists()
    with open("/proc/self/mountinfo") as f:
        assert os.fspath(rt.workdir) not in f.read()


def test_non_root_user_and_no_new_privileges(rt: Harness) -> None:
    out = sh(rt, "id -u; id -g; id -G; grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status",
             user=(1000, 1000), additional_gids=(2000,), no_new_privileges=True)
    lines = out.split("\n")
    assert lines[:3] == ["1000", "1000", "1000 2000"]
    status = dict(line.split(":\t") for line in lines[3:] if line)
    assert status == {"CapEff": "0000000000000000", "CapPrm": "0000000000000000", "CapBnd": "00000000a80425fb",
                      "NoNewPrivs": "1"}


def test_readonly_rootfs(rt: Harness) -> None:
    out = sh(rt, "touch /x 2>/dev/null; echo root=$?; touch /dev/shm/x; echo shm=$?", readonly_rootfs=True)
    assert out.split() == ["root=1", "shm=0"]
