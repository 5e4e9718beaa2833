"""Benchmark harness: throwaway daemons (berthd, and a real dockerd on request), each on its own socket and root.

Everything a run creates lives under one ``bench-XXXX`` directory (in ``$BERTH_BENCH_TMP``, default ``/tmp``),
and is removed on exit: daemons are stopped by the PIDs this harness started, then whatever is left of the sessions
they were started in (dockerd's containerd) and any daemonized helper re-parented to this process (it makes itself
a child subreaper, so shims cannot escape to init); no process is ever chosen by its command line. Leftover mounts
under the directory are detached, then it is deleted. dockerd runs with ``--bridge=none --iptables=false
--ip6tables=false`` so it touches no host network configuration. When the host has no dockerd, Debian's docker.io,
containerd, runc and tini packages are fetched with ``apt-get download`` and unpacked into a cache
(``$BERTH_BENCH_CACHE``, default ``/var/tmp/berth-bench-cache``) instead of being installed: installing docker.io
would start the host's docker service, which creates docker0 and iptables rules.

Run it by hand to get daemons to poke at::

    .venv/bin/python bench/harness.py [--with-docker] [--no-berth]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("BERTH_BENCH_CACHE", "/var/tmp/berth-bench-cache"))
DOCKER_PACKAGES = ("docker.io", "containerd", "runc", "tini")
DOCKER_CLI = os.environ.get("BERTH_BENCH_DOCKER_CLI", "/usr/local/bin/docker")
TMP = Path(os.environ.get("BERTH_BENCH_TMP", "/tmp"))
# dockerd's default network flags here: no bridge, no iptables rules, nothing changed on the host
NO_NETWORK = ("--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false")
_PR_SET_CHILD_SUBREAPER = 36


class HarnessError(RuntimeError):
    """A daemon did not start, or the tools it needs are missing."""


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


def ping(sock: Path, timeout: float = 2.0) -> bool:
    """True when an Engine API daemon answers ``GET /_ping`` with 200 on the unix socket ``sock``."""
    conn = _UnixHTTPConnection(sock, timeout)
    try:
        conn.request("GET", "/_ping")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


@dataclass
class Daemon:
    """One running daemon that the docker CLI can reach through ``env()``."""

    name: str
    base: Path
    sock: Path
    proc: subprocess.Popen[bytes]
    log: Path
    ready_s: float = 0.0  # seconds from exec to the first /_ping answer
    # The daemon was started in a session of its own, so its session ID is its PID; helpers it starts
    # without a new session of their own (dockerd's managed containerd) stay in it.
    session: int = field(init=False)

    def __post_init__(self) -> None:
        self.session = self.proc.pid

    @property
    def docker_host(self) -> str:
        return f"unix://{self.sock}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY")}
        env["DOCKER_HOST"] = self.docker_host
        return env

    def docker(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run the real docker CLI against this daemon."""
        done = subprocess.run([DOCKER_CLI, *args], env=self.env(), capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise HarnessError(f"{self.name}: docker {' '.join(args)} failed: {done.stderr.strip()}")
        return done

    def version(self) -> dict[str, Any]:
        conn = _UnixHTTPConnection(self.sock, 10)
        try:
            conn.request("GET", "/version")
            doc = json.loads(conn.getresponse().read())
            return doc if isinstance(doc, dict) else {}
        finally:
            conn.close()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the daemon by PID (SIGTERM, then SIGKILL after 30 s), then the helpers it had started."""
        # Taken first: once the daemon is gone its children re-parent and only their start times still tell.
        helpers = _descendants(self.proc.pid, _processes())
        _terminate(self.proc.pid, lambda: self.proc.poll() is not None, 30)
        # A session ID is never reused while any member is alive, so it still names only the daemon's helpers.
        helpers += [p for p in _processes() if p.session == self.session and p not in helpers]
        for proc in helpers:
            proc.stop(15)


@dataclass(frozen=True)
class _Proc:
    """A process seen in /proc: enough to stop it by PID without hitting a later process that reused the PID."""

    pid: int
    ppid: int
    session: int
    start: int  # clock ticks after boot; a reused PID gets a new start time

    zombie: bool = False

    def alive(self) -> bool:
        """Still running (and the same process); a zombie child of ours is reaped on the way."""
        now = _stat(self.pid)
        if now is None or now.start != self.start:
            return False
        if now.ppid == os.getpid():
            # our child, or an orphan re-parented to us: reap it, or it stays a zombie
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(self.pid, os.WNOHANG)[0] == self.pid:
                    return False
        return not now.zombie

    def stop(self, grace: float) -> None:
        if self.alive():
            _terminate(self.pid, lambda: not self.alive(), grace)


def _stat(pid: int) -> _Proc | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # fields after the parenthesised command name (which may hold spaces or parentheses itself)
    rest = text[text.rindex(")") + 2 :].split()
    return _Proc(pid, int(rest[1]), int(rest[3]), int(rest[19]), zombie=rest[0] in ("Z", "X"))


def _descendants(pid: int, procs: list[_Proc]) -> list[_Proc]:
    """Children, grandchildren, ... of ``pid`` among ``procs`` (by parent PID), parents before children."""
    out: list[_Proc] = []
    parents = {pid}
    while True:
        more = [p for p in procs if p.ppid in parents and p not in out]
        if not more:
            return out
        out += more
        parents = {p.pid for p in more}


def _processes() -> list[_Proc]:
    """Every process, zombies too, from /proc (PID, parent, session, start time, state; never command lines)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            proc = _stat(int(entry.name))
            if proc is not None:
                found.append(proc)
    return found


def _become_subreaper() -> None:
    """Orphans below this process re-parent to it instead of init, so it can find and stop them."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"bench: PR_SET_CHILD_SUBREAPER failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr)


def _terminate(pid: int, gone: Any, grace: float) -> None:
    if gone():
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if gone():
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not gone():
        time.sleep(0.1)


class Harness:
    """Owns one ``bench-XXXX`` directory and the daemons started in it; use as a context manager."""

    def __init__(self, keep: bool = False, tmp: Path = TMP) -> None:
        _become_subreaper()
        self.base = Path(tempfile.mkdtemp(prefix="bench-", dir=tmp))
        self.keep = keep
        self.daemons: list[Daemon] = []
        # berthd's bridges, veths and nftables table are named from this and removed at close
        self.network_prefix = "bp" + os.urandom(2).hex()
        self.docker_network: DockerNetwork | None = None

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def berthd(self, timeout: float = 30) -> Daemon:
        """Start ``berthd`` from the repository's venv on a private data root, exec root and socket."""
        exe = REPO / ".venv" / "bin" / "berthd"
        if not exe.exists():
            exe = Path(shutil.which("berthd") or exe)
        root = self.base / "berth"
        root.mkdir()
        sock = root / "berth.sock"
        cmd = [str(exe), "--data-root", str(root / "data"), "-H", f"unix://{sock}", "--exec-root", str(root / "exec"),
               "--network-prefix", self.network_prefix]
        return self._start("berthd", root, sock, cmd, {}, timeout)

    def start(self, berth: bool = True, docker: bool = False, bridged: bool = False) -> list[Daemon]:
        """berthd and/or dockerd, in the order the benchmarks alternate between them."""
        return [*([self.berthd()] if berth else []), *([self.dockerd(bridged=bridged)] if docker else [])]

    def dockerd(self, timeout: float = 60, bridged: bool = False) -> Daemon:
        """Start a real dockerd (host's or Debian's unpacked). By default it creates no bridge and no iptables
        rules; ``bridged`` gives it dockerd's own networking (a bridge, iptables, the userland proxy) on a
        throwaway bridge, all removed at close."""
        network = NO_NETWORK
        if bridged:
            self.docker_network = DockerNetwork().__enter__()
            network = (f"--bridge={self.docker_network.bridge}", "--iptables=true", "--ip6tables=false")
        bindirs = docker_bindirs()
        root = self.base / "docker"
        root.mkdir()
        sock = root / "docker.sock"
        config = root / "daemon.json"
        settings: dict[str, str] = {}
        if _dockerd_knows(bindirs, b'json:"deprecated-key-path'):
            # dockerd 20.10 writes a trust key to /etc/docker/key.json unless its config says otherwise.
            settings["deprecated-key-path"] = str(root / "key.json")
        config.write_text(json.dumps(settings) + "\n")
        exec_root = root / "exec"
        cmd = [
            "dockerd",
            f"--host=unix://{sock}",
            f"--data-root={root / 'data'}",
            f"--exec-root={exec_root}",
            f"--pidfile={root / 'docker.pid'}",
            f"--config-file={config}",
            *network,
        ]
        env = {"PATH": os.pathsep.join([*map(str, bindirs), os.environ.get("PATH", "/usr/bin:/bin")])}
        return self._start("dockerd", root, sock, cmd, env, timeout)

    def _start(self, name: str, root: Path, sock: Path, cmd: list[str], env: dict[str, str],
               timeout: float) -> Daemon:
        log = root / f"{name}.log"
        started = time.monotonic()
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, **env}, start_new_session=True)
        daemon = Daemon(name, self.base, sock, proc, log)
        self.daemons.append(daemon)
        deadline = started + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise HarnessError(f"{name} exited with {proc.returncode} before answering /_ping:\n"
                                   f"{daemon.log_tail()}")
            if sock.exists() and ping(sock):
                daemon.ready_s = time.monotonic() - started
                return daemon
            time.sleep(0.01)
        raise HarnessError(f"{name} did not answer /_ping within {timeout:.0f}s:\n{daemon.log_tail()}")

    def close(self) -> None:
        for d in reversed(self.daemons):
            d.stop()
        self.daemons.clear()
        for _ in range(5):  # stopping an orphan can orphan its own children (a shim's container)
            left = orphans()
            if not left:
                break
            for proc in left:
                proc.stop(5)
        unmount_below(self.base)
        remove_network_objects(self.network_prefix)
        if self.docker_network is not None:
            self.docker_network.cleanup()
        if self.keep:
            print(f"kept {self.base}", file=sys.stderr)
        elif not mounts_below(self.base):
            shutil.rmtree(self.base, ignore_errors=True)
        else:
            print(f"mounts remain under {self.base}; not deleting it", file=sys.stderr)


def free_subnet() -> ipaddress.IPv4Network:
    routes = subprocess.run(["ip", "-4", "-o", "route", "show", "table", "all"], capture_output=True, text=True,
                            check=True).stdout
    used = []
    for line in routes.splitlines():
        with contextlib.suppress(ValueError, IndexError):
            word = line.split()[0] if line.split()[0] not in ("local", "broadcast") else line.split()[1]
            used.append(ipaddress.IPv4Network(word if "/" in word else word + "/32", strict=False))
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise HarnessError("no free 10.x/24 for the dockerd bridge")


def iptables_rules() -> dict[str, list[str]]:
    """``iptables-save`` by table: the ``-A`` lines and ``:CHAIN`` declarations."""
    out: dict[str, list[str]] = {}
    done = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False)
    table = ""
    for line in done.stdout.splitlines():
        if line.startswith("*"):
            table = line[1:]
            out.setdefault(table, [])
        elif line.startswith(("-A ", ":")) and table:
            out[table].append(line)
    return out


def nft_tables() -> set[str]:
    done = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False)
    return {line.strip() for line in done.stdout.splitlines() if line.startswith("table ")}


class DockerNetwork:
    """A bridge of dockerd's own for the benchmarks that need its networking, and the iptables state dockerd adds,
    undone by ``cleanup`` (the harness does it at close, even on failure)."""

    def __init__(self) -> None:
        self.bridge = "bd" + secrets.token_hex(3)
        self.subnet = free_subnet()
        self.rules_before: dict[str, list[str]] = {}
        self.tables_before: set[str] = set()

    def __enter__(self) -> DockerNetwork:
        self.rules_before = iptables_rules()
        self.tables_before = nft_tables()
        gw = f"{next(self.subnet.hosts())}/{self.subnet.prefixlen}"
        subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
        subprocess.run(["ip", "addr", "add", gw, "dev", self.bridge], check=True)
        subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        after = iptables_rules()
        for table, lines in after.items():
            before = set(self.rules_before.get(table, []))
            added = [ln for ln in lines if ln not in before]
            for ln in (x for x in added if x.startswith("-A ")):
                subprocess.run(["iptables", "-t", table, "-D", *ln[3:].split()], capture_output=True, check=False)
            for ln in (x for x in added if x.startswith(":")):
                chain = ln[1:].split()[0]
                subprocess.run(["iptables", "-t", table, "-F", chain], capture_output=True, check=False)
                subprocess.run(["iptables", "-t", table, "-X", chain], capture_output=True, check=False)
        # tables iptables-nft made for this run alone go too, once nothing is left in them
        for table in nft_tables() - self.tables_before:
            family, name = table.split()[1:3]
            if family in ("ip", "ip6") and name in ("filter", "nat", "mangle", "raw") and not any(
                    ln.startswith("-A ") for ln in iptables_rules().get(name, [])):
                subprocess.run(["nft", "delete", "table", family, name], capture_output=True, check=False)
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True, check=False)


def remove_network_objects(prefix: str) -> None:
    """Links and the nftables table named from berthd's per-run prefix (after berthd stopped)."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False).stdout
    for line in links.splitlines():
        parts = line.split(":")
        name = parts[1].strip().split("@")[0] if len(parts) > 1 else ""
        if name.startswith(prefix):
            subprocess.run(["ip", "link", "delete", name], capture_output=True, check=False)
    for family in ("ip", "inet"):
        subprocess.run(["nft", "delete", "table", family, prefix], capture_output=True, check=False)
    if shutil.which("iptables-save"):  # a berthd on the iptables backend
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        from berth.network.iptables import Iptables

        with contextlib.suppress(Exception):
            Iptables(prefix).remove()


def orphans() -> list[_Proc]:
    """Daemonized descendants re-parented to this process (shims of a stopped daemon's containers).

    As a child subreaper this process only ever inherits its own descendants. Those still in this process's
    session are children that the embedding script started itself, and are left alone.
    """
    me = os.getpid()
    own_session = os.getsid(0)
    return [p for p in _processes() if p.ppid == me and p.session != own_session]


def mounts_below(root: Path) -> list[str]:
    """Mount points at or under ``root``, from /proc/self/mountinfo."""
    prefix = str(root.resolve())
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        points = [line.split()[4].replace("\\040", " ") for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def unmount_below(root: Path) -> None:
    """Detach every mount under ``root``, deepest first (overlay, shm, netns mounts a daemon left)."""
    for point in sorted(set(mounts_below(root)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)


def docker_bindirs() -> list[Path]:
    """Directories to put first on dockerd's PATH: none when the host has dockerd, else the unpacked debs."""
    if shutil.which("dockerd"):
        return []
    root = CACHE / "root"
    if not (root / "usr" / "sbin" / "dockerd").exists():
        if shutil.which("apt-get") is None:
            raise HarnessError("no dockerd on this host and no apt-get to fetch Debian's docker.io")
        debs = CACHE / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        print(f"fetching {' '.join(DOCKER_PACKAGES)} into {CACHE} (not installing them)", file=sys.stderr)
        done = subprocess.run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *DOCKER_PACKAGES],
                              cwd=debs, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise HarnessError(f"apt-get download {' '.join(DOCKER_PACKAGES)} failed: {done.stderr.strip()}")
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        for deb in sorted(debs.glob("*.deb")):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return [root / "usr" / "sbin", root / "usr" / "bin"]


def _dockerd_knows(bindirs: list[Path], needle: bytes) -> bool:
    exe = next((d / "dockerd" for d in bindirs if (d / "dockerd").exists()), None) or shutil.which("dockerd")
    if exe is None:
        return False
    # Config keys are listed nowhere but in the binary's struct tags.
    with open(exe, "rb") as f:
        return needle in f.read()


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def alternate(daemons: list[Daemon], reps: int, fn: Callable[[Daemon], float], label: str) -> dict[str, list[float]]:
    """``fn`` on each daemon in turn, ``reps`` rounds, so drift (page cache, CPU frequency) hits all alike."""
    out: dict[str, list[float]] = {d.name: [] for d in daemons}
    for rep in range(reps):
        for d in daemons:
            out[d.name].append(fn(d))
        print(f"  {label} {rep + 1}/{reps}  " + "  ".join(f"{k} {v[-1]:.3f}" for k, v in out.items()),
              file=sys.stderr)
    return out


def print_medians(runs: Mapping[str, list[float]], versions: Mapping[str, str], first: str,
                  widths: tuple[int, int]) -> dict[str, float]:
    """A table of seconds per daemon (name, version, median, min, max); returns the medians."""
    name_w, version_w = widths
    print(f"{first:{name_w}s} {'version':{version_w}s} {'median':>8s} {'min':>8s} {'max':>8s}")
    medians: dict[str, float] = {}
    for name, times in runs.items():
        medians[name] = median(times)
        print(f"{name:{name_w}s} {versions[name]:{version_w}s} {medians[name]:7.3f}s {min(times):7.3f}s "
              f"{max(times):7.3f}s")
    return medians


def write_json(path: Path | None, results: Any) -> None:
    """The ``--json`` file, when one was asked for."""
    if path:
        path.write_text(json.dumps(results, indent=2) + "\n")


def add_daemon_args(ap: argparse.ArgumentParser, docker_help: str = "also measure a real dockerd",
                    no_berth: bool = True, json_out: bool = True) -> None:
    """The flags every benchmark takes: which daemons, where their bench-XXXX directory goes, a JSON copy."""
    ap.add_argument("--with-docker", action="store_true", help=docker_help)
    if no_berth:
        ap.add_argument("--no-berth", action="store_true", help="measure only dockerd (harness check)")
    ap.add_argument("--keep", action="store_true", help="keep the daemons' bench-XXXX directory")
    ap.add_argument("--tmp", type=Path, default=TMP,
                    help="where the daemons' bench-XXXX directory goes (default $BERTH_BENCH_TMP or /tmp)")
    if json_out:
        ap.add_argument("--json", type=Path, help="also write the results here")


def parse_daemon_args(ap: argparse.ArgumentParser) -> argparse.Namespace:
    """``ap.parse_args()``, refusing a run that would measure nothing."""
    args = ap.parse_args()
    if getattr(args, "no_berth", False) and not args.with_docker:
        ap.error("nothing to measure: --no-berth without --with-docker")
    return args


def run_main(main: Callable[[], int], name: str) -> NoReturn:
    """A benchmark's entry point: its exit status, or 1 with a one-line message when the harness failed."""
    try:
        sys.exit(main())
    except HarnessError as e:
        print(f"{name}: {e}", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_daemon_args(ap, "also start a real dockerd", json_out=False)
    args = ap.parse_args()
    with Harness(keep=args.keep, tmp=args.tmp) as h:
        for d in h.start(berth=not args.no_berth, docker=args.with_docker):
            print(f"{d.name}: export DOCKER_HOST={d.docker_host}   (log {d.log})")
        print("Ctrl-C stops the daemons and removes", h.base)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
