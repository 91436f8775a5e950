"""`fetch-weights`: download ImageNet weights into a Keras cache, on a machine with internet."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from layer2_training.weights import BACKBONES, cache_root, fetch


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "fetch-weights", help="pre-fetch ImageNet weights (login node)",
        description="Writes CACHE/models/<keras file name>; train with model.weights_cache: CACHE "
                    "(or KERAS_HOME=CACHE).")
    p.add_argument("--backbone", choices=sorted(BACKBONES), action="append", required=True,
                   help="repeatable")
    p.add_argument("--cache", type=Path, default=None, help="cache root (default: KERAS_HOME or ~/.keras)")
    p.add_argument("--input-size", type=int, default=224, help="mobilenetv2 only: which weights file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cache = args.cache or cache_root(None)
    for name in args.backbone:
        print(fetch(name, cache, args.input_size))
    return 0
