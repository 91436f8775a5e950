"""One heatmap array task of a JSON manifest: what slurm/layer3_heatmap.sbatch runs for `*.json` manifests.

The slide path is read from JSON by Python, so names with spaces, quotes or `$(...)` never pass through a
shell; the task records its state like a Layer 1 task (OUT/.camnet/tasks/<i>.json), so `pipeline status` reads
both arrays the same way.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from layer1_patches.errors import CamnetError
from layer1_patches.manifest import Manifest
from layer1_patches.slurmjobs import TaskState, write_task_state


def task_index(given: int | None) -> int:
    if given is not None:
        return given
    raw = os.environ.get("SLURM_ARRAY_TASK_ID", "")
    if not raw.isdigit():
        raise CamnetError("--index not given and SLURM_ARRAY_TASK_ID is not set (submit with --array)")
    return int(raw)


def heatmap_task(manifest_path: Path, model: Path, index: int | None, extra: list[str]) -> int:
    from layer3_inference.cli import heatmap

    manifest = Manifest.load(manifest_path)
    i = task_index(index)
    entry = manifest.entry(i, manifest_path)
    out = Path(manifest.out)
    job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID", ""))
    lead = os.environ.get("SLURM_PROCID", "0") == "0"  # one state writer when ranks split a slide

    def record(state: str, error: str = "") -> None:
        if lead:
            write_task_state(out, TaskState(i, entry.slide, state, job, error, time.time()))

    # reader threads follow the CPUs SLURM gave the task unless the manifest's overrides say otherwise
    threads = [f"reader.threads={os.environ['SLURM_CPUS_PER_TASK']}"] if "SLURM_CPUS_PER_TASK" in os.environ else []
    args = argparse.Namespace(config=Path(manifest.config), overrides=[*threads, *manifest.overrides, *extra],
                              model=model, slide=Path(entry.slide), slides=None, out=out, overwrite=False)
    record("running")
    try:
        status = heatmap.run(args)
    except CamnetError as err:
        record("failed", str(err))
        raise
    except BaseException as err:
        record("failed", f"{type(err).__name__}: {err}")
        raise
    record("done" if status == 0 else "failed", "" if status == 0 else f"exit status {status}")
    return status
