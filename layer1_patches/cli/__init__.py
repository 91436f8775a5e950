"""`python -m layer1_patches COMMAND`: one module per command, each with `register`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from layer1_patches.errors import CamnetError

COMMANDS = ("synth", "extract", "index", "submit", "status", "task", "merge", "demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m layer1_patches",
                                     description="CamNet Layer 1: WSI patch extraction into HDF5")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"layer1_patches.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args))
    except CamnetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
