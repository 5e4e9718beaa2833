"""Benchmark: container start latency, engine memory per running container and ``ps -a`` latency, berthd vs dockerd.

Both daemons run side by side (bench/harness.py) with the busybox fixture loaded into each (``docker load -i``).
The same docker CLI drives both. By default dockerd runs with ``--bridge=none``, so every container of both
engines is run with ``--network none`` (a fresh, empty network namespace) for fairness; with ``--bridge`` both
engines use their default bridge network (dockerd on a throwaway bridge of its own, with iptables). Measured:

* ``docker run --rm [--network none] busybox true``: wall time of the CLI, runs alternating between the daemons
  after a few warm-up runs, each after ``--pause`` seconds of quiet (an engine's background clean-up must not
  land on the other's run); bare ``runc run`` of the same rootfs (Debian's runc, the one dockerd uses) is the
  floor.
* engine memory: N ``docker run -d --network none busybox sleep 3600`` containers, then the unique set size
  (USS: Private_Clean + Private_Dirty of /proc/PID/smaps_rollup) of every engine process summed, divided by N.
  Engine processes are the daemon and every process it started that is not inside a container (a process whose
  PID namespace is not the host's belongs to a container): berthd + its monitor; dockerd + containerd + one
  containerd-shim per container. Also the same figure for the idle daemon, and (total - idle) / N.
* ``docker ps -a`` with those N containers present.
* daemon start-up: seconds from exec to the first ``/_ping`` answer (harness ``Daemon.ready_s``).

    .venv/bin/python bench/bench_run.py --with-docker --reps 20 [--bridge]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import (
    Daemon,
    Harness,
    HarnessError,
    _descendants,
    _processes,
    add_daemon_args,
    docker_bindirs,
    median,
    orphans,
    parse_daemon_args,
    print_medians,
    run_main,
    write_json,
)

REPO = Path(__file__).resolve().parents[1]
IMAGE = "busybox:latest"
RUN_ARGS = ("run", "--rm", "--network", "none", IMAGE, "true")


def fixture() -> Path:
    """The busybox ``docker save`` archive (berth.testing.rootfs.FIXTURES)."""
    sys.path.insert(0, str(REPO / "src"))
    from berth.testing.rootfs import FIXTURES
    return Path(FIXTURES) / "busybox-docker-save.tar"


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def docker_ok(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    done = daemon.docker(*args, check=False, timeout=120)
    if done.returncode != 0:
        raise HarnessError(f"{daemon.name}: docker {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done


def remove_all(daemon: Daemon) -> None:
    ids = daemon.docker("ps", "-aq", check=False).stdout.split()
    if ids:
        daemon.docker("rm", "-f", *ids, check=False, timeout=300)


# --- the runc floor ------------------------------------------------------------------------------------------


class RuncFloor:
    """``runc run`` of the busybox rootfs with ``true``: what creating and running a container costs at least."""

    def __init__(self, base: Path, archive: Path) -> None:
        bindirs = docker_bindirs()
        exe = next((d / "runc" for d in bindirs if (d / "runc").exists()), None)
        self.runc = str(exe) if exe else "runc"
        self.base = base / "runc"
        self.bundle = self.base / "bundle"
        self.state = self.base / "state"
        rootfs = self.bundle / "rootfs"
        rootfs.mkdir(parents=True)
        with tarfile.open(archive) as outer:
            manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
            for layer in manifest[0]["Layers"]:
                member = outer.extractfile(layer)
                assert member is not None
                with tarfile.open(fileobj=member) as inner:
                    inner.extractall(rootfs, filter="fully_trusted")
        subprocess.run([self.runc, "spec", "--bundle", str(self.bundle)], check=True, capture_output=True)
        cfg = json.loads((self.bundle / "config.json").read_text())
        cfg["process"]["terminal"] = False
        cfg["process"]["args"] = ["true"]
        cfg["root"]["readonly"] = False
        (self.bundle / "config.json").write_text(json.dumps(cfg))
        self.n = 0

    def run(self) -> float:
        self.n += 1
        cid = f"berth-bench-{os.getpid()}-{self.n}"
        cmd = [self.runc, "--root", str(self.state), "run", "--bundle", str(self.bundle), cid]
        start = time.perf_counter()
        done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, check=False)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise HarnessError(f"runc run failed: {done.stderr.decode(errors='replace').strip()}")
        return elapsed


# --- memory ----------------------------------------------------------------------------------------------------


def _host_pidns() -> str:
    return os.readlink("/proc/self/ns/pid")


def _smaps(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    out[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        pass
    return out


def engine_pids(daemon: Daemon, exclude: set[int]) -> list[int]:
    """The daemon and the processes it started (also daemonized ones re-parented to us), minus containers.

    ``exclude`` holds the other daemons' processes (the daemons themselves are our children in sessions of
    their own, so they look like re-parented orphans too).
    """
    procs = _processes()
    roots = [daemon.proc.pid] + [p.pid for p in orphans() if p.pid not in exclude]
    pids: set[int] = set()
    for root in roots:
        pids.add(root)
        pids.update(p.pid for p in _descendants(root, procs))
    if daemon.name == "berthd":
        pidfile = daemon.sock.parent / "exec" / "monitor" / "monitor.pid"
        try:
            mon = int(pidfile.read_text())
            pids.add(mon)
            pids.update(p.pid for p in _descendants(mon, procs))
        except (OSError, ValueError):
            pass
    host = _host_pidns()
    keep = []
    for pid in sorted(pids - exclude):
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") != host:
                continue  # a container's process
        except OSError:
            continue
        keep.append(pid)
    return keep


def memory(daemon: Daemon, exclude: set[int]) -> dict[str, Any]:
    """USS and PSS (KiB) summed over the engine's processes."""
    pids = engine_pids(daemon, exclude)
    uss = pss = 0
    by_name: dict[str, int] = {}
    for pid in pids:
        m = _smaps(pid)
        own = m.get("Private_Clean", 0) + m.get("Private_Dirty", 0)
        uss += own
        pss += m.get("Pss", 0)
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()  # for the breakdown only, never to pick a process
        except OSError:
            name = "?"
        by_name[name] = by_name.get(name, 0) + own
    return {"processes": len(pids), "uss_kib": uss, "pss_kib": pss, "uss_kib_by_name": by_name}


# --- main ------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_daemon_args(ap, "also measure a real dockerd (and the runc floor)")
    ap.add_argument("--reps", type=int, default=20, help="timed `docker run` per daemon")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--containers", type=int, default=20, help="N sleeping containers for memory and ps -a")
    ap.add_argument("--ps-reps", type=int, default=10)
    ap.add_argument("--no-runc", action="store_true", help="skip the bare runc floor")
    ap.add_argument("--pause", type=float, default=0.5, help="seconds of quiet before each timed run")
    ap.add_argument("--bridge", action="store_true",
                    help="time `docker run --rm busybox true` on each engine's default bridge network instead of "
                         "--network none (dockerd gets a bridge of its own with iptables)")
    args = parse_daemon_args(ap)
    run_args = ("run", "--rm", IMAGE, "true") if args.bridge else RUN_ARGS
    archive = fixture()
    results: dict[str, Any] = {"run_s": {}, "ps_s": {}, "memory": {}, "ready_s": {}, "versions": {}}

    with Harness(keep=args.keep, tmp=args.tmp) as h:
        daemons = h.start(berth=not args.no_berth, docker=args.with_docker, bridged=args.bridge)
        floor = RuncFloor(h.base, archive) if args.with_docker and not args.no_runc else None
        # processes that are not any daemon's: this script's own children (none expected), by PID
        for d in daemons:
            results["ready_s"][d.name] = d.ready_s
            results["versions"][d.name] = str(d.version().get("Version", "?"))
            docker_ok(d, "load", "-i", str(archive))
        try:
            # --- docker run --rm ... true
            for d in daemons:
                results["run_s"][d.name] = []
                for _ in range(args.warmup):
                    docker_ok(d, *run_args)
            if floor is not None:
                results["run_s"]["runc"] = []
                for _ in range(args.warmup):
                    floor.run()
            for rep in range(args.reps):
                for d in daemons:
                    # each run on a quiet machine: an engine's clean-up after `--rm` (dockerd's shim and
                    # containerd bookkeeping, berth's disk clean-up) must not land on the other engine's run
                    time.sleep(args.pause)
                    t = timed(lambda d=d: docker_ok(d, *run_args))  # type: ignore[misc]
                    results["run_s"][d.name].append(t)
                if floor is not None:
                    results["run_s"]["runc"].append(floor.run())
                line = "  ".join(f"{k} {v[-1]:.3f}s" for k, v in results["run_s"].items())
                print(f"  run {rep + 1}/{args.reps}  {line}", file=sys.stderr)

            # --- memory and ps -a: one engine at a time, so re-parented helpers are the current one's
            for d in daemons:
                daemon_pids = {o.proc.pid for o in daemons}
                others: set[int] = set()
                for o in daemons:
                    if o is not d:
                        others |= set(engine_pids(o, daemon_pids - {o.proc.pid}))
                idle = memory(d, others)
                for _ in range(args.containers):
                    docker_ok(d, "run", "-d", "--network", "none", IMAGE, "sleep", "3600")
                time.sleep(1.0)  # let start-up garbage settle (dockerd's shims, Python's allocator)
                busy = memory(d, others)
                ps = [timed(lambda d=d: docker_ok(d, "ps", "-a")) for _ in range(args.ps_reps)]  # type: ignore[misc]
                n = args.containers
                results["memory"][d.name] = {"idle": idle, "busy": busy, "containers": n,
                                             "per_container_kib": busy["uss_kib"] / n,
                                             "delta_per_container_kib": (busy["uss_kib"] - idle["uss_kib"]) / n}
                results["ps_s"][d.name] = ps
                print(f"  {d.name}: {n} containers, engine USS {busy['uss_kib'] / 1024:.1f} MiB in "
                      f"{busy['processes']} processes; ps -a {median(ps):.3f}s", file=sys.stderr)
                remove_all(d)
        finally:
            for d in daemons:
                remove_all(d)

    print(f"\ndocker {' '.join(run_args)}: {args.reps} runs each after {args.warmup} warm-up")
    med = print_medians(results["run_s"], {"runc": "(floor)", **results["versions"]}, "engine", (8, 12))
    if "berthd" in med and "dockerd" in med:
        print(f"ratio dockerd/berthd = {med['dockerd'] / med['berthd']:.2f}")
    if "berthd" in med and "runc" in med:
        print(f"berthd - runc floor = {(med['berthd'] - med['runc']) * 1000:.0f} ms")
    print(f"\nengine memory with {args.containers} running containers (USS of all engine processes)")
    print(f"{'engine':8s} {'procs':>5s} {'idle MiB':>9s} {'total MiB':>10s} {'MiB/ctr':>8s} {'Δ MiB/ctr':>10s} "
          f"{'ps -a':>8s} {'ready':>7s}")
    for name, m in results["memory"].items():
        print(f"{name:8s} {m['busy']['processes']:5d} {m['idle']['uss_kib'] / 1024:9.1f} "
              f"{m['busy']['uss_kib'] / 1024:10.1f} {m['per_container_kib'] / 1024:8.2f} "
              f"{m['delta_per_container_kib'] / 1024:10.2f} {median(results['ps_s'][name]):7.3f}s "
              f"{results['ready_s'][name]:6.2f}s")
        parts = sorted(m["busy"]["uss_kib_by_name"].items(), key=lambda kv: -kv[1])
        print("         " + ", ".join(f"{k} {v / 1024:.1f}" for k, v in parts) + " (MiB USS by process name)")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    run_main(main, "bench_run")
