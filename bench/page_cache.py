"""Layer 1 dense writing with and without dropping written patches from the page cache.

    .venv/bin/python bench/page_cache.py [--size 30000] [--rounds 1]

The slides are bench/slurm_array.py's default cohort: 4 copies of one synthetic slide, dense 224 px at level 0,
one reader thread per process, outputs on disk. Two schedules of the 4 slides, as a SLURM array on 2 cores
runs them: "2 at a time" (two processes pinned to CPUs 0 and 1, two slides each) and "1 at a time" (one
process pinned to CPU 0, the other core idle). "drop" is the writer as shipped (`DROP_CACHE_BYTES`), "keep"
never drops. Each round runs drop keep keep drop for each schedule, so drift of this shared machine cancels;
prints wall seconds and keep over drop (above 1: dropping is faster).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from slurm_array import REPO, cohort  # puts the repository on sys.path

from layer1_patches.store import DROP_CACHE_BYTES

# One process: set the writer's threshold, then extract the given slides one after another with the CLI.
CHILD = """
import sys
import layer1_patches.store as store
from layer1_patches.cli import main
store.DROP_CACHE_BYTES = int(sys.argv[1])
out, slides = sys.argv[2], sys.argv[3:]
for slide in slides:
    code = main(["extract", "--config", "configs/layer1/dense.yaml", "--set", "reader.threads=1",
                 "--set", "resolution.mpp=null", "--set", "resolution.level=0", "--slide", slide,
                 "--annotation", slide[:-4] + ".xml", "--out", out])
    if code:
        sys.exit(code)
"""
NEVER = 1 << 62


def run(slides: list[Path], out: Path, parallel: bool, drop: bool) -> float:
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    os.sync()
    threshold = str(DROP_CACHE_BYTES if drop else NEVER)
    groups = [(0, slides[0::2]), (1, slides[1::2])] if parallel else [(0, slides)]
    start = time.monotonic()
    procs = [subprocess.Popen(["taskset", "-c", str(cpu), sys.executable, "-c", CHILD, threshold, str(out),
                               *map(str, group)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for cpu, group in groups]
    if any(proc.wait() for proc in procs):
        raise SystemExit("an extraction failed; run it by hand to see why")
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=30000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    if (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
        raise SystemExit("needs 2 CPUs and taskset")
    slides = cohort(REPO / "bench_out" / "slurm_array", "equal", 4, args.size)
    out = REPO / "bench_out" / "page_cache"
    for r in range(args.rounds):
        for parallel in (True, False):
            walls: dict[bool, float] = {True: 0.0, False: 0.0}
            for drop in (True, False, False, True):
                walls[drop] += run(slides, out, parallel, drop) / 2
            label = "2 at a time" if parallel else "1 at a time"
            print(f"round {r + 1}, {label}: drop {walls[True]:.1f} s, keep {walls[False]:.1f} s, "
                  f"keep / drop {walls[False] / walls[True]:.2f}")
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
