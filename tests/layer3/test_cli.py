"""The commands as users meet them: exit codes, one error line naming the culprit, no finished-looking output."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile

from tests.helpers import assert_one_error

from .conftest import DATA, REPO, cli_env, heatmap_config, run_cli, write_run_dir


def assert_nothing_finished(out: Path) -> None:
    if out.exists():
        assert not list(out.glob("*/summary.json")) and not list(out.glob(".*.partial"))


def _blank_slide(path: Path) -> Path:
    tifffile.imwrite(path, np.full((1024, 1024, 3), 243, np.uint8), tile=(256, 256), photometric="rgb",
                     resolution=(20000, 20000), resolutionunit="CENTIMETER")
    return path


def _truncated(slide: Path, dest: Path) -> Path:
    data = slide.read_bytes()
    dest.write_bytes(data[: len(data) * 2 // 3])
    return dest


def _no_model(run: Path) -> Path:
    (run / "export" / "model.keras").unlink()
    return run


@pytest.mark.parametrize(
    ("run", "slide", "needles"),
    [
        (lambda t, _r: t / "nope", lambda _t, s: s, ["run dir", "nope", "no such directory"]),
        (lambda t, r: _no_model(Path(shutil.copytree(r, t / "run"))), lambda _t, s: s,
         ["model.keras", "'model_file'", "missing"]),
        (lambda t, _r: write_run_dir(t / "fine", working_mpp=0.25), lambda _t, s: s,
         ["patient_000_node_0.tif", "refusing to upsample", "working_mpp 0.25"]),
        (lambda _t, r: r, lambda t, _s: _blank_slide(t / "blank.tif"), ["blank.tif", "no tissue"]),
        (lambda _t, r: r, lambda _t, _s: DATA / "unopenable.tiff", ["unopenable.tiff", "cannot open"]),
        (lambda t, _r: write_run_dir(t / "p8", patch_size=8), lambda _t, _s: DATA / "unreadable.svs",
         ["unreadable.svs", "cannot read region"]),
        (lambda _t, r: r, lambda t, s: _truncated(s, t / "cut.tif"), ["cut.tif"]),
        (lambda _t, r: r, lambda _t, _s: DATA / "unreadable.svs", ["unreadable.svs", "smaller than one 32-px patch"]),
    ],
    ids=["missing-run", "incomplete-run", "resolution-mismatch", "no-tissue", "unopenable", "unreadable",
         "truncated", "patch-larger-than-slide"],
)
def test_bad_input(tmp_path: Path, tiny_run: Path, synth_slides: list[Path], run, slide, needles) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    proc = run_cli(["heatmap", "--config", str(heatmap_config(tmp_path / "c.yaml", **{"match.assume_mpp": 0.5})),
                    "--model", str(run(tmp_path, tiny_run)), "--slide", str(slide(tmp_path, synth_slides[0])),
                    "--out", str(out)])
    assert_one_error(proc, *needles)
    assert_nothing_finished(out)


def test_heatmap_then_evaluate(tmp_path: Path, tiny_run: Path, synth_slides: list[Path]) -> None:
    cfg = heatmap_config(tmp_path / "c.yaml")
    out = tmp_path / "heatmaps"
    slides = [str(s) for s in synth_slides] + [str(tmp_path / "missing.tif")]
    proc = run_cli(["heatmap", "--config", str(cfg), "--model", str(tiny_run), "--slides", *slides,
                    "--out", str(out)])
    assert proc.returncode == 1, proc.stderr  # one bad slide fails alone; the others are done
    assert "2/3 slides ok" in proc.stdout and "missing.tif: no such file" in proc.stdout
    assert len(list(out.glob("*/summary.json"))) == 2
    again = run_cli(["heatmap", "--config", str(cfg), "--model", str(tiny_run), "--slides", *slides[:2],
                     "--out", str(out)])
    assert again.returncode == 0 and again.stdout.count("skipped") == 2
    ev = tmp_path / "eval"
    proc = run_cli(["evaluate", "--config", str(REPO / "configs" / "layer3" / "evaluate.yaml"),
                    "--heatmaps", str(out), "--annotations", str(synth_slides[0].parent), "--out", str(ev)])
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((ev / "summary.json").read_text())
    # no --index: every slide is in split "unknown", and a warning says the figures pool them
    assert summary["slides"] == 2 and summary["headline_split"] == "unknown"
    unknown = summary["splits"]["unknown"]
    assert unknown["mean_dice_tumour_slides"] > 0.7
    assert unknown["froc_score"] is not None and (ev / "froc_unknown.png").is_file()
    assert "no_split" in {w["code"] for w in summary["warnings"]}
    rows = (ev / "cohort.csv").read_text().splitlines()
    assert rows[0].startswith("slide,split,label,slide_score,pixel_auc,dice") and len(rows) == 3


def test_evaluate_without_heatmaps(tmp_path: Path) -> None:
    (tmp_path / "h" / ".x.partial").mkdir(parents=True)
    proc = run_cli(["evaluate", "--heatmaps", str(tmp_path / "h"), "--annotations", str(tmp_path),
                    "--out", str(tmp_path / "e")])
    assert_one_error(proc, str(tmp_path / "h"), "no finished slide outputs")


@pytest.mark.horovod
def test_two_ranks_equal_one_rank(tmp_path: Path, tiny_run: Path, synth_slides: list[Path]) -> None:
    horovodrun = REPO / ".venv" / "bin" / "horovodrun"
    if not horovodrun.is_file():
        pytest.fail("horovodrun not installed: make horovod")
    cfg = str(heatmap_config(tmp_path / "c.yaml", **{"reader.batch_size": 8, "grid.stride": 24}))
    args = ["-m", "layer3_inference", "heatmap", "--config", cfg, "--model", str(tiny_run),
            "--slide", str(synth_slides[1])]
    one = run_cli(args[2:] + ["--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    two = subprocess.run([str(horovodrun), "-np", "2", "--gloo", "-H", "localhost:2", str(REPO / ".venv/bin/python"),
                          *args, "--out", str(tmp_path / "two")], cwd=REPO, env=cli_env(), capture_output=True,
                         text=True, timeout=600, check=False)
    assert two.returncode == 0, two.stdout + two.stderr
    stem = synth_slides[1].stem
    with h5py.File(tmp_path / "one" / stem / "probabilities.h5") as a, \
            h5py.File(tmp_path / "two" / stem / "probabilities.h5") as b:
        assert np.array_equal(a["coords"][()], b["coords"][()])
        assert np.array_equal(a["prob"][()], b["prob"][()])  # bit for bit
        assert np.array_equal(a["map"][()], b["map"][()], equal_nan=True)
    assert json.loads((tmp_path / "two" / stem / "summary.json").read_text())["ranks"] == 2


@pytest.mark.horovod
def test_ranks_that_cannot_find_each_other_stop_before_writing(tmp_path: Path, tiny_run: Path,
                                                               synth_slides: list[Path]) -> None:
    """Regression (issue 19): a rank started as one of 2 (here srun's variable, set by hand) whose Horovod sees a
    world of 1 (gloo under srun without a rendezvous) computed and wrote the whole heatmap by itself."""
    cfg = str(heatmap_config(tmp_path / "c.yaml"))
    proc = subprocess.run([str(REPO / ".venv/bin/python"), "-m", "layer3_inference", "heatmap", "--config", cfg,
                           "--model", str(tiny_run), "--slide", str(synth_slides[1]), "--out", str(tmp_path / "out")],
                          cwd=REPO, env=cli_env(SLURM_STEP_NUM_TASKS="2"), capture_output=True, text=True,
                          timeout=300, check=False)
    assert_one_error(proc, "the launcher started 2 ranks (SLURM_STEP_NUM_TASKS=2", "reports a world of size 1")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
