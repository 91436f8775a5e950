"""`demo`: the main job on generated + bundled data (what `make demo` runs)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from layer1_patches.config import load_layer1_config
from layer1_patches.extract import ExtractRequest
from layer1_patches.index import build_index
from layer1_patches.runner import pair_annotations, run_many, summary_table

REPO = Path(__file__).resolve().parents[2]
BUNDLED_SLIDE = REPO / "tests" / "data" / "CMU-1-Small-Region.svs"


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("demo", help="synthetic cohort + bundled slide through Layer 1")
    p.add_argument("--out", type=Path, default=Path("demo_out"))
    p.add_argument("--n-slides", type=int, default=4)
    p.add_argument("--size", type=int, default=8192, help="synthetic slide side in pixels")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--config", type=Path, default=REPO / "configs" / "layer1" / "random.yaml")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from layer1_patches.synth import write_cohort

    start = time.monotonic()
    slides_dir = args.out / "slides"
    print(f"1/3 synthetic cohort: {args.n_slides} slides of {args.size} px in {slides_dir}", flush=True)
    slides = write_cohort(slides_dir, args.n_slides, args.size, seed=0)
    slides.append(BUNDLED_SLIDE)
    cfg = load_layer1_config(args.config, ["sampling.random.per_class=100"])
    patches_dir = args.out / "patches"
    print(f"2/3 Layer 1 extraction ({args.config.name}) into {patches_dir}", flush=True)
    base = ExtractRequest(Path(), patches_dir, cfg)
    results = run_many(base, pair_annotations(slides, slides_dir), args.workers)
    print(summary_table(results))
    index_path = patches_dir / "index.json"
    print(f"3/3 dataset index {index_path}", flush=True)
    index = build_index([patches_dir], index_path, "patient", {"train": 0.6, "val": 0.2, "test": 0.2})
    print(json.dumps(index.splits(), indent=1))
    print(f"\ndemo finished in {time.monotonic() - start:.0f} s")
    print(f"  slides:        {slides_dir} (+ bundled {BUNDLED_SLIDE.name}, no annotation: normal only)")
    print(f"  patch stores:  {patches_dir}/*.h5")
    print(f"  dataset index: {index_path}")
    return 1 if any(r.status == "failed" for r in results) else 0
