"""`layer3_inference/evaluate.py` on hand-built maps and slide results with answers worked out by hand: pixel
metrics, slide AUC, figures per split (Layer 1's index) and the health warnings of the evaluation summary.

Lesions, detections and the FROC curve are `froc.py`'s (tests/layer3/test_froc.py).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from layer1_patches.index import DatasetIndex, IndexEntry
from layer1_patches.shared.errors import CamnetError, ConfigError
from layer3_inference.config import EvaluateConfig, load_evaluate_config
from layer3_inference.evaluate import (
    COLUMNS,
    SlideEval,
    cohort_csv,
    headline_split,
    pixel_metrics,
    read_splits,
    slide_auc,
    split_of,
    split_rank,
    summarise,
)
from layer3_inference.summaries import EvaluationSummary, load

# --- pixel metrics ----------------------------------------------------------------------------------------


def _hand_maps() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4 x 4 maps: truth is the top-left 2 x 2 square; the AUC region is the top row and the truth.

    truth          probability                      region (AUC)
    1 1 0 0        0.9  0.8  0.6  NaN               1 1 1 1
    1 1 0 0        0.7  0.4  0.2  NaN               1 1 0 0
    0 0 0 0        0.1  0.1  0.1  0.1               0 0 0 0
    0 0 0 0        0.1  0.1  0.1  0.1               0 0 0 0
    """
    truth = np.zeros((4, 4), bool)
    truth[:2, :2] = True
    prob = np.full((4, 4), 0.1, np.float32)
    prob[:2] = [[0.9, 0.8, 0.6, np.nan], [0.7, 0.4, 0.2, np.nan]]
    region = np.zeros((4, 4), bool)
    region[0] = True
    region[1, :2] = True
    return prob, truth, region


def test_pixel_dice_iou_auc_known_answer() -> None:
    prob, truth, region = _hand_maps()
    # predicted (>= 0.5): 0.9, 0.8, 0.7 (tumour) and 0.6 (not): intersection 3, |pred| 4, |truth| 4, union 5
    # AUC over the region: positives 0.9 0.8 0.7 0.4, negatives 0.6 and NaN (= 0): 0.4 loses only to 0.6 -> 7/8
    auc, dice, iou = pixel_metrics(prob, truth, region, 0.5)
    assert dice == pytest.approx(2 * 3 / (4 + 4))
    assert iou == pytest.approx(3 / 5)
    assert auc == pytest.approx(7 / 8)


def test_pixel_auc_counts_only_the_region_but_dice_the_whole_map() -> None:
    prob, truth, _ = _hand_maps()
    everywhere = np.ones((4, 4), bool)
    # negatives now also 0.2, NaN (0), NaN (0) and eight 0.1s: 0.4 beats all of them but 0.6 -> (4 * 12 - 1) / 48
    auc, dice, _ = pixel_metrics(prob, truth, everywhere, 0.5)
    assert auc == pytest.approx(47 / 48)
    assert dice == pytest.approx(0.75)


def test_pixel_threshold_is_inclusive_and_nan_is_never_tumour() -> None:
    truth = np.array([[True, False, False]])
    prob = np.array([[0.5, np.nan, 0.49]], np.float32)
    _, dice, iou = pixel_metrics(prob, truth, np.ones_like(truth), 0.5)
    assert (dice, iou) == (pytest.approx(1.0), pytest.approx(1.0))


def test_pixel_metrics_undefined_without_tumour_or_without_normal() -> None:
    empty = np.zeros((2, 2), bool)
    low = np.full((2, 2), 0.1, np.float32)
    assert pixel_metrics(low, empty, np.ones((2, 2), bool), 0.5) == (None, None, None)
    # all of the region is tumour: AUC undefined, Dice and IoU defined
    auc, dice, iou = pixel_metrics(np.full((2, 2), 0.9, np.float32), np.ones((2, 2), bool), np.ones((2, 2), bool), 0.5)
    assert auc is None and dice == pytest.approx(1.0) and iou == pytest.approx(1.0)
    # predicted tumour on a normal slide: Dice 0 (not undefined)
    auc, dice, iou = pixel_metrics(np.full((2, 2), 0.9, np.float32), empty, np.ones((2, 2), bool), 0.5)
    assert auc is None and dice == 0.0 and iou == 0.0


# --- slide level ------------------------------------------------------------------------------------------


def _result(name: str, label: int, score: float, **kw: object) -> SlideEval:
    fields: dict[str, object] = {"slide": name, "split": "test", "label": label, "annotation": "", "patches": 10,
                                 "slide_score": score, "threshold": 0.5, "pixel_auc": None, "dice": None,
                                 "iou": None, "lesions": 0, "itc": 0, "detections": 0, "lesions_found": 0,
                                 "false_positives": 0, **kw}
    return SlideEval(**fields)  # type: ignore[arg-type]


def test_slide_auc_known_answer() -> None:
    # tumour 0.9 and 0.4, normal 0.5 and 0.1: of the 4 pairs only (0.4, 0.5) is misordered -> 3/4
    results = [_result("t1", 1, 0.9), _result("n1", 0, 0.5), _result("t2", 1, 0.4), _result("n2", 0, 0.1)]
    assert slide_auc(results) == pytest.approx(0.75)


def test_slide_auc_ties_count_half() -> None:
    assert slide_auc([_result("t", 1, 0.5), _result("n", 0, 0.5)]) == pytest.approx(0.5)


def test_slide_auc_undefined_with_one_class() -> None:
    assert slide_auc([_result("a", 0, 0.2), _result("b", 0, 0.7)]) is None
    assert slide_auc([]) is None



def test_cohort_csv_columns_and_values() -> None:
    rows = [_result("tumour_001", 1, 0.987654321, pixel_auc=0.9, dice=0.5, iou=1 / 3, lesions=2, itc=1,
                    detections=3, lesions_found=1, false_positives=2, annotation="/a/tumour_001.xml",
                    fp_probs=[0.7, 0.6], tp_probs=[0.9, 0.0]),
            _result("normal_001", 0, 0.1)]
    text = cohort_csv(rows)
    header, *lines = text.splitlines()
    assert header == ("slide,split,label,slide_score,pixel_auc,dice,iou,patches,lesions,itc,detections,"
                      "lesions_found,false_positives,annotation")
    assert tuple(header.split(",")) == COLUMNS
    table = list(csv.DictReader(io.StringIO(text)))
    assert table[1] == {"slide": "tumour_001", "split": "test", "label": "1", "slide_score": "0.987654",
                        "pixel_auc": "0.9", "dice": "0.5", "iou": "0.333333", "patches": "10", "lesions": "2",
                        "itc": "1", "detections": "3", "lesions_found": "1", "false_positives": "2",
                        "annotation": "/a/tumour_001.xml"}
    assert table[0]["slide"] == "normal_001"  # by slide within a split
    assert table[0]["pixel_auc"] == table[0]["dice"] == table[0]["iou"] == table[0]["annotation"] == ""
    assert len(lines) == 2


# --- splits -----------------------------------------------------------------------------------------------


def _entry(slide: str, split: str) -> IndexEntry:
    return IndexEntry(f"{slide}.h5", slide, slide, "", "", split, 10, 5, 5, 64, 0, 0.5, "h")


def _index(path: Path, splits: dict[str, str]) -> Path:
    DatasetIndex(path.parent, "patient", tuple(_entry(s, sp) for s, sp in splits.items())).save(path)
    return path


def test_headline_is_test_then_val_then_any_split_not_trained_on() -> None:
    assert headline_split({"train", "val", "test"}) == "test"
    assert headline_split({"train", "val"}) == "val"
    assert headline_split({"train", "holdout", "unassigned"}) == "holdout"
    assert headline_split({"train", "unknown"}) == "unknown"
    assert headline_split({"train"}) == "train"


def test_a_training_split_not_named_train_could_be_the_headline() -> None:
    """Layer 2's `data.splits.train` is configurable; evaluate's `trained_split` names it (the pipeline passes it)."""
    assert headline_split({"fold_a", "fold_b"}, "fold_a") == "fold_b"
    assert headline_split({"fold_a", "train"}, "fold_a") == "train"  # "train" is an ordinary split here
    assert split_rank("fold_a", "fold_a") > split_rank("zzz", "fold_a") > split_rank("val", "fold_a")


def test_split_comes_from_the_index_and_unlisted_slides_are_unassigned(tmp_path: Path) -> None:
    splits = read_splits(_index(tmp_path / "index.json", {"a": "train", "b": "test"}))
    assert [split_of(s, splits) for s in ("a", "b", "c")] == ["train", "test", "unassigned"]
    assert split_of("a", None) == "unknown"


def test_a_slide_in_two_splits_or_a_missing_index_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "index.json"
    DatasetIndex(tmp_path, "patient", (_entry("a", "train"), _entry("a", "test"))).save(path)
    with pytest.raises(CamnetError, match=r"index.json: slide a is in two splits, train and test"):
        read_splits(path)
    with pytest.raises(CamnetError, match=r"dataset index .*missing.json: no such file"):
        read_splits(tmp_path / "missing.json")


def _split(name: str, *rows: SlideEval) -> list[SlideEval]:
    for r in rows:
        r.split = name
    return list(rows)


def test_training_slides_are_not_pooled_with_test_slides(tmp_path: Path) -> None:
    index = _index(tmp_path / "index.json", {"tr_t1": "train", "tr_t2": "train", "tr_n1": "train",
                                             "tr_n2": "train", "va_t": "val", "va_n": "val", "te_t1": "test",
                                             "te_n1": "test", "te_t2": "test"})
    splits = read_splits(index)
    results = [
        _result("tr_t1", 1, 0.99, tp_probs=[0.99]), _result("tr_t2", 1, 0.97, tp_probs=[0.97]),
        _result("tr_n1", 0, 0.02), _result("tr_n2", 0, 0.03),
        _result("va_t", 1, 0.7, tp_probs=[0.7]), _result("va_n", 0, 0.6, fp_probs=[0.6]),
        _result("te_t1", 1, 0.8, tp_probs=[0.8]), _result("te_n1", 0, 0.9, fp_probs=[0.9]),
        _result("te_t2", 1, 0.95, tp_probs=[0.95]), _result("stray", 0, 0.1),
    ]
    for r in results:
        r.split = split_of(r.slide, splits)
    out = tmp_path / "eval"
    summary = summarise(results, EvaluateConfig(), out, index)
    assert summary == load(EvaluationSummary, out / "summary.json")
    data = json.loads((out / "summary.json").read_text())
    assert data["summary_version"] == 2 and data["headline_split"] == "test" and data["slides"] == 10
    assert list(summary.splits) == ["test", "val", "unassigned", "train"]  # summary.json sorts its keys
    assert set(data["splits"]) == {"test", "val", "unassigned", "train"}
    test, train = data["splits"]["test"], data["splits"]["train"]
    # test: tumour 0.8 and 0.95 against normal 0.9: one of two pairs ordered -> AUC 0.5 (pooled with the
    # perfectly separated training slides it would be higher)
    assert (test["slides"], test["tumour_slides"], test["trained_on"], test["slide_auc"]) == (3, 2, False, 0.5)
    # test FROC: lesions 0.8, 0.95; one FP 0.9 over 3 slides. Thresholds 0.8 -> (1/3, 1), 0.9 -> (1/3, .5),
    # 0.95 -> (0, .5): at 1/4 -> .5; from 1/2 on (beyond 1/3) -> 1. Score (.5 + 5) / 6
    assert test["froc_sensitivity"] == {"0.25": 0.5, "0.5": 1.0, "1": 1.0, "2": 1.0, "4": 1.0, "8": 1.0}
    assert test["froc_score"] == pytest.approx(5.5 / 6)
    assert (train["slides"], train["trained_on"], train["slide_auc"], train["froc_score"]) == (4, True, 1.0, 1.0)
    assert data["splits"]["unassigned"]["slides"] == 1
    assert test["plots"] == ["froc_test.png", "slide_roc_test.png"]
    assert data["plots"] == [p for s in summary.splits.values() for p in s.plots]
    assert all((out / p).is_file() for p in data["plots"])
    unassigned = [w for w in data["warnings"] if w["code"] == "unassigned_slides"]
    assert len(unassigned) == 1 and "stray" in unassigned[0]["message"] and unassigned[0]["split"] == "unassigned"
    assert not any(w["code"] == "no_split" for w in data["warnings"])
    rows = list(csv.DictReader(io.StringIO((out / "cohort.csv").read_text())))
    assert [(r["split"], r["slide"]) for r in rows] == [
        ("test", "te_n1"), ("test", "te_t1"), ("test", "te_t2"), ("val", "va_n"), ("val", "va_t"),
        ("unassigned", "stray"), ("train", "tr_n1"), ("train", "tr_n2"), ("train", "tr_t1"), ("train", "tr_t2")]


def test_without_an_index_every_slide_is_unknown_and_a_warning_says_so(tmp_path: Path) -> None:
    results = _split("unknown", _result("a", 1, 0.9, tp_probs=[0.9]), _result("b", 0, 0.2))
    data = json.loads(_summary_json(results, tmp_path))
    assert data["headline_split"] == "unknown" and list(data["splits"]) == ["unknown"]
    (no_split,) = [w for w in data["warnings"] if w["code"] == "no_split"]
    assert "--index" in no_split["message"] and no_split["split"] == "unknown"


def _summary_json(results: list[SlideEval], tmp_path: Path, index: Path | None = None) -> str:
    summarise(results, EvaluateConfig(), tmp_path / "eval", index)
    return (tmp_path / "eval" / "summary.json").read_text()


def _codes(data: dict[str, Any], split: str) -> set[str]:
    return {w["code"] for w in data["warnings"] if w["split"] == split}


def test_a_useless_models_evaluation_carries_warnings(tmp_path: Path) -> None:
    # probabilities never above 0.13 at threshold 0.5; tumour slides 0.13 and 0.12 rank above normal 0.11 and
    # 0.10 (AUC exactly 1 from 2 per class) but none is called tumour (sensitivity 0)
    results = _split("test", _result("t1", 1, 0.13, tp_probs=[0.13]), _result("t2", 1, 0.12, tp_probs=[0.0]),
                     _result("n1", 0, 0.11, fp_probs=[0.11]), _result("n2", 0, 0.10))
    data = json.loads(_summary_json(results, tmp_path))
    assert {"never_crosses_threshold", "threshold_miscalibrated", "auc_small_sample"} <= _codes(data, "test")
    assert "froc_empty" not in _codes(data, "test")  # a lesion is found at 0.13: the curve exists below 0.5
    assert data["splits"]["test"]["froc_score"] is not None


def test_an_empty_froc_curve_is_a_warning_that_says_why(tmp_path: Path) -> None:
    results = [*_split("test", _result("t1", 1, 0.7, tp_probs=[0.0]), _result("n1", 0, 0.8, fp_probs=[0.8])),
               *_split("val", _result("n2", 0, 0.3), _result("n3", 0, 0.2))]
    data = json.loads(_summary_json(results, tmp_path))
    messages = {w["split"]: w["message"] for w in data["warnings"] if w["code"] == "froc_empty"}
    assert messages == {"test": "test: FROC has no curve: no lesion detected at any threshold (1 annotated)",
                        "val": "val: FROC has no curve: no annotated lesions (isolated tumour cells do not count)"}
    assert data["splits"]["test"]["froc_score"] == 0.0 and data["splits"]["val"]["froc_score"] is None
    assert data["splits"]["val"]["plots"] == ["froc_val.png"]  # one class: no slide ROC
    assert "one_class" in _codes(data, "val")


def test_the_removed_detection_threshold_key_names_what_replaced_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config key 'froc.detection_threshold': removed.*froc.min_confidence"):
        load_evaluate_config(None, ["froc.detection_threshold=0.5"])
    path = tmp_path / "old.yaml"
    path.write_text("froc:\n  detection_threshold: 0.5\n  itc_um: 275\n")
    with pytest.raises(ConfigError, match=rf"^{path}: config key 'froc.detection_threshold': removed"):
        load_evaluate_config(path)
    assert load_evaluate_config(None, ["froc.nms_radius_um=200"]).froc.nms_radius_um == 200.0


def test_a_slide_dropped_from_the_pipelines_cohort_was_still_evaluated(tmp_path: Path) -> None:
    # review of issue 16: the pipeline's evaluate took every finished folder in the heatmaps folder, including
    # those of slides removed from the cohort; `--slides` names the ones to take
    import argparse

    from layer3_inference.cli.evaluate import register
    from layer3_inference.evaluate import finished_outputs

    for stem in ("a", "b", "gone"):
        (tmp_path / stem).mkdir()
        (tmp_path / stem / "probabilities.h5").write_text("")
        (tmp_path / stem / "summary.json").write_text(json.dumps({"run_hash": "x", "files": ["probabilities.h5"]}))
    assert [d.name for d in finished_outputs(tmp_path)] == ["a", "b", "gone"]
    assert [d.name for d in finished_outputs(tmp_path, ["b", "a"])] == ["a", "b"]
    with pytest.raises(CamnetError, match="no finished slide outputs of slides c"):
        finished_outputs(tmp_path, ["c"])
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "--heatmaps", "h", "--slides", "a", "b", "--annotations", "x", "--out", "o"])
    assert args.slides == ["a", "b"]
