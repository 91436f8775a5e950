"""`python -m layer1_patches COMMAND`: one module per command, each with `register`."""

from __future__ import annotations

from layer1_patches.shared.cli import run, single_threaded_blas

COMMANDS = ("synth", "extract", "index", "submit", "status", "task", "merge")


def main(argv: list[str] | None = None) -> int:
    single_threaded_blas()
    return run("layer1_patches", "CamNet Layer 1: WSI patch extraction into HDF5", COMMANDS, argv)
