"""One heatmap array task of a JSON manifest: what slurm/layer3_heatmap.sbatch runs for `*.json` manifests,
and what the local runner runs per slide.

The slide path is read from JSON by Python, so names with spaces, quotes or `$(...)` never pass through a
shell; the task records its state like a Layer 1 task (OUT/.camnet/tasks/<i>.json), so `pipeline status` reads
both arrays the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

from layer1_patches.shared.manifest import Manifest
from layer1_patches.shared.slurm import array_task_index, recorded_task
from layer3_inference.config import load_heatmap_config
from layer3_inference.model import read_spec


def heatmap_task(manifest_path: Path, model: Path, index: int | None, extra: list[str]) -> int:
    manifest = Manifest.load(manifest_path)
    i = array_task_index(index)
    entry = manifest.entry(i, manifest_path)
    out = Path(manifest.out)
    # reader threads follow the CPUs SLURM gave the task unless the manifest's overrides say otherwise
    threads = [f"reader.threads={os.environ['SLURM_CPUS_PER_TASK']}"] if "SLURM_CPUS_PER_TASK" in os.environ else []
    with recorded_task(out, i, entry.slide):
        cfg = load_heatmap_config(Path(manifest.config), [*threads, *manifest.overrides, *extra])
        spec = read_spec(model)  # run-dir errors before TensorFlow loads
        from layer3_inference.infer import heatmap_cohort

        run = heatmap_cohort(spec, [Path(entry.slide)], out, cfg, strict=True)
    if run.rank == 0:
        print(run.table())
    return 1 if run.failed else 0
