"""Every stage is configured by its command line alone, and SLURM runs the same command as the local runner.

The sbatch scripts are run here under plain bash, with a stand-in `python` (CAMNET_PYTHON) and `srun` that
record the command they were given: what each script runs must be exactly the stage's `python -m` command.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from layer1_patches.shared.manifest import Manifest
from layer1_patches.synth import write_cohort
from layer3_inference.pipeline import stages
from layer3_inference.pipeline.config import Experiment, load_experiment
from layer3_inference.pipeline.layout import Layout

from .conftest import REPO, write_experiment

RECORDER = """#!/bin/bash
# records its arguments, one per line, then succeeds
printf '%s\\n' "$@" > "$RECORD"
"""
SRUN = """#!/bin/bash
# stand-in srun: drop srun's own options, then run the command
while [ "$#" -gt 0 ] && [[ "$1" == -* ]]; do shift; done
exec "$@"
"""


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("stages")
    slides = tmp / "slides"
    write_cohort(slides, 2, 1024, seed=3)
    cfg = write_experiment(tmp / "exp.yaml", name="st", slides=[str(slides)], annotations=str(slides),
                           out=str(tmp / "out"), index={"fractions": {"train": 0.5, "val": 0.5}},
                           layer2={"config": "configs/layer2/mobilenetv2_cpu.yaml", "overrides": ["epochs=2"]},
                           heatmap={"overrides": ["reader.threads=1"]},
                           evaluate={"overrides": ["froc.fp_rates=[1,2]"]})
    exp = load_experiment(cfg)
    manifest = stages.write_manifests(exp)
    return exp, manifest


def run_script(script: str, args: list[str], tmp_path: Path) -> list[str]:
    """Run slurm/<script> ARGS as one array task and return the command it ran (after `python`)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("python-recorder", RECORDER), ("srun", SRUN), ("scontrol", RECORDER)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    record = tmp_path / "record.txt"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CAMNET_PYTHON": str(bin_dir / "python-recorder"),
           "CAMNET_ROOT": str(REPO), "RECORD": str(record), "SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_JOB_ID": "7",
           "SLURM_JOB_ID": "7", "SLURM_NTASKS": "1", "SLURM_JOB_NUM_NODES": "1"}
    for var in ("CAMNET_SIF", "CAMNET_MANIFEST", "CAMNET_CONFIG", "SLURM_CPUS_PER_TASK"):
        env.pop(var, None)
    proc = subprocess.run(["bash", str(REPO / "slurm" / script), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return record.read_text().splitlines()


def test_every_stage_has_a_command_and_a_script(experiment) -> None:  # type: ignore[no-untyped-def]
    exp, manifest = experiment
    commands = stages.commands(exp, manifest)
    assert set(commands) == set(stages.STAGES)
    for stage, cmd in commands.items():
        assert (REPO / "slurm" / cmd.script).is_file()
        assert cmd.array == (stage in stages.ARRAY_STAGES)
        assert cmd.argv[0] in ("layer1_patches", "layer2_training", "layer3_inference")


def test_overrides_reach_the_command_line(experiment) -> None:  # type: ignore[no-untyped-def]
    exp, manifest = experiment
    commands = stages.commands(exp, manifest)
    layout = Layout(exp.out)
    layer2 = list(commands["layer2"].argv)
    assert layer2[layer2.index("--set") + 1] == "epochs=2"
    assert f"data.index={layout.index}" in layer2 and f"output.run_dir={layout.run_dir}" in layer2
    assert "froc.fp_rates=[1,2]" in commands["evaluate"].argv
    # array tasks get their configuration from the manifest their command line names
    assert commands["heatmap"].local_argv(1)[-4:] == ["--model", str(layout.run_dir), "--index", "1"]
    heatmap = Manifest.load(Path(commands["heatmap"].argv[commands["heatmap"].argv.index("--manifest") + 1]))
    assert heatmap.overrides == ("reader.threads=1",) and heatmap.out == str(layout.heatmaps)
    assert heatmap.config == exp.cfg.heatmap.config and len(heatmap.entries) == len(manifest.entries)


@pytest.mark.parametrize("stage", stages.STAGES)
def test_the_sbatch_script_runs_the_stages_command(experiment, stage: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    exp, manifest = experiment
    cmd = stages.commands(exp, manifest)[stage]
    ran = run_script(cmd.script, cmd.script_args(), tmp_path)
    assert ran == ["-m", *cmd.argv]


def test_a_command_without_its_scripts_prefix_is_a_bug(experiment) -> None:  # type: ignore[no-untyped-def]
    exp, manifest = experiment
    bad = stages.StageCommand("layer2", ("layer3_inference", "explain"))
    with pytest.raises(ValueError, match="does not start with"):
        bad.script_args()
    assert stages.commands(exp, manifest)["layer2"].script_args()[:2] == ["--config", exp.cfg.layer2.config]


def test_evaluate_and_explain_read_the_index_the_index_stage_writes(experiment: tuple[Experiment, Manifest]) -> None:
    exp, manifest = experiment
    commands = stages.commands(exp, manifest)

    def value(stage: str, option: str) -> str:
        argv = commands[stage].argv
        assert argv.count(option) == 1, argv
        return argv[argv.index(option) + 1]

    written = value("index", "--out")
    assert written == str(Layout(exp.out).index)
    assert value("evaluate", "--index") == written and value("explain", "--index") == written
    # --store takes every path up to the next option: the index must not be read as a patch store
    explain = list(commands["explain"].argv)
    stores = explain[explain.index("--store") + 1:explain.index("--out")]
    assert stores == [str(p) for p in stages.stores(exp, manifest)]


def test_evaluate_is_told_which_split_trained_the_model(experiment: tuple[Experiment, Manifest]) -> None:
    """A Layer 2 `data.splits.train` other than "train" was scored as an ordinary split (and could be the headline)."""
    import dataclasses

    exp, manifest = experiment
    layer2 = dataclasses.replace(exp.cfg.layer2, overrides=[*exp.cfg.layer2.overrides, "data.splits.train=fold_a"])
    changed = dataclasses.replace(exp, cfg=dataclasses.replace(exp.cfg, layer2=layer2))
    for e, name in ((exp, "train"), (changed, "fold_a")):
        argv = list(stages.commands(e, manifest)["evaluate"].argv)
        assert argv[argv.index(f"trained_split={name}") - 1] == "--set", argv
