"""`camnet COMMAND`: the commands of all three layers under one name.

Each command is the layer's own (`register` of `<layer>.cli.<command>`), so its options are defined once and
`python -m <layer> COMMAND` keeps working. Only the named command's module is imported, as in the layers'
`build_parser`: `camnet extract --help` does not load TensorFlow. Nothing imports this module (it sits above
every layer); the `camnet` console script of setup.cfg runs `main`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from layer1_patches.shared.cli import CamnetParser, _needed, single_threaded_blas

LAYERS = ("layer1_patches", "layer2_training", "layer3_inference")
SHELLS = ("bash", "zsh", "tcsh")
DESCRIPTION = "CamNet: whole-slide pathology images to patches, a trained CNN, heatmaps, evaluation and a report."


class PrintCompletion(argparse.Action):
    """`--print-completion SHELL`: the completion script of the whole parser, from shtab (extra `completion`)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,  # noqa: ARG002
                 option_string: str | None = None) -> None:  # noqa: ARG002 (argparse's Action signature)
        try:
            import shtab
        except ImportError:
            parser.exit(2, "error: tab completion needs shtab: pip install 'camnet[completion]'\n")
        print(shtab.complete(parser, shell=values))
        parser.exit(0)


def command_packages() -> dict[str, str]:
    """Command module name -> the layer package whose `cli` holds it, in the order the help lists them."""
    return {name: package for package in LAYERS for name in importlib.import_module(f"{package}.cli").COMMANDS}


def epilog(packages: dict[str, str]) -> str:
    """Which layer each command belongs to (argparse lists subcommands in one flat group)."""
    lines = ["commands by layer:"]
    for package in LAYERS:
        names = " ".join(n.replace("_", "-") for n, p in packages.items() if p == package)
        lines.append(f"  {package}: {names}")
    lines.append("completion: eval \"$(camnet --print-completion bash)\" (in ~/.bashrc)")
    return "\n".join(lines)


def build_parser(packages: dict[str, str], argv: Sequence[str]) -> argparse.ArgumentParser:
    """The `camnet` parser; with `argv` naming a command, only that command's module is imported."""
    parser = CamnetParser(prog="camnet", description=DESCRIPTION, epilog=epilog(packages),
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--print-completion", choices=SHELLS, action=PrintCompletion, metavar="SHELL",
                        help=f"print a tab-completion script for SHELL ({', '.join(SHELLS)}) and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CamnetParser)
    for name in _needed(tuple(packages), list(argv)):
        importlib.import_module(f"{packages[name]}.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    # as in the layers' own `main`: set before any command module may load TensorFlow
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    packages = command_packages()
    named = _needed(tuple(packages), args_in)
    if len(named) == 1 and packages[named[0]] == "layer1_patches":
        single_threaded_blas()  # as `python -m layer1_patches` does, before the command's module loads numpy
    # parsed here for camnet's usage lines, help and errors; then run by the layer's `main`, which keeps the one
    # `error:` line and exit statuses of `python -m <layer>` (the same argv parses the same there)
    args = build_parser(packages, args_in).parse_args(args_in)
    layer = importlib.import_module(f"{packages[args.command.replace('-', '_')]}.cli")
    return int(layer.main(args_in))


if __name__ == "__main__":
    sys.exit(main())
