"""The iptables side of networking, for hosts without nftables: four chains named by the daemon's prefix P.

The rules are berth.network.firewall's nft rules, translated; they live in chains of berth's own, each jumped to
from a built-in chain by exactly one rule at its top::

    nat     PREROUTING  -j P-PRE    dnat for published ports (addrtype LOCAL = every local address)
    nat     OUTPUT      -j P-OUT    the same for connections from the host itself (localhost too)
    nat     POSTROUTING -j P-POST   masquerade: localhost->container, hairpin, outbound of non-internal networks
    filter  FORWARD     -j P-FWD    internal networks stay on their bridge; isolation between networks
                                    (published ports excepted)

Every change rewrites the four chains whole with one ``iptables-restore --noflush`` (a declared chain is flushed
and refilled; nothing else is touched). P-FWD ends with RETURN where nft's forward chain accepts: an nft base chain's
accept does not bypass other tables, so leaving the rest of FORWARD to decide keeps the two backends equal.
:meth:`Iptables.remove` deletes every rule that jumps to these chains, then the chains; built-in chains are never
flushed.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence

from berth.errors import InternalError
from berth.network.firewall import LOCAL_ANY, NetworkRule, PortRule, check_name

IPTABLES_RESTORE = "iptables-restore"
IPTABLES_SAVE = "iptables-save"
# (table, built-in chain, suffix of berth's chain)
HOOKS = (("nat", "PREROUTING", "PRE"), ("nat", "OUTPUT", "OUT"), ("nat", "POSTROUTING", "POST"),
         ("filter", "FORWARD", "FWD"))
TABLES = ("nat", "filter")


def chains(prefix: str) -> dict[str, tuple[str, str]]:
    """berth's chain name → (table, built-in chain that jumps to it)."""
    check_name(prefix)
    return {f"{prefix}-{suffix}": (table, builtin) for table, builtin, suffix in HOOKS}


def _dnat(chain: str, p: PortRule) -> str:
    match = "-m addrtype --dst-type LOCAL" if p.host_ip in LOCAL_ANY else f"-d {p.host_ip}/32"
    return (f"-A {chain} -p {p.proto} {match} -m {p.proto} --dport {p.host_port} "
            f"-j DNAT --to-destination {p.dest_ip}:{p.dest_port}")


def render(prefix: str, networks: Sequence[NetworkRule], ports: Sequence[PortRule]) -> str:
    """The ``iptables-restore --noflush`` input that refills the four chains with exactly these rules (the jumps
    from the built-in chains are added by :meth:`Iptables.load` when missing)."""
    pre, out, post, fwd = (f"{prefix}-{suffix}" for _t, _b, suffix in HOOKS)
    check_name(prefix)
    nets = sorted(networks, key=lambda n: n.bridge)
    for n in nets:
        check_name(n.bridge)
    ordered = sorted(ports, key=lambda p: (p.proto, p.host_port, p.host_ip))
    nat = ["*nat", f":{pre} - [0:0]", f":{out} - [0:0]", f":{post} - [0:0]"]
    nat += [_dnat(pre, p) for p in ordered]
    nat += [_dnat(out, p) for p in ordered]
    for n in nets:
        nat.append(f"-A {post} -s 127.0.0.0/8 -o {n.bridge} -j MASQUERADE")
        nat.append(f"-A {post} -s {n.subnet} -o {n.bridge} -m conntrack --ctstate DNAT -j MASQUERADE")
        if n.masquerade and not n.internal:
            nat.append(f"-A {post} -s {n.subnet} ! -o {n.bridge} -j MASQUERADE")
    nat.append("COMMIT")
    filt = ["*filter", f":{fwd} - [0:0]"]
    for n in nets:
        if n.internal:
            filt.append(f"-A {fwd} -i {n.bridge} ! -o {n.bridge} -j DROP")
            filt.append(f"-A {fwd} -o {n.bridge} ! -i {n.bridge} -j DROP")
    # a published port is public (see berth.network.firewall); only direct traffic between networks is dropped
    filt.append(f"-A {fwd} -m conntrack --ctstate DNAT -j RETURN")
    for n in nets:
        for o in nets:
            if o.bridge != n.bridge:
                filt.append(f"-A {fwd} -i {n.bridge} -o {o.bridge} -j DROP")
    filt.append("COMMIT")
    return "\n".join(nat + filt) + "\n"


def _run(argv: list[str], stdin: str | None = None) -> str:
    try:
        proc = subprocess.run(argv, input=stdin.encode() if stdin is not None else None, capture_output=True,
                              check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InternalError(f"iptables: {e}") from None
    if proc.returncode != 0:
        raise InternalError(f"iptables: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode(errors="replace")


def saved(table: str) -> list[str]:
    """``iptables-save -t table``: its chain declarations and rules."""
    return [line for line in _run([IPTABLES_SAVE, "-t", table]).splitlines() if line.startswith((":", "-A "))]


def _target(rule: str) -> str:
    m = re.search(r"(?:^| )-[jg] (\S+)", rule)
    return m.group(1) if m else ""


class Iptables:
    """The firewall backend on ``iptables-restore``/``iptables-save`` (whichever flavour the host's are)."""

    name = "iptables"

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.chains = chains(prefix)

    def render(self, networks: Sequence[NetworkRule], ports: Sequence[PortRule]) -> str:
        return render(self.prefix, networks, ports)

    def load(self, script: str) -> None:
        """Restore ``script``, with exactly one jump from each built-in chain to berth's (added at the top)."""
        state = {table: saved(table) for table in TABLES}
        for chain, (table, builtin) in self.chains.items():
            jump = f"-A {builtin} -j {chain}"
            count = state[table].count(jump)
            fix = [f"-I {builtin} 1 -j {chain}"] if count == 0 else [f"-D {builtin} -j {chain}"] * (count - 1)
            declared = f":{chain} - [0:0]\n"
            script = script.replace(declared, declared + "".join(f"{line}\n" for line in fix), 1)
        _run([IPTABLES_RESTORE, "--noflush", "-w"], script)

    def leftovers(self) -> list[str]:
        """Every chain declaration and rule of this prefix still on the host."""
        out = []
        for table in TABLES:
            for line in saved(table):
                # a declaration, a rule in one of the chains, or a jump to one
                chain = line[1:].split()[0] if line.startswith(":") else line.split()[1]
                if chain in self.chains or _target(line) in self.chains:
                    out.append(f"{table}: {line}")
        return out

    def remove(self) -> None:
        """Delete each rule that jumps to berth's chains (wherever it is), then the chains themselves."""
        parts = []
        for table in TABLES:
            lines = saved(table)
            declared = {line[1:].split()[0] for line in lines if line.startswith(":")}
            mine = [c for c, (t, _b) in self.chains.items() if t == table and c in declared]
            refs = [line for line in lines if line.startswith("-A ") and _target(line) in self.chains
                    and line.split()[1] not in self.chains]
            if not mine and not refs:
                continue
            parts.append(f"*{table}")
            parts += [f":{c} - [0:0]" for c in mine]  # declared under --noflush: emptied
            parts += ["-D " + line[3:] for line in refs]
            parts += [f"-X {c}" for c in mine]
            parts.append("COMMIT")
        if parts:
            _run([IPTABLES_RESTORE, "--noflush", "-w"], "\n".join(parts) + "\n")
