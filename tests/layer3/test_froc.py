"""`layer3_inference/froc.py` against the Camelyon16 evaluation (`Evaluation_FROC.py`), on hand-built cases.

Every expected number is worked out by hand from the challenge's definition, as stated beside it:
- evaluation mask: tumour grown by 75/2 um, holes filled (binary_fill_holes), 8-connected labels; a lesion whose
  major axis is under 275 um is an isolated tumour cell (ITC);
- per slide: a detection on a lesion hits it, the lesion counting once at its best detection (other detections
  on it are neither hits nor false positives); a detection on an ITC is ignored; any other detection is a FP;
- the curve: every confidence is a threshold; FPs are averaged over all slides, sensitivity is over non-ITC
  lesions; the score is the mean of `np.interp` of sensitivity at 1/4, 1/2, 1, 2, 4, 8 FPs per slide.
  Where several thresholds give the same FP rate, `np.interp` on the ascending-FP curve takes the last of
  them, i.e. the highest sensitivity at that FP rate; between FP rates it interpolates linearly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.figure import Figure

from layer3_inference.config import FrocConfig
from layer3_inference.froc import (
    candidate_detections,
    empty_reason,
    froc_curve,
    froc_slide,
    lesions,
    plot_froc,
    smooth,
)

CAMELYON = FrocConfig()  # dilation 75 um, ITC below 275 um major axis on the dilated mask
RATES = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
UM = (10.0, 10.0)  # 10 um per map pixel: 75 um is 7.5 px, the 37.5 um growth 3.75 px
EXACT = FrocConfig(smoothing_um=0.0, nms_radius_um=150.0)  # no smoothing: confidences are the map's values


def test_camelyon16_defaults() -> None:
    assert (CAMELYON.dilation_um, CAMELYON.itc_um, CAMELYON.fp_rates) == (75.0, 275.0, RATES)
    assert CAMELYON.min_confidence < 0.5  # no detection cut at 0.5: the curve sweeps every threshold


# --- lesion labelling (Camelyon16 evaluation mask) ---------------------------------------------------------


def _label_set(labels: np.ndarray, *points: tuple[int, int]) -> list[int]:
    return [int(labels[p]) for p in points]


def test_regions_within_75um_merge_and_regions_further_apart_do_not() -> None:
    truth = np.zeros((60, 140), bool)
    truth[10:50, 5:45] = True  # A: 400 x 400 um
    truth[10:50, 50:90] = True  # B: 50 um right of A -> same lesion
    truth[10:50, 100:135] = True  # C: 100 um right of B -> its own lesion
    labels, itc = lesions(truth, UM, CAMELYON)
    a, b, c = _label_set(labels, (30, 20), (30, 70), (30, 120))
    assert a == b and a != c and 0 not in (a, c)
    assert int(labels.max()) == 2 and itc == set()
    assert labels[30, 47] == a  # the 50 um gap belongs to the lesion
    assert labels[30, 95] == 0  # the middle of the 100 um gap does not


def test_merging_distance_is_in_micrometres_in_each_direction() -> None:
    # 2 um per pixel across, 20 um per pixel down: a 10 px gap is 20 um sideways but 200 um vertically
    truth = np.zeros((80, 200), bool)
    truth[5:25, 10:90] = True
    truth[5:25, 100:180] = True  # 10 px = 20 um to the right: merges
    truth[35:55, 10:90] = True  # 10 px = 200 um below: does not
    labels, _ = lesions(truth, (2.0, 20.0), CAMELYON)
    left, right, below = _label_set(labels, (15, 50), (15, 140), (45, 50))
    assert left == right and left != below and 0 not in (left, below)


def test_isolated_tumour_cells_are_flagged_and_large_lesions_are_not() -> None:
    truth = np.zeros((80, 80), bool)
    truth[5:35, 5:35] = True  # 300 x 300 um: a lesion
    truth[60:63, 60:63] = True  # 30 x 30 um (about 100 um once grown by 37.5 um): an ITC
    labels, itc = lesions(truth, UM, CAMELYON)
    big, small = _label_set(labels, (20, 20), (61, 61))
    assert big != small and 0 not in (big, small)
    assert itc == {small}


def test_regions_touching_at_a_corner_are_one_lesion() -> None:
    # at 100 um per pixel the 37.5 um growth adds no pixel: only 8-connectivity joins the two blocks
    truth = np.zeros((12, 12), bool)
    truth[1:5, 1:5] = True
    truth[5:9, 5:9] = True
    labels, itc = lesions(truth, (100.0, 100.0), CAMELYON)
    assert labels[2, 2] == labels[7, 7] == 1 and int(labels.max()) == 1 and itc == set()


def test_no_tumour_no_lesions() -> None:
    labels, itc = lesions(np.zeros((5, 7), bool), UM, CAMELYON)
    assert labels.shape == (5, 7) and not labels.any() and itc == set()


# --- TP / FP bookkeeping of given detections ----------------------------------------------------------------


def _hand_labels() -> tuple[np.ndarray, set[int]]:
    labels = np.zeros((20, 20), np.int32)
    labels[0:5, 0:5] = 1  # lesion 1
    labels[0:5, 10:15] = 2  # lesion 2
    labels[15:17, 15:17] = 3  # an ITC
    return labels, {3}


def test_hits_misses_false_positives_and_itcs_on_one_slide_known_answer() -> None:
    labels, itc = _hand_labels()
    dets = [(2, 2, 0.9), (3, 3, 0.4),  # two on lesion 1: it counts once, at 0.9; the 0.4 is not a FP
            (2, 12, 0.3),  # lesion 2, found only at 0.3
            (15, 15, 0.95),  # on the ITC: ignored, though the strongest
            (10, 5, 0.6), (10, 10, 0.2)]  # outside every lesion: FPs
    fps, tps = froc_slide(dets, labels, itc)
    assert sorted(fps) == [pytest.approx(0.2), pytest.approx(0.6)]
    assert sorted(tps) == [pytest.approx(0.3), pytest.approx(0.9)]
    # thresholds 0.2, 0.3, 0.6, 0.9, inf -> (FPs, hits of 2): (2, 2), (1, 2), (1, 1), (0, 1), (0, 0).
    # Ascending FP: (0, 0) (0, .5) (1, .5) (1, 1) (2, 1): at 1/4 and 1/2 -> .5 (flat from (0, .5) to (1, .5));
    # at 1 the last point at FP 1 -> 1; at 2, 4, 8 -> 1. Score (.5 + .5 + 1 + 1 + 1 + 1) / 6 = 5/6.
    curve = froc_curve([fps], [tps], RATES)
    assert curve.at == pytest.approx([0.5, 0.5, 1.0, 1.0, 1.0, 1.0])
    assert curve.score == pytest.approx(5 / 6)
    assert (curve.lesions, curve.found) == (2, 2)
    assert list(curve.fps) == [2.0, 1.0, 1.0, 0.0, 0.0]
    assert list(curve.sensitivity) == [1.0, 1.0, 0.5, 0.5, 0.0]


def test_sensitivity_between_fp_rates_is_interpolated_linearly() -> None:
    # lesions hit at 0.9 and 0.8, one FP at 0.8: thresholds 0.8 -> (1 FP, 2/2), 0.9 -> (0, 1/2), inf -> (0, 0).
    # Ascending FP: (0, 0) (0, .5) (1, 1): at 1/4 -> .5 + .25 * .5 = .625, at 1/2 -> .75, from 1 on -> 1.
    curve = froc_curve([[0.8]], [[0.9, 0.8]], RATES)
    assert curve.at == pytest.approx([0.625, 0.75, 1.0, 1.0, 1.0, 1.0])
    assert curve.score == pytest.approx((0.625 + 0.75 + 4) / 6)


def test_false_positives_are_averaged_over_every_slide() -> None:
    # two tumour slides (lesions hit at 0.9 and 0.5, no FP) and two normal slides (one FP each, 0.7 and 0.6):
    # thresholds 0.5 -> (2 FPs / 4 slides = .5, 2/2), 0.6 -> (.5, 1/2), 0.7 -> (.25, 1/2), 0.9 -> (0, 1/2).
    # Ascending: (0, 0) (0, .5) (.25, .5) (.5, .5) (.5, 1): at 1/4 -> .5, from 1/2 on -> 1. Score 5.5 / 6.
    # Averaged over the two normal slides only, 1/2 FP per slide would still be sensitivity .5.
    curve = froc_curve([[], [], [0.7], [0.6]], [[0.9], [0.5], [], []], RATES)
    assert curve.at == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0])
    assert curve.score == pytest.approx(5.5 / 6)


def test_missed_lesion_is_never_found_and_fps_beyond_8_per_slide_keep_the_last_sensitivity() -> None:
    # one slide, lesions at 0.7 and missed (0); FPs 0.9 0.8 0.6: thresholds 0.6 -> (3, .5), 0.7 -> (2, .5),
    # 0.8 -> (2, 0), 0.9 -> (1, 0), inf -> (0, 0). Ascending: (0, 0) (1, 0) (2, 0) (2, .5) (3, .5):
    # 1/4, 1/2, 1 -> 0; 2 -> .5 (last at FP 2); 4 and 8 lie beyond the curve -> .5. Score 1.5 / 6.
    curve = froc_curve([[0.9, 0.8, 0.6]], [[0.7, 0.0]], RATES)
    assert curve.at == pytest.approx([0.0, 0.0, 0.0, 0.5, 0.5, 0.5])
    assert curve.score == pytest.approx(0.25)
    assert (curve.lesions, curve.found) == (2, 1) and not curve.empty


def test_detection_in_a_lesion_hole_hits_the_lesion() -> None:
    # Camelyon16 fills holes of the evaluation mask: a 340 um hole inside a 30 um rim is part of the lesion,
    # so a detection at its centre (170 um from any tumour, beyond the 37.5 um growth) is a hit, not a FP
    truth = np.zeros((50, 50), bool)
    truth[5:45, 5:45] = True
    truth[8:42, 8:42] = False
    labels, itc = lesions(truth, UM, CAMELYON)
    assert int(labels.max()) == 1 and itc == set()
    fps, tps = froc_slide([(25, 25, 0.7)], labels, itc)
    assert fps == [] and tps == [pytest.approx(0.7)]


def test_two_regions_within_75um_are_one_lesion_found_once() -> None:
    # 50 um apart: one lesion; a detection on each part is one hit at the best (0.8), the other (0.6) no FP
    truth = np.zeros((60, 100), bool)
    truth[10:50, 5:45] = True
    truth[10:50, 50:90] = True
    labels, itc = lesions(truth, UM, CAMELYON)
    fps, tps = froc_slide([(30, 20, 0.6), (30, 70, 0.8)], labels, itc)
    assert fps == [] and tps == [pytest.approx(0.8)]
    assert froc_curve([fps], [tps], RATES).score == pytest.approx(1.0)  # no FP ever: 1 at every rate


def test_detection_on_an_itc_is_ignored_and_a_slide_of_itcs_only_has_no_curve() -> None:
    truth = np.zeros((40, 40), bool)
    truth[10:13, 10:13] = True  # 30 x 30 um: an ITC
    labels, itc = lesions(truth, UM, CAMELYON)
    assert itc == {1}
    fps, tps = froc_slide([(11, 11, 0.9), (30, 30, 0.4)], labels, itc)
    assert fps == [pytest.approx(0.4)] and tps == []
    curve = froc_curve([fps], [tps], RATES)
    assert curve.empty and curve.score is None and curve.at == [None] * 6
    assert empty_reason(curve).startswith("no annotated lesions")


def test_detection_in_the_75um_margin_of_a_lesion_is_a_hit() -> None:
    truth = np.zeros((60, 60), bool)
    truth[10:40, 10:40] = True
    labels, itc = lesions(truth, UM, CAMELYON)
    fps, tps = froc_slide([(25, 41, 0.7), (25, 52, 0.6)], labels, itc)  # 20 um and 130 um right of the edge
    assert tps == [pytest.approx(0.7)] and fps == [pytest.approx(0.6)]


def test_lesions_never_found_give_an_empty_curve_and_score_zero() -> None:
    curve = froc_curve([[0.8], []], [[0.0], [0.0, 0.0]], RATES)
    assert curve.empty and curve.score == 0.0 and (curve.lesions, curve.found) == (3, 0)
    assert empty_reason(curve) == "no lesion detected at any threshold (3 annotated)"


# --- candidate detections ---------------------------------------------------------------------------------


def test_a_low_confidence_peak_is_a_detection() -> None:
    prob = np.zeros((20, 20))
    prob[8:11, 8:11] = 0.3
    assert candidate_detections(prob, UM, EXACT) == [(9, 9, pytest.approx(0.3))]  # the plateau's centre


def test_peaks_further_apart_than_the_nms_radius_are_separate_and_closer_ones_merge() -> None:
    prob = np.zeros((30, 60))
    prob[10, 10] = 0.9
    prob[10, 26] = 0.5  # 160 um from the 0.9: beyond the 150 um radius, kept
    prob[10, 45] = 0.8  # 190 um from the 0.5: kept
    prob[10, 57] = 0.6  # 120 um from the 0.8: suppressed by it
    assert candidate_detections(prob, UM, EXACT) == [(10, 10, pytest.approx(0.9)), (10, 45, pytest.approx(0.8)),
                                                     (10, 26, pytest.approx(0.5))]


def test_nms_radius_is_in_micrometres_in_each_direction() -> None:
    prob = np.zeros((30, 30))
    prob[5, 5] = 0.9
    prob[5, 25] = 0.7  # 20 px across at 5 um = 100 um: suppressed
    prob[25, 5] = 0.6  # 20 px down at 20 um = 400 um: kept
    dets = candidate_detections(prob, (5.0, 20.0), EXACT)
    assert [(r, c) for r, c, _ in dets] == [(5, 5), (25, 5)]


def test_maxima_below_min_confidence_and_unpredicted_pixels_are_not_detections() -> None:
    prob = np.full((10, 45), np.nan)
    prob[:, :35] = 0.0
    prob[5, 5] = 0.005  # below min_confidence 0.01 (and 250 um from the other peak: NMS leaves it alone)
    prob[5, 30] = 0.02
    assert candidate_detections(prob, UM, EXACT) == [(5, 30, pytest.approx(0.02))]


def test_smoothing_keeps_a_broad_region_and_ignores_unpredicted_pixels() -> None:
    # 25 um sigma is 2.5 px; scipy's kernel reaches 10 px: 15 px inside a 31 px block it sees only the block
    prob = np.zeros((51, 51))
    prob[10:41, 10:41] = 0.8
    assert candidate_detections(prob, UM, CAMELYON)[0] == (25, 25, pytest.approx(0.8))  # one plateau, centre
    # a tissue edge next to unpredicted (NaN) pixels keeps its value: NaN is left out, not averaged in as 0
    edge = np.full((20, 20), np.nan)
    edge[:, :10] = 0.7
    assert smooth(edge, UM, 25.0)[5, 9] == pytest.approx(0.7)
    assert smooth(edge, UM, 25.0)[5, 15] == 0.0


# --- regressions (issue 14) -------------------------------------------------------------------------------


def _two_lesion_slide() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((60, 120), bool)
    truth[10:40, 10:40] = True  # lesion A, 300 um
    truth[10:40, 70:100] = True  # lesion B, 300 um
    prob = np.zeros(truth.shape)
    prob[15:35, 15:35] = 0.9  # A: confident
    prob[15:35, 75:95] = 0.3  # B: only at 0.3
    prob[50, 55] = 0.6  # a FP
    return truth, prob


def test_froc_reaches_below_0_5_a_lesion_found_only_at_0_3_counts() -> None:
    truth, prob = _two_lesion_slide()
    labels, itc = lesions(truth, UM, CAMELYON)
    fps, tps = froc_slide(candidate_detections(prob, UM, EXACT), labels, itc)
    assert fps == [pytest.approx(0.6)] and sorted(tps) == [pytest.approx(0.3), pytest.approx(0.9)]
    # thresholds 0.3 -> (1 FP, 2/2), 0.6 -> (1, 1/2), 0.9 -> (0, 1/2): at 1 FP per slide both lesions are found
    curve = froc_curve([fps], [tps], RATES)
    assert curve.at == pytest.approx([0.5, 0.5, 1.0, 1.0, 1.0, 1.0])


def test_false_positive_area_joined_to_a_lesion_is_counted() -> None:
    truth = np.zeros((40, 100), bool)
    truth[10:30, 10:30] = True  # a 200 um lesion
    prob = np.zeros(truth.shape)
    prob[10:30, 10:30] = 0.9
    prob[15:25, 30:80] = 0.6  # one blob above 0.5 reaching 500 um past the lesion ...
    prob[18:22, 70:74] = 0.8  # ... to a second peak 400 um outside it
    labels, itc = lesions(truth, UM, CAMELYON)
    fps, tps = froc_slide(candidate_detections(prob, UM, EXACT), labels, itc)
    assert tps == [pytest.approx(0.9)]
    assert fps == [pytest.approx(0.8)]


# --- the plot ---------------------------------------------------------------------------------------------


def _drawn(monkeypatch: pytest.MonkeyPatch, curve_args: tuple[Any, ...], path: Path) -> Figure:
    from matplotlib import pyplot as plt

    figures: list[Figure] = []
    monkeypatch.setattr(plt, "close", figures.append)
    plot_froc(froc_curve(*curve_args), "FROC test", path)
    assert path.is_file()
    return figures[0]


def test_an_empty_curve_is_plotted_as_a_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fig = _drawn(monkeypatch, ([[0.8]], [[0.0]], RATES), tmp_path / "froc.png")
    (ax,) = fig.axes
    assert not ax.axison and not ax.lines
    assert "no lesion detected at any threshold" in " ".join(t.get_text() for t in ax.texts)
    fig = _drawn(monkeypatch, ([[0.8]], [[]], RATES), tmp_path / "none.png")
    assert "no annotated lesions" in " ".join(t.get_text() for t in fig.axes[0].texts)


def test_a_curve_is_plotted_as_a_curve(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fig = _drawn(monkeypatch, ([[0.8]], [[0.9]], RATES), tmp_path / "froc.png")
    (ax,) = fig.axes
    assert ax.axison and len(ax.lines) == 1 and not ax.texts
