"""berth.kernel.caps: capability names and the prctl/capset calls, checked in forked children."""

from __future__ import annotations

import os
import subprocess

import pytest

from berth.errors import InvalidArgument
from berth.kernel import caps
from berth.kernel.caps import CAPS, CapSets
from berth.testing.forked import in_child

DOCKER_MASK = 0x00000000A80425FB


def test_parse_names() -> None:
    assert caps.parse_caps(["NET_ADMIN"]) == {12}
    assert caps.parse_caps(["CAP_NET_ADMIN", "cap_sys_admin", "Chown"]) == {12, 21, 0}
    assert caps.parse_caps([]) == set()
    assert caps.parse_caps(["ALL"]) == set(range(caps.last_cap() + 1))
    assert caps.parse_caps(["all"]) == caps.parse_caps(["ALL"])


@pytest.mark.parametrize("name", ["FOO", "CAP_FOO", "NET_ADMINX", ""])
def test_parse_invalid(name: str) -> None:
    with pytest.raises(InvalidArgument, match="unknown capability"):
        caps.parse_caps([name])


def test_invalid_message_is_dockers() -> None:
    with pytest.raises(InvalidArgument) as info:
        caps.parse_caps(["foo"])
    assert str(info.value) == 'unknown capability: "CAP_FOO"'


def test_table_and_mask() -> None:
    assert CAPS["CAP_CHOWN"] == 0 and CAPS["CAP_CHECKPOINT_RESTORE"] == 40
    assert len(CAPS) == 41 and sorted(CAPS.values()) == list(range(41))
    assert caps.mask(CAPS[n] for n in caps.DOCKER_DEFAULT) == DOCKER_MASK
    assert caps.mask([]) == 0
    assert caps.last_cap() >= 40


def test_from_oci() -> None:
    assert CapSets.from_oci(None) == CapSets()
    sets = CapSets.from_oci(
        {"bounding": ["CAP_KILL", "CAP_NOT_A_CAP"], "effective": ["CAP_KILL"], "ambient": []}
    )
    assert sets.bounding == {5} and sets.effective == {5}
    assert sets.permitted == sets.inheritable == sets.ambient == frozenset()
    with pytest.raises(InvalidArgument):
        CapSets(bounding=frozenset({64}))


def test_current_reads_status() -> None:
    now = caps.current()
    assert set(now) == {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}


def _drop_to_docker() -> dict[str, int]:
    sets = CapSets.docker_default()
    caps.drop_bounding(set(sets.bounding))
    caps.apply(sets)
    return caps.current()


@pytest.mark.root
def test_drop_to_docker_default() -> None:
    now = in_child(_drop_to_docker)
    assert now == {"CapInh": 0, "CapPrm": DOCKER_MASK, "CapEff": DOCKER_MASK, "CapBnd": DOCKER_MASK, "CapAmb": 0}


def _setuid_without_keepcaps() -> dict[str, int]:
    _drop_to_docker()
    caps.set_keepcaps(False)
    os.setgroups([])
    os.setgid(1000)
    os.setuid(1000)
    return caps.current()


@pytest.mark.root
def test_setuid_clears_effective_and_permitted() -> None:
    now = in_child(_setuid_without_keepcaps)
    assert isinstance(now, dict)
    assert now["CapEff"] == 0 and now["CapPrm"] == 0 and now["CapAmb"] == 0
    assert now["CapBnd"] == DOCKER_MASK


def _setuid_with_keepcaps_and_ambient() -> str:
    bind = CAPS["CAP_NET_BIND_SERVICE"]
    sets = CapSets.docker_default()
    caps.drop_bounding(set(sets.bounding))
    caps.apply(sets)
    caps.set_keepcaps(True)
    os.setgroups([])
    os.setgid(1000)
    os.setuid(1000)
    caps.set_keepcaps(False)
    one = frozenset({bind})
    caps.apply(CapSets(bounding=sets.bounding, effective=one, permitted=one, inheritable=one, ambient=one))
    # ambient caps survive execve for a non-root user: the new program has them effective
    out = subprocess.run(["/bin/sh", "-c", "grep Cap /proc/self/status"], capture_output=True, text=True, check=True)
    return out.stdout


@pytest.mark.root
def test_ambient_survives_exec_as_non_root() -> None:
    text = in_child(_setuid_with_keepcaps_and_ambient)
    assert isinstance(text, str)
    fields = {k: int(v, 16) for k, v in (line.split(":\t") for line in text.splitlines())}
    assert fields["CapEff"] == fields["CapPrm"] == fields["CapAmb"] == 1 << CAPS["CAP_NET_BIND_SERVICE"]
    assert fields["CapBnd"] == DOCKER_MASK


def _no_new_privs() -> str:
    caps.set_no_new_privs()
    with open("/proc/self/status") as f:
        return next(line for line in f if line.startswith("NoNewPrivs:")).split()[1]


@pytest.mark.root
def test_no_new_privs() -> None:
    assert in_child(_no_new_privs) == "1"
