"""Layer 1 throughput: dense extraction vs plain OpenSlide reads of the same coordinates, in one run.

    .venv/bin/python bench/layer1_extract.py [--size 30000] [--threads 2] [--rounds 2]

Prints patches/s for both, their ratio (target >= 0.7), the extraction's peak RSS (target < 1.5 GB),
and bytes per patch for each codec. Timings are ratios from the same run because this machine is
shared and noisy; nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import h5py  # noqa: E402

from layer1_patches.config import load_layer1_config  # noqa: E402
from layer1_patches.extract import make_tiler  # noqa: E402
from layer1_patches.masks import masker_from_config  # noqa: E402
from layer1_patches.slide import Slide, resolve_resolution  # noqa: E402
from layer1_patches.tiler import SlideField  # noqa: E402

RAW_READER = """
import sys, time, numpy as np, openslide
from concurrent.futures import ThreadPoolExecutor
path, coords_file, size, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
coords = np.load(coords_file)
osr = openslide.OpenSlide(path)
start = time.perf_counter()
with ThreadPoolExecutor(threads) as pool:
    for _ in pool.map(lambda c: osr.read_region((int(c[0]), int(c[1])), 0, (size, size)), coords, chunksize=64):
        pass
print(time.perf_counter() - start)
"""


def run_child(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stdout) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark child failed: {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024, out


def candidates(slide_path: Path, overrides: list[str]) -> tuple[int, Path]:
    import numpy as np

    cfg = load_layer1_config(REPO / "configs" / "layer1" / "dense.yaml", overrides)
    with Slide(slide_path) as slide:
        res = resolve_resolution(slide, cfg.resolution)
        tissue = masker_from_config(cfg.tissue)(slide)
        field = SlideField(slide.dimensions, res.footprint(cfg.patch_size), res.downsample, tissue, None,
                           cfg.filters.min_tissue_fraction, cfg.labels)
        (stream,) = make_tiler(cfg, 0).plan(field)
    out = REPO / "bench_out" / "coords.npy"
    np.save(out, stream.coords)
    return len(stream.coords), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=30000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from layer1_patches.synth import write_cohort

    work = REPO / "bench_out"
    work.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    (slide,) = write_cohort(work / f"synth{args.size}", 1, args.size, seed=1)
    print(f"synthetic {args.size} x {args.size} slide ready ({time.perf_counter() - t0:.0f} s): {slide}")
    base = ["--set", "resolution.level=0", "--set", "resolution.mpp=null", "--set", "patch_size=224",
            "--set", f"reader.threads={args.threads}"]
    n, coords_file = candidates(slide, base[1::2])
    print(f"{n} candidate patches over tissue, 224 px at level 0, {args.threads} threads")
    extract = [sys.executable, "-m", "layer1_patches", "extract", "--config", "configs/layer1/dense.yaml",
               "--slide", str(slide), "--overwrite", *base]
    raw = [sys.executable, "-c", RAW_READER, str(slide), str(coords_file), "224", str(args.threads)]
    ratios, inner = [], []
    for r in range(args.rounds):
        raw_wall, _, raw_out = run_child(raw)
        raw_rate = n / float(raw_out.strip())
        ex_wall, ex_rss, _ = run_child([*extract, "--out", str(work / "dense")])
        ex_rate = n / ex_wall  # whole command: interpreter start-up, mask, tiling, reads, filters, writes
        (h5,) = (work / "dense").glob("*.h5")
        with h5py.File(h5) as f:
            in_rate = n / float(f.attrs["seconds"])  # extract_slide itself: mask, tiling, reads, filters, writes
        ratios.append(ex_rate / raw_rate)
        inner.append(in_rate / raw_rate)
        print(f"round {r + 1}: raw read_region {raw_rate:6.0f} patches/s | extraction command {ex_rate:6.0f} "
              f"patches/s (ratio {ex_rate / raw_rate:.2f}) | in-process {in_rate:6.0f} patches/s (ratio "
              f"{in_rate / raw_rate:.2f}) | peak RSS {ex_rss:.0f} MB")
    print(f"median ratio to the raw limit: whole command {sorted(ratios)[len(ratios) // 2]:.2f}, "
          f"in-process {sorted(inner)[len(inner) // 2]:.2f} (target >= 0.7)")
    sizes = {}
    for codec in ("lz4", "gzip", "lzf", "none", "jpeg"):
        out = work / f"codec_{codec}"
        run_child([*extract, "--out", str(out), "--shard", "0/8", "--set", f"output.codec={codec}"])
        (h5,) = out.glob("*.h5")
        with h5py.File(h5) as f:
            count = int(f.attrs["n_patches"])
        sizes[codec] = round(h5.stat().st_size / max(count, 1))
    print("bytes per 224 px patch by codec (1/8 of the slide):", json.dumps(sizes))


if __name__ == "__main__":
    main()
