"""Profile berth's ``docker load`` path in-process (no daemon, no HTTP): archive → content store → snapshots.

Builds the same stores berthd builds on a throwaway data root under ``/tmp/bench-prof-XXXX`` and runs
``berth.images.archive.load`` under cProfile, printing the top functions by cumulative and by own time.

    .venv/bin/python bench/profile_load.py /var/tmp/berth-bench-cache/load-synthetic-250mb-3l.tar [--reps 3]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

from harness import unmount_below

from berth.content.store import ContentStore
from berth.images.archive import load
from berth.images.store import ImageStore
from berth.metadata.images import ImageDB
from berth.snapshots.base import open_snapshotter


def one_load(archive: Path, driver: str, profile: cProfile.Profile | None) -> float:
    """Seconds for one load into a fresh data root (removed afterwards)."""
    base = Path(tempfile.mkdtemp(prefix="bench-prof-", dir="/tmp"))
    try:
        store = ImageStore(ContentStore(base / "content"), open_snapshotter(base / "snapshots", driver),
                           ImageDB(base / "berth.db"), base / "tmp")
        with open(archive, "rb") as f:
            start = time.perf_counter()
            if profile is not None:
                profile.enable()
            load(store, f)
            if profile is not None:
                profile.disable()
            elapsed = time.perf_counter() - start
        store.db.close()
        return elapsed
    finally:
        unmount_below(base)
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("archive", type=Path)
    ap.add_argument("--reps", type=int, default=3, help="timed runs without the profiler")
    ap.add_argument("--driver", default="overlayfs", choices=("overlayfs", "copy"))
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    times = [one_load(args.archive, args.driver, None) for _ in range(args.reps)]
    print("unprofiled:", " ".join(f"{t:.3f}s" for t in times))
    prof = cProfile.Profile()
    t = one_load(args.archive, args.driver, prof)
    print(f"profiled: {t:.3f}s")
    stats = pstats.Stats(prof, stream=sys.stdout)
    stats.sort_stats("cumulative").print_stats(args.top)
    stats.sort_stats("tottime").print_stats(args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
