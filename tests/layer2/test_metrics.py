"""Threshold metrics and AUC on hand-built cases; the ROC plot file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from layer2_training.metrics import binary_metrics, plot_roc

Y = np.array([1, 1, 1, 0, 0, 0, 0])
P = np.array([0.9, 0.6, 0.3, 0.7, 0.2, 0.1, 0.5])


def test_binary_metrics_on_a_hand_built_case() -> None:
    # at 0.5 (inclusive) the predictions are 1 1 0 | 1 0 0 1: tp 2, fn 1, fp 2 (0.7 and 0.5), tn 2
    # AUC = share of (tumour, normal) pairs ranked right: 0.9 beats all 4, 0.6 beats 3 (not 0.7), 0.3 beats 2
    # -> 9 / 12 = 0.75
    m = binary_metrics(Y, P, 0.5)
    assert m == {"n": 7, "n_tumour": 3, "threshold": 0.5, "auc": pytest.approx(0.75),
                 "accuracy": pytest.approx(4 / 7), "sensitivity": pytest.approx(2 / 3),
                 "specificity": pytest.approx(2 / 4), "confusion": [[2, 2], [1, 2]]}


def test_threshold_moves_the_confusion_not_the_auc() -> None:
    # at 0.65: predictions 1 0 0 | 1 0 0 0: tp 1, fn 2, fp 1, tn 3
    m = binary_metrics(Y.reshape(-1, 1).astype(np.float32), P.reshape(-1, 1), 0.65)
    assert m["confusion"] == [[3, 1], [2, 1]] and m["auc"] == pytest.approx(0.75)
    assert m["sensitivity"] == pytest.approx(1 / 3) and m["specificity"] == pytest.approx(3 / 4)


def test_tied_scores_count_half_in_the_auc() -> None:
    # pairs: (0.5 vs 0.5) tie -> 1/2, (0.5 vs 0.1) right -> 1; (0.8 vs both) right -> 2: 3.5 / 4
    assert binary_metrics(np.array([1, 1, 0, 0]), np.array([0.5, 0.8, 0.5, 0.1]), 0.5)["auc"] == pytest.approx(0.875)


@pytest.mark.filterwarnings("error")  # scikit-learn warns when asked for the AUC of one class
def test_one_class_has_no_auc_and_no_division_by_zero() -> None:
    m = binary_metrics(np.zeros(4), np.array([0.1, 0.6, 0.2, 0.9]), 0.5)
    assert m["auc"] is None
    assert m["sensitivity"] == 0.0 and m["specificity"] == pytest.approx(0.5) and m["confusion"] == [[2, 2], [0, 0]]


def test_an_undefined_auc_was_written_as_nan_which_is_not_json() -> None:
    # json.dumps writes float("nan") as NaN, which strict JSON readers (jq, JavaScript) refuse; null is standard
    m = binary_metrics(np.ones(3), np.array([0.1, 0.6, 0.9]), 0.5)
    assert json.loads(json.dumps(m, allow_nan=False))["auc"] is None


def test_nan_probabilities_have_no_auc_instead_of_a_scikit_learn_error() -> None:
    # roc_auc_score raises "Input contains NaN"; the counts still say what the model called (NaN >= 0.5 is False)
    m = binary_metrics(np.array([1, 1, 0, 0]), np.array([0.9, np.nan, 0.2, 0.1]), 0.5)
    assert m["auc"] is None and m["confusion"] == [[2, 0], [1, 1]]


@pytest.mark.filterwarnings("error")
def test_plot_roc_writes_a_png_and_skips_one_class_and_nan_curves(tmp_path: Path) -> None:
    out = plot_roc({"val": (Y, P), "one_class": (np.zeros(3), np.array([0.1, 0.2, 0.3])),
                    "nan": (np.array([1, 0]), np.array([np.nan, 0.1]))}, tmp_path / "roc.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["roc.png"]  # no partial file left behind


@pytest.mark.filterwarnings("error")
def test_a_roc_plot_of_one_class_only_printed_a_matplotlib_legend_warning(tmp_path: Path) -> None:
    # a one-class val split has no curve: "No artists with labels found to put in legend" ended up in the log
    plot_roc({"val": (np.zeros(3), np.array([0.1, 0.2, 0.3]))}, tmp_path / "roc.png")
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
