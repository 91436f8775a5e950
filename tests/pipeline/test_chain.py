"""The local runner (`pipeline run`): every stage runs the command line `pipeline/stages.py` builds, array stages
once per manifest index; a rerun skips what is finished."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from layer1_patches.synth import write_cohort
from layer3_inference.pipeline import stages
from layer3_inference.pipeline.config import load_experiment

from .conftest import run_pipeline, write_experiment
from .fakestages import FakeStages


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


def _stub_experiment(tmp_path: Path, n_slides: int = 2, **changes: Any) -> Path:
    slides = tmp_path / "slides"
    if not slides.is_dir() or len(list(slides.glob("*.tif"))) != n_slides:
        write_cohort(slides, n_slides, 512, seed=7, tumour_fraction=0.3)
    keys: dict[str, Any] = dict(
        name="stamps", slides=[str(slides)], annotations=str(slides), out=str(tmp_path / "out"),
        layer1={"overrides": ["patch_size=32"]}, index={"fractions": {"train": 0.5, "val": 0.5}},
        layer2={"config": "configs/layer2/mobilenetv2_cpu.yaml", "overrides": ["epochs=1"]},
        heatmap={"overrides": []}, evaluate={"overrides": []}, explain={"overrides": []})
    return write_experiment(tmp_path / "exp.yaml", **{**keys, **changes})


def test_changing_one_key_per_stage_reruns_exactly_that_stage_and_those_below(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # issue 16: after index.fractions changed, `pipeline run` said "index finished before, skipped" and reused
    # the stale index; --force redid Layer 1 as well
    from layer3_inference.pipeline import chain

    fake = FakeStages()
    monkeypatch.setattr(chain, "_run_module", fake)
    everything = list(stages.STAGES)

    keys: dict[str, Any] = {}  # each change stays: the next run changes one more key

    def run(force: list[str] | None = None, n_slides: int = 2, **changes: Any) -> tuple[list[str], list[str]]:
        keys.update(changes)
        chain.run_local(load_experiment(_stub_experiment(tmp_path, n_slides, **keys)), echo=lambda _: None,
                        force=force)
        return fake.take()

    _stub_experiment(tmp_path)
    first = sorted(p.name for p in (tmp_path / "slides").glob("*.tif"))
    assert run() == (everything, first)
    assert run() == (["report"], [])
    assert run(evaluate={"overrides": ["froc.fp_rates=[1,2]"]})[0] == ["evaluate", "report"]
    assert run(explain={"overrides": ["select.k=3"]})[0] == ["explain", "report"]
    assert run(heatmap={"overrides": ["output.thumbnail_size=128"]})[0] == ["heatmap", "evaluate", "report"]
    model = (tmp_path / "out" / "run" / "metrics.json").read_text()
    assert run(layer2={"config": "configs/layer2/mobilenetv2_cpu.yaml", "overrides": ["epochs=2"]})[0] == \
        everything[2:]
    assert (tmp_path / "out" / "run" / "metrics.json").read_text() != model  # trained again, not resumed
    assert run(index={"fractions": {"train": 0.6, "val": 0.4}})[0] == everything[1:]
    # a changed Layer 1 config redoes every store (extract would refuse them otherwise)
    assert run(layer1={"overrides": ["patch_size=64"]}) == (everything, first)
    # --force STAGE: that stage and the ones reading from it; nothing above it
    assert run(force=["heatmap"])[0] == ["heatmap", "evaluate", "report"]
    # a new slide is extracted alone; the finished stores stay
    ran, extracted = run(n_slides=3)
    added = sorted({p.name for p in (tmp_path / "slides").glob("*.tif")} - set(first))
    assert ran == everything and extracted == added and len(added) == 1


def test_a_stage_finished_by_an_older_camnet_without_stamp_is_not_rerun(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from layer3_inference.pipeline import chain

    fake = FakeStages()
    monkeypatch.setattr(chain, "_run_module", fake)
    exp = load_experiment(_stub_experiment(tmp_path))
    chain.run_local(exp, echo=lambda _: None)
    fake.take()
    for stamp in (tmp_path / "out" / "pipeline" / "stamps").glob("*.json"):
        stamp.unlink()
    lines: list[str] = []
    chain.run_local(exp, echo=lines.append)
    assert fake.take()[0] == ["report"]
    assert sum("finished before, skipped" in line for line in lines) == 6, lines


def test_force_option_takes_stages_and_alone_means_all(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from layer3_inference.cli.pipeline import register
    from layer3_inference.pipeline.stamps import forced_stages

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())

    def forced(*args: str) -> frozenset[str]:
        return forced_stages(parser.parse_args(["pipeline", "run", "--config", "x.yaml", *args]).force, stages.STAGES)

    assert forced() == frozenset()
    assert forced("--force") == frozenset(stages.STAGES)
    assert forced("--force", "heatmap", "--force", "index") == {"heatmap", "index"}
    with pytest.raises(SystemExit) as stop:
        forced("--force", "hetamap")
    assert stop.value.code == 2 and "invalid choice: 'hetamap'" in capsys.readouterr().err


def test_a_failed_stage_showed_earlier_runs_log_lines(tmp_path: Path) -> None:
    """Regression (issue 16): logs are appended across runs, and a failure printed the log's last 15 lines, which
    for a stage that failed early were an earlier run's. Only this run's part is shown now."""
    from layer1_patches.shared.errors import CamnetError
    from layer3_inference.pipeline import chain

    log = tmp_path / "index.log"
    log.write_text("".join(f"an earlier run's line {i}\n" for i in range(30)))
    with pytest.raises(CamnetError) as err:
        chain._run_module(["layer1_patches", "index", "--no-such-option"], log)
    message = str(err.value)
    assert "earlier run" not in message and "--no-such-option" in message
    assert "earlier run's line 29" in log.read_text()  # kept on disk: the log is the history


def test_the_runner_names_the_log_files_that_exist() -> None:
    """Regression (issue 16): the runner printed `logs/layer1.log`; the files are `layer1_0.log`, `layer1_1.log`."""
    from layer3_inference.pipeline.chain import log_names

    log = Path("/x/pipeline/logs/layer1.log")
    assert log_names(log, array=True, n=3) == "/x/pipeline/logs/layer1_0.log .. layer1_2.log (one per slide)"
    assert log_names(log, array=True, n=1) == "/x/pipeline/logs/layer1_0.log"
    assert log_names(log.with_name("index.log"), array=False, n=3) == "/x/pipeline/logs/index.log"
