"""`heatmap`: tumour-probability heatmaps for one slide (a SLURM array task's unit) or many slides.

Runs as one process, or as several ranks under horovodrun / mpirun / srun: each slide's grid is split
between the ranks and rank 0 writes.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from layer1_patches.cli.dispatch import add_overrides
from layer1_patches.errors import CamnetError
from layer1_patches.runner import discover_slides
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


def table(results: list[Any]) -> str:
    header = f"{'slide':32} {'status':8} {'patches':>8} {'score':>7} {'seconds':>8}  note"
    lines = [header, "-" * len(header)]
    for r in results:
        score = f"{r.score:.3f}" if r.score is not None else "-"
        lines.append(f"{r.slide[:32]:32} {r.status:8} {r.patches:>8} {score:>7} {r.seconds:>8.1f}  {r.error}")
    ok = sum(r.status != "failed" for r in results)
    lines.append(f"{ok}/{len(results)} slides ok")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    cfg = load_heatmap_config(args.config, args.overrides)
    spec = read_spec(args.model)  # run-dir errors before TensorFlow loads
    slides = [args.slide] if args.slide is not None else discover_slides(args.slides)
    if not slides:
        raise CamnetError(f"no slides found in {' '.join(args.slides)}")
    from layer3_inference.infer import HeatmapRequest, HeatmapResult, compile_model, heatmap_slide, init_ranks
    from layer3_inference.model import load_model

    ranks = init_ranks()
    model_fn = compile_model(load_model(spec), spec.patch_size)
    results: list[HeatmapResult] = []
    for i, slide in enumerate(slides):
        req = HeatmapRequest(Path(slide), args.out, cfg, args.overwrite)
        if args.slide is not None:
            results.append(heatmap_slide(req, spec, model_fn, ranks))  # errors: one line, exit 2
            continue
        try:
            results.append(heatmap_slide(req, spec, model_fn, ranks))
        except CamnetError as err:  # one bad slide does not stop the cohort
            log.error("%s", err)
            results.append(HeatmapResult(Path(slide).stem, "", "failed", error=str(err)))
        log.info("[%d/%d] %s %s", i + 1, len(slides), results[-1].slide, results[-1].status)
    if ranks.rank == 0:
        print(table(results))
    return 1 if any(r.status == "failed" for r in results) else 0
