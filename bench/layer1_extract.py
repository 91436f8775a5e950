"""Layer 1 throughput: dense extraction vs plain OpenSlide reads of the same coordinates, in one run.

    .venv/bin/python bench/layer1_extract.py [--size 30000] [--threads 2] [--rounds 5] [--checksum-rounds 5]
    .venv/bin/python bench/layer1_extract.py --fractions 50000   (only the tumour-fraction cost, below)

Prints patches/s for both, their ratio (target >= 0.7), the extraction's peak RSS (target < 1.5 GB),
bytes per patch for each codec, and the cost of the store's checksums (Fletcher-32 on every chunk, gzip on
the small datasets): extract_slide with them and without them (`store.CHECKSUMS`), interleaved, wall and CPU
seconds per 1000 patches, and the CPU of reading the store back and of PatchWriter alone. Timings are ratios from
the same run because this machine is shared and noisy; nothing here is a test.

`--fractions N`: CPU seconds of the exact tumour fractions (`fractions.TumourGeometry`) of a dense grid of about N
224 px patches under three tumour polygons of 3,000-6,000 vertices (one with a hole), against the 16x raster
they replace (`tumour_mask` and its integral image), and how many labels at 0.5 the raster got wrong; and the
CPU of the tumour thumbnail stored, now rasterised near its own size instead of shrunk from the 16x raster.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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

# extract_slide timed around the call, so it includes masking, tiling, reads, filters, writes and finishing the
# file (the store's own `seconds` attribute cannot include its finishing).
IN_PROCESS = """
import sys, time
from pathlib import Path
from layer1_patches.config import load_layer1_config
from layer1_patches.extract import ExtractRequest, extract_slide
slide, out, overrides = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
cfg = load_layer1_config(Path("configs/layer1/dense.yaml"), overrides)
start = time.perf_counter()
extract_slide(ExtractRequest(slide, out, cfg, None, None, True, 0))
print(time.perf_counter() - start)
"""

# The same, with the store's checksums on or off (argv[3]: 1 or 0), printing wall and CPU seconds (all threads of
# the process) of extract_slide, the CPU seconds of reading every patch back through PatchStore, and the CPU
# seconds of PatchWriter alone writing 1000 patches held in memory (the store's own cost, without the slide's).
CHECKSUM_AB = """
import sys, time
import numpy as np
from pathlib import Path
from layer1_patches import store
from layer1_patches.config import load_layer1_config
from layer1_patches.extract import ExtractRequest, extract_slide
slide, out, overrides = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[4:]
store.CHECKSUMS = sys.argv[3] == "1"
cfg = load_layer1_config(Path("configs/layer1/dense.yaml"), overrides)
wall, cpu = time.perf_counter(), time.process_time()
result = extract_slide(ExtractRequest(slide, out, cfg, None, None, True, 0))
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
read = time.process_time()
with store.PatchStore(Path(result.output)) as s:
    n, first = len(s), None
    for batch in s.iter_batches():
        first = batch if first is None else first
read = time.process_time() - read
patches, k = np.concatenate([first] * 4)[:1000], np.zeros(1000)  # 4 x the first 256
write = time.process_time()
with store.PatchWriter(out / "write_only.h5", patches.shape[1], "none") as w:
    for i in range(0, 1000, 64):
        w.append(patches[i:i + 64], np.zeros((len(patches[i:i + 64]), 2)), k[i:i + 64], k[i:i + 64], k[i:i + 64])
    w.finish(store.SlideMeta("w", "/w"), {}, {}, {})
print(n, wall, cpu, read, time.process_time() - write)
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


def blob(cx: float, cy: float, r: float, n: int, seed: int) -> Any:
    """A smooth random outline of n vertices around (cx, cy), like a hand-drawn metastasis."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    k = np.arange(1, 9)[:, None]
    wobble = (rng.normal(0, 0.08, (8, 1)) / k * np.cos(k * t + rng.uniform(0, 2 * np.pi, (8, 1)))).sum(0)
    radius = r * (1 + wobble + rng.normal(0, 0.003, n))
    return np.stack([cx + radius * np.cos(t), cy + radius * np.sin(t)], axis=1)


def fraction_cost(n_patches: int) -> None:
    import numpy as np

    from layer1_patches.annotations import Polygon, tumour_mask, tumour_region
    from layer1_patches.config import AnnotationConfig
    from layer1_patches.extract import tumour_thumbnail
    from layer1_patches.fractions import TumourGeometry

    side = int(224 * np.sqrt(n_patches)) + 224  # level-0 px of a square slide holding the grid
    s = side / 80_000
    polygons = [Polygon("a", "Tumor", blob(20000 * s, 20000 * s, 8000 * s, 4000, 1),
                        (blob(21000 * s, 20500 * s, 2000 * s, 2000, 2),)),
                Polygon("b", "Tumor", blob(60000 * s, 30000 * s, 5000 * s, 3000, 3)),
                Polygon("c", "Tumor", blob(40000 * s, 60000 * s, 3000 * s, 3000, 4))]
    xs = np.arange(0, side - 224 + 1, 224)
    gx, gy = np.meshgrid(xs, xs)
    coords = np.stack([gx.ravel(), gy.ravel()], axis=1)
    cfg = AnnotationConfig()
    start = time.process_time()
    geometry = TumourGeometry.of(tumour_region(polygons, cfg))
    built = time.process_time() - start
    exact = geometry.fractions(coords, 224)
    exact_cpu = time.process_time() - start
    start = time.process_time()
    raster = tumour_mask(polygons, cfg, (side, side)).fractions(coords, 224)
    raster_cpu = time.process_time() - start
    start = time.process_time()
    tumour_thumbnail(polygons, load_layer1_config(None), (side, side))
    thumb_cpu = time.process_time() - start
    edge = int(((exact > 0) & (exact < 1)).sum())
    flips = int(((exact >= 0.5) != (raster >= 0.5)).sum())
    print(f"{len(coords)} patches, {edge} across a tumour edge, {len(geometry.pieces)} pieces: exact fractions "
          f"{exact_cpu:.2f} CPU s ({built:.2f} s building the geometry), stored thumbnail {thumb_cpu:.2f} CPU s; "
          f"16x raster (before) {raster_cpu:.2f} CPU s, its error max {np.abs(exact - raster).max():.3f}, "
          f"labels at 0.5 that differ: {flips}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", type=int, default=0, help="only time exact tumour fractions of ~N patches")
    parser.add_argument("--size", type=int, default=30000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--checksum-rounds", type=int, default=5, help="rounds of the checksums on/off A/B (0: none)")
    args = parser.parse_args()
    if args.fractions:
        fraction_cost(args.fractions)
        return
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
    in_process = [sys.executable, "-c", IN_PROCESS, str(slide), str(work / "dense"), *base[1::2]]
    ratios, inner = [], []
    for r in range(args.rounds):
        rates: dict[str, float] = {}
        rss = 0.0
        # Rotated order, so drift in the machine's speed does not favour one side; each extraction starts with
        # an empty output folder (deleting a previous 1 GB file is not extraction time).
        for kind in ("raw", "command", "in-process")[r % 3:] + ("raw", "command", "in-process")[:r % 3]:
            shutil.rmtree(work / "dense", ignore_errors=True)
            if kind == "raw":
                _, _, out = run_child(raw)
                rates[kind] = n / float(out.strip())
            elif kind == "command":
                wall, rss, _ = run_child([*extract, "--out", str(work / "dense")])
                rates[kind] = n / wall  # whole command: interpreter start-up, imports, and all of extract_slide
            else:
                _, _, out = run_child(in_process)
                rates[kind] = n / float(out.strip())
        ratios.append(rates["command"] / rates["raw"])
        inner.append(rates["in-process"] / rates["raw"])
        print(f"round {r + 1}: raw read_region {rates['raw']:6.0f} patches/s | extraction command "
              f"{rates['command']:6.0f} patches/s (ratio {ratios[-1]:.2f}) | extract_slide in-process "
              f"{rates['in-process']:6.0f} patches/s (ratio {inner[-1]:.2f}) | peak RSS {rss:.0f} MB")
    if ratios:  # --rounds 0: only the codec sizes and the checksums A/B
        print(f"median ratio to the raw limit: whole command {sorted(ratios)[len(ratios) // 2]:.2f}, "
              f"in-process {sorted(inner)[len(inner) // 2]:.2f} (target >= 0.7)")
    sizes = {}
    for codec in ("lz4", "gzip", "lzf", "none", "jpeg"):
        codec_dir = work / f"codec_{codec}"
        run_child([*extract, "--out", str(codec_dir), "--shard", "0/8", "--set", f"output.codec={codec}"])
        (h5,) = codec_dir.glob("*.h5")
        with h5py.File(h5) as f:
            count = int(f.attrs["n_patches"])
        sizes[codec] = round(h5.stat().st_size / max(count, 1))
    print("bytes per 224 px patch by codec (1/8 of the slide):", json.dumps(sizes))
    if args.checksum_rounds:
        checksum_ab(slide, work, base[1::2], args.checksum_rounds)


def checksum_ab(slide: Path, work: Path, overrides: list[str], rounds: int) -> None:
    """extract_slide with and without the store's checksums, alternating which goes first (drift in the
    machine's speed must not favour one side); seconds per 1000 patches, medians and their ratio."""
    per_k: dict[str, list[tuple[float, ...]]] = {"on": [], "off": []}
    for r in range(rounds):
        for kind in ("on", "off") if r % 2 == 0 else ("off", "on"):
            shutil.rmtree(work / "checksums", ignore_errors=True)
            flag = "1" if kind == "on" else "0"
            _, _, out = run_child([sys.executable, "-c", CHECKSUM_AB, str(slide), str(work / "checksums"), flag,
                                   *overrides])
            n, wall, cpu, read_cpu, write_cpu = (float(v) for v in out.split())
            per_k[kind].append((1000 * wall / n, 1000 * cpu / n, 1000 * read_cpu / n, write_cpu))
        on, off = per_k["on"][-1], per_k["off"][-1]
        print(f"checksums round {r + 1}: per 1000 patches, with / without: extraction wall {on[0]:.3f} / "
              f"{off[0]:.3f} s, CPU {on[1]:.3f} / {off[1]:.3f} s; reading back CPU {on[2]:.3f} / {off[2]:.3f} s; "
              f"PatchWriter alone CPU {on[3]:.3f} / {off[3]:.3f} s")
    med = {k: [sorted(v[i] for v in rows)[len(rows) // 2] for i in range(4)] for k, rows in per_k.items()}
    parts = [f"{what} {med['on'][i]:.3f} / {med['off'][i]:.3f} s ({med['on'][i] / med['off'][i]:.3f})" for i, what
             in enumerate(("extraction wall", "extraction CPU", "read-back CPU", "PatchWriter alone CPU"))]
    print(f"checksums, medians of {rounds} rounds per 1000 patches (with / without, ratio): {'; '.join(parts)}")


if __name__ == "__main__":
    main()
