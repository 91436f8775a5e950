"""Layer 1 as a SLURM array on the local cluster: 4 slides at %1 vs %2, and SLURM's overhead per task.

    slurm/local/start.sh && export SLURM_CONF=/tmp/camnet-slurm/slurm.conf
    .venv/bin/python bench/slurm_array.py [--size 30000] [--slides 4] [--rounds 5]

Each task extracts one synthetic slide densely with one reader thread on one CPU, so two tasks can use the
two cores. Prints wall times, the %2 over %1 speed-up per round and its median (target >= 1.7 on 2 cores),
and the overhead per task: an array of `true` tasks (pure scheduling and launch), and the array's wall time
minus the extraction time the tasks recorded (scheduling + Python start-up + slide opening + masking).
Before each array the previous outputs are deleted and the page cache is flushed (`sync`), so neither
throttle pays for the other's disk writes, and the order of %1 and %2 alternates between rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from layer1_patches.store import PatchStore  # noqa: E402
from layer1_patches.synth import write_cohort  # noqa: E402


def wait_for(job: str, timeout: float = 3600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout
        if not out.strip():
            return
        time.sleep(0.2)
    raise SystemExit(f"job {job} did not finish in {timeout} s")


def sbatch(args: list[str]) -> str:
    proc = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, cwd=REPO, check=True)
    return proc.stdout.strip().split(";")[0]


def run_array(slides: Path, out: Path, throttle: int) -> tuple[float, float]:
    """(wall seconds from submission to the last task's end, sum of the tasks' extraction seconds)."""
    shutil.rmtree(out, ignore_errors=True)
    os.sync()
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "layer1_patches", "submit", "--config", "configs/layer1/dense.yaml",
         "--slides", str(slides), "--out", str(out), "--max-parallel", str(throttle),
         "--sbatch-arg=--cpus-per-task=1", "--set", "reader.threads=1", "--set", "resolution.mpp=null",
         "--set", "resolution.level=0"], capture_output=True, text=True, cwd=REPO, check=True)
    wait_for(proc.stdout.strip().splitlines()[-1])
    wall = time.monotonic() - start
    work = 0.0
    for h5 in out.glob("*.h5"):
        with PatchStore(h5) as store:
            work += float(store.attrs["seconds"])
    return wall, work


def balance_bound(out: Path) -> float:
    """Total patches over the busier slot's, when 2 slots take the manifest's tasks in order as they free up."""
    entries = json.loads((out / "manifest.json").read_text())["entries"]
    work = []
    for entry in entries:
        with PatchStore(out / f"{Path(entry['slide']).stem}.h5") as store:
            work.append(len(store))
    slots = [0, 0]
    for n in work:
        slots[slots.index(min(slots))] += n
    return sum(work) / max(slots)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=30000)
    parser.add_argument("--slides", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if shutil.which("sbatch") is None:
        raise SystemExit("no sbatch: start the local cluster (slurm/local/start.sh) and export SLURM_CONF")
    work_dir = REPO / "bench_out" / "slurm_array"
    slides = write_cohort(work_dir / f"slides{args.size}", args.slides, args.size, seed=3)
    with tempfile.TemporaryDirectory() as tmp:
        job = sbatch([f"--array=0-{args.slides - 1}%1", f"--output={tmp}/%A_%a.out", "--cpus-per-task=1",
                      "--wrap=true"])
        start = time.monotonic()
        wait_for(job)
        pure = (time.monotonic() - start) / args.slides
    print(f"{len(slides)} synthetic {args.size} px slides, dense 224 px at level 0, 1 CPU and 1 reader per task")
    speedups, overheads, slowdowns = [], [], []
    for r in range(args.rounds):
        results = {}
        for throttle in ((1, 2) if r % 2 == 0 else (2, 1)):
            results[throttle] = run_array(slides[0].parent, work_dir / f"out_{throttle}", throttle)
        (w1, work1), (w2, work2) = results[1], results[2]
        speedups.append(w1 / w2)
        overheads.append((w1 - work1) / len(slides))
        slowdowns.append(work2 / work1)
        # Extraction seconds summed over the 4 tasks: if two concurrent tasks slowed each other, the sum at %2
        # exceeds the one at %1 (the machine's drift between the two arrays shows here too).
        print(f"round {r + 1}: %1 {w1:.1f} s wall, %2 {w2:.1f} s wall, speed-up {w1 / w2:.2f}; extraction "
              f"{work1:.1f} s at %1, {work2:.1f} s at %2; {overheads[-1]:.2f} s per task outside extraction (%1)")
    median = sorted(speedups)[len(speedups) // 2]
    print(f"best possible speed-up for these slides (patches per task, 2 slots, tasks in manifest order): "
          f"{balance_bound(work_dir / 'out_1'):.2f}")
    print(f"median speed-up {median:.2f} (range {min(speedups):.2f}-{max(speedups):.2f}; target >= 1.7 on 2 cores)")
    print(f"extraction time at %2 over %1: median {sorted(slowdowns)[len(slowdowns) // 2]:.2f} "
          f"(range {min(slowdowns):.2f}-{max(slowdowns):.2f})")
    print(f"SLURM overhead per task: {pure:.2f} s for an empty task; "
          f"{sorted(overheads)[len(overheads) // 2]:.2f} s per Layer 1 task outside extraction (median, at %1)")
    print(json.dumps({"speedups": [round(x, 3) for x in speedups], "median_speedup": round(median, 3),
                      "empty_task_s": round(pure, 3)}))

if __name__ == "__main__":
    main()
