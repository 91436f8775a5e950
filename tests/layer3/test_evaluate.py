"""`layer3_inference/evaluate.py` on hand-built truth and probability maps with answers worked out by hand.

The FROC detection scheme itself (one detection per connected region above the detection threshold) is being
replaced elsewhere and is deliberately not tested here; only what the Camelyon16 definition fixes is: lesion
labelling (regions within 75 um merged, holes filled, isolated tumour cells flagged) and the TP/FP
bookkeeping of given detections.
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

from layer3_inference.config import FrocConfig
from layer3_inference.evaluate import COLUMNS, SlideEval, cohort_csv, froc_slide, lesions, pixel_metrics, slide_auc

CAMELYON = FrocConfig()  # dilation 75 um, ITC below 275 um major axis on the dilated mask


def test_camelyon16_defaults() -> None:
    assert (CAMELYON.dilation_um, CAMELYON.itc_um) == (75.0, 275.0)


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


# --- lesion labelling (Camelyon16 evaluation mask) ---------------------------------------------------------
# At 10 um per map pixel, 75 um is 7.5 px: every tumour pixel is grown by 3.75 px, so gaps of 5 px (50 um)
# close and gaps of 10 px (100 um) stay open.


def _label_set(labels: np.ndarray, *points: tuple[int, int]) -> list[int]:
    return [int(labels[p]) for p in points]


def test_regions_within_75um_merge_and_regions_further_apart_do_not() -> None:
    truth = np.zeros((60, 140), bool)
    truth[10:50, 5:45] = True  # A: 400 x 400 um
    truth[10:50, 50:90] = True  # B: 50 um right of A -> same lesion
    truth[10:50, 100:135] = True  # C: 100 um right of B -> its own lesion
    labels, itc = lesions(truth, (10.0, 10.0), CAMELYON)
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
    labels, itc = lesions(truth, (10.0, 10.0), CAMELYON)
    big, small = _label_set(labels, (20, 20), (61, 61))
    assert big != small and 0 not in (big, small)
    assert itc == {small}


def test_regions_touching_at_a_corner_are_one_lesion() -> None:
    # at 100 um per pixel the 37.5 um growth adds no pixel: only 8-connectivity joins the two blocks
    truth = np.zeros((12, 12), bool)
    truth[1:5, 1:5] = True
    truth[5:9, 5:9] = True  # 400 x 400 um each, sharing only the corner of (4, 4) and (5, 5)
    labels, itc = lesions(truth, (100.0, 100.0), CAMELYON)
    assert labels[2, 2] == labels[7, 7] == 1 and int(labels.max()) == 1 and itc == set()


def test_lesion_holes_are_filled() -> None:
    truth = np.zeros((50, 50), bool)
    truth[5:45, 5:45] = True
    truth[8:42, 8:42] = False  # a 3 px (30 um) rim around a 340 um hole
    labels, itc = lesions(truth, (10.0, 10.0), CAMELYON)
    assert int(labels.max()) == 1 and itc == set()
    assert labels[25, 25] == 1  # the hole's centre, 170 um from any tumour, is part of the lesion


def test_no_tumour_no_lesions() -> None:
    labels, itc = lesions(np.zeros((5, 7), bool), (10.0, 10.0), CAMELYON)
    assert labels.shape == (5, 7) and not labels.any() and itc == set()


# --- TP / FP bookkeeping of given detections (not how detections are made) ----------------------------------


def _hand_labels() -> tuple[np.ndarray, set[int]]:
    labels = np.zeros((10, 10), np.int32)
    labels[0:4, 0:4] = 1  # lesion 1
    labels[6:8, 6:8] = 2  # lesion 2: an ITC
    labels[0:3, 7:10] = 3  # lesion 3
    return labels, {2}


def test_detection_inside_a_lesion_is_a_hit_and_outside_a_false_positive() -> None:
    labels, itc = _hand_labels()
    fps, tps = froc_slide([(1, 1, 0.6), (5, 0, 0.7)], labels, itc)
    assert fps == [pytest.approx(0.7)]
    assert sorted(tps) == [0.0, pytest.approx(0.6)]  # lesion 1 found at 0.6, lesion 3 missed


def test_several_detections_in_one_lesion_count_once_at_the_best() -> None:
    labels, itc = _hand_labels()
    fps, tps = froc_slide([(1, 1, 0.6), (2, 2, 0.9), (3, 0, 0.55)], labels, itc)
    assert fps == []
    assert sorted(tps) == [0.0, pytest.approx(0.9)]


def test_detection_on_an_isolated_tumour_cell_is_neither_hit_nor_false_positive() -> None:
    labels, itc = _hand_labels()
    fps, tps = froc_slide([(6, 6, 0.8), (7, 7, 0.95)], labels, itc)
    assert fps == []
    assert sorted(tps) == [0.0, 0.0]  # two counted lesions (1 and 3), neither found; the ITC is not counted


def test_detection_in_the_75um_margin_of_a_lesion_is_a_hit() -> None:
    # Camelyon16 scores detections against the grown evaluation mask: 20 um outside the annotation still hits
    truth = np.zeros((60, 60), bool)
    truth[10:40, 10:40] = True
    labels, itc = lesions(truth, (10.0, 10.0), CAMELYON)
    fps, tps = froc_slide([(25, 41, 0.7), (25, 52, 0.6)], labels, itc)  # 20 um and 130 um right of the edge
    assert tps == [pytest.approx(0.7)]
    assert fps == [pytest.approx(0.6)]


# --- slide level ------------------------------------------------------------------------------------------


def _result(name: str, label: int, score: float, **kw: object) -> SlideEval:
    fields: dict[str, object] = {"slide": name, "label": label, "annotation": "", "patches": 10, "slide_score": score,
                                 "pixel_auc": None, "dice": None, "iou": None, "lesions": 0, "itc": 0,
                                 "detections": 0, "lesions_found": 0, "false_positives": 0, **kw}
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
    assert header == ("slide,label,slide_score,pixel_auc,dice,iou,patches,lesions,itc,detections,lesions_found,"
                      "false_positives,annotation")
    assert tuple(header.split(",")) == COLUMNS
    table = list(csv.DictReader(io.StringIO(text)))
    assert table[0] == {"slide": "tumour_001", "label": "1", "slide_score": "0.987654", "pixel_auc": "0.9",
                        "dice": "0.5", "iou": "0.333333", "patches": "10", "lesions": "2", "itc": "1",
                        "detections": "3", "lesions_found": "1", "false_positives": "2",
                        "annotation": "/a/tumour_001.xml"}
    assert table[1]["pixel_auc"] == table[1]["dice"] == table[1]["iou"] == table[1]["annotation"] == ""
    assert len(lines) == 2
