"""`train`: one process, or one rank of the configured engine: Horovod under horovodrun / mpirun / srun
--mpi=pmix, tf.distribute under srun or with TF_CONFIG."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from layer1_patches.shared.cli import add_overrides
from layer2_training.config import load_layer2_config


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "train", help="train a tumour/normal patch classifier",
        description="Trains into output.run_dir; rerunning the same command resumes from the last "
                    "checkpoint.")
    p.add_argument("--config", type=Path, required=True, help="Layer 2 YAML config (configs/layer2/*.yaml)")
    add_overrides(p, "schedule.lr=0.001")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = load_layer2_config(args.config, args.overrides)  # config errors before TensorFlow loads
    from layer2_training import distributed, train

    try:
        return train.run(cfg, distributed.init(cfg.distributed))
    except distributed.ChiefFailed as stop:
        # rank 0 prints the one error line; a second one per rank would bury it in a many-rank job's log
        print(stop, file=sys.stderr)
        return 2
