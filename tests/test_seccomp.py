"""berth.kernel.seccomp and Docker's default profile: the compiler checked by a BPF interpreter and by the kernel.

Every filter is loaded in a forked child, so the test process itself stays unfiltered.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import socket
import struct
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from berth.errors import InvalidArgument, NotImplementedYet
from berth.kernel import caps, seccomp
from berth.kernel.caps import CAPS, CapSets
from berth.runtime.seccomp_profile import docker_default, render
from berth.testing.forked import in_child

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

X86_64 = seccomp.SYSCALLS_X86_64
ALLOW = seccomp.SECCOMP_RET_ALLOW
EPERM_RET = seccomp.SECCOMP_RET_ERRNO | errno.EPERM
ENOSYS_RET = seccomp.SECCOMP_RET_ERRNO | errno.ENOSYS
DOCKER_CAPS = set(CapSets.docker_default().effective)
ON_X86_64 = os.uname().machine == "x86_64"


def run_bpf(prog: bytes, nr: int, args: tuple[int, ...] = (), arch: int = seccomp.AUDIT_ARCH_X86_64) -> int:
    """A classic-BPF interpreter (the opcodes berth and libseccomp emit) over a ``struct seccomp_data``."""
    full = (list(args) + [0] * 6)[:6]
    data = struct.pack("<IIQ6Q", nr, arch, 0, *full)
    insns = [struct.unpack_from("<HBBI", prog, i) for i in range(0, len(prog), 8)]
    acc, x, pc = 0, 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == 0x20:
            acc = struct.unpack_from("<I", data, k)[0]
        elif code == 0x00:
            acc = k
        elif code == 0x01:
            x = k
        elif code == 0x07:
            x = acc
        elif code == 0x87:
            acc = x
        elif code == 0x54:
            acc &= k
        elif code == 0x05:
            pc += k
        elif code & 0x07 == 0x05 and code & 0xF0 in (0x10, 0x20, 0x30, 0x40):
            src = x if code & 0x08 else k
            hit = {0x10: acc == src, 0x20: acc > src, 0x30: acc >= src, 0x40: acc & src != 0}[code & 0xF0]
            pc += jt if hit else jf
        elif code == 0x06:
            return int(k)
        elif code == 0x16:
            return acc
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def raw(nr: int, *args: int) -> int:
    """A raw syscall; returns the result or -errno."""
    res = int(libc.syscall(ctypes.c_long(nr), *(ctypes.c_ulong(a) for a in args)))
    return res if res >= 0 else -ctypes.get_errno()


# --- the profile -------------------------------------------------------------------------------------------------


def test_profile_is_mobys() -> None:
    prof = docker_default(DOCKER_CAPS, machine="x86_64", kernel=(6, 18))
    assert prof["defaultAction"] == "SCMP_ACT_ERRNO" and prof["defaultErrnoRet"] == 1
    assert prof["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    names = {n for rule in prof["syscalls"] for n in rule["names"]}
    assert {"read", "write", "execve", "socket", "personality", "clone", "clone3", "chroot", "arch_prctl"} <= names
    assert {"mount", "unshare", "setns", "keyctl", "reboot", "bpf", "add_key", "pivot_root"}.isdisjoint(names)
    assert "ptrace" in names  # allowed on kernels >= 4.8
    clone3 = [r for r in prof["syscalls"] if r["names"] == ["clone3"]]
    assert clone3 == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
    clone = [r for r in prof["syscalls"] if r["names"] == ["clone"]]
    masked = {"index": 0, "value": 2114060288, "op": "SCMP_CMP_MASKED_EQ"}
    assert clone == [{"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [masked]}]
    assert all(set(r) <= {"names", "action", "errnoRet", "args"} for r in prof["syscalls"])


def test_profile_follows_caps_arch_and_kernel() -> None:
    admin = docker_default(DOCKER_CAPS | {CAPS["CAP_SYS_ADMIN"]}, machine="x86_64", kernel=(6, 18))
    names = {n for rule in admin["syscalls"] for n in rule["names"]}
    assert {"mount", "unshare", "setns", "clone3"} <= names
    assert not [r for r in admin["syscalls"] if r["names"] == ["clone3"] and r["action"] == "SCMP_ACT_ERRNO"]
    old = docker_default(DOCKER_CAPS, machine="x86_64", kernel=(4, 4))
    assert "ptrace" not in {n for rule in old["syscalls"] for n in rule["names"]}
    arm = docker_default(DOCKER_CAPS, machine="aarch64", kernel=(6, 1))
    assert arm["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    arm_names = {n for rule in arm["syscalls"] for n in rule["names"]}
    assert "arch_prctl" not in arm_names and "cacheflush" in arm_names
    with pytest.raises(InvalidArgument, match="both 'architectures' and 'archMap'"):
        render({"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["a"], "archMap": [{}], "syscalls": []}, [])


# --- the compiler, in the interpreter ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docker_prog() -> bytes:
    return seccomp.compile_filter(docker_default(DOCKER_CAPS, machine="x86_64", kernel=(6, 18)), "x86_64")


def test_docker_program_decisions(docker_prog: bytes) -> None:
    p = docker_prog
    assert len(p) % 8 == 0 and len(p) // 8 < seccomp.BPF_MAXINSNS
    assert run_bpf(p, X86_64["read"]) == ALLOW
    assert run_bpf(p, X86_64["mount"]) == EPERM_RET
    assert run_bpf(p, X86_64["unshare"]) == EPERM_RET
    assert run_bpf(p, X86_64["clone3"]) == ENOSYS_RET
    sock = X86_64["socket"]
    assert [run_bpf(p, sock, (d,)) for d in (1, 2, 37, 38, 39, 40, 41, 44)] == [ALLOW] * 3 + [
        EPERM_RET, ALLOW, EPERM_RET, ALLOW, ALLOW
    ]
    # 64-bit comparison: a high word makes the domain "greater than 40"
    assert run_bpf(p, sock, (0x1_0000_0026,)) == ALLOW
    pers = X86_64["personality"]
    assert run_bpf(p, pers, (0xFFFFFFFF,)) == ALLOW
    assert run_bpf(p, pers, (0xFFFFFFFF_FFFFFFFF,)) == EPERM_RET
    assert run_bpf(p, pers, (0x0400000,)) == EPERM_RET
    assert run_bpf(p, pers, (0x20008,)) == ALLOW
    clone = X86_64["clone"]
    assert run_bpf(p, clone, (0x01200011,)) == ALLOW  # glibc fork: CLONE_CHILD_SETTID|CLEARTID|SIGCHLD
    assert run_bpf(p, clone, (0x00020000 | 17,)) == EPERM_RET  # CLONE_NEWNS
    assert run_bpf(p, clone, (0x10000000,)) == EPERM_RET  # CLONE_NEWUSER
    assert run_bpf(p, clone, (0x1_0000_0000 | 17,)) == ALLOW  # the mask only covers the low word
    # not in any rule but known: the default; newer than anything named: ENOSYS (runc's stub)
    assert run_bpf(p, X86_64["kexec_load"]) == EPERM_RET
    assert run_bpf(p, 1000) == ENOSYS_RET


def test_docker_program_arches(docker_prog: bytes) -> None:
    p = docker_prog
    x32 = seccomp.SYSCALLS_X32
    assert run_bpf(p, x32["read"]) == ALLOW
    assert run_bpf(p, x32["mount"]) == EPERM_RET
    assert run_bpf(p, x32["ioctl"]) == ALLOW  # x32's own numbers 512+
    assert run_bpf(p, 0xFFFFFFFF) == EPERM_RET  # -1: a tracer's skipped syscall, the default
    i386 = seccomp.SYSCALLS_X86
    assert run_bpf(p, i386["socketcall"], arch=seccomp.AUDIT_ARCH_I386) == ALLOW
    assert run_bpf(p, i386["mount"], arch=seccomp.AUDIT_ARCH_I386) == EPERM_RET
    assert run_bpf(p, i386["socket"], (38,), arch=seccomp.AUDIT_ARCH_I386) == EPERM_RET
    assert run_bpf(p, i386["socket"], (2,), arch=seccomp.AUDIT_ARCH_I386) == ALLOW
    assert run_bpf(p, 0, arch=seccomp.AUDIT_ARCH_AARCH64) == seccomp.BAD_ARCH_ACTION
    # without X32/X86 listed those ABIs are killed
    only64 = seccomp.compile_filter({"defaultAction": "SCMP_ACT_ALLOW"}, "x86_64")
    assert run_bpf(only64, X86_64["mount"]) == ALLOW
    assert run_bpf(only64, x32["read"]) == seccomp.BAD_ARCH_ACTION
    assert run_bpf(only64, 3, arch=seccomp.AUDIT_ARCH_I386) == seccomp.BAD_ARCH_ACTION


def test_aarch64_program() -> None:
    prof = docker_default(DOCKER_CAPS, machine="aarch64", kernel=(6, 1))
    p = seccomp.compile_filter(prof, "aarch64")
    a64 = seccomp.SYSCALLS_AARCH64
    arch = seccomp.AUDIT_ARCH_AARCH64
    assert run_bpf(p, a64["read"], arch=arch) == ALLOW
    assert run_bpf(p, a64["mount"], arch=arch) == EPERM_RET
    assert run_bpf(p, a64["socket"], (40,), arch=arch) == EPERM_RET
    assert run_bpf(p, a64["clone"], (17,), arch=arch) == ALLOW
    # ARM (32-bit) is listed but berth has no table for it: killed rather than let through unfiltered
    assert run_bpf(p, 3, arch=seccomp.AUDIT_ARCH_ARM) == seccomp.BAD_ARCH_ACTION
    assert run_bpf(p, 0, arch=seccomp.AUDIT_ARCH_X86_64) == seccomp.BAD_ARCH_ACTION


OPS_CASES: list[tuple[str, int, int, int]] = [
    # op, value, valueTwo, argument
    ("SCMP_CMP_EQ", 5, 0, 5),
    ("SCMP_CMP_EQ", 5, 0, 0x1_0000_0005),
    ("SCMP_CMP_EQ", 0xDEAD_BEEF_0000_0001, 0, 0xDEAD_BEEF_0000_0001),
    ("SCMP_CMP_EQ", 0xDEAD_BEEF_0000_0001, 0, 0xDEAD_BEEE_0000_0001),
    ("SCMP_CMP_NE", 5, 0, 5),
    ("SCMP_CMP_NE", 5, 0, 0x1_0000_0005),
    ("SCMP_CMP_NE", 5, 0, 6),
    ("SCMP_CMP_LT", 0x1_0000_0000, 0, 0xFFFF_FFFF),
    ("SCMP_CMP_LT", 0x1_0000_0000, 0, 0x1_0000_0000),
    ("SCMP_CMP_LT", 0x1_0000_0000, 0, 0x2_0000_0000),
    ("SCMP_CMP_LE", 0x1_0000_0005, 0, 0x1_0000_0005),
    ("SCMP_CMP_LE", 0x1_0000_0005, 0, 0x1_0000_0006),
    ("SCMP_CMP_LE", 0x1_0000_0005, 0, 0x0_FFFF_FFFF),
    ("SCMP_CMP_GT", 0x1_0000_0005, 0, 0x1_0000_0006),
    ("SCMP_CMP_GT", 0x1_0000_0005, 0, 0x1_0000_0005),
    ("SCMP_CMP_GT", 0x1_0000_0005, 0, 0x2_0000_0000),
    ("SCMP_CMP_GT", 0x1_0000_0005, 0, 0x0_FFFF_FFFF),
    ("SCMP_CMP_GE", 0xFFFF_FFFF_FFFF_FFFF, 0, 0xFFFF_FFFF_FFFF_FFFF),
    ("SCMP_CMP_GE", 0xFFFF_FFFF_FFFF_FFFF, 0, 0xFFFF_FFFF_FFFF_FFFE),
    ("SCMP_CMP_GE", 7, 0, 7),
    ("SCMP_CMP_GE", 7, 0, 6),
    ("SCMP_CMP_MASKED_EQ", 0xFF00_0000_0000_00F0, 0x1200_0000_0000_0030, 0x12AB_CDEF_0000_0038),
    ("SCMP_CMP_MASKED_EQ", 0xFF00_0000_0000_00F0, 0x1200_0000_0000_0030, 0x13AB_CDEF_0000_0038),
    ("SCMP_CMP_MASKED_EQ", 0xFF00_0000_0000_00F0, 0x1200_0000_0000_0030, 0x1200_0000_0000_0048),
    ("SCMP_CMP_MASKED_EQ", 0x7E020000, 0, 0x1_0000_0011),
    ("SCMP_CMP_MASKED_EQ", 0x7E020000, 0, 0x0002_0011),
]


def expected(op: str, value: int, value_two: int, arg: int) -> bool:
    return {
        "SCMP_CMP_EQ": arg == value,
        "SCMP_CMP_NE": arg != value,
        "SCMP_CMP_LT": arg < value,
        "SCMP_CMP_LE": arg <= value,
        "SCMP_CMP_GT": arg > value,
        "SCMP_CMP_GE": arg >= value,
        "SCMP_CMP_MASKED_EQ": arg & value == value_two,
    }[op]


def one_rule(op: str, value: int, value_two: int, index: int = 2) -> dict[str, Any]:
    """Allow everything, but getpid answers EDOM when its (ignored) argument matches."""
    arg = {"index": index, "op": op, "value": value, "valueTwo": value_two}
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EDOM, "args": [arg]}],
    }


@pytest.mark.parametrize(("op", "value", "value_two", "arg"), OPS_CASES)
def test_comparisons_in_interpreter(op: str, value: int, value_two: int, arg: int) -> None:
    prog = seccomp.compile_filter(one_rule(op, value, value_two), "x86_64")
    args = (0, 0, arg)
    hit = run_bpf(prog, X86_64["getpid"], args) == seccomp.SECCOMP_RET_ERRNO | errno.EDOM
    assert hit == expected(op, value, value_two, arg)


def _kernel_comparisons() -> list[bool]:
    out = []
    for op, value, value_two, arg in OPS_CASES:
        pid = os.fork()
        if pid == 0:
            code = 3
            try:
                seccomp.load(one_rule(op, value, value_two))
                res = raw(X86_64["getpid"], 0, 0, arg)
                code = 1 if res == -errno.EDOM else 0 if res > 0 else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) in (0, 1), (op, value, arg, status)
        out.append(os.WEXITSTATUS(status) == 1)
    return out


@pytest.mark.root
@pytest.mark.skipif(not ON_X86_64, reason="syscall numbers in this test are x86_64's")
def test_comparisons_in_kernel() -> None:
    got = in_child(_kernel_comparisons)
    assert got == [expected(*case) for case in OPS_CASES]


def _eq_rule(name: str, i: int) -> dict[str, Any]:
    """``name`` answers errno 100+i when its first argument is i."""
    arg = {"index": 0, "op": "SCMP_CMP_EQ", "value": i}
    return {"names": [name], "action": "SCMP_ACT_ERRNO", "errnoRet": 100 + i, "args": [arg]}


def test_long_jumps_and_rule_order() -> None:
    # 300 conditional rules on one syscall: far more than a jump offset of 255 can cross
    rules = [_eq_rule("getpid", i) for i in range(300)]
    rules.append({"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 7})
    every = sorted(set(sorted(X86_64, key=X86_64.__getitem__)[:200]) - {"getpid"} | {"io_uring_setup", "listns"})
    below = {"index": 1, "op": "SCMP_CMP_LT", "value": 1 << 40}
    rules.append({"names": every, "action": "SCMP_ACT_ALLOW", "args": [below]})
    prof = {"defaultAction": "SCMP_ACT_KILL_PROCESS", "syscalls": rules}
    prog = seccomp.compile_filter(prof, "x86_64")
    assert len(prog) // 8 > 600
    nr = X86_64["getpid"]
    for i in (0, 1, 150, 254, 255, 256, 299):
        assert run_bpf(prog, nr, (i,)) == seccomp.SECCOMP_RET_ERRNO | (100 + i)
    assert run_bpf(prog, nr, (300,)) == seccomp.SECCOMP_RET_ERRNO | 7
    for name in ("read", "write", "mount", "io_uring_setup", "listns"):
        assert run_bpf(prog, X86_64[name], (0, 5)) == ALLOW
        assert run_bpf(prog, X86_64[name], (0, 1 << 41)) == seccomp.SECCOMP_RET_KILL_PROCESS


@pytest.mark.root
@pytest.mark.skipif(not ON_X86_64, reason="syscall numbers in this test are x86_64's")
def test_kernel_accepts_long_program() -> None:
    rules = [_eq_rule("getppid", i) for i in range(300)]

    def probe() -> list[int]:
        seccomp.load({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules})
        return [raw(X86_64["getppid"], i) for i in (0, 255, 299)] + [int(raw(X86_64["getppid"], 300) > 0)]

    assert in_child(probe) == [-100, -355, -399, 1]


def test_repeated_index_is_or_and_errors() -> None:
    prof = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {
                "names": ["getpid"],
                "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 0, "op": "SCMP_CMP_EQ", "value": 1}, {"index": 0, "op": "SCMP_CMP_EQ", "value": 2}],
            },
            {
                "names": ["getppid"],
                "action": "SCMP_ACT_ERRNO",
                "args": [{"index": 0, "op": "SCMP_CMP_EQ", "value": 1}, {"index": 1, "op": "SCMP_CMP_EQ", "value": 2}],
            },
            {"names": ["no_such_syscall"], "action": "SCMP_ACT_ERRNO"},
        ],
    }
    p = seccomp.compile_filter(prof, "x86_64")
    assert run_bpf(p, X86_64["getpid"], (1,)) == EPERM_RET
    assert run_bpf(p, X86_64["getpid"], (2,)) == EPERM_RET
    assert run_bpf(p, X86_64["getpid"], (3,)) == ALLOW
    assert run_bpf(p, X86_64["getppid"], (1, 2)) == EPERM_RET
    assert run_bpf(p, X86_64["getppid"], (1, 3)) == ALLOW
    with pytest.raises(InvalidArgument, match="unknown action"):
        seccomp.compile_filter({"defaultAction": "SCMP_ACT_NOPE"})
    with pytest.raises(InvalidArgument, match="operator"):
        bad = {"names": ["read"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "op": "X"}]}
        seccomp.compile_filter({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [bad]})
    with pytest.raises(NotImplementedYet):
        seccomp.compile_filter({"defaultAction": "SCMP_ACT_NOTIFY"})


# --- Docker's profile, in the kernel ---------------------------------------------------------------------------------


def _enter(caps_kept: set[int]) -> None:
    """What the runtime does without no_new_privs: load while CAP_SYS_ADMIN is still effective, then drop caps."""
    seccomp.load(docker_default(caps_kept))
    sets = CapSets(
        bounding=frozenset(caps_kept), effective=frozenset(caps_kept), permitted=frozenset(caps_kept)
    )
    caps.drop_bounding(caps_kept)
    caps.apply(sets)


def _err(fn: Callable[[], int]) -> int:
    """0 on success, else the errno (from a -1 libc return or an OSError)."""
    try:
        res = fn()
    except OSError as err:
        return err.errno or -1
    return 0 if res >= 0 else ctypes.get_errno()


def _open_socket(family: int, kind: int) -> int:
    socket.socket(family, kind).close()
    return 0


def _docker_probes() -> dict[str, object]:
    _enter(DOCKER_CAPS)
    out: dict[str, object] = {}
    out["caps"] = caps.current()["CapEff"]
    out["unshare_user"] = _err(lambda: libc.unshare(0x10000000))
    out["mount"] = _err(lambda: libc.mount(b"none", b"/nonexistent-berth-test", b"tmpfs", 0, None))
    out["keyctl"] = -raw(X86_64["keyctl"], 0, 2**64 - 3, 0)  # KEYCTL_GET_KEYRING_ID, session, no create
    out["vsock"] = _err(lambda: _open_socket(40, socket.SOCK_STREAM))
    out["alg"] = _err(lambda: _open_socket(38, socket.SOCK_SEQPACKET))
    out["inet"] = _err(lambda: _open_socket(socket.AF_INET, socket.SOCK_STREAM))
    out["unix"] = _err(lambda: _open_socket(socket.AF_UNIX, socket.SOCK_STREAM))
    # CLONE_NEWNS|CLONE_FS is EINVAL in the kernel itself, so a broken filter cannot make a process here
    out["clone_newns"] = -raw(X86_64["clone"], 0x00020000 | 0x00000200 | 17, 0, 0, 0, 0)
    out["clone3"] = -raw(X86_64["clone3"], 0, 0)
    out["personality0"] = raw(X86_64["personality"], 0) >= 0
    out["personality_rie"] = -raw(X86_64["personality"], 0x0400000)
    out["getpid"] = raw(X86_64["getpid"]) == os.getpid()
    r, w = os.pipe()
    out["rw"] = os.write(w, b"x") == 1 and os.read(r, 1) == b"x"
    shell = subprocess.run(["/bin/sh", "-c", "ls / >/dev/null; echo ok"], capture_output=True, text=True)
    out["shell"] = (shell.returncode, shell.stdout.strip())
    pid = os.fork()
    if pid == 0:
        try:
            os.execv("/bin/true", ["/bin/true"])
        finally:
            os._exit(127)
    out["fork_exec"] = os.waitpid(pid, 0)[1]
    return out


@pytest.mark.root
@pytest.mark.skipif(not ON_X86_64, reason="syscall numbers in this test are x86_64's")
def test_docker_default_in_kernel() -> None:
    got = in_child(_docker_probes)
    assert got == {
        "caps": 0xA80425FB,
        "unshare_user": errno.EPERM,
        "mount": errno.EPERM,
        "keyctl": errno.EPERM,
        "vsock": errno.EPERM,
        "alg": errno.EPERM,
        "inet": 0,
        "unix": 0,
        "clone_newns": errno.EPERM,
        "clone3": errno.ENOSYS,
        "personality0": True,
        "personality_rie": errno.EPERM,
        "getpid": True,
        "rw": True,
        "shell": [0, "ok"],
        "fork_exec": 0,
    }


def _admin_probes() -> dict[str, int]:
    _enter(DOCKER_CAPS | {CAPS["CAP_SYS_ADMIN"]})
    return {
        "unshare_uts": _err(lambda: libc.unshare(0x04000000)),
        "mount": _err(lambda: libc.mount(b"none", b"/nonexistent-berth-test", b"tmpfs", 0, None)),
        "clone3": -raw(X86_64["clone3"], 0, 0),
        "keyctl": -raw(X86_64["keyctl"], 0, 2**64 - 3, 0),
    }


@pytest.mark.root
@pytest.mark.skipif(not ON_X86_64, reason="syscall numbers in this test are x86_64's")
def test_docker_default_with_sys_admin() -> None:
    got = in_child(_admin_probes)
    # allowed by the profile: the kernel itself answers (ENOENT for the missing mount point, EINVAL for clone3)
    assert got == {"unshare_uts": 0, "mount": errno.ENOENT, "clone3": errno.EINVAL, "keyctl": errno.EPERM}


def _load_without_privilege() -> int:
    caps.drop_bounding(set())
    caps.apply(CapSets())
    try:
        seccomp.load({"defaultAction": "SCMP_ACT_ALLOW"})
    except OSError as err:
        return err.errno or -1
    return 0


@pytest.mark.root
def test_load_needs_no_new_privs_or_sys_admin() -> None:
    assert in_child(_load_without_privilege) == errno.EACCES


# --- against libseccomp ----------------------------------------------------------------------------------------------

LIBSECCOMP_EXPORT = """
import json, sys, tempfile, seccomp as S
prof = json.load(sys.stdin)
f = S.SyscallFilter(defaction=S.ERRNO(prof["defaultErrnoRet"]))
f.add_arch(S.Arch.X86)
f.add_arch(S.Arch.X32)
f.set_attr(S.Attr.ACT_BADARCH, S.KILL_PROCESS)
ops = {"SCMP_CMP_EQ": S.EQ, "SCMP_CMP_NE": S.NE, "SCMP_CMP_LT": S.LT, "SCMP_CMP_LE": S.LE, "SCMP_CMP_GT": S.GT,
       "SCMP_CMP_GE": S.GE, "SCMP_CMP_MASKED_EQ": S.MASKED_EQ}
for r in prof["syscalls"]:
    act = S.ALLOW if r["action"] == "SCMP_ACT_ALLOW" else S.ERRNO(r.get("errnoRet", 1))
    conds = [S.Arg(a["index"], ops[a["op"]], a["value"], a.get("valueTwo", 0)) for a in r.get("args", [])]
    for n in r["names"]:
        try:
            f.add_rule(act, n, *conds)
        except Exception:
            pass  # names this libseccomp does not know, as runc skips them
with tempfile.TemporaryFile() as t:
    f.export_bpf(t)
    t.seek(0)
    sys.stdout.write(t.read().hex())
"""


def _libseccomp_program(prof: dict[str, Any]) -> bytes | None:
    """Docker's profile compiled by libseccomp (Debian's python3-seccomp under the system python), if present."""
    if not os.path.exists("/usr/bin/python3"):
        return None
    res = subprocess.run(
        ["/usr/bin/python3", "-c", LIBSECCOMP_EXPORT], input=json.dumps(prof), capture_output=True, text=True
    )
    return bytes.fromhex(res.stdout) if res.returncode == 0 else None


@pytest.mark.parametrize("extra", [set(), {CAPS["CAP_SYS_ADMIN"], CAPS["CAP_SYS_PTRACE"]}])
def test_same_decisions_as_libseccomp(extra: set[int]) -> None:
    prof = docker_default(DOCKER_CAPS | extra, machine="x86_64", kernel=(6, 18))
    lib = _libseccomp_program(prof)
    if lib is None:
        pytest.skip("libseccomp's Python binding (Debian python3-seccomp) is not installed")
    mine = seccomp.compile_filter(prof, "x86_64")
    samples = [(), (0,), (2,), (8,), (38,), (40,), (41,), (0x20000,), (0x20008,), (0xFFFFFFFF,), (0x400000,),
               (0x1_0000_0000,), (0x1_0000_0028,), (0x10000000 | 17,), (0x01200011,), (0x20000 | 17,), (2**64 - 1,)]
    # up to 456: numbers every libseccomp since 2.5.4 knows; above, berth answers ENOSYS like runc's stub
    ranges = [
        (seccomp.AUDIT_ARCH_X86_64, [*range(457), 0xFFFFFFFF]),
        (seccomp.AUDIT_ARCH_X86_64, [seccomp.X32_SYSCALL_BIT + n for n in [*range(457), *range(512, 548)]]),
        (seccomp.AUDIT_ARCH_I386, [*range(457), 0xFFFFFFFF]),
        (seccomp.AUDIT_ARCH_ARM, [0, 3]),
    ]
    tables = {seccomp.AUDIT_ARCH_X86_64: X86_64, seccomp.AUDIT_ARCH_I386: seccomp.SYSCALLS_X86}
    with_args = {t[n] for t in (*tables.values(), seccomp.SYSCALLS_X32) for n in ("socket", "personality", "clone")}
    diffs = [
        (hex(arch), nr, args)
        for arch, nrs in ranges
        for nr in nrs
        for args in (samples if nr in with_args else [(0x1_0000_0001,)])
        if run_bpf(lib, nr, args, arch) != run_bpf(mine, nr, args, arch)
    ]
    assert diffs == []
