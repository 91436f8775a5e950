"""The whole chain on the local SLURM cluster, judged by the numbers in its report; and the heatmap sbatch
script alone as an array over two slides (text manifest)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from ..conftest import SlurmCluster
from ..layer3.conftest import write_run_dir
from .conftest import REPO, report_tables, run_pipeline, write_experiment

pytestmark = pytest.mark.slurm


def test_heatmap_sbatch_array_over_two_slides_from_a_text_manifest(slurm_cluster: SlurmCluster,
                                                                    tmp_path: Path) -> None:
    from layer1_patches.synth import write_cohort

    slides = write_cohort(tmp_path / "slides with space", 2, 1024, seed=5, tumour_fraction=0.3)
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("# slides\n" + "".join(f"{s}\n" for s in slides))
    run = write_run_dir(tmp_path / "run")
    out = tmp_path / "heatmaps"
    job = slurm_cluster.submit(["--array=0-1", f"--output={tmp_path}/hm_%A_%a.out", "--cpus-per-task=1",
                                f"--export=ALL,CAMNET_MANIFEST={manifest},CAMNET_MODEL={run},CAMNET_OUT={out},"
                                f"CAMNET_ROOT={REPO}", str(REPO / "slurm" / "layer3_heatmap.sbatch")], cwd=REPO)
    assert slurm_cluster.wait(job, timeout=300) == "COMPLETED", [p.read_text() for p in tmp_path.glob("hm_*.out")]
    for slide in slides:
        summary = json.loads((out / slide.stem / "summary.json").read_text())
        assert summary["patches"] > 0 and 0 <= summary["slide_score"] <= 1


def test_whole_chain_on_slurm_report_numbers(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    from layer1_patches.synth import write_cohort

    slides = tmp_path / "slides"
    write_cohort(slides, 6, 2048, seed=21, tumour_fraction=0.3)  # three patients, two slides each
    cfg = write_experiment(
        tmp_path / "exp.yaml", name="chaintest", slides=[str(slides)], annotations=str(slides),
        out=str(tmp_path / "out"),
        layer1={"config": "configs/layer1/random.yaml",
                "overrides": ["patch_size=32", "resolution.mpp=0.5", "sampling.random.per_class=150",
                              "sampling.random.grid_step=16", "reader.threads=1"]},
        index={"fractions": {"train": 0.34, "val": 0.33, "test": 0.33}, "seed": 0},
        layer2={"config": "configs/layer2/mobilenetv2_cpu.yaml",
                "overrides": ["epochs=6", "output.tensorboard=false"]},
        heatmap={"config": "configs/layer3/heatmap.yaml", "overrides": ["output.thumbnail_size=256"]},
        explain={"config": "configs/layer3/explain.yaml",
                 "overrides": ["select.k=2", "lime.num_samples=40", "sanity.enabled=false", "rcv.per_class=20",
                               "rcv.n_random=10", "rcv.n_repeats=3", "rcv.folds=3", "rcv.auto_layers=1"]},
        slurm={s: {"cpus": 1} for s in ("layer1", "index", "heatmap", "evaluate", "report")}
        | {"layer2": {"cpus": 2}, "explain": {"cpus": 2}})
    env = slurm_cluster.env()
    proc = run_pipeline(["submit", "--config", str(cfg)], env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    jobs = json.loads((tmp_path / "out" / "pipeline" / "jobs.json").read_text())["jobs"]
    assert list(jobs) == ["layer1", "index", "layer2", "heatmap", "evaluate", "explain", "report"]
    assert slurm_cluster.wait(jobs["report"], timeout=900) == "COMPLETED", run_pipeline(
        ["status", "--config", str(cfg)], env=env).stdout
    for stage, job in jobs.items():
        assert slurm_cluster.job_state(job) == "COMPLETED", stage

    status = run_pipeline(["status", "--config", str(cfg)], env=env, timeout=60)
    assert status.returncode == 0 and "summary: 7 finished" in status.stdout, status.stdout

    out = tmp_path / "out"
    tables, texts = report_tables(out / "report" / "index.html")
    assert texts["slide-count"] == "6 slides"
    index = json.loads((out / "patches" / "index.json").read_text())
    cohort = {r["slide"]: r for r in tables["cohort"]}
    for entry in index["entries"]:
        row = cohort[entry["slide_name"]]
        assert (row["tumour_patches"], row["normal_patches"], row["split"]) == (
            str(entry["n_tumour"]), str(entry["n_normal"]), entry["split"])
    splits = {r["split"]: r for r in tables["splits"]}
    for name, counts in index["summary"].items():
        assert splits[name]["tumour"] == str(counts["tumour"]) and splits[name]["normal"] == str(counts["normal"])
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    val = next(r for r in tables["metrics"] if r["split"] == "val")
    assert float(val["auc"]) == pytest.approx(metrics["val"]["auc"], abs=1e-4) and float(val["auc"]) > 0.8
    with open(out / "evaluate" / "cohort.csv") as f:
        evaluated = {r["slide"]: r for r in csv.DictReader(f)}
    held_out = [e["slide_name"] for e in index["entries"] if e["split"] == "test"]
    assert held_out
    for slide in held_out:
        assert float(cohort[slide]["dice"]) == pytest.approx(float(evaluated[slide]["dice"]), abs=1e-4)
    stages = {r["stage"]: r for r in tables["stages"]}
    assert all(stages[s]["state"] == "finished" for s in jobs if s != "report")
    assert all(stages[s]["time"] != "-" for s in jobs if s != "report")
    assert (out / "explain" / "summary.json").is_file() and "Regression concept vectors" in (
        out / "report" / "index.html").read_text()
