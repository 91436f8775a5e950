"""The report and `pipeline status` on an already-computed set of outputs (no training, no SLURM)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from layer3_inference.pipeline.collect import ReportData, SlideView, health_warnings
from layer3_inference.pipeline.config import load_experiment
from layer3_inference.pipeline.layout import Layout
from layer3_inference.pipeline.report import console_summary, render
from layer3_inference.pipeline.report_html import line_chart
from layer3_inference.pipeline.stages import write_manifests
from layer3_inference.summaries import HeatmapSummary, to_json

from .conftest import assert_well_formed, parse_report, report_data, report_tables, run_pipeline, write_experiment

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
    # an evaluation written before per-split figures (summary_version 1): the report must still show it
    (layout.evaluate / "summary.json").write_text(json.dumps(dict(
        slides=3, tumour_slides=1, slide_auc=None, froc_score=0.5, froc_sensitivity={"0.25": 0.5, "8": 1.0},
        mean_dice_tumour_slides=None, mean_iou_tumour_slides=None, mean_pixel_auc=None, score_method="max",
        threshold=None, plots=[], summary_version=1)))
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
    assert cohort["patient_000_node_0"]["dice"] == "0.8123" and cohort["patient_001_node_0"]["dice"] == "no annotation"
    assert cohort["patient_001_node_0"]["slide_score"] == "0.9100"
    splits = {r["split"]: r for r in tables["splits"]}
    assert splits["all"] == {"split": "all", "slides": "3", "patients": "3", "tumour": "200", "normal": "440"}
    assert tables["metrics"][0]["auc"] == "0.9412"
    assert {r["fp_per_slide"]: r["sensitivity"] for r in tables["froc"]} == {"0.2500": "0.5000", "8": "1.0000"}
    stages = {r["stage"]: r for r in tables["stages"]}
    assert stages["layer1"]["time"] == "12 s" and stages["explain"]["state"] == "disabled"
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
    assert text.splitlines()[-2:] == ["3 slides; stage times: layer1 12 s", "health warnings: none"]


def split_figures(slides: int, tumour: int, auc: float | None, froc: float | None, **extra: object) -> dict:
    """One split of an evaluation summary v2, as `evaluate` writes it."""
    return {"slides": slides, "tumour_slides": tumour, "trained_on": False, "lesions": tumour, "slide_auc": auc,
            "froc_score": froc, "froc_sensitivity": {"0.25": froc, "8": froc},
            "mean_dice_tumour_slides": None, "mean_iou_tumour_slides": None, "mean_pixel_auc": None, "plots": [],
            **extra}


# Written train first, as a dict may be: the report must still put the held-out test split first.
EVALUATION_V2: dict[str, Any] = {
    "summary_version": 2, "headline_split": "test", "slides": 6, "score_method": "max", "threshold": None,
    "froc_config": {},
    "warnings": [{"code": "auc_small_sample", "message": "test: AUC from 2 slides", "split": "test"}],
    "splits": {"train": split_figures(2, 1, 1.0, 1.0, trained_on=True),
               "val": split_figures(2, 1, 0.5, 0.25),
               "test": split_figures(2, 1, 0.75, 0.5, plots=["froc_test.png"])},
    "plots": ["froc_test.png"]}
EVALUATION_ROWS = [{"slide": s, "split": split, "label": "1", "slide_score": "0.9"}
                   for s, split in (("a_train", "train"), ("b_train", "train"), ("c_val", "val"), ("d_val", "val"),
                                    ("e_test", "test"), ("f_test", "test"))]


def test_report_headline_is_the_test_split() -> None:
    page = render(report_data(evaluate_summary=EVALUATION_V2, evaluate_rows=EVALUATION_ROWS,
                              images={"evaluate/froc_test.png": b"png"}))
    parsed = parse_report(page)
    order = [t for t in parsed.order if t.startswith("evaluate-summary-")]
    assert order == ["evaluate-summary-test", "evaluate-summary-val", "evaluate-summary-train"]
    assert parsed.texts["evaluate-headline"].startswith("Headline (test split, 2 slides): slide AUC 0.7500")
    assert "held-out test slides: the headline" in parsed.texts["split-test"]
    assert "slides that trained the model: not an estimate of performance" in parsed.texts["split-train"]
    auc = {split: {r["metric"]: r["value"] for r in parsed.tables[f"evaluate-summary-{split}"]}["slide_auc"]
           for split in ("test", "val", "train")}
    assert auc == {"test": "0.7500", "val": "0.5000", "train": "1.0000"}
    assert 'id="evaluate-summary-test" data-split="test"' in page and 'id="froc-val" data-split="val"' in page
    assert 'alt="froc_test.png (test split)"' in page  # the split's own FROC plot, named by split


def test_training_slides_are_not_pooled_with_test_slides_in_the_report() -> None:
    parsed = parse_report(render(report_data(evaluate_summary=EVALUATION_V2, evaluate_rows=EVALUATION_ROWS)))
    slides = {split: [r["slide"] for r in parsed.tables[f"evaluate-{split}"]] for split in ("test", "val", "train")}
    assert slides == {"test": ["e_test", "f_test"], "val": ["c_val", "d_val"], "train": ["a_train", "b_train"]}
    assert all(r["split"] == "train" for r in parsed.tables["evaluate-train"])
    assert "evaluate-summary" not in parsed.tables  # no pooled table beside the per-split ones


def test_a_split_that_trained_the_model_comes_last_whatever_its_name() -> None:
    summary = {**EVALUATION_V2, "headline_split": "val",
               "splits": {"extra": split_figures(1, 0, None, None, trained_on=True),
                          "val": split_figures(2, 1, 0.5, 0.25), "unassigned": split_figures(1, 0, None, None)}}
    parsed = parse_report(render(report_data(evaluate_summary=summary)))
    assert [t for t in parsed.order if t.startswith("evaluate-summary-")] == [
        "evaluate-summary-val", "evaluate-summary-unassigned", "evaluate-summary-extra"]
    assert "for want of a test split" in parsed.texts["split-val"]
    assert "these slides trained the model" in parsed.texts["split-extra"]


def test_an_empty_froc_curve_is_a_sentence_not_an_empty_table() -> None:
    summary = {**EVALUATION_V2, "splits": {"test": split_figures(2, 0, None, None),
                                           "val": split_figures(2, 1, 0.5, None)}}
    parsed = parse_report(render(report_data(evaluate_summary=summary)))
    assert "froc-test" not in parsed.tables and "froc-val" not in parsed.tables
    assert parsed.texts["froc-test-empty"] == "no FROC curve for the test split: no annotated lesions"
    assert parsed.texts["froc-val-empty"] == "no FROC curve for the val split: no lesion detected at any threshold"


def test_a_split_with_only_isolated_tumour_cells_was_said_to_miss_its_lesions() -> None:
    summary = {**EVALUATION_V2, "splits": {"test": split_figures(2, 1, 0.5, None, lesions=0)}}
    parsed = parse_report(render(report_data(evaluate_summary=summary)))
    assert parsed.texts["froc-test-empty"] == "no FROC curve for the test split: no annotated lesions"


def test_report_shows_an_older_evaluation_as_split_unknown(computed: Path) -> None:
    from layer3_inference.pipeline.collect import collect

    data = collect(load_experiment(computed))
    assert data.evaluate_summary["summary_version"] == 1  # read by the version-1 contract, not dropped
    parsed = parse_report(render(data))
    note = parsed.texts["split-unknown-note"]
    assert note.startswith("Split unknown") and "pool every slide" in note
    assert {r["metric"]: r["value"] for r in parsed.tables["evaluate-summary"]}["froc_score"] == "0.5000"
    assert "evaluate-headline" not in parsed.texts


HEALTH = dict(
    metrics={"val": {"n": 40, "auc": 1.0}, "warnings": [
        {"code": "auc_small_sample", "message": "val: AUC exactly 1 from 20 tumour", "split": "val"}]},
    evaluate_summary={**EVALUATION_V2, "warnings": [
        {"code": "froc_empty", "message": "val: no lesion detected", "split": "val"}]},
    slides=[SlideView("s1", None, None, [{"code": "colour_shift", "message": "s1: colour far off", "split": None}],
                      7.5, 0.25),
            SlideView("s2", None, None)],
    explain_summary={"warnings": [{"code": "sanity_inconclusive", "message": "dead randomised model",
                                   "split": None}],
                     "sanity": {"status": "inconclusive", "random_logit_std": 1e-12, "methods": {}}})


def test_health_box_lists_each_sources_warnings() -> None:
    page = render(report_data(**HEALTH))
    parsed = parse_report(page)
    top = parse_report(page[page.index('id="health"'):page.index('id="stages"')])  # the box alone
    box = [(i["source"], i["code"], i["split"]) for i in top.items]
    assert box == [("training", "auc_small_sample", "val"), ("evaluation", "froc_empty", "val"),
                   ("heatmap:s1", "colour_shift", ""), ("explain", "sanity_inconclusive", "")]
    assert page.index('id="health"') < page.index('id="stages"')  # at the top
    assert "4 warnings" in parsed.texts["health"] and "class=\"health\"" in page
    assert parsed.texts["training-warnings"].startswith("auc_small_sample (training, val)")
    assert "s1: colour far off" in parsed.texts["heatmap-warnings-s1"]
    assert parsed.texts["slide-facts-s1"] == ("colour shift from training 7.5000; share of tissue called tumour "
                                              "0.2500")
    assert "heatmap-warnings-s2" not in parsed.texts


def test_sanity_warnings_an_older_explain_did_not_list_reach_the_health_box() -> None:
    explain = {"sanity": {"status": "failed", "random_logit_std": 0.5,
                          "methods": {"gradcam": {"status": "failed", "input_independent": True}}}}
    old = {"sanity": {"lime": {"median": 0.9, "flagged": True}, "gradcam": {"median": 0.1, "flagged": False}}}
    listed = {**explain, "warnings": [{"code": "sanity_failed", "message": "gradcam failed", "split": None}]}
    codes = [[i["code"] for i in parse_report(render(report_data(explain_summary=e))).items]
             for e in (explain, old, listed)]
    assert codes == [["sanity_failed", "input_independent"], ["sanity_failed"], ["sanity_failed", "input_independent"]]


def test_report_without_warnings_shows_the_green_line() -> None:
    parsed = parse_report(render(report_data(metrics={"val": {"n": 3}, "warnings": []},
                                             evaluate_summary={**EVALUATION_V2, "warnings": []})))
    assert parsed.texts["health"] == "no health warnings" and parsed.items == []


def test_training_section_says_which_epoch_was_kept() -> None:
    metrics = {"val": {"n": 40, "auc": 1.0}, "best_val_auc": 1.0,
               "selected": {"epoch": 2, "monitor": "val_auc", "value": 1.0, "tie_break": "val_loss"}}
    parsed = parse_report(render(report_data(metrics=metrics)))
    assert parsed.texts["selected"] == "model kept: epoch 2 (best val_auc 1.0000, tie broken by val_loss)"
    assert [r["split"] for r in parsed.tables["metrics"]] == ["val"]  # `selected` is no split


def test_console_summary_lists_every_warning() -> None:
    lines = console_summary(report_data(**HEALTH)).splitlines()
    assert lines[-5:] == ["health warnings: 4",
                          "  warning: training [val]: auc_small_sample: val: AUC exactly 1 from 20 tumour",
                          "  warning: evaluation [val]: froc_empty: val: no lesion detected",
                          "  warning: heatmap:s1: colour_shift: s1: colour far off",
                          "  warning: explain: sanity_inconclusive: dead randomised model"]


HOSTILE = '<b>x</b> & "q" </table>'


def test_report_stays_well_formed_whatever_the_files_say() -> None:
    bad = {"code": HOSTILE, "message": HOSTILE, "split": HOSTILE}
    summary = {**EVALUATION_V2, "warnings": [bad], "headline_split": HOSTILE,
               "splits": {HOSTILE: split_figures(1, 1, 0.5, 0.5, plots=[HOSTILE]), **EVALUATION_V2["splits"]}}
    explain = {"warnings": [bad], "rcv": [{"layer": HOSTILE, "concept": HOSTILE, "status": HOSTILE}],
               "sanity": {"status": HOSTILE, "random_logit_std": 0.5,
                          "methods": {HOSTILE: {"status": HOSTILE, "input_independent": True}}}}
    sanity = {"random_logit_std": 0.5, "depths": [{"depth": 1, "randomised_from": HOSTILE}],
              "methods": {HOSTILE: {"by_depth": [{"depth": 1, "median": 0.1, "status": HOSTILE}]}}}
    data = report_data(name=HOSTILE, metrics={"warnings": [bad], "selected": {"epoch": HOSTILE, "monitor": HOSTILE}},
                       evaluate_summary=summary, evaluate_rows=[{"slide": HOSTILE, "split": HOSTILE}],
                       slides=[SlideView(HOSTILE, None, None, [bad], None, 0.5)], explain_summary=explain,
                       explain_sanity=sanity)
    for page in (render(data), render(report_data(evaluate_summary={"slides": 1, "froc_sensitivity": {HOSTILE: 1}},
                                                  explain_summary={"sanity": {HOSTILE: {"flagged": True}}}))):
        assert_well_formed(page)
        assert HOSTILE not in page and "&lt;b&gt;x&lt;/b&gt; &amp; &quot;q&quot; &lt;/table&gt;" in page


DEAD_STD = 3e-12  # a dead randomised model's logit std


def test_a_damaged_evaluation_summary_dropped_its_warnings_without_a_word(computed: Path) -> None:
    from layer3_inference.pipeline.collect import collect

    exp = load_experiment(computed)
    layout = Layout(exp.out)
    (layout.evaluate / "summary.json").write_text('{"summary_version": 2, "splits": ')  # cut short: a full disk
    data = collect(exp)
    assert data.evaluate_summary == {}
    found = [(w.source, w.code, w.message) for w in health_warnings(data)]
    assert found[0] == ("report", "unreadable_summary", f"{layout.evaluate / 'summary.json'}: damaged or "
                        "unreadable: its figures and warnings are missing from this report")
    assert parse_report(render(data)).texts  # the report still renders


def test_collect_reads_per_split_evaluation_and_every_warning(computed: Path) -> None:
    from layer2_training.health import HealthWarning
    from layer3_inference.pipeline.collect import collect

    exp = load_experiment(computed)
    layout = Layout(exp.out)
    (layout.evaluate / "summary.json").write_text(json.dumps(EVALUATION_V2))
    (layout.evaluate / "froc_test.png").write_bytes(b"test plot")
    (layout.evaluate / "cohort.csv").write_text("slide,split,label,slide_score\npatient_001_node_0,test,0,0.91\n"
                                                "patient_000_node_0,train,1,0.97\n")
    (layout.heatmaps / "normal_9" / "summary.json").write_text(to_json(heatmap_summary(
        "normal_9", run_hash="h", patches=321, slide_score=0.2, files=["summary.json"], colour_shift=9.5,
        tumour_share=0.9, warnings=[HealthWarning("tumour_share", "normal_9: 90% of tissue called tumour")])))
    (layout.run_dir / "metrics.json").write_text(json.dumps({
        "val": {"n": 150, "auc": 1.0}, "warnings": [{"code": "one_class", "message": "val: all normal",
                                                     "split": "val"}]}))
    layout.explain.mkdir()
    (layout.explain / "sanity.json").write_text(json.dumps({"random_logit_std": DEAD_STD, "status": "inconclusive",
                                                            "methods": {}}))
    (layout.explain / "summary.json").write_text(json.dumps({"sanity": {"status": "inconclusive"}, "warnings": []}))
    data = collect(exp)
    assert data.evaluate_summary["splits"]["test"]["slide_auc"] == 0.75
    assert data.images["evaluate/froc_test.png"] == b"test plot"
    assert data.explain_sanity["random_logit_std"] == DEAD_STD
    assert [(w.source, w.code) for w in health_warnings(data)] == [
        ("training", "one_class"), ("evaluation", "auc_small_sample"), ("heatmap:normal_9", "tumour_share"),
        ("explain", "sanity_inconclusive")]
    view = {v.slide: v for v in data.slides}["normal_9"]
    assert (view.colour_shift, view.tumour_share) == (9.5, 0.9)
    assert [r["slide"] for r in parse_report(render(data)).tables["evaluate-test"]] == ["patient_001_node_0"]



# --- issue 16, point 10: the report a researcher reads ------------------------------------------------------


def test_the_finished_report_said_its_own_stage_was_running() -> None:
    from layer3_inference.pipeline.status import StageStatus

    data = report_data(status=[StageStatus("evaluate", "11", "finished"), StageStatus("report", "12", "running")],
                       generated="2026-01-02 03:04:05")
    parsed = parse_report(render(data))
    stages = {r["stage"]: r for r in parsed.tables["stages"]}
    assert stages["report"]["state"] == "finished" and "this report" in stages["report"]["detail"]
    assert not any(r["state"] == "running" for r in parsed.tables["stages"])


def test_stage_times_were_shown_as_seconds_with_four_decimals() -> None:
    from layer3_inference.pipeline.status import StageStatus

    data = report_data(status=[StageStatus(s, "", "finished") for s in ("index", "layer2", "heatmap")],
                       timings={"index": {"seconds": 21.0}, "layer2": {"seconds": 200.0},
                                "heatmap": {"seconds": 7384.0}})
    stages = {r["stage"]: r["time"] for r in parse_report(render(data)).tables["stages"]}
    assert stages == {"index": "21 s", "layer2": "3 min 20 s", "heatmap": "2 h 3 min"}


def test_p_0053_was_shown_as_significant_false_without_explanation() -> None:
    rows = [{"layer": f"l{i}", "concept": "c", "p_value": 0.0053 if i == 0 else 0.5, "p_adjusted": min(1, 12 * (
        0.0053 if i == 0 else 0.5)), "significant": False, "status": "not significant"} for i in range(12)]
    rows.append({"layer": "l0", "concept": "d", "p_value": 1e-5, "p_adjusted": 1.3e-4, "significant": True,
                 "status": "significant"})
    parsed = parse_report(render(report_data(explain_summary={"rcv": rows, "config": {"rcv": {"alpha_level": 0.1}}})))
    assert "13 tests" in parsed.texts["rcv-test"] and "Bonferroni" in parsed.texts["rcv-test"]
    assert "two-sided test" in parsed.texts["rcv-test"] and "0.1/13 = 0.0077" in parsed.texts["rcv-test"]
    cells = {(r["layer"], r["concept"]): r["significant"] for r in parsed.tables["rcv"]}
    assert cells[("l0", "c")] == "no: p 0.0053 < 0.1/13 = 0.0077, but not significant"
    assert cells[("l1", "c")] == "no: p 0.5 >= 0.1/13 = 0.0077" and cells[("l0", "d")].startswith("yes: p 1e-05 <")


def test_resolved_configs_are_collapsed() -> None:
    page = render(report_data(configs={"experiment": "name: t\n", "layer2": "epochs: 2\n"}))
    assert '<details class="config" id="config-experiment"><summary>experiment</summary><pre>name: t' in page
    assert page.count("<details") == 2 and "<pre>epochs: 2" in page


def test_training_curves_have_ticks_labels_and_a_legend_off_the_lines() -> None:
    import re

    svg = line_chart("loss", {"loss": [(1, 0.7), (2, 0.5), (3, 0.4)], "val_loss": [(1, 0.6), (2, 0.3), (3, 0.35)]},
                     y_label="loss")
    assert svg.count('class="xtick"') == 3 and svg.count('class="ytick"') >= 4 and ">epoch</text>" in svg
    assert "rotate(-90)" in svg  # the y axis says what it shows
    assert min(int(s) for s in re.findall(r'font-size="(\d+)"', svg)) >= 12
    plot = re.search(r'<rect x="(\d+)" y="\d+" width="(\d+)"', svg)
    assert plot is not None
    right = int(plot.group(1)) + int(plot.group(2))
    legend_x = [float(x) for x in re.findall(r'<text class="legend" x="([\d.]+)"', svg)]
    assert len(legend_x) == 2 and min(legend_x) > right  # beside the plot, never over a line
