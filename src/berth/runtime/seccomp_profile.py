"""Docker's default seccomp profile, rendered for one container the way moby's ``setupSeccomp`` does.

``seccomp_default.json`` is moby's ``profiles/seccomp/default.json`` unchanged (github.com/moby/profiles).
Rendering keeps the rules whose ``includes`` hold and whose ``excludes`` do not, judged by the container's
capabilities (Docker looks at the bounding set, which equals the effective one for its containers), the
machine's arch (Go's names: ``amd64``, ``arm64``...) and the running kernel's ``major.minor``; the
``archMap`` entry of the native arch becomes ``architectures``.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from berth.errors import InvalidArgument
from berth.kernel.caps import NAMES

_PROFILE = Path(__file__).with_name("seccomp_default.json")

# uname machine -> (Go/libseccomp arch name used in includes/excludes, OCI arch)
_ARCH = {
    "x86_64": ("amd64", "SCMP_ARCH_X86_64"),
    "aarch64": ("arm64", "SCMP_ARCH_AARCH64"),
    "i686": ("x86", "SCMP_ARCH_X86"),
    "armv7l": ("arm", "SCMP_ARCH_ARM"),
    "s390x": ("s390x", "SCMP_ARCH_S390X"),
    "ppc64le": ("ppc64le", "SCMP_ARCH_PPC64LE"),
    "riscv64": ("riscv64", "SCMP_ARCH_RISCV64"),
    "loongarch64": ("loong64", "SCMP_ARCH_LOONGARCH64"),
}


@functools.cache
def _raw_profile() -> dict[str, Any]:
    with _PROFILE.open() as f:
        data: dict[str, Any] = json.load(f)
    return data


def _kernel_version(release: str) -> tuple[int, int]:
    parts = release.split("-")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError) as err:
        raise InvalidArgument(f"failed to parse kernel version {release!r}") from err


def _parse_min_kernel(text: str) -> tuple[int, int]:
    return _kernel_version(text)


def render(
    profile: dict[str, Any], cap_names: Iterable[str], machine: str | None = None, kernel: tuple[int, int] | None = None
) -> dict[str, Any]:
    """The OCI ``linux.seccomp`` section for a moby-format profile (``archMap``, ``includes``/``excludes``)."""
    caps = set(cap_names)
    machine = machine or os.uname().machine
    kver = kernel or _kernel_version(os.uname().release)
    arch, native = _ARCH.get(machine, (machine, ""))
    if profile.get("architectures") and profile.get("archMap"):
        raise InvalidArgument(
            "both 'architectures' and 'archMap' are specified in the seccomp profile, use either 'architectures' or "
            "'archMap'"
        )
    out: dict[str, Any] = {
        k: copy.deepcopy(v) for k, v in profile.items() if k not in ("archMap", "syscalls", "architectures")
    }
    arches: list[str] = list(profile.get("architectures") or [])
    for entry in profile.get("archMap") or []:
        if entry.get("architecture") == native:
            arches = [native, *(entry.get("subArchitectures") or [])]
            break
    if arches:
        out["architectures"] = arches
    syscalls: list[dict[str, Any]] = []
    for call in profile.get("syscalls") or []:
        names = list(call.get("names") or [])
        if call.get("name"):
            if names:
                raise InvalidArgument(
                    "both 'name' and 'names' are specified in the seccomp profile, use either 'name' or 'names'"
                )
            names = [call["name"]]
        exc = call.get("excludes") or {}
        if exc.get("arches") and arch in exc["arches"]:
            continue
        if any(c in caps for c in exc.get("caps") or []):
            continue
        if exc.get("minKernel") and kver >= _parse_min_kernel(exc["minKernel"]):
            continue
        inc = call.get("includes") or {}
        if inc.get("arches") and arch not in inc["arches"]:
            continue
        if any(c not in caps for c in inc.get("caps") or []):
            continue
        if inc.get("minKernel") and kver < _parse_min_kernel(inc["minKernel"]):
            continue
        rule: dict[str, Any] = {"names": names, "action": call["action"]}
        if call.get("errnoRet") is not None:
            rule["errnoRet"] = call["errnoRet"]
        if call.get("args"):
            rule["args"] = copy.deepcopy(call["args"])
        syscalls.append(rule)
    out["syscalls"] = syscalls
    return out


def docker_default(
    caps: set[int], *, machine: str | None = None, kernel: tuple[int, int] | None = None
) -> dict[str, Any]:
    """The ``linux.seccomp`` section Docker generates for a container whose bounding/effective caps are ``caps``."""
    return render(_raw_profile(), (NAMES[c] for c in caps if c in NAMES), machine, kernel)
