"""Layer 3's published summaries load back exactly, and a damaged file is one error line naming it and the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from layer1_patches.shared.errors import CamnetError
from layer3_inference.summaries import EvaluationSummary, load, to_json

EVAL = EvaluationSummary(slides=3, tumour_slides=2, slide_auc=1.0, froc_score=0.5, froc_sensitivity={"1": 0.5},
                         mean_dice_tumour_slides=0.8, mean_iou_tumour_slides=None, mean_pixel_auc=0.9,
                         score_method="max", threshold=None, plots=["froc.png"])


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_text(to_json(EVAL))
    assert load(EvaluationSummary, path) == EVAL
    assert json.loads(path.read_text())["summary_version"] == 1


@pytest.mark.parametrize(("text", "needle"), [
    ("{", "cannot read"),
    (json.dumps({"slides": 3}), "key 'tumour_slides': required"),
    (json.dumps({**json.loads(to_json(EVAL)), "slide_auc": 1.5}), "key 'slide_auc': 1.5 is above the maximum 1"),
])
def test_damaged_summary_is_one_line(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "summary.json"
    path.write_text(text)
    with pytest.raises(CamnetError) as err:
        load(EvaluationSummary, path)
    assert str(err.value).startswith(f"{path}: ") and needle in str(err.value)
