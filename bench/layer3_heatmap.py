"""Layer 3 throughput: end-to-end heatmap inference vs the model alone on in-memory batches, in one run.

    .venv/bin/python bench/layer3_heatmap.py [--size 30000] [--patch 128] [--mpp 1.0] [--batch 64]
                                             [--threads 1 2 4] [--model-batches 40]

Writes (once, cached in bench_out/) a synthetic SIZE x SIZE slide and a run dir holding an untrained
MobileNetV2 built by Layer 2 (random weights: speed does not depend on them). Then, per reader-thread count,
runs the whole per-slide pipeline (tissue mask, grid, background reading, model, all outputs) and prints
patches/s of the inference loop, seconds per slide, and the ratio of end-to-end to model-only patches/s
(target >= 0.8: reading hidden behind compute). Ratios come from one run because the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from layer1_patches.shared.typedconfig import from_mapping  # noqa: E402
from layer1_patches.synth import write_cohort  # noqa: E402
from layer3_inference.config import HeatmapConfig  # noqa: E402


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


def model_only(model_fn: Any, batches: list[np.ndarray], rounds: int) -> float:
    model_fn(batches[0])  # traced already by the end-to-end runs; this only warms caches
    start = time.perf_counter()
    for _ in range(rounds):
        for b in batches:
            model_fn(b)
    return rounds * len(batches) * len(batches[0]) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=30000)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--mpp", type=float, default=1.0, help="working um/px of the model")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--model-batches", type=int, default=40)
    args = ap.parse_args()
    out = REPO / "bench_out"
    t0 = time.perf_counter()
    slide = write_cohort(out / "layer3_slide", 1, args.size, 11)[0]
    print(f"slide {slide} ready in {time.perf_counter() - t0:.0f} s", flush=True)
    run_dir = make_run(out / f"layer3_run_p{args.patch}_mpp{args.mpp:g}", args.patch, args.mpp)

    from layer1_patches.extract import PatchReader
    from layer1_patches.masks import masker_from_config
    from layer1_patches.slide import Slide
    from layer3_inference.grid import plan_grid
    from layer3_inference.infer import HeatmapRequest, Ranks, compile_model, heatmap_slide
    from layer3_inference.model import load_model, read_spec, working_resolution

    spec = read_spec(run_dir)
    model_fn = compile_model(load_model(spec), spec.patch_size)
    rows = []
    for threads in args.threads:
        cfg = from_mapping(HeatmapConfig, {"reader": {"threads": threads, "batch_size": args.batch, "prefetch": 4},
                                           "output": {"geojson_tiles": True}})
        req = HeatmapRequest(slide, out / f"layer3_heatmaps_t{threads}", cfg, overwrite=True)
        r = heatmap_slide(req, spec, model_fn, Ranks())
        t = r.times
        rows.append({"threads": threads, "patches": r.patches, "slide_seconds": round(r.seconds, 1),
                     "infer_seconds": round(t["infer_s"], 1), "model_seconds": round(t["model_s"], 1),
                     "wait_seconds": round(t["wait_s"], 1), "e2e_patches_per_s": round(r.patches / t["infer_s"], 1)})
        print(json.dumps(rows[-1]), flush=True)
    # model-only: the same compiled model on batches of the same slide already in memory
    with Slide(slide) as s:
        res = working_resolution(s, spec, cfg.match)
        grid = plan_grid(s.dimensions, res, spec.patch_size, masker_from_config(cfg.tissue)(s), cfg.grid, str(slide))
        reader = PatchReader(s, res, spec.patch_size, [])
        n = min(len(grid) // args.batch, args.model_batches)
        batches = [np.stack([reader(c)[0] for c in grid.coords[i * args.batch:(i + 1) * args.batch]])
                   for i in range(n)]
    model_rate = model_only(model_fn, batches, 1)
    print(json.dumps({"model_only_patches_per_s": round(model_rate, 1), "batch": args.batch,
                      "patch": args.patch, "working_mpp": args.mpp,
                      "ratio_e2e_over_model": {r["threads"]: round(r["e2e_patches_per_s"] / model_rate, 3)
                                               for r in rows},
                      "cpus": os.cpu_count()}), flush=True)


if __name__ == "__main__":
    main()
