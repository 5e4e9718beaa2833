"""Benchmark: ``docker load -i`` of a ~250 MB image archive, berthd against a real dockerd on the same machine.

The same docker CLI drives both daemons (DOCKER_HOST per daemon). Runs alternate between the daemons so drift
(page cache, CPU frequency) hits both alike; the image is removed with ``docker rmi`` before every run.
Prints the median seconds for each daemon and the ratio. See bench/README.md.

    .venv/bin/python bench/bench_load.py --with-docker --reps 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from harness import (
    CACHE,
    Daemon,
    Harness,
    HarnessError,
    add_daemon_args,
    alternate,
    parse_daemon_args,
    print_medians,
    run_main,
    write_json,
)
from make_image import TAG, make


def time_load(daemon: Daemon, archive: Path) -> float:
    """Seconds for one ``docker load -i`` into ``daemon``, after removing the image so it is a real load."""
    daemon.docker("rmi", "-f", TAG, check=False)
    if daemon.docker("image", "inspect", TAG, check=False).returncode == 0:
        raise HarnessError(f"{daemon.name}: {TAG} is still present after rmi -f")
    start = time.perf_counter()
    done = daemon.docker("load", "-i", str(archive), check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise HarnessError(f"{daemon.name}: docker load failed: {done.stderr.strip() or done.stdout.strip()}")
    if daemon.docker("image", "inspect", TAG, check=False).returncode != 0:
        raise HarnessError(f"{daemon.name}: docker load succeeded but {TAG} is not there: {done.stdout.strip()}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_daemon_args(ap)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--source", choices=("auto", "bootstrap", "synthetic"), default="auto",
                    help="image content: a bootstrapped python:3.11 rootfs, or a synthetic tree (default: auto)")
    ap.add_argument("--size-mb", type=int, default=250, help="synthetic image size")
    ap.add_argument("--layers", type=int, default=3, help="synthetic layer count")
    ap.add_argument("--archive", type=Path, help="use this docker-save archive (its tag must be " + TAG + ")")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the cached archive")
    args = parse_daemon_args(ap)

    archive = args.archive
    if archive is None:
        CACHE.mkdir(parents=True, exist_ok=True)
        archive = CACHE / f"load-{args.source}-{args.size_mb}mb-{args.layers}l.tar"
        if args.rebuild or not archive.exists():
            print(f"making {archive} ...", file=sys.stderr)
            used = make(archive, args.source, args.size_mb, args.layers, CACHE)
            print(f"made a {used} image", file=sys.stderr)
    size_mb = archive.stat().st_size / 1e6

    versions: dict[str, str] = {}
    with Harness(keep=args.keep, tmp=args.tmp) as h:
        daemons = h.start(berth=not args.no_berth, docker=args.with_docker)
        for d in daemons:
            versions[d.name] = str(d.version().get("Version", "?"))
        results = alternate(daemons, args.reps, lambda d: time_load(d, archive), "run")
        for d in daemons:
            d.docker("rmi", "-f", TAG, check=False)

    print(f"\ndocker load -i {archive} ({size_mb:.0f} MB), {args.reps} runs each")
    medians = print_medians(results, versions, "daemon", (10, 24))
    if "berthd" in medians and "dockerd" in medians:
        ratio = medians["dockerd"] / medians["berthd"]
        verdict = "berth faster" if ratio > 1 else "docker faster"
        print(f"ratio docker/berth = {ratio:.2f}  ({verdict})")
    write_json(args.json, {"archive": str(archive), "size_mb": size_mb, "runs": results, "versions": versions,
                           "median_s": medians})
    return 0


if __name__ == "__main__":
    run_main(main, "bench_load")
