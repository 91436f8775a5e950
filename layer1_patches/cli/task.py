"""`task`: what one SLURM array task runs: manifest entry `--index`, whole, as a shard, or the merge."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from layer1_patches.config import load_layer1_config
from layer1_patches.errors import CamnetError
from layer1_patches.extract import ExtractRequest, extract_slide
from layer1_patches.manifest import Manifest
from layer1_patches.merge import merge_shards
from layer1_patches.slurmjobs import TaskState, write_task_state


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("task", help="run one manifest entry (used by the sbatch script)")
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--index", type=int, default=None, help="entry; default $SLURM_ARRAY_TASK_ID")
    p.add_argument("--shard-from-env", action="store_true",
                   help="dense subtask: shard $SLURM_PROCID of the manifest's shard count")
    p.add_argument("--merge", action="store_true", help="merge this entry's finished shards")
    p.set_defaults(func=run)


def _index(args: argparse.Namespace) -> int:
    if args.index is not None:
        return int(args.index)
    raw = os.environ.get("SLURM_ARRAY_TASK_ID", "")
    if not raw.isdigit():
        raise CamnetError("--index not given and SLURM_ARRAY_TASK_ID is not set (submit with --array)")
    return int(raw)


def run(args: argparse.Namespace) -> int:
    manifest = Manifest.load(args.manifest)
    index = _index(args)
    entry = manifest.entry(index, args.manifest)
    out = Path(manifest.out)
    slide = Path(entry.slide)
    job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID", ""))
    lead = os.environ.get("SLURM_PROCID", "0") == "0"  # one state writer per array task

    def record(state: str, error: str = "") -> None:
        if lead or state == "failed":
            write_task_state(out, TaskState(index, entry.slide, state, job, error, time.time()))

    try:
        if args.merge:
            merged = merge_shards(out, slide, manifest.shards)
            record("done")
            print(f"merged {manifest.shards} shards into {merged}")
            return 0
        record("running")
        cfg = load_layer1_config(Path(manifest.config), list(manifest.overrides))
        shard = None
        if args.shard_from_env and manifest.shards > 1:
            shard = (int(os.environ.get("SLURM_PROCID", "0")), manifest.shards)
        annotation = Path(entry.annotation) if entry.annotation else None
        # The array index, not the job id, seeds random sampling: a resubmitted task redraws the same patches.
        result = extract_slide(ExtractRequest(slide, out, cfg, annotation, shard, task_seed=index))
        if shard is None:
            record("done")
        print(f"{result.slide}: {result.status}, patches {result.counts}, rejects {result.rejects}")
        return 0
    except CamnetError as err:
        record("failed", str(err))
        raise
