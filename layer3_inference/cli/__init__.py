"""`python -m layer3_inference COMMAND`: one module per command, each with `register`."""

from __future__ import annotations

import os

from layer1_patches.shared.cli import run

COMMANDS = ("heatmap", "evaluate", "explain", "pipeline")


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter would bury the one error line users need
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return run("layer3_inference", "CamNet Layer 3: whole-slide heatmaps, QuPath output, evaluation",
               COMMANDS, argv)
