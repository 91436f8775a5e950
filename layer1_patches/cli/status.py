"""`status`: finished, running, pending, failed and missing slides of a submission; resubmit the failed.

A slide whose queue state squeue could not give is `unknown`; `--resubmit` then submits nothing, since a
slide that looks failed or missing may still be pending, and a second task would run on it.
"""

from __future__ import annotations

import argparse
import os
from collections import Counter
from pathlib import Path
from typing import Any

from layer1_patches.extract import output_path
from layer1_patches.shared.errors import CamnetError
from layer1_patches.shared.manifest import Manifest
from layer1_patches.shared.slurm import LAYER1_SCRIPT, array_sbatch_args, cohort_status, record_submission, sbatch
from layer1_patches.store import is_complete


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "status", help="per-slide state of a submitted array",
        description="Lists each slide of a `submit` as finished, running, pending, failed, missing or unknown "
                    "(squeue did not answer) and a summary; exit 1 while a slide failed or is unknown. "
                    "--resubmit submits the failed and missing slides again.")
    p.add_argument("--manifest", type=Path, required=True, help="OUT/manifest.json written by submit")
    p.add_argument("--resubmit", action="store_true",
                   help="resubmit failed and missing slides only (refused while squeue does not answer)")
    p.add_argument("--max-parallel", type=int, default=None, help="array throttle %%M of the resubmission")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="extra sbatch option of the resubmission (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    manifest = Manifest.load(args.manifest)
    out = Path(manifest.out)
    slides = [e.slide for e in manifest.entries]
    finished = [is_complete(output_path(out, Path(s), None)) for s in slides]
    rows = cohort_status(out, slides, finished)
    for row in rows:
        detail = f"  {row.detail}" if row.detail else ""
        print(f"{row.index:5d}  {row.status:9s} {Path(row.slide).name}{detail}")
    counts = Counter(r.status for r in rows)
    print("summary: " + ", ".join(f"{counts[k]} {k}"
                                  for k in ("finished", "running", "pending", "failed", "missing", "unknown")))
    if not args.resubmit:  # 0 only when nothing failed and SLURM could say where every slide stands
        return 0 if counts["failed"] == 0 and counts["unknown"] == 0 else 1
    unknown = next((r for r in rows if r.status == "unknown"), None)
    if unknown is not None:
        raise CamnetError(f"{args.manifest}: cannot tell which slides are still queued ({unknown.detail}); "
                          "nothing was resubmitted")
    redo = [r.index for r in rows if r.status in ("failed", "missing")]
    if redo:
        command = array_sbatch_args(LAYER1_SCRIPT, args.manifest.resolve(), manifest, redo, args.max_parallel,
                                    args.sbatch_arg)
        job = sbatch(command, cwd=Path(os.getcwd()))
        record_submission(out, job, redo)
        print(f"resubmitted {len(redo)} slides as job {job}: indices {redo}")
    return 0  # the failed slides are resubmitted: nothing is left for the caller to act on
