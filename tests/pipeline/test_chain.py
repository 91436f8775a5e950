"""The local runner (`pipeline run`): every stage runs the command line `pipeline/stages.py` builds, array stages
once per manifest index; a rerun skips what is finished."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from layer1_patches.synth import write_cohort
from layer3_inference.pipeline import stages
from layer3_inference.pipeline.config import load_experiment

from .conftest import run_pipeline, write_experiment


def test_local_run_runs_each_stages_command_then_skips_it(tmp_path: Path) -> None:
    slides = tmp_path / "slides"
    write_cohort(slides, 4, 1024, seed=7, tumour_fraction=0.3)  # two patients
    cfg = write_experiment(
        tmp_path / "exp.yaml", name="localtest", slides=[str(slides)], annotations=str(slides),
        out=str(tmp_path / "out"), local_workers=2,
        layer1={"config": "configs/layer1/random.yaml",
                "overrides": ["patch_size=32", "resolution.mpp=0.5", "sampling.random.per_class=20",
                              "sampling.random.grid_step=16", "reader.threads=1"]},
        index={"fractions": {"train": 0.5, "val": 0.5}, "seed": 0},
        layer2={"config": "configs/layer2/mobilenetv2_cpu.yaml",
                "overrides": ["epochs=1", "output.tensorboard=false", "data.splits.test=null"]},
        heatmap={"overrides": ["output.thumbnail_size=128", "reader.threads=1"]},
        explain={"enabled": False})
    proc = run_pipeline(["run", "--config", str(cfg)], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    assert (out / "report" / "index.html").is_file() and "explain   disabled" in proc.stdout

    exp = load_experiment(cfg)
    manifest = stages.load_manifest(exp)
    assert manifest is not None and len(manifest.entries) == 4
    commands = stages.commands(exp, manifest)
    logs = out / "pipeline" / "logs"
    # each log starts with the exact command the SLURM script of that stage would run
    for stage in ("index", "layer2", "evaluate", "report"):
        first = (logs / f"{stage}.log").read_text().splitlines()[0]
        assert first == "$ python -m " + " ".join(commands[stage].argv), stage
    for stage in ("layer1", "heatmap"):
        for i in range(4):
            first = (logs / f"{stage}_{i}.log").read_text().splitlines()[0]
            assert first == "$ python -m " + " ".join(commands[stage].local_argv(i)), (stage, i)
            task = json.loads((stages.array_output(stage, exp) / ".camnet" / "tasks" / f"{i}.json").read_text())
            assert task["state"] == "done" and task["slide"] == manifest.entries[i].slide

    again = run_pipeline(["run", "--config", str(cfg)], timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    skipped = [line for line in again.stdout.splitlines() if "finished before, skipped" in line]
    assert len(skipped) == 5, again.stdout  # everything but the report (always rewritten) and explain (disabled)


STAGE = '''
import pathlib, signal, sys, time
out = pathlib.Path(sys.argv[1])
def stop(signum, frame):
    out.write_text(signal.Signals(signum).name)  # what a stage's cleanup would do
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
(out.parent / f"{out.name}.started").write_text("")
time.sleep(60)
'''


def test_sigterm_to_the_local_runner_reaches_its_stages_instead_of_sigkill(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Review of issue 13: `subprocess.run` answered the runner's SIGTERM with SIGKILL to the stage, which then
    # could not remove its partial output and lock (nor training save its state); array stages also went on.
    import os
    import signal
    import threading

    from layer1_patches.shared import signals
    from layer3_inference.pipeline import chain

    (tmp_path / "fakestage.py").write_text(STAGE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    cmd = SimpleNamespace(stage="heatmap", local_argv=lambda i: ["fakestage", str(tmp_path / f"task{i}")])
    previous = signals.stop_on_signals()
    try:
        def kill_when_started() -> None:
            while not all((tmp_path / f"task{i}.started").exists() for i in range(2)):
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=kill_when_started, daemon=True).start()
        with pytest.raises(signals.Terminated):
            chain._array_local(cmd, 5, 2, tmp_path / "heatmap.log")  # type: ignore[arg-type]
    finally:
        signals.restore(previous)
    assert (tmp_path / "task0").read_text() == (tmp_path / "task1").read_text() == "SIGTERM"
    assert not list(tmp_path.glob("task[234]*"))  # queued tasks never started
