"""`task`: what one SLURM array task runs: manifest entry `--index`, whole, as a shard, or the merge."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from layer1_patches.config import load_layer1_config
from layer1_patches.extract import ExtractRequest, extract_slide
from layer1_patches.merge import merge_shards
from layer1_patches.shared.manifest import Manifest
from layer1_patches.shared.slurm import array_task_index, recorded_task


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "task", help="run one manifest entry (used by the sbatch script)",
        description="Extracts the slide of one manifest entry (or one dense shard of it, or merges its shards), "
                    "with the manifest's config and overrides; what each SLURM array task of `submit` runs.")
    p.add_argument("--manifest", type=Path, required=True, help="OUT/manifest.json written by submit")
    p.add_argument("--index", type=int, default=None, help="entry; default $SLURM_ARRAY_TASK_ID")
    p.add_argument("--shard-from-env", action="store_true",
                   help="dense subtask: shard $SLURM_PROCID of the manifest's shard count")
    p.add_argument("--merge", action="store_true", help="merge this entry's finished shards")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    manifest = Manifest.load(args.manifest)
    index = array_task_index(args.index)
    entry = manifest.entry(index, args.manifest)
    out = Path(manifest.out)
    slide = Path(entry.slide)
    if args.merge:
        with recorded_task(out, index, entry.slide):
            merged = merge_shards(out, slide, manifest.shards)
        print(f"merged {manifest.shards} shards into {merged}")
        return 0
    shard = None
    if args.shard_from_env and manifest.shards > 1:
        shard = (int(os.environ.get("SLURM_PROCID", "0")), manifest.shards)
    # a shard's task is done only when the merge step has run
    with recorded_task(out, index, entry.slide, final=shard is None):
        cfg = load_layer1_config(Path(manifest.config), list(manifest.overrides))
        annotation = Path(entry.annotation) if entry.annotation else None
        # The array index, not the job id, seeds random sampling: a resubmitted task redraws the same patches.
        result = extract_slide(ExtractRequest(slide, out, cfg, annotation, shard, task_seed=index))
    print(f"{result.slide}: {result.status}, patches {result.counts}, rejects {result.rejects}")
    return 0
