"""The `camnet` command: every layer's commands under one name, their help, and tab completion."""

from __future__ import annotations

import argparse
import configparser
import importlib
import importlib.metadata
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from layer1_patches.shared.cli import build_parser
from layer3_inference.cli import camnet

REPO = Path(__file__).resolve().parents[2]
LAYER_DESCRIPTIONS = {"layer1_patches": "Layer 1", "layer2_training": "Layer 2", "layer3_inference": "Layer 3"}


def layer_parser(package: str) -> argparse.ArgumentParser:
    commands = importlib.import_module(f"{package}.cli").COMMANDS
    return build_parser(package, LAYER_DESCRIPTIONS[package], commands, ["--help"])


def all_parsers() -> dict[str, argparse.ArgumentParser]:
    parsers = {package: layer_parser(package) for package in LAYER_DESCRIPTIONS}
    parsers["camnet"] = camnet.build_parser(camnet.command_packages(), ["--help"])
    return parsers


def subcommands(parser: argparse.ArgumentParser, prog: str) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(command path, its help in the parent's listing, its parser) for every subcommand, nested ones too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, child in action.choices.items():
                path = f"{prog} {name}"
                yield path, listed.get(name, ""), child
                yield from subcommands(child, path)


def missing_help(parsers: dict[str, argparse.ArgumentParser]) -> list[str]:
    problems = []
    for prog, parser in parsers.items():
        for path, listed, child in subcommands(parser, prog):
            if not listed.strip():
                problems.append(f"{path}: no help in the command list")
            if not (child.description or "").strip():
                problems.append(f"{path}: no description")
            for action in child._actions:
                if action.option_strings and action.help != argparse.SUPPRESS and not (action.help or "").strip():
                    problems.append(f"{path} {'/'.join(action.option_strings)}: no help")
    return problems


def test_every_subcommand_and_option_of_every_parser_has_help() -> None:
    assert missing_help(all_parsers()) == []


def test_the_help_walk_finds_a_subcommand_or_option_without_help() -> None:
    parser = argparse.ArgumentParser(prog="x")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("bare").add_argument("--opt")
    nested = sub.add_parser("outer", help="outer", description="outer").add_subparsers(dest="inner")
    nested.add_parser("inner", help="inner")
    assert missing_help({"x": parser}) == ["x bare: no help in the command list", "x bare: no description",
                                           "x bare --opt: no help", "x outer inner: no description"]


def test_camnet_lists_the_commands_of_all_three_layers(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        camnet.main(["--help"])
    assert stop.value.code == 0
    shown = capsys.readouterr().out
    for package in LAYER_DESCRIPTIONS:
        for name in importlib.import_module(f"{package}.cli").COMMANDS:
            assert f"    {name.replace('_', '-')} " in shown, name


def help_text(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit):
        camnet.main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_subcommand_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    shown = help_text(capsys, "pipeline", "demo")
    assert "usage: camnet pipeline demo" in shown
    assert "(default: 6)" in shown and "(default: auto)" in shown
    shown = help_text(capsys, "extract")
    assert "--workers WORKERS slides processed at once with --slides (default: 1)" in shown
    assert "--task-seed TASK_SEED added to sampling.seed (SLURM array task id) (default: 0)" in shown
    for silent in ("None", "False", "[]"):  # defaults that say nothing: a flag, an unset option, --set
        assert f"(default: {silent})" not in shown


def test_camnet_runs_the_layers_command(tmp_path: Path) -> None:
    # the console script's target, as `pip install -e` wires it (run in a fresh interpreter, as the script is)
    code = ("import sys; from layer3_inference.cli.camnet import main; "
            f"sys.exit(main(['synth', '--out', {str(tmp_path)!r}, '--n-slides', '1', '--size', '512']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".tif", ".xml"]


def test_camnet_bad_input_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    status = camnet.main(["train", "--config", str(missing)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith("error: ") and str(missing) in err[0]


def test_camnet_usage_error_names_camnet(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        camnet.main(["extract", "--config"])
    assert stop.value.code == 2
    assert "usage: camnet extract" in capsys.readouterr().err


def test_camnet_extract_help_imports_only_extract() -> None:
    code = ("import sys; from layer3_inference.cli.camnet import main\n"
            "try: main(['extract', '--help'])\nexcept SystemExit: pass\n"
            "print(' '.join(sorted(m for m in sys.modules if '.cli.' in m or m == 'tensorflow')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert proc.stdout.split()[-2:] == ["layer1_patches.cli.extract", "layer3_inference.cli.camnet"]
    assert "layer1_patches.cli.index" not in proc.stdout and "tensorflow" not in proc.stdout.split()


def test_bash_completion_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        camnet.main(["--print-completion", "bash"])
    assert stop.value.code == 0
    script = capsys.readouterr().out
    bash = shutil.which("bash")
    assert bash is not None

    def complete(*words: str) -> list[str]:
        line = " ".join(("camnet", *words))
        probe = (f'{script}\nCOMP_WORDS=(camnet {" ".join(words) or chr(34) * 2}); COMP_CWORD={len(words) or 1}; '
                 f'COMP_LINE="{line}"; COMP_POINT={len(line)}; _shtab_camnet; printf "%s\\n" "${{COMPREPLY[@]}}"')
        return subprocess.run([bash, "-c", probe], capture_output=True, text=True, check=True).stdout.split()

    everything = set(complete())
    for package in LAYER_DESCRIPTIONS:
        assert {n.replace("_", "-") for n in importlib.import_module(f"{package}.cli").COMMANDS} <= everything
    assert complete("ex") == ["extract", "explain"]
    assert {"run", "status", "submit", "report", "demo"} <= set(complete("pipeline", ""))
    assert "--force" in complete("pipeline", "run", "--")


def test_setup_cfg_console_script_resolves_to_main() -> None:
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    scripts = dict(line.split(" = ") for line in
                   setup["options.entry_points"]["console_scripts"].strip().splitlines())
    module, _, name = scripts["camnet"].partition(":")
    assert getattr(importlib.import_module(module), name) is camnet.main
    installed = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "camnet"]
    assert [e.value for e in installed] == [scripts["camnet"]]  # `pip install -e .` wired what setup.cfg says


def test_nothing_imports_camnet() -> None:
    from tests.test_architecture import MODULES, imports

    # camnet sits above all three layers: a layer importing it would import every layer's commands
    assert [m for m in MODULES if "layer3_inference.cli.camnet" in imports(m, top_level_only=False)] == []
