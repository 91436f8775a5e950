"""Layer 3 throughput: end-to-end heatmap inference vs the model alone on in-memory batches, interleaved.

    .venv/bin/python bench/layer3_heatmap.py [--size 30000] [--patch 128] [--mpp 1.0] [--batch 64]
                                             [--threads 1 2 4] [--model-batches 40] [--rounds 5]

Writes (once, cached in bench_out/) a synthetic SIZE x SIZE slide and a run dir holding an untrained
MobileNetV2 built by Layer 2 (random weights: speed does not depend on them). Then, for each of ROUNDS rounds
and each reader-thread count, runs back to back the whole per-slide pipeline (tissue mask, grid, background
reading, model, all outputs) and the same compiled model on batches of the same slide already in memory, in
rotating order (end-to-end first in even rounds, model-only first in odd ones), so that both sides of each
ratio see the same state of this shared machine. Per pair it prints the patches/s of the inference loop and
of the model alone, their ratio, and the process CPU milliseconds per patch of each (`time.process_time`
counts every thread of this process: TensorFlow's and the readers'; the end-to-end figure covers the whole
slide, mask and outputs included) with `cpu_ratio`, model CPU over end-to-end CPU per patch (the same ratio
in patches per CPU-second, steadier than wall time on a shared machine). At the end: the median ratio per
thread count (target >= 0.9: reading hidden behind compute). Nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from layer1_patches.shared.typedconfig import from_mapping  # noqa: E402
from layer1_patches.synth import write_cohort  # noqa: E402
from layer3_inference.config import HeatmapConfig  # noqa: E402

TARGET_RATIO = 0.9


def make_run(run_dir: Path, patch: int, mpp: float) -> Path:
    if (run_dir / "model.json").is_file():
        return run_dir
    from layer2_training.config import HeadConfig, ModelConfig
    from layer2_training.model import build_model

    model = build_model(ModelConfig(backbone="mobilenetv2", head=HeadConfig(dropout=0.0)), patch, patch, None, None)
    (run_dir / "export").mkdir(parents=True, exist_ok=True)
    model.save(str(run_dir / "export" / "model.keras"))
    from layer2_training.sidecar import SIDECAR, ModelSidecar

    sidecar = ModelSidecar(model_file="export/model.keras", patch_size=patch, working_mpp=mpp, level=0,
                           threshold=0.5, backbone="mobilenetv2", input_size=patch, config_hash="bench")
    (run_dir / SIDECAR).write_text(json.dumps(sidecar.to_dict(), indent=1))
    return run_dir


@dataclass(frozen=True)
class Timing:
    patches: int
    wall_s: float  # of the part whose patches/s is compared: the inference loop, or the model calls
    cpu_s: float  # process CPU of the whole measured call

    @property
    def rate(self) -> float:
        return self.patches / self.wall_s

    @property
    def cpu_ms_per_patch(self) -> float:
        return 1000.0 * self.cpu_s / self.patches


def model_only(model_fn: Any, batches: list[np.ndarray]) -> Timing:
    cpu0, start = time.process_time(), time.perf_counter()
    for b in batches:
        model_fn(b)
    wall = time.perf_counter() - start
    return Timing(len(batches) * len(batches[0]), wall, time.process_time() - cpu0)


def end_to_end(run: Callable[[], Any]) -> tuple[Timing, Any]:
    """`run()` is one `heatmap_slide`; its own `infer_s` is the wall time compared with the model alone."""
    cpu0 = time.process_time()
    r = run()
    return Timing(r.patches, r.times["infer_s"], time.process_time() - cpu0), r


def pair_order(round_no: int) -> tuple[str, str]:
    # alternating which side runs first cancels the drift within a pair (warm caches, a neighbour's load)
    return ("e2e", "model") if round_no % 2 == 0 else ("model", "e2e")


def pair_row(round_no: int, threads: int, e2e: Timing, model: Timing, r: Any) -> dict[str, Any]:
    return {"round": round_no, "threads": threads, "order": "/".join(pair_order(round_no)),
            "e2e_patches_per_s": round(e2e.rate, 1), "model_patches_per_s": round(model.rate, 1),
            "ratio": round(e2e.rate / model.rate, 3),
            "e2e_cpu_ms_per_patch": round(e2e.cpu_ms_per_patch, 2),
            "model_cpu_ms_per_patch": round(model.cpu_ms_per_patch, 2),
            "cpu_ratio": round(model.cpu_ms_per_patch / e2e.cpu_ms_per_patch, 3),
            "slide_seconds": round(r.seconds, 1), "wait_seconds": round(r.times["wait_s"], 2)}


def summary(rows: list[dict[str, Any]], threads: list[int]) -> dict[str, Any]:
    def med(t: int, key: str) -> float:
        return statistics.median(row[key] for row in rows if row["threads"] == t)

    ratios = {t: round(med(t, "ratio"), 3) for t in threads}
    return {"median_ratio_e2e_over_model": ratios,
            "ratio_range": {t: [min(r["ratio"] for r in rows if r["threads"] == t),
                                max(r["ratio"] for r in rows if r["threads"] == t)] for t in threads},
            "median_e2e_cpu_ms_per_patch": {t: round(med(t, "e2e_cpu_ms_per_patch"), 2) for t in threads},
            "median_model_cpu_ms_per_patch": {t: round(med(t, "model_cpu_ms_per_patch"), 2) for t in threads},
            "median_cpu_ratio": {t: round(med(t, "cpu_ratio"), 3) for t in threads},
            "target": TARGET_RATIO, "target_met": {t: v >= TARGET_RATIO for t, v in ratios.items()}}


def memory_batches(slide: Path, spec: Any, cfg: HeatmapConfig, batch: int, limit: int) -> tuple[list[np.ndarray], str]:
    """Up to `limit` batches of the slide's own grid, read once as the pipeline reads them (`open_source`): what
    the model sees, minus the reading; and the name of the reader used."""
    from layer1_patches.masks import masker_from_config
    from layer1_patches.reading import open_source
    from layer1_patches.slide import Slide
    from layer3_inference.grid import plan_grid
    from layer3_inference.model import working_resolution

    with Slide(slide) as s:
        res = working_resolution(s, spec, cfg.match)
        grid = plan_grid(s.dimensions, res, spec.patch_size, masker_from_config(cfg.tissue)(s), cfg.grid, str(slide))
        source = open_source(s, res, spec.patch_size, [])
        n = min(len(grid) // batch, limit)
        patches = [p for p, _ in source.patches(grid.coords[:n * batch], 1, 2 * batch)]
        return [np.stack(patches[i * batch:(i + 1) * batch]) for i in range(n)], source.name


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--size", type=int, default=30000)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--mpp", type=float, default=1.0, help="working um/px of the model")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--model-batches", type=int, default=40,
                    help="in-memory batches per model-only measurement (at most the slide's grid)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved end-to-end/model-only pairs per thread count")
    args = ap.parse_args()
    for name in ("size", "patch", "batch", "model_batches", "rounds"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if min(args.threads) < 1:
        ap.error(f"--threads must all be at least 1, got {args.threads}")
    return args


def main() -> None:
    args = parse_args()
    out = REPO / "bench_out"
    t0 = time.perf_counter()
    slide = write_cohort(out / f"layer3_slide_{args.size}", 1, args.size, 11)[0]
    print(f"slide {slide} ready in {time.perf_counter() - t0:.0f} s", flush=True)
    run_dir = make_run(out / f"layer3_run_p{args.patch}_mpp{args.mpp:g}", args.patch, args.mpp)

    from layer3_inference.infer import HeatmapRequest, Ranks, compile_model, heatmap_slide
    from layer3_inference.model import load_model, read_spec

    spec = read_spec(run_dir)
    model_fn = compile_model(load_model(spec), spec.patch_size)
    cfgs = {t: from_mapping(HeatmapConfig, {"reader": {"threads": t, "batch_size": args.batch, "prefetch": 4},
                                            "output": {"geojson_tiles": True}}) for t in args.threads}
    batches, reader = memory_batches(slide, spec, cfgs[args.threads[0]], args.batch, args.model_batches)
    if not batches:
        sys.exit(f"error: {slide}: fewer than --batch {args.batch} tissue patches, nothing to time")
    model_fn(batches[0])  # traces the graph here, so that neither side of the first pair pays for it
    print(json.dumps({"batch": args.batch, "patch": args.patch, "working_mpp": args.mpp, "rounds": args.rounds,
                      "reader": reader, "model_only_patches": len(batches) * args.batch,
                      "cpus": os.cpu_count()}), flush=True)
    rows = []
    for round_no in range(args.rounds):
        for threads in args.threads:
            req = HeatmapRequest(slide, out / f"layer3_heatmaps_t{threads}", cfgs[threads], overwrite=True)
            timed: dict[str, Any] = {}
            for side in pair_order(round_no):
                if side == "e2e":
                    timed["e2e"], timed["result"] = end_to_end(partial(heatmap_slide, req, spec, model_fn, Ranks()))
                else:
                    timed["model"] = model_only(model_fn, batches)
            rows.append(pair_row(round_no, threads, timed["e2e"], timed["model"], timed["result"]))
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps(summary(rows, args.threads)), flush=True)


if __name__ == "__main__":
    main()
