"""Benchmark: ``docker push`` and ``docker pull`` of a ~200 MB Debian+python3 image to and from Debian's
docker-registry on 127.0.0.1, berthd against a real dockerd on the same machine.

The image is the bootstrapped ``python:3.11`` archive that bench_load.py makes (cached in ``$BERTH_BENCH_CACHE``;
a synthetic tree when bootstrap is unavailable); it is ``docker load``-ed, untimed, into each daemon. Each
repetition, for each daemon in turn, times:

- **push (cold)**: the freshly loaded image (plain tar layers: every layer must be gzipped) to an empty registry;
- **push (warm)**: the same image again to another empty registry (berth reuses the gzipped layers it kept
  from the first push; dockerd compresses again);
- **pull**: from the first registry after ``docker rmi -f`` of the image (download, verify, extract). The
  pulls of a repetition run after every daemon's pushes and a ``--settle`` pause (see bench/README.md).

Every registry is a fresh ``docker-registry`` process with its own root per daemon and per repetition, on a free
127.0.0.1 port (dockerd always allows plain HTTP to 127.0.0.0/8). Prints medians and ratios. See bench/README.md.

    .venv/bin/python bench/bench_registry.py --with-docker --reps 3 --tmp /var/tmp
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from harness import CACHE, Daemon, Harness, HarnessError, add_daemon_args, parse_daemon_args
from make_image import TAG, make

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from berth.testing.servers import ServerProcess, distribution

REGISTRY_BIN = os.environ.get("BERTH_BENCH_REGISTRY", "/usr/bin/docker-registry")
REPO_PATH = "bench/python"
STEPS = ("push-cold", "push-warm", "pull")


def _registry(base: Path) -> ServerProcess:
    """One docker-registry on 127.0.0.1 with its storage under ``base`` (a fresh directory)."""
    base.mkdir(parents=True)
    try:
        return distribution(base, log_level="error", binary=REGISTRY_BIN)
    except RuntimeError as e:
        raise HarnessError(str(e)) from None


def _timed(daemon: Daemon, *args: str) -> float:
    start = time.perf_counter()
    done = daemon.docker(*args, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise HarnessError(f"{daemon.name}: docker {' '.join(args)} failed: {done.stderr.strip() or done.stdout}")
    return elapsed


def _image_id(daemon: Daemon, name: str) -> str:
    return daemon.docker("image", "inspect", "-f", "{{.Id}}", name).stdout.strip()


class Rep:
    """One repetition on one daemon: its two registries and the image ID that was pushed."""

    def __init__(self, daemon: Daemon, base: Path) -> None:
        self.daemon = daemon
        self.base = base
        self.first = _registry(base / "first")
        self.second = _registry(base / "second")
        self.name = f"{self.first.addr}/{REPO_PATH}:3.11"
        self.loaded = ""
        self.times: dict[str, float] = {}

    def push(self, archive: Path) -> None:
        """Load the image (untimed), push it cold then warm, and remove it again."""
        d = self.daemon
        d.docker("rmi", "-f", TAG, check=False)
        d.docker("load", "-i", str(archive))
        self.loaded = _image_id(d, TAG)
        second = f"{self.second.addr}/{REPO_PATH}:3.11"
        d.docker("tag", TAG, self.name)
        d.docker("tag", TAG, second)
        self.times["push-cold"] = _timed(d, "push", self.name)
        self.times["push-warm"] = _timed(d, "push", second)
        d.docker("rmi", "-f", self.loaded)
        if d.docker("image", "inspect", self.loaded, check=False).returncode == 0:
            raise HarnessError(f"{d.name}: {self.loaded} is still present after rmi -f")

    def pull(self) -> None:
        d = self.daemon
        self.times["pull"] = _timed(d, "pull", self.name)
        if _image_id(d, self.name) != self.loaded:
            raise HarnessError(f"{d.name}: the pulled image has another ID than the pushed one")

    def close(self) -> None:
        self.first.stop()
        self.second.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def _archive(source: str, rebuild: bool) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    archive = CACHE / f"load-{source}-250mb-3l.tar"  # the same cache file bench_load.py uses
    if rebuild or not archive.exists():
        print(f"making {archive} ...", file=sys.stderr)
        used = make(archive, source, 250, 3, CACHE)
        print(f"made a {used} image", file=sys.stderr)
    return archive


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_daemon_args(ap)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--source", choices=("auto", "bootstrap", "synthetic"), default="bootstrap",
                    help="image content (default: the bootstrapped python:3.11 rootfs)")
    ap.add_argument("--archive", type=Path, help="use this docker-save archive (its tag must be " + TAG + ")")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached archive")
    ap.add_argument("--settle", type=float, default=65.0,
                    help="seconds to wait between the rmi and the timed pulls (default 65: ext4 without a journal "
                         "makes inode allocation slow for 60 s after deletes; 0 measures that too)")
    args = parse_daemon_args(ap)
    if not os.path.exists(REGISTRY_BIN):
        raise HarnessError(f"{REGISTRY_BIN} is missing (apt-get install docker-registry)")
    archive = args.archive or _archive(args.source, args.rebuild)
    size_mb = archive.stat().st_size / 1e6

    results: dict[str, dict[str, list[float]]] = {}
    versions: dict[str, str] = {}
    with Harness(keep=args.keep, tmp=args.tmp) as h:
        daemons = []
        if not args.no_berth:
            daemons.append(h.berthd())
        if args.with_docker:
            daemons.append(h.dockerd())
        for d in daemons:
            versions[d.name] = str(d.version().get("Version", "?"))
            results[d.name] = {step: [] for step in STEPS}
        for rep in range(args.reps):
            reps = [Rep(d, h.base / f"registry-{d.name}-{rep}") for d in daemons]
            try:
                for r in reps:
                    r.push(archive)
                if args.settle:
                    # the rmi just deleted ~10k inodes; see "Reading the numbers" in bench/README.md
                    time.sleep(args.settle)
                for r in reps:
                    r.pull()
            finally:
                for r in reps:
                    r.close()
            for r in reps:
                for step, t in r.times.items():
                    results[r.daemon.name][step].append(t)
                shown = "  ".join(f"{step} {r.times[step]:6.2f}s" for step in STEPS)
                print(f"  run {rep + 1}/{args.reps} {r.daemon.name:8s} {shown}", file=sys.stderr)
        for d in daemons:
            d.docker("rmi", "-f", TAG, check=False)

    print(f"\ndocker push/pull of {archive.name} ({size_mb:.0f} MB uncompressed) to docker-registry on 127.0.0.1, "
          f"{args.reps} runs each")
    print(f"{'daemon':10s} {'version':24s} " + " ".join(f"{s:>10s}" for s in STEPS) + "   (median s)")
    medians: dict[str, dict[str, float]] = {}
    for name, steps in results.items():
        medians[name] = {s: statistics.median(v) for s, v in steps.items()}
        print(f"{name:10s} {versions[name]:24s} " + " ".join(f"{medians[name][s]:9.2f}s" for s in STEPS))
    if "berthd" in medians and "dockerd" in medians:
        ratios = {s: medians["dockerd"][s] / medians["berthd"][s] for s in STEPS}
        print(f"{'ratio docker/berth':35s} " + " ".join(f"{ratios[s]:9.2f}x" for s in STEPS))
    if "berthd" in medians:
        b = medians["berthd"]
        print(f"targets: push <= 4 s (cold {b['push-cold']:.2f}, warm {b['push-warm']:.2f}), "
              f"pull <= 2.5 s ({b['pull']:.2f}); push >= 3x and pull >= 2x faster than docker")
    if args.json:
        args.json.write_text(json.dumps({"archive": str(archive), "size_mb": size_mb, "runs": results,
                                         "versions": versions, "median_s": medians}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except HarnessError as e:
        print(f"bench_registry: {e}", file=sys.stderr)
        sys.exit(1)
