"""Layer 1 throughput against two references measured in the same run, interleaved (issue 17).

    .venv/bin/python bench/layer1_extract.py [--size 30000] [--threads 2] [--rounds 5] [--codecs]
                                             [--checksum-rounds N]
    .venv/bin/python bench/layer1_extract.py --fractions 50000   (only the tumour-fraction cost, below)

On a synthetic JPEG-tiled slide, dense 224 px patches at level 0, each round runs in rotated order (drift in the
machine's speed must not favour one side), each in its own process:
- the decode limit: every JPEG tile under the candidate patches decoded once (1 and `--threads` threads);
- plain OpenSlide: the public `read_region` of every candidate patch and its conversion to RGB (1 and `--threads`);
- the whole `extract` command (start-up, imports, mask, reads, filters, writes, finishing the file), with the
  default reader (tiles) and with `reader.backend=openslide`.
It prints CPU milliseconds per patch (user + system, all threads) and patches per wall-second of each, and the
ratios the issue sets targets for: extract's CPU per patch over the decode limit's (<= 2.0), extract's patches per
CPU-second and per wall-second over read_region's with the same threads (>= 1.8), and extract's peak RSS (< 400
MB). `--codecs`: bytes per patch for each codec. `--checksum-rounds N`: the cost of the store's checksums
(Fletcher-32 on every chunk, gzip on the small datasets), extract_slide with and without them (`store.CHECKSUMS`),
interleaved, wall and CPU seconds per 1000 patches, and the CPU of reading the store back and of PatchWriter alone.
This machine is shared and noisy: the ratios come from the same rounds; nothing here is a test.

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
from dataclasses import dataclass
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

# The decode limit: every tile under the candidate patches decoded once (tiles.tile_reader: imagecodecs'
# libjpeg-turbo, straight to RGB), on a pool of `threads`; prints CPU and wall seconds of the decoding alone.
DECODE_LIMIT = """
import os, sys, time, numpy as np
from concurrent.futures import ThreadPoolExecutor
from layer1_patches.tiles import level_layout, tile_reader
path, tiles_file, w, h, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
layout = level_layout(path, (w, h))
tiles = np.load(tiles_file).tolist()
decode = tile_reader(layout, os.open(path, os.O_RDONLY))
wall, cpu = time.perf_counter(), time.process_time()
with ThreadPoolExecutor(threads) as pool:
    for _ in pool.map(decode, tiles, chunksize=8):
        pass
print(time.process_time() - cpu, time.perf_counter() - wall)
"""

# Plain OpenSlide: the public read_region of every candidate patch and its conversion to an RGB array, as a user
# would write it; prints CPU and wall seconds of the reads alone.
READ_REGION = """
import sys, time, numpy as np, openslide
from concurrent.futures import ThreadPoolExecutor
path, coords_file, size, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
coords = np.load(coords_file).tolist()
osr = openslide.OpenSlide(path)
def read(c):
    return np.asarray(osr.read_region((c[0], c[1]), 0, (size, size)).convert("RGB"))
wall, cpu = time.perf_counter(), time.process_time()
with ThreadPoolExecutor(threads) as pool:
    for _ in pool.map(read, coords, chunksize=64):
        pass
print(time.process_time() - cpu, time.perf_counter() - wall)
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


@dataclass
class Child:
    """One child process: wall seconds, CPU seconds (user + system, all threads), peak RSS in MB, stdout."""

    wall: float
    cpu: float
    rss_mb: float
    out: str


def run_child(cmd: list[str]) -> Child:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark child failed: {' '.join(cmd)}")
    return Child(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out)


def candidates(slide_path: Path, overrides: list[str]) -> tuple[int, Path, Path, tuple[int, int]]:
    """The dense candidates over tissue (as `extract` plans them) and the tiles under them, saved for the children:
    (patches, coords file, tiles file, level-0 size)."""
    import numpy as np

    from layer1_patches.tileplan import patch_tiles
    from layer1_patches.tiles import level_layout

    cfg = load_layer1_config(REPO / "configs" / "layer1" / "dense.yaml", overrides)
    with Slide(slide_path) as slide:
        res = resolve_resolution(slide, cfg.resolution)
        tissue = masker_from_config(cfg.tissue)(slide)
        field = SlideField(slide.dimensions, res.footprint(cfg.patch_size), res.downsample, tissue, None,
                           cfg.filters.min_tissue_fraction, cfg.labels)
        (stream,) = make_tiler(cfg, 0).plan(field)
        size = slide.dimensions
    layout = level_layout(str(slide_path), size)
    if layout is None:
        raise SystemExit(f"{slide_path}: not a JPEG-tiled slide the tile reader serves")
    tiles = sorted({t for ts in patch_tiles(layout, stream.coords, cfg.patch_size) for t in ts})
    coords_file, tiles_file = REPO / "bench_out" / "coords.npy", REPO / "bench_out" / "tiles.npy"
    np.save(coords_file, stream.coords)
    np.save(tiles_file, np.asarray(tiles, dtype=np.int64))
    return len(stream.coords), coords_file, tiles_file, size


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
    parser.add_argument("--threads", type=int, default=2, help="reader.threads of extract, and the threads of the "
                        "read_region and decode references compared with it (each also runs with 1)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--codecs", action="store_true", help="also print bytes per patch for each codec")
    parser.add_argument("--checksum-rounds", type=int, default=0, help="rounds of the checksums on/off A/B (0: none)")
    parser.add_argument("--processes", type=int, default=0, help="only compare one process with --threads reader "
                        "threads against this many shard processes of 1 thread each plus their merge")
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
    if args.processes:
        threads_vs_processes(slide, work, base, args)
        return
    n, coords_file, tiles_file, size = candidates(slide, base[1::2])
    n_tiles = len(__import__("numpy").load(tiles_file))
    print(f"{n} candidate patches over tissue on {n_tiles} JPEG tiles, 224 px at level 0; extract with "
          f"{args.threads} threads; CPU = user + system seconds of all threads")
    extract = [sys.executable, "-m", "layer1_patches", "extract", "--config", "configs/layer1/dense.yaml",
               "--slide", str(slide), "--overwrite", *base, "--out", str(work / "dense")]
    kinds: dict[str, list[str]] = {}
    for t in sorted({1, args.threads}):
        kinds[f"decode limit {t}t"] = [sys.executable, "-c", DECODE_LIMIT, str(slide), str(tiles_file),
                                       str(size[0]), str(size[1]), str(t)]
        kinds[f"read_region {t}t"] = [sys.executable, "-c", READ_REGION, str(slide), str(coords_file), "224",
                                      str(t)]
    kinds["extract"] = extract
    kinds["extract, openslide backend"] = [*extract, "--set", "reader.backend=openslide"]
    names = list(kinds)
    per: dict[str, list[tuple[float, float]]] = {k: [] for k in names}  # (CPU ms per patch, patches per wall s)
    rss: list[float] = []
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]  # rotated: drift must not favour one side
        for kind in order:
            shutil.rmtree(work / "dense", ignore_errors=True)  # deleting a previous 1 GB store is not extraction
            child = run_child(kinds[kind])
            if kind.startswith("extract"):  # the whole command: start-up, imports, mask, reads, writes, finishing
                cpu, wall = child.cpu, child.wall
                if kind == "extract":
                    rss.append(child.rss_mb)
            else:  # the reads alone, timed inside the child
                cpu, wall = (float(v) for v in child.out.split())
            per[kind].append((1000 * cpu / n, n / wall))
        print(f"round {r + 1}: " + " | ".join(f"{k} {per[k][-1][0]:.3f} ms CPU, {per[k][-1][1]:.0f}/s"
                                              for k in names))
    if args.rounds:
        report(per, args.threads, rss)
    if args.codecs:
        codec_sizes(extract, work)
    if args.checksum_rounds:
        checksum_ab(slide, work, base[1::2], args.checksum_rounds)


def threads_vs_processes(slide: Path, work: Path, base: list[str], args: argparse.Namespace) -> None:
    """One `extract` with `--threads` reader threads against `--processes` concurrent `extract --shard i/K` of one
    thread each and their `merge` (the way to use more cores than threads scale to), in rotated rounds: wall and
    CPU seconds (all processes), and whether the merged store's patches equal the single process's."""
    import numpy as np

    k = args.processes
    cmd = [sys.executable, "-m", "layer1_patches", "extract", "--config", "configs/layer1/dense.yaml", "--slide",
           str(slide), "--overwrite", *base]
    per: dict[str, list[tuple[float, float]]] = {"threads": [], "processes": []}
    for r in range(args.rounds):
        for kind in ("threads", "processes") if r % 2 == 0 else ("processes", "threads"):
            out = work / f"tvp_{kind}"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            if kind == "threads":
                cpu = run_child([*cmd, "--out", str(out)]).cpu
            else:
                shard = [*cmd, "--set", "reader.threads=1", "--out", str(out)]  # the last --set wins
                procs = [subprocess.Popen([*shard, "--shard", f"{i}/{k}"], cwd=REPO, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL) for i in range(k)]
                cpu = 0.0
                for proc in procs:
                    _, status, usage = os.wait4(proc.pid, 0)
                    if os.waitstatus_to_exitcode(status) != 0:
                        raise SystemExit("a shard process failed")
                    cpu += usage.ru_utime + usage.ru_stime
                cpu += run_child([sys.executable, "-m", "layer1_patches", "merge", "--slide", str(slide), "--out",
                                  str(out), "--shards", str(k)]).cpu
            per[kind].append((cpu, time.perf_counter() - start))
        print(f"round {r + 1}: one process, {args.threads} threads: {per['threads'][-1][1]:.1f} s wall, "
              f"{per['threads'][-1][0]:.1f} s CPU | {k} shard processes + merge: {per['processes'][-1][1]:.1f} s "
              f"wall, {per['processes'][-1][0]:.1f} s CPU")
    (one,), (merged,) = (work / "tvp_threads").glob("*.h5"), (work / "tvp_processes").glob("*.h5")
    with h5py.File(one) as a, h5py.File(merged) as b:
        same = len(a["patches"]) == len(b["patches"]) and all(
            np.array_equal(a["patches"][i:i + 256], b["patches"][i:i + 256]) for i in range(0, len(a["patches"]), 256))
    wall = [per["processes"][i][1] / per["threads"][i][1] for i in range(args.rounds)]
    print(f"wall, processes / threads: median {median(wall):.2f} ({min(wall):.2f}-{max(wall):.2f}); merged patches "
          f"equal the single process's: {same}")


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def report(per: dict[str, list[tuple[float, float]]], threads: int, rss: list[float]) -> None:
    """Medians over rounds, and the issue-17 ratios, each computed within a round then taken as a median."""
    for kind, rows in per.items():
        cpu, rate = median([c for c, _ in rows]), median([w for _, w in rows])
        print(f"median {kind}: {cpu:.3f} ms CPU per patch ({1000 / cpu:.0f} patches per CPU-second), "
              f"{rate:.0f} patches per wall-second")
    rounds = range(len(per["extract"]))
    limit = [per["extract"][i][0] / per["decode limit 1t"][i][0] for i in rounds]
    cpu_gain = [per[f"read_region {threads}t"][i][0] / per["extract"][i][0] for i in rounds]
    wall_gain = [per["extract"][i][1] / per[f"read_region {threads}t"][i][1] for i in rounds]
    before = [per["extract, openslide backend"][i][0] / per["extract"][i][0] for i in rounds]
    print(f"extract CPU per patch / decode limit (1 thread): median {median(limit):.2f} "
          f"(rounds {min(limit):.2f}-{max(limit):.2f}; target <= 2.0)")
    print(f"extract patches per CPU-second / read_region's ({threads} threads): median {median(cpu_gain):.2f} "
          f"({min(cpu_gain):.2f}-{max(cpu_gain):.2f}; target >= 1.8)")
    print(f"extract patches per wall-second / read_region's ({threads} threads): median {median(wall_gain):.2f} "
          f"({min(wall_gain):.2f}-{max(wall_gain):.2f}; target >= 1.8)")
    print(f"extract with the OpenSlide backend / the default, CPU per patch: median {median(before):.2f} "
          f"({min(before):.2f}-{max(before):.2f})")
    print(f"extract peak RSS: {min(rss):.0f}-{max(rss):.0f} MB (target < 400 MB)")


def codec_sizes(extract: list[str], work: Path) -> None:
    sizes = {}
    for codec in ("lz4", "gzip", "lzf", "none", "jpeg"):
        codec_dir = work / f"codec_{codec}"
        run_child([*extract[:-1], str(codec_dir), "--shard", "0/8", "--set", f"output.codec={codec}"])
        (h5,) = codec_dir.glob("*.h5")
        with h5py.File(h5) as f:
            count = int(f.attrs["n_patches"])
        sizes[codec] = round(h5.stat().st_size / max(count, 1))
    print("bytes per 224 px patch by codec (1/8 of the slide):", json.dumps(sizes))


def checksum_ab(slide: Path, work: Path, overrides: list[str], rounds: int) -> None:
    """extract_slide with and without the store's checksums, alternating which goes first (drift in the
    machine's speed must not favour one side); seconds per 1000 patches, medians and their ratio."""
    per_k: dict[str, list[tuple[float, ...]]] = {"on": [], "off": []}
    for r in range(rounds):
        for kind in ("on", "off") if r % 2 == 0 else ("off", "on"):
            shutil.rmtree(work / "checksums", ignore_errors=True)
            flag = "1" if kind == "on" else "0"
            out = run_child([sys.executable, "-c", CHECKSUM_AB, str(slide), str(work / "checksums"), flag,
                             *overrides]).out
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
