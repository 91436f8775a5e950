"""Layer 3's published summaries load back exactly, and a damaged file is one error line naming it and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layer1_patches.colour import ColourStats
from layer1_patches.shared.errors import CamnetError
from layer2_training.health import HealthWarning
from layer3_inference.config import FrocConfig
from layer3_inference.summaries import EvaluationSummary, HeatmapSummary, SplitEvaluation, load, to_json

TEST = SplitEvaluation(slides=3, tumour_slides=2, trained_on=False, lesions=2, slide_auc=1.0, froc_score=0.5,
                       froc_sensitivity={"1": 0.5}, mean_dice_tumour_slides=0.8, mean_iou_tumour_slides=None,
                       mean_pixel_auc=0.9, plots=["froc_test.png"])
EVAL = EvaluationSummary(headline_split="test", slides=3, score_method="max", threshold=None,
                         froc_config=FrocConfig(), splits={"test": TEST},
                         warnings=[HealthWarning("auc_small_sample", "test: AUC exactly 1 from 2 slides", "test")],
                         plots=["froc_test.png"])


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_text(to_json(EVAL))
    assert load(EvaluationSummary, path) == EVAL
    assert json.loads(path.read_text())["summary_version"] == 2


@pytest.mark.parametrize(("text", "needle"), [
    ("{", "cannot read"),
    (json.dumps({"slides": 3}), "key 'headline_split': required"),
    (json.dumps({**json.loads(to_json(EVAL)), "splits": {"test": {**json.loads(to_json(TEST)), "slide_auc": 1.5}}}),
     "key 'splits.test.slide_auc': 1.5 is above the maximum 1"),
])
def test_damaged_summary_is_one_line(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "summary.json"
    path.write_text(text)
    with pytest.raises(CamnetError) as err:
        load(EvaluationSummary, path)
    assert str(err.value).startswith(f"{path}: ") and needle in str(err.value)


# --- heatmap summary: the domain fields of issue 14 (item 5) ---

HEATMAP_BEFORE_DOMAIN = {  # a summary as written before colour, colour_shift, tumour_share and warnings existed
    "slide": "s", "slide_path": "/data/s.tif", "run_hash": "0123456789abcdef", "model": {}, "patches": 4,
    "grid_shape": [2, 2], "footprint": 64, "step": 64.0, "level": 0, "downsample": 1.0, "working_mpp": 0.5,
    "mpp": 0.5, "dimensions": [128, 128], "tissue_area_mm2": 0.0, "tumour_area_mm2": 0.0, "threshold": 0.5,
    "slide_score": 0.9, "score_method": "max", "max_probability": 0.9, "mean_probability": 0.5, "tumour_regions": 1,
    "ranks": 1, "batch_size": 64, "reader_threads": 1, "times": {}, "seconds": 1.0, "patches_per_s": 4.0,
    "package_version": "0.1.0", "files": ["summary.json"], "summary_version": 1}


def test_heatmap_summary_from_before_the_domain_checks_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(HEATMAP_BEFORE_DOMAIN))
    old = load(HeatmapSummary, path)
    # null, not 0: "never checked" must not read as "checked and fine"
    assert old.colour is None and old.colour_shift is None and old.tumour_share is None and old.warnings == []


def test_heatmap_summary_warnings_round_trip_as_code_message_split(tmp_path: Path) -> None:
    summary = HeatmapSummary(**{  # type: ignore[arg-type]
        **HEATMAP_BEFORE_DOMAIN, "colour": ColourStats([0.3, 1.0, 0.6], [0.1, 0.3, 0.2], 100, 4),
        "colour_shift": 1.1, "tumour_share": 0.75,
        "warnings": [HealthWarning("colour_shift", "far"), HealthWarning("tumour_share", "most")]})
    path = tmp_path / "summary.json"
    path.write_text(to_json(summary))
    data = json.loads(path.read_text())
    assert data["warnings"] == [{"code": "colour_shift", "message": "far", "split": None},
                                {"code": "tumour_share", "message": "most", "split": None}]
    assert data["colour"] == {"od_mean": [0.3, 1.0, 0.6], "od_std": [0.1, 0.3, 0.2], "pixels": 100, "patches": 4}
    assert load(HeatmapSummary, path) == summary


def test_heatmap_summary_with_a_warning_lacking_its_message_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({**HEATMAP_BEFORE_DOMAIN, "warnings": [{"code": "colour_shift"}]}))
    with pytest.raises(CamnetError) as err:
        load(HeatmapSummary, path)
    assert str(err.value).startswith(f"{path}: ") and "warnings[0].message" in str(err.value)


def test_a_pooled_version_1_evaluation_was_reported_as_a_missing_key(tmp_path: Path) -> None:
    """An evaluation summary from before per-split figures is named as an older version, not as a missing key."""
    path = tmp_path / "summary.json"
    path.write_text(json.dumps({"summary_version": 1, "slides": 3, "tumour_slides": 2, "slide_auc": 1.0}))
    with pytest.raises(CamnetError) as err:
        load(EvaluationSummary, path)
    assert str(err.value) == (f"{path}: summary_version 1 was written by an earlier CamNet; this one reads version 2: "
                              "run the command that wrote it again")
