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
from layer3_inference.pipeline.layout import Layout

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
    def first(log: Path) -> str:  # under the run's `=== <time> run by pid N ===` header
        return next(line for line in log.read_text().splitlines() if line.startswith("$ "))

    # each run's log part starts with the exact command the SLURM script of that stage would run
    for stage in ("index", "layer2", "evaluate", "report"):
        assert first(logs / f"{stage}.log") == "$ python -m " + " ".join(commands[stage].argv), stage
    for stage in ("layer1", "heatmap"):
        for i in range(4):
            assert first(logs / f"{stage}_{i}.log") == "$ python -m " + " ".join(commands[stage].local_argv(i)), \
                (stage, i)
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


# --- review of issue 16: what the stamps rerun, clear and keep ---


class _Runs:
    """Local runs of the stub experiment with FakeStages; each run's changes stay for the next run."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n_slides: int = 2) -> None:
        from layer3_inference.pipeline import chain

        self.tmp_path, self.n_slides = tmp_path, n_slides
        self.keys: dict[str, Any] = {}
        self.fake = FakeStages()
        monkeypatch.setattr(chain, "_run_module", self.fake)

    def experiment(self, **changes: Any) -> Any:
        self.keys.update(changes)
        return load_experiment(_stub_experiment(self.tmp_path, self.n_slides, **self.keys))

    def __call__(self, force: list[str] | None = None, **changes: Any) -> tuple[list[str], list[str]]:
        from layer3_inference.pipeline import chain

        try:
            chain.run_local(self.experiment(**changes), echo=lambda _: None, force=force)
        finally:
            taken = self.fake.take()
        return taken


def _copy(src: str, dest: Path) -> str:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(Path(src).read_text())
    return str(dest)


def test_reader_threads_or_a_copied_layer_yaml_redid_every_store(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # review of issue 16: the stamp held the whole resolved config and the YAML's path, so `reader.threads` (speed,
    # never patches) or the same YAML at another path deleted and re-extracted every store
    run = _Runs(tmp_path, monkeypatch)
    everything = list(stages.STAGES)
    assert run()[0] == everything
    assert run(layer1={"overrides": ["patch_size=32", "reader.threads=1"]}) == (["report"], [])
    exp = run.experiment()
    copies: dict[str, Any] = {"layer1": {"config": _copy(exp.cfg.layer1.config, tmp_path / "mine" / "layer1.yaml"),
                         "overrides": ["patch_size=32", "reader.threads=1"]},
              "layer2": {"config": _copy(exp.cfg.layer2.config, tmp_path / "mine" / "layer2.yaml"),
                         "overrides": ["epochs=1"]},
              "evaluate": {"config": _copy(exp.cfg.evaluate.config, tmp_path / "mine" / "evaluate.yaml"),
                           "overrides": []}}
    assert run(**copies) == (["report"], [])
    # the content still counts: an edited copy reruns the stage
    import yaml

    edited = yaml.safe_load((tmp_path / "mine" / "layer1.yaml").read_text())
    (tmp_path / "mine" / "layer1.yaml").write_text(yaml.safe_dump({**edited, "patch_size": 64}))
    assert run(layer1={**copies["layer1"], "overrides": []}) == (everything, sorted(
        p.name for p in (tmp_path / "slides").glob("*.tif")))


def test_a_camnet_version_bump_did_not_need_to_clear_layer1(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # review of issue 16: a version bump cleared every store; a store's own identity has no version, so extract
    # keeps each one still valid: its tasks rerun, nothing is cleared
    run = _Runs(tmp_path, monkeypatch)
    run()
    monkeypatch.setattr(stages, "versions", lambda: {"layer1_patches": "9.9", "layer2_training": "9.9"})
    assert run() == (list(stages.STAGES), [])
    assert run() == (["report"], [])


def test_a_slide_removed_from_the_cohort_still_entered_the_index_and_the_evaluation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # review of issue 16: the index read every store in OUT/patches and evaluate every heatmap folder
    run = _Runs(tmp_path, monkeypatch, n_slides=3)
    run()
    slides = sorted((tmp_path / "slides").glob("*.tif"))
    out = Layout(tmp_path / "out")

    def seen() -> tuple[list[str], list[str]]:
        return (sorted(json.loads(out.index.read_text())["slides"]),
                sorted(json.loads((out.evaluate / "summary.json").read_text())["slides"]))

    assert seen() == ([s.stem for s in slides], [s.stem for s in slides])
    ran, extracted = run(slides=[str(s) for s in slides[:2]])
    assert "index" in ran and "evaluate" in ran and extracted == []
    assert seen() == ([s.stem for s in slides[:2]], [s.stem for s in slides[:2]])
    assert stages.stores(run.experiment(), stages.write_manifests(run.experiment()))[0].is_file()


def test_an_annotation_added_for_an_extracted_slide_failed_the_run(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # review of issue 16: "cohort changed" did not clear, extract refused the store made without the annotation,
    # and the only way out, --force layer1, deleted every store
    run = _Runs(tmp_path, monkeypatch)
    _stub_experiment(tmp_path)
    xmls = sorted((tmp_path / "slides").glob("*.xml"))
    annotations = tmp_path / "annotations"
    _copy(str(xmls[0]), annotations / xmls[0].name)
    assert run(annotations=str(annotations))[0] == list(stages.STAGES)
    _copy(str(xmls[1]), annotations / xmls[1].name)
    assert run() == (list(stages.STAGES), [f"{xmls[1].stem}.tif"])
    (annotations / xmls[0].name).rename(annotations / "elsewhere.txt")  # renamed away: that slide alone again
    assert run() == (list(stages.STAGES), [f"{xmls[0].stem}.tif"])


def test_a_slurm_run_finished_without_pipeline_status_skipped_a_changed_index(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # review of issue 16: submit leaves pending stamps that only `pipeline status` promoted; without it every
    # finished stage counted as unstamped, hence current, and a changed index.fractions was skipped
    import os
    import time

    from layer3_inference.pipeline import chain, stamps

    run = _Runs(tmp_path, monkeypatch)
    run()
    state = Layout(tmp_path / "out").state
    submitted = time.time() - 100  # the jobs finished after their submission
    for stage in stages.STAGES:
        stamp = stamps.read_stamp(state, stage)
        assert stamp is not None
        stamps.remove_stamp(state, stage)
        os.utime(stamps.write_pending(state, stamp, "7"), (submitted, submitted))

    def plan(**changes: Any) -> stamps.Plan:
        exp = run.experiment(**changes)
        manifest = stages.write_manifests(exp)
        return chain._plan(exp, manifest, stages.commands(exp, manifest), False)

    todo = plan(index={"fractions": {"train": 0.6, "val": 0.4}})
    assert todo.why["index"] == "index.fractions changed" and not todo.runs("layer1")
    assert stamps.read_stamp(state, "layer1") is not None and stamps.read_pending(state, "layer1") is None
    # a pending stamp written after the outputs were complete is another submission's: they stay unstamped
    stamps.remove_stamp(state, "index")
    os.utime(stamps.write_pending(state, todo.current["index"], "8"), (time.time() + 100,) * 2)
    assert plan(index={"fractions": {"train": 0.7, "val": 0.3}}).why["index"] == ""


def test_a_stage_interrupted_under_another_config_was_resumed_not_cleared(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # review of issue 16: the stamp went before the stage ran, so its partial output counted as unstamped and a
    # run with the old config resumed the other config's half-trained run dir
    from layer1_patches.shared.errors import CamnetError

    run = _Runs(tmp_path, monkeypatch)
    run()
    run.fake.fail = {"layer2"}
    with pytest.raises(CamnetError, match="interrupted"):
        run(layer2={"config": "configs/layer2/mobilenetv2_cpu.yaml", "overrides": ["epochs=2"]})
    run.fake.fail = set()
    assert run(layer2={"config": "configs/layer2/mobilenetv2_cpu.yaml", "overrides": ["epochs=1"]})[0] == \
        list(stages.STAGES[2:])
    made_from = json.loads((tmp_path / "out" / "run" / "metrics.json").read_text())["made_from"]
    assert "epochs=1" in made_from and "epochs=2" not in made_from
    # the same config again: the partial output is resumed, not cleared
    run.fake.fail = {"layer2"}
    with pytest.raises(CamnetError):
        run(layer2={"config": "configs/layer2/mobilenetv2_cpu.yaml", "overrides": ["epochs=3"]})
    started = (tmp_path / "out" / "run" / "started.json").read_text()
    run.fake.fail = set()
    run()
    assert (tmp_path / "out" / "run" / "started.json").read_text() == started


def test_a_failed_sbatch_had_already_cleared_the_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # review of issue 16: submit cleared a stage's outputs before sbatch accepted its job
    from layer1_patches.shared.errors import CamnetError
    from layer3_inference.pipeline import chain, stamps

    run = _Runs(tmp_path, monkeypatch)
    run()
    out = Layout(tmp_path / "out")
    exp = run.experiment(index={"fractions": {"train": 0.6, "val": 0.4}})

    def refused(args: list[str], cwd: Path) -> str:  # noqa: ARG001
        raise CamnetError("sbatch failed: invalid partition")

    monkeypatch.setattr(chain, "sbatch", refused)
    with pytest.raises(CamnetError, match="invalid partition"):
        chain.submit(exp, echo=lambda _: None)
    assert out.index.is_file() and stamps.read_stamp(out.state, "index") is not None

    events: list[tuple[str, str, bool]] = []

    def accepted(args: list[str], cwd: Path) -> str:  # noqa: ARG001
        job = str(100 + len(events))
        events.append(("sbatch", job, "--hold" in args and (out.index.is_file() or job != "100")))
        return job

    monkeypatch.setattr(chain, "sbatch", accepted)
    monkeypatch.setattr(chain, "release", lambda job: events.append(("release", job, not out.index.exists())))
    jobs = chain.submit(exp, echo=lambda _: None)
    assert list(jobs) == list(stages.STAGES[1:])
    assert events[:2] == [("sbatch", "100", True), ("release", "100", True)]  # held, cleared, then released
    assert [e[0] for e in events] == ["sbatch", "release"] * len(jobs) and all(e[2] for e in events)


def test_a_held_job_whose_outputs_cannot_be_cleared_is_cancelled(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # submitted held, then its outputs go: when they cannot, the held job must not be left to run on them
    from layer1_patches.shared.errors import CamnetError
    from layer3_inference.pipeline import chain

    run = _Runs(tmp_path, monkeypatch)
    run()
    exp = run.experiment(index={"fractions": {"train": 0.6, "val": 0.4}})
    calls: list[str] = []

    def stuck(*args: Any, **kwargs: Any) -> None:  # noqa: ARG001
        raise CamnetError("cannot remove out/patches/index.json: Permission denied")

    monkeypatch.setattr(chain, "sbatch", lambda *_, **__: "100")
    monkeypatch.setattr(stages, "clear_outputs", stuck)
    monkeypatch.setattr(chain, "cancel", lambda job: calls.append(f"cancel {job}"))
    monkeypatch.setattr(chain, "release", lambda job: calls.append(f"release {job}"))
    with pytest.raises(CamnetError, match="Permission denied"):
        chain.submit(exp, echo=lambda _: None)
    assert calls == ["cancel 100"]
