"""`python -m layer2_training COMMAND`: one module per command, each with `register`."""

from __future__ import annotations

import os

from layer1_patches.shared.cli import run

COMMANDS = ("train", "fetch_weights")


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter would bury the one error line users need
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return run("layer2_training", "CamNet Layer 2: CNN training on HDF5 patches, with Horovod", COMMANDS, argv)
