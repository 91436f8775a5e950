"""The domain warnings of a heatmap summary, as pure rules: known answers worked out by hand."""

from __future__ import annotations

import numpy as np

from layer1_patches.colour import ColourStats
from layer3_inference.config import WarningsConfig
from layer3_inference.domain import check_slide, colour_warnings, share_warnings, tumour_share

# training tissue: mean OD (R, G, B) and its per-pixel standard deviation
TRAINING = ColourStats([0.4, 0.8, 0.4], [0.2, 0.2, 0.1], pixels=1000, patches=10)


def _slide(mean: list[float]) -> ColourStats:
    return ColourStats(mean, [0.3, 0.3, 0.3], pixels=500, patches=5)


def test_tumour_share_counts_patches_at_or_above_threshold() -> None:
    # 0.5 and 0.7 are at or above 0.5: 2 of 4
    assert tumour_share(np.array([0.2, 0.5, 0.7, 0.4]), 0.5) == 0.5
    assert tumour_share(np.array([], dtype=np.float32), 0.5) == 0.0


def test_tumour_share_warns_only_above_the_limit() -> None:
    assert share_warnings(0.5, 4, 0.5) == []  # "more than" the limit: equal is not
    (warning,) = share_warnings(0.75, 4, 0.5)
    assert warning.code == "tumour_share" and warning.split is None
    assert "75.0% of the 4 tissue patches" in warning.message
    assert share_warnings(0.99, 4, None) == []


def test_colour_shift_above_the_limit_is_warned_and_names_the_channel() -> None:
    # B: |0.55 - 0.4| / 0.1 = 1.5 training standard deviations; R, G: 0 -> shift 1.5 > 0.75
    shift, (warning,) = colour_warnings(_slide([0.4, 0.8, 0.55]), TRAINING, 5, 0.75)
    assert abs(shift - 1.5) < 1e-9  # type: ignore[operator]
    assert warning.code == "colour_shift" and "1.5 training standard deviations" in warning.message
    assert "largest in B: optical density 0.550 vs 0.400" in warning.message


def test_colour_shift_within_the_limit_is_not_warned() -> None:
    # R: |0.45 - 0.4| / 0.2 = 0.25 <= 0.75
    shift, warnings = colour_warnings(_slide([0.45, 0.8, 0.4]), TRAINING, 5, 0.75)
    assert abs(shift - 0.25) < 1e-9 and warnings == []  # type: ignore[operator]


def test_model_without_training_colour_cannot_be_checked() -> None:
    shift, (warning,) = colour_warnings(_slide([3.0, 3.0, 3.0]), None, 5, 0.75)
    assert shift is None and warning.code == "no_training_colour" and "model.json" in warning.message


def test_tissue_without_a_stained_pixel_is_unlike_any_training_tissue() -> None:
    shift, (warning,) = colour_warnings(None, TRAINING, 7, 0.75)
    assert shift is None and warning.code == "colour_shift" and "none of the 7 tissue patches" in warning.message


def test_colour_check_switched_off_still_measures_the_shift() -> None:
    shift, warnings = colour_warnings(_slide([0.4, 0.8, 0.55]), TRAINING, 5, None)
    assert abs(shift - 1.5) < 1e-9 and warnings == []  # type: ignore[operator]
    assert colour_warnings(_slide([0.4, 0.8, 0.55]), None, 5, None) == (None, [])


def test_check_slide_lists_colour_then_share_warnings() -> None:
    probs = np.array([0.9, 0.8, 0.7, 0.1])  # 3 of 4 at or above 0.5
    check = check_slide(_slide([0.4, 0.8, 0.55]), TRAINING, probs, 0.5, WarningsConfig())
    assert check.tumour_share == 0.75 and [w.code for w in check.warnings] == ["colour_shift", "tumour_share"]
    assert [w.to_dict()["split"] for w in check.warnings] == [None, None]
