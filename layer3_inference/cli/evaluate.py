"""`evaluate`: finished heatmaps against annotations, per split; cohort table, summary and plots."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from layer1_patches.shared.cli import add_overrides
from layer3_inference.config import load_evaluate_config


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "evaluate", help="pixel AUC, Dice/IoU, slide AUC and Camelyon16 FROC of finished heatmaps, per split",
        description="Reads HEATMAPS/<stem>/ (from `heatmap`) and ANNOTATIONS/<stem>.xml|.geojson; writes "
                    "OUT/cohort.csv, OUT/summary.json and per split OUT/froc_<split>.png and "
                    "OUT/slide_roc_<split>.png. Each slide's split comes from --index; the training split is "
                    "never pooled with the others.")
    p.add_argument("--config", type=Path, help="Layer 3 evaluate YAML (configs/layer3/evaluate.yaml)")
    add_overrides(p, "froc.nms_radius_um=200")
    p.add_argument("--heatmaps", type=Path, required=True, help="the heatmap command's --out folder")
    p.add_argument("--slides", nargs="+", metavar="STEM",
                   help="evaluate only these slides' outputs (HEATMAPS/<stem>/; default: every finished one)")
    p.add_argument("--annotations", type=Path, required=True, help="folder of <slide stem>.xml/.geojson")
    p.add_argument("--index", type=Path, help="Layer 1's index.json: each slide's split (train/val/test); "
                                               "without it every slide is in split 'unknown', with a warning")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_evaluate_config(args.config, args.overrides)
    from layer3_inference.evaluate import evaluate_cohort
    from layer3_inference.summaries import to_json

    print(to_json(evaluate_cohort(args.heatmaps, args.annotations, args.out, cfg, args.index, args.slides)), end="")
    return 0
