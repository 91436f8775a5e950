"""`extract`: one slide (a SLURM array task's unit of work) or many slides locally."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from layer1_patches.config import load_layer1_config
from layer1_patches.extract import ExtractRequest, extract_slide, parse_shard
from layer1_patches.runner import run_many, summary_table
from layer1_patches.shared.cli import add_overrides
from layer1_patches.shared.cohort import discover_slides, pair_annotations
from layer1_patches.shared.errors import CamnetError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "extract", help="extract patches from slides into HDF5 stores",
        description="Writes OUT/<slide stem>.h5 per slide (OUT/<stem>.shard-i-of-K.h5 with --shard).")
    p.add_argument("--config", type=Path, required=True, help="Layer 1 YAML config (configs/layer1/*.yaml)")
    add_overrides(p, "sampling.seed=3")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--slide", type=Path, help="one slide")
    which.add_argument("--slides", nargs="+", metavar="PATH_OR_GLOB", help="many slides: folders, globs or files")
    p.add_argument("--annotation", type=Path, help="ASAP XML or GeoJSON for --slide")
    p.add_argument("--annotations", type=Path, help="folder of <slide stem>.xml/.geojson for --slides")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--shard", help="dense only: write shard i of K (e.g. 0/4) of this slide's patches")
    p.add_argument("--task-seed", type=int, default=0, help="added to sampling.seed (SLURM array task id)")
    p.add_argument("--workers", type=int, default=1, help="slides processed at once with --slides")
    p.add_argument("--overwrite", action="store_true", help="redo finished outputs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_layer1_config(args.config, args.overrides)
    shard = parse_shard(args.shard) if args.shard else None
    if args.slides and (shard or args.annotation):
        raise CamnetError("--shard and --annotation go with --slide, not --slides")
    if args.workers < 1:
        raise CamnetError(f"--workers {args.workers}: must be at least 1")
    base = ExtractRequest(args.slide or Path(), args.out, cfg, args.annotation, shard, args.overwrite,
                          args.task_seed)
    if args.slide is not None:
        result = extract_slide(base)
        print(summary_table([result]))
        return 0
    slides = discover_slides(args.slides)
    if not slides:
        raise CamnetError(f"no slides found in {' '.join(args.slides)}")
    results = run_many(base, pair_annotations(slides, args.annotations), args.workers)
    print(summary_table(results))
    return 1 if any(r.status in ("failed", "busy") for r in results) else 0
