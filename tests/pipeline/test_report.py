"""The report and `pipeline status` on an already-computed set of outputs (no training, no SLURM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layer3_inference.pipeline.collect import ReportData
from layer3_inference.pipeline.config import load_experiment
from layer3_inference.pipeline.layout import Layout
from layer3_inference.pipeline.report import line_chart, render
from layer3_inference.pipeline.stages import write_manifests
from layer3_inference.summaries import EvaluationSummary, HeatmapSummary, to_json

from .conftest import report_tables, run_pipeline, write_experiment

SLIDES = ("patient_000_node_0", "patient_001_node_0", "normal_9")


@pytest.fixture()
def computed(tmp_path: Path) -> Path:
    """An experiment whose index, training, heatmap and evaluate outputs exist (made up, small)."""
    slides = tmp_path / "slides"
    slides.mkdir()
    for s in SLIDES:
        (slides / f"{s}.svs").write_bytes(b"")
    (slides / "patient_000_node_0.xml").write_text("<ASAP_Annotations/>")
    cfg = write_experiment(tmp_path / "exp.yaml", name="t", slides=[str(slides)], annotations=str(slides),
                           out=str(tmp_path / "out"), explain={"enabled": False})
    exp = load_experiment(cfg)
    write_manifests(exp)
    layout = Layout(exp.out)
    entries = [{"path": f"{s}.h5", "slide_name": s, "patient": s[:11], "node": "0", "centre": "0",
                "split": split, "n_patches": t + n, "n_tumour": t, "n_normal": n, "patch_size": 64, "level": 0,
                "working_mpp": 0.5, "config_hash": "x"}
               for s, split, t, n in zip(SLIDES, ("train", "test", "val"), (120, 80, 0), (150, 140, 150), strict=True)]
    summary = {"test": {"slides": 1, "patients": 1, "tumour": 80, "normal": 140},
               "train": {"slides": 1, "patients": 1, "tumour": 120, "normal": 150},
               "val": {"slides": 1, "patients": 1, "tumour": 0, "normal": 150}}
    layout.index.write_text(json.dumps({"index_version": 1, "split_by": "patient", "summary": summary,
                                        "entries": entries}))
    layout.run_dir.mkdir()
    (layout.run_dir / "history.csv").write_text("epoch,lr,loss,auc,val_loss,val_auc\n1,0.001,0.7,0.6,0.5,0.8\n"
                                                "2,0.001,0.4,0.9,0.3,0.95\n")
    (layout.run_dir / "metrics.json").write_text(json.dumps({"val": {"n": 150, "n_tumour": 0, "auc": 0.9412,
                                                                     "accuracy": 0.9, "threshold": 0.5}}))
    for s, score in zip(SLIDES, (0.97, 0.91, 0.2), strict=True):
        (layout.heatmaps / s).mkdir(parents=True)
        (layout.heatmaps / s / "summary.json").write_text(to_json(heatmap_summary(
            s, run_hash="h", patches=321, slide_score=score, files=["summary.json"])))
    layout.evaluate.mkdir()
    (layout.evaluate / "cohort.csv").write_text(
        "slide,label,slide_score,pixel_auc,dice,iou,patches\npatient_000_node_0,1,0.97,0.95,0.812345,0.7,321\n"
        "patient_001_node_0,0,0.91,,,,321\nnormal_9,0,0.2,,,,321\n")
    (layout.evaluate / "summary.json").write_text(to_json(EvaluationSummary(
        slides=3, tumour_slides=1, slide_auc=None, froc_score=0.5, froc_sensitivity={"0.25": 0.5, "8": 1.0},
        mean_dice_tumour_slides=None, mean_iou_tumour_slides=None, mean_pixel_auc=None, score_method="max",
        threshold=None)))
    (layout.jobs).write_text(json.dumps({"mode": "local", "jobs": {}}))
    (layout.timings).write_text(json.dumps({"layer1": {"status": "done", "seconds": 12.5}}))
    return cfg



def heatmap_summary(slide: str, **values: object) -> HeatmapSummary:
    """A valid heatmap summary of `slide` (the contract the report reads), with `values` set."""
    base: dict[str, object] = dict(
        slide=slide, slide_path=f"/data/{slide}.tif", run_hash="", model={}, patches=0, grid_shape=[1, 1],
        footprint=64, step=64.0, level=0, downsample=1.0, working_mpp=0.5, mpp=0.5, dimensions=[64, 64],
        tissue_area_mm2=0.0, tumour_area_mm2=0.0, threshold=0.5, slide_score=0.0, score_method="max",
        max_probability=0.0, mean_probability=0.0, tumour_regions=0, ranks=1, batch_size=64, reader_threads=1,
        times={}, seconds=0.0, patches_per_s=0.0, package_version="test")
    return HeatmapSummary(**{**base, **values})  # type: ignore[arg-type]

def test_report_shows_the_numbers_of_the_outputs(computed: Path) -> None:
    proc = run_pipeline(["report", "--config", str(computed)], timeout=120)
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.split("report: ")[1].strip())
    assert path.name == "index.html" and not list(path.parent.glob(".*partial"))
    tables, texts = report_tables(path)
    assert texts["slide-count"] == "3 slides"
    cohort = {r["slide"]: r for r in tables["cohort"]}
    assert cohort["patient_000_node_0"]["tumour_patches"] == "120" and cohort["normal_9"]["split"] == "val"
    assert cohort["patient_000_node_0"]["dice"] == "0.8123" and cohort["patient_001_node_0"]["dice"] == "-"
    assert cohort["patient_001_node_0"]["slide_score"] == "0.9100"
    splits = {r["split"]: r for r in tables["splits"]}
    assert splits["all"] == {"split": "all", "slides": "3", "patients": "3", "tumour": "200", "normal": "440"}
    assert tables["metrics"][0]["auc"] == "0.9412"
    assert {r["fp_per_slide"]: r["sensitivity"] for r in tables["froc"]} == {"0.2500": "0.5000", "8": "1.0000"}
    stages = {r["stage"]: r for r in tables["stages"]}
    assert stages["layer1"]["seconds"] == "12.5000" and stages["explain"]["state"] == "disabled"
    assert stages["index"]["state"] == "finished" and stages["layer1"]["state"] == "not run"
    html = path.read_text()
    assert "<svg" in html and "val_auc" in html  # training curves


def test_status_of_a_local_run(computed: Path) -> None:
    proc = run_pipeline(["status", "--config", str(computed)], timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split()[2:] for line in proc.stdout.splitlines()[1:-1]}
    assert rows["layer1"][:2] == ["not", "run"] and "3 missing" in " ".join(rows["layer1"])
    assert rows["index"][0] == rows["layer2"][0] == rows["heatmap"][0] == rows["evaluate"][0] == "finished"
    assert rows["explain"] == ["disabled"] and rows["report"][:2] == ["not", "run"]


def test_render_escapes_and_survives_missing_pieces() -> None:
    data = ReportData(name="<x>", out="o", generated="now", cohort=[], splits={}, history=[], metrics={},
                      evaluate_summary={}, evaluate_rows=[], explain_summary=None, images={}, slides=[], panels=[],
                      status=[], timings={}, configs={"e": "a: <b>"}, versions={})
    page = render(data)
    assert "&lt;x&gt;" in page and "<x>" not in page and "a: &lt;b&gt;" in page
    assert line_chart("t", {}) == "" and "polyline" in line_chart("t", {"a": [(1, 0.5), (2, float("nan"))]})


def test_console_summary_lists_the_cohort(computed: Path) -> None:
    from layer3_inference.pipeline.collect import collect
    from layer3_inference.pipeline.report import console_summary

    text = console_summary(collect(load_experiment(computed)))
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines()[1:-1]}
    assert rows["patient_000_node_0"] == ["train", "120", "150", "-", "0.9700", "0.8123"]  # no store: rejects "-"
    assert rows["normal_9"][:3] == ["val", "0", "150"]
    assert text.splitlines()[-1] == "3 slides; stage times: layer1 12 s"
