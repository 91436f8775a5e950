"""`heatmap`: tumour-probability heatmaps for one slide (a SLURM array task's unit) or many slides.

Runs as one process, or as several ranks under horovodrun / mpirun / srun: each slide's grid is split
between the ranks and rank 0 writes.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from layer1_patches.shared.cli import add_overrides
from layer1_patches.shared.cohort import check_stems, discover_slides
from layer1_patches.shared.errors import CamnetError
from layer3_inference.config import load_heatmap_config
from layer3_inference.model import read_spec

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "heatmap", help="predict tumour-probability heatmaps with a trained model",
        description="Writes OUT/<slide stem>/ (probabilities.h5, grid.npy, heatmap.png, overlay.png, "
                    "<stem>.geojson for QuPath, summary.json) per slide; finished slides are skipped.")
    p.add_argument("--config", type=Path, required=True, help="Layer 3 heatmap YAML (configs/layer3/heatmap.yaml)")
    add_overrides(p, "reader.threads=4")
    p.add_argument("--model", type=Path, required=True, metavar="RUN_DIR", help="Layer 2 run directory")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--slide", type=Path, help="one slide")
    which.add_argument("--slides", nargs="+", metavar="PATH_OR_GLOB", help="many slides: folders, globs or files")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="redo finished slides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_heatmap_config(args.config, args.overrides)
    spec = read_spec(args.model)  # run-dir errors before TensorFlow loads
    slides = [args.slide] if args.slide is not None else discover_slides(args.slides)
    if not slides:
        raise CamnetError(f"no slides found in {' '.join(args.slides)}")
    check_stems(slides)  # before TensorFlow loads: a slide named `..tif` would name OUT's parent
    if args.slide is not None and args.slide.is_dir():
        raise CamnetError(f"slide {args.slide}: is a directory, not a slide file (a folder of slides goes to --slides)")
    from layer3_inference.infer import heatmap_cohort

    run = heatmap_cohort(spec, slides, args.out, cfg, args.overwrite, strict=args.slide is not None)
    if run.rank == 0:
        print(run.table())
    return 1 if run.failed else 0
