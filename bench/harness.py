"""Benchmark harness: throwaway daemons (berthd, and a real dockerd on request), each on its own socket and root.

Everything a run creates lives under one ``/tmp/bench-XXXX`` directory, and is removed on exit: daemons are
stopped by the PIDs this harness started, leftover mounts under the directory are detached, then it is
deleted. dockerd runs with ``--bridge=none --iptables=false --ip6tables=false`` so it touches no host network
configuration. When the host has no dockerd, Debian's docker.io, containerd, runc and tini packages are
fetched with ``apt-get download`` and unpacked into a cache (``$BERTH_BENCH_CACHE``, default
``/var/tmp/berth-bench-cache``) instead of being installed: installing docker.io would start the host's
docker service, which creates docker0 and iptables rules.

Run it by hand to get daemons to poke at::

    .venv/bin/python bench/harness.py [--with-docker] [--no-berth]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("BERTH_BENCH_CACHE", "/var/tmp/berth-bench-cache"))
DOCKER_PACKAGES = ("docker.io", "containerd", "runc", "tini")
DOCKER_CLI = os.environ.get("BERTH_BENCH_DOCKER_CLI", "/usr/local/bin/docker")


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
    # Extra PID files of helpers the daemon starts (dockerd's managed containerd), checked at stop.
    helper_pidfiles: list[Path] = field(default_factory=list)

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
        """Stop the daemon (SIGTERM, then SIGKILL after 30 s), then any helper it left behind."""
        _terminate(self.proc.pid, lambda: self.proc.poll() is not None, 30)
        for pidfile in self.helper_pidfiles:
            with contextlib.suppress(OSError, ValueError):
                pid = int(pidfile.read_text().strip())
                # Only a process whose command line names this run's directory is ours (no PID reuse victims).
                if str(self.base) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    _terminate(pid, lambda pid=pid: not Path(f"/proc/{pid}").exists(), 15)


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
    """Owns one ``/tmp/bench-XXXX`` directory and the daemons started in it; use as a context manager."""

    def __init__(self, keep: bool = False) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="bench-", dir="/tmp"))
        self.keep = keep
        self.daemons: list[Daemon] = []

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
        cmd = [str(exe), "--data-root", str(root / "data"), "-H", f"unix://{sock}", "--exec-root", str(root / "exec")]
        return self._start("berthd", root, sock, cmd, {}, timeout, [])

    def dockerd(self, timeout: float = 60) -> Daemon:
        """Start a real dockerd (host's or Debian's unpacked) that creates no bridge and no iptables rules."""
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
            "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
        ]
        env = {"PATH": os.pathsep.join([*map(str, bindirs), os.environ.get("PATH", "/usr/bin:/bin")])}
        pidfiles = [exec_root / "containerd" / "containerd.pid"]
        return self._start("dockerd", root, sock, cmd, env, timeout, pidfiles)

    def _start(self, name: str, root: Path, sock: Path, cmd: list[str], env: dict[str, str], timeout: float,
               pidfiles: list[Path]) -> Daemon:
        log = root / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, **env}, start_new_session=True)
        daemon = Daemon(name, self.base, sock, proc, log, pidfiles)
        self.daemons.append(daemon)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise HarnessError(f"{name} exited with {proc.returncode} before answering /_ping:\n"
                                   f"{daemon.log_tail()}")
            if sock.exists() and ping(sock):
                return daemon
            time.sleep(0.05)
        raise HarnessError(f"{name} did not answer /_ping within {timeout:.0f}s:\n{daemon.log_tail()}")

    def close(self) -> None:
        for d in reversed(self.daemons):
            d.stop()
        self.daemons.clear()
        for pid in pids_naming(self.base):
            # Shims and containers of a killed daemon: their command lines name this run's unique directory.
            _terminate(pid, lambda pid=pid: not Path(f"/proc/{pid}").exists(), 5)
        unmount_below(self.base)
        if self.keep:
            print(f"kept {self.base}", file=sys.stderr)
        elif not mounts_below(self.base):
            shutil.rmtree(self.base, ignore_errors=True)
        else:
            print(f"mounts remain under {self.base}; not deleting it", file=sys.stderr)


def pids_naming(path: Path) -> list[int]:
    """PIDs of live processes whose command line contains ``path`` (never this process)."""
    needle = str(path).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--with-docker", action="store_true", help="also start a real dockerd")
    ap.add_argument("--no-berth", action="store_true", help="do not start berthd")
    ap.add_argument("--keep", action="store_true", help="keep the /tmp/bench-XXXX directory")
    args = ap.parse_args()
    with Harness(keep=args.keep) as h:
        started = []
        if not args.no_berth:
            started.append(h.berthd())
        if args.with_docker:
            started.append(h.dockerd())
        for d in started:
            print(f"{d.name}: export DOCKER_HOST={d.docker_host}   (log {d.log})")
        print("Ctrl-C stops the daemons and removes", h.base)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
