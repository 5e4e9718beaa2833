"""Benchmark: ``docker build`` with the classic builder (DOCKER_BUILDKIT=0, ``POST /build``), berthd vs dockerd.

Both daemons run side by side (bench/harness.py) with the busybox fixture loaded into each (``docker load -i``).
The same docker CLI drives both, with ``DOCKER_BUILDKIT=0`` and ``--network none`` (the benchmark's dockerd has
no bridge). The build context is a small project made once per run: ``app/`` with ~300 small source files and
one 20 MB data file, and a Dockerfile with WORKDIR, 3 RUN steps, a COPY of ``app/``, ENV, EXPOSE and CMD.
Scenarios, each alternating between the daemons:

* **cold**: ``--no-cache`` after ``docker rmi -f`` of the tag and ``docker image prune -f`` (intermediates too);
* **cached**: the same build again, every step ``Using cache``;
* **touched**: one file copied by COPY changes content; the COPY step and the steps after it run again.

Every build is checked: the image runs and prints the expected file counts (and the touched file's new content),
and the cache hits in the build output are the expected ones, so a broken build never yields a fast number.

    .venv/bin/python bench/bench_build.py --with-docker --reps 3 --tmp /var/tmp
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import (
    DOCKER_CLI,
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

REPO = Path(__file__).resolve().parents[1]
TAG = "berth-bench/build:latest"
SMALL_FILES = 300  # under app/, copied by COPY
BIG_BYTES = 20 * 1024 * 1024
RUN_FILES = 200  # /app/f1 ... written by the first RUN
TOUCHED = "app/pkg00/mod00.py"
# FROM is step 1; WORKDIR, 3 RUN, COPY, ENV, EXPOSE, CMD follow
STEPS_AFTER_FROM = 8
STEPS_BEFORE_COPY = 4
DOCKERFILE = f"""\
FROM busybox:latest
WORKDIR /app
RUN for i in $(seq {RUN_FILES}); do echo $i > /app/f$i; done
RUN mkdir -p /app/var/log && for i in $(seq 50); do echo "line $i" >> /app/var/log/build.log; done
RUN echo built > /app/stamp && ls /app | wc -l > /app/count
COPY app/ /app/src/
ENV APP_ENV=bench PYTHONUNBUFFERED=1
EXPOSE 8000
CMD ["sh", "-c", "echo $(find /app/src -type f | wc -l) $(ls /app | grep -c '^f[0-9]') $(wc -c < /app/src/blob.bin)"]
"""
EXPECTED = f"{SMALL_FILES + 1} {RUN_FILES} {BIG_BYTES}"


def fixture() -> Path:
    """The busybox ``docker save`` archive (berth.testing.rootfs.FIXTURES)."""
    sys.path.insert(0, str(REPO / "src"))
    from berth.testing.rootfs import FIXTURES
    return Path(FIXTURES) / "busybox-docker-save.tar"


def make_context(root: Path) -> Path:
    """A Python-ish project: 30 packages of 10 small modules each, one 20 MB blob, and the Dockerfile."""
    rng = random.Random(1)
    ctx = root / "context"
    app = ctx / "app"
    for i in range(SMALL_FILES):
        pkg = app / f"pkg{i // 10:02d}"
        pkg.mkdir(parents=True, exist_ok=True)
        body = "".join(f"def f{j}(x):\n    return x * {rng.randrange(1000)}\n\n" for j in range(rng.randrange(5, 60)))
        (pkg / f"mod{i % 10:02d}.py").write_text(body)
    (app / "blob.bin").write_bytes(rng.randbytes(BIG_BYTES))
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    return ctx


def build_env(daemon: Daemon) -> dict[str, str]:
    return {**daemon.env(), "DOCKER_BUILDKIT": "0"}


@dataclass(frozen=True)
class Project:
    """The build context and how long to wait before each timed build."""

    ctx: Path
    pause: float


def build(daemon: Daemon, project: Project, *extra: str) -> tuple[float, str]:
    """Seconds for one ``docker build`` (classic builder) and its output, after ``pause`` seconds of quiet."""
    # an engine's clean-up after the previous build (containerd GC, overlay unmounts) must not land on this one
    time.sleep(project.pause)
    cmd = [DOCKER_CLI, "build", "--network", "none", "-t", TAG, *extra, str(project.ctx)]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=build_env(daemon), capture_output=True, text=True, timeout=600, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise HarnessError(f"{daemon.name}: docker build failed:\n{done.stdout[-2000:]}{done.stderr.strip()}")
    return elapsed, done.stdout


def check(daemon: Daemon, out: str, cached: int, touched: str | None = None) -> None:
    """The image runs and shows the expected files; the build output has exactly ``cached`` cache hits."""
    hits = out.count("Using cache")
    if hits != cached:
        raise HarnessError(f"{daemon.name}: expected {cached} cached steps, build output has {hits}:\n{out}")
    got = daemon.docker("run", "--rm", "--network", "none", TAG, timeout=120).stdout.strip()
    if got != EXPECTED:
        raise HarnessError(f"{daemon.name}: the built image printed {got!r}, expected {EXPECTED!r}")
    if touched is not None:
        body = daemon.docker("run", "--rm", "--network", "none", TAG, "cat", "/app/src/" + TOUCHED.removeprefix("app/"),
                             timeout=120).stdout
        if not body.endswith(touched):
            raise HarnessError(f"{daemon.name}: the touched file in the image lacks its new line {touched!r}")


def image_ids(daemon: Daemon) -> set[str]:
    """Every image ID the daemon holds, intermediates included."""
    return set(daemon.docker("images", "-aq", "--no-trunc").stdout.split())


def remove_built(daemon: Daemon, base: set[str]) -> None:
    """Back to the loaded images only (``base``): the built image and every intermediate removed."""
    daemon.docker("rmi", "-f", TAG, check=False)
    daemon.docker("image", "prune", "-f", check=False)
    left = image_ids(daemon) - base
    if left:
        raise HarnessError(f"{daemon.name}: images left after rmi -f and prune: {sorted(left)}")


class Cold:
    """A ``--no-cache`` build from the loaded images only, so every step really runs."""

    def __init__(self, base: dict[str, set[str]]) -> None:
        self.base = base

    def __call__(self, daemon: Daemon, project: Project) -> float:
        remove_built(daemon, self.base[daemon.name])
        elapsed, out = build(daemon, project, "--no-cache")
        check(daemon, out, cached=0)
        return elapsed


def cached(daemon: Daemon, project: Project) -> float:
    elapsed, out = build(daemon, project)
    check(daemon, out, cached=STEPS_AFTER_FROM)
    return elapsed


class Toucher:
    """Appends a new line to one copied file before each build, so its content (not only its mtime) changes."""

    def __init__(self, ctx: Path) -> None:
        self.path = ctx / TOUCHED
        self.n = 0

    def __call__(self, daemon: Daemon, project: Project) -> float:
        self.n += 1
        line = f"# revision {self.n}\n"
        with open(self.path, "a") as f:
            f.write(line)
        elapsed, out = build(daemon, project)
        check(daemon, out, cached=STEPS_BEFORE_COPY, touched=line)
        return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_daemon_args(ap)
    ap.add_argument("--reps", type=int, default=5, help="timed builds per scenario and daemon")
    ap.add_argument("--pause", type=float, default=0.5, help="seconds of quiet before each timed build")
    args = parse_daemon_args(ap)
    archive = fixture()

    versions: dict[str, str] = {}
    results: dict[str, dict[str, list[float]]] = {}
    with Harness(keep=args.keep, tmp=args.tmp) as h:
        project = Project(make_context(h.base), args.pause)
        daemons = h.start(berth=not args.no_berth, docker=args.with_docker)
        base: dict[str, set[str]] = {}
        for d in daemons:
            versions[d.name] = str(d.version().get("Version", "?"))
            d.docker("load", "-i", str(archive), timeout=120)
            base[d.name] = image_ids(d)
        scenarios: dict[str, Callable[[Daemon, Project], float]] = {"cold": Cold(base), "cached": cached,
                                                                 "touched": Toucher(project.ctx)}
        for name, fn in scenarios.items():
            results[name] = alternate(daemons, args.reps, lambda d, fn=fn: fn(d, project), name)  # type: ignore[misc]
        for d in daemons:
            remove_built(d, base[d.name])

    out: dict[str, Any] = {"versions": versions, "runs": results, "median_s": {}, "ratio": {}}
    titles = {"cold": "cold build (--no-cache, image and intermediates removed first)",
              "cached": "fully cached rebuild (every step Using cache)",
              "touched": "rebuild after one copied file changed (COPY and later steps run)"}
    print(f"\ndocker build (DOCKER_BUILDKIT=0, --network none): WORKDIR, 3 RUN, COPY of {SMALL_FILES} small files "
          f"+ 20 MB, ENV, EXPOSE, CMD; {args.reps} runs each")
    for name, runs in results.items():
        print(f"\n{titles[name]}")
        medians = print_medians(runs, versions, "daemon", (10, 24))
        out["median_s"][name] = medians
        if "berthd" in medians and "dockerd" in medians:
            ratio = medians["dockerd"] / medians["berthd"]
            out["ratio"][name] = ratio
            print(f"ratio docker/berth = {ratio:.2f}  ({'berth faster' if ratio > 1 else 'docker faster'})")
    write_json(args.json, out)
    return 0


if __name__ == "__main__":
    run_main(main, "bench_build")
