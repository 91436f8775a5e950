"""`submit`: one SLURM array task per slide, with the array size and throttle set from the cohort."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from layer1_patches.config import load_layer1_config
from layer1_patches.shared.cli import add_overrides
from layer1_patches.shared.cohort import pair_annotations, require_slides
from layer1_patches.shared.errors import CamnetError
from layer1_patches.shared.manifest import Manifest
from layer1_patches.shared.slurm import LAYER1_SCRIPT, array_sbatch_args, record_submission, sbatch


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "submit", help="submit Layer 1 as a SLURM array (one task per slide)",
        description="Checks the config, writes OUT/manifest.json (one entry per slide, with its annotation) and "
                    "submits one sbatch array over it; follow it with `status --manifest OUT/manifest.json`.")
    p.add_argument("--config", type=Path, required=True, help="Layer 1 YAML config (configs/layer1/*.yaml)")
    add_overrides(p, "sampling.seed=3")
    p.add_argument("--slides", nargs="+", required=True, metavar="PATH_OR_GLOB",
                   help="slides: folders, globs or files")
    p.add_argument("--annotations", type=Path, help="folder of <slide stem>.xml/.geojson")
    p.add_argument("--out", type=Path, required=True, help="output folder (stores, manifest.json, logs/)")
    p.add_argument("--max-parallel", type=int, default=None, help="array throttle %%M (default: no limit)")
    p.add_argument("--shards", type=int, default=1, help="dense: K parallel subtasks per slide (srun -n K)")
    p.add_argument("--dependency", help="e.g. afterok:1234 (passed to sbatch)")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="extra sbatch option, e.g. --sbatch-arg=--partition=gpu (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="write the manifest and print the sbatch command only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_layer1_config(args.config, args.overrides)  # fail here, not in N array tasks
    if args.shards < 1 or (args.shards > 1 and cfg.sampling.mode != "dense"):
        raise CamnetError(f"--shards {args.shards}: must be 1, or above 1 with sampling.mode: dense")
    if args.max_parallel is not None and args.max_parallel < 1:
        raise CamnetError(f"--max-parallel {args.max_parallel}: must be at least 1")
    slides = require_slides(args.slides)
    pairs = pair_annotations(slides, args.annotations)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.for_slides(str(args.config.resolve()), str(out), pairs, tuple(args.overrides), args.shards)
    path = manifest.save(out / "manifest.json")
    if args.annotations and manifest.unpaired:
        print(f"{len(manifest.unpaired)} slides without annotation (normal patches only):")
        for slide in manifest.unpaired:
            print(f"  {slide}")
    extra = [*args.sbatch_arg, *([f"--dependency={args.dependency}"] if args.dependency else [])]
    command = array_sbatch_args(LAYER1_SCRIPT, path, manifest, list(range(len(pairs))), args.max_parallel, extra)
    if args.dry_run:
        print("sbatch " + " ".join(command))
        return 0
    job = sbatch(command, cwd=Path(os.getcwd()))
    record_submission(out, job, list(range(len(pairs))))
    print(f"submitted job {job}: {len(pairs)} slides, manifest {path}, logs {out / 'logs'}")
    print(job)
    return 0
