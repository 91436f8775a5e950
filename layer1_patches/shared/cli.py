"""The shared command-line frame of all three layers: subcommands, logging, and one error line."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import signal
import sys
from typing import Any

from layer1_patches.shared import signals


class DefaultsFormatter(argparse.HelpFormatter):
    """Shows an option's default where it says something: not for None, False, [] or a required option."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        silent = default is None or default is False or default == [] or default == argparse.SUPPRESS
        if silent or "(default" in text or "%(default)" in text or action.required or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class CamnetParser(argparse.ArgumentParser):
    """A parser whose subcommands' help shows defaults too (a subparser is built from its parent's class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)


def add_overrides(parser: argparse.ArgumentParser, example: str = "") -> None:
    """The `--set key.path=value` option every config-driven command takes (parsed by `typedconfig`)."""
    hint = f", e.g. --set {example}" if example else ""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config key{hint} (repeatable)")


def single_threaded_blas() -> None:
    """For Layer 1's commands, before their modules load numpy: numpy's and scipy's OpenBLAS each start a helper
    thread per core, which spin (sched_yield) for about 0.1 CPU s each after loading: 0.2 of Layer 1's 3.5 CPU s
    on a 7,000-patch slide (perf, issue 17), in every array task. Layer 1's numpy work is elementwise. It is set in
    the environment (OpenBLAS reads it when it loads), so Layer 1's own children (its array tasks) inherit it;
    Layers 2 and 3 do not call this, and what they start is left alone. A value the user set wins."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def build_parser(package: str, description: str, commands: tuple[str, ...],
                 argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given `argv` naming a command, only that command's module is imported.

    A SLURM array task is one command; importing every command's dependencies (scikit-image, scipy, TensorFlow
    in the later layers) cost each task about half a second before it did any work.
    """
    parser = CamnetParser(prog=f"python -m {package}", description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=CamnetParser)
    for name in _needed(commands, argv):
        importlib.import_module(f"{package}.cli.{name}").register(sub)
    return parser


def _needed(commands: tuple[str, ...], argv: list[str] | None) -> tuple[str, ...]:
    """The module of the command `argv` names (its first word), or all of them (top-level help, errors)."""
    for arg in sys.argv[1:] if argv is None else argv:
        if arg in ("-h", "--help"):
            return commands  # before the command: the top-level help lists every command
        if not arg.startswith("-"):
            module = arg.replace("-", "_")  # command `fetch-weights` lives in module `fetch_weights`
            return (module,) if module in commands else commands
    return commands


# The file system refused (full, quota, read-only, permissions, hardware): the user's environment, not a bug.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
                                errno.EIO})


def run(package: str, description: str, commands: tuple[str, ...], argv: list[str] | None = None) -> int:
    """Parse, run the command; a `CamnetError` becomes `error: ...` on stderr and exit status 2."""
    from layer1_patches.shared.errors import CamnetError

    args = build_parser(package, description, commands, argv).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    previous = signals.stop_on_signals()
    try:
        status = int(args.func(args))
        signals.check()  # a signal whose exception was swallowed (see `signals`) still ends the command as one
        return status
    except CamnetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`status | head`): not an error of ours. Point stdout at /dev/null so the
        # interpreter's final flush does not raise again (Python's documented recipe).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by it
    except OSError as err:
        if err.errno not in ENVIRONMENT_ERRNOS:
            raise  # anything else is a bug: keep its traceback
        # A writer without its own handler (a report, a plot): the atomic writers have removed their partial files.
        from layer1_patches.shared.errors import os_reason

        where = f"{err.filename}: " if err.filename else ""
        print(f"error: {where}{os_reason(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        signum = err.signum if isinstance(err, signals.Terminated) else signal.SIGINT
        print(f"error: interrupted by {signal.Signals(signum).name}; partial output removed, finished outputs "
              "kept (rerun to continue)", file=sys.stderr)
        return 128 + signum
    finally:
        signals.restore(previous)
