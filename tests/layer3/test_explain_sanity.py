"""`layer3_inference/explain/sanity.py`: Spearman rank correlations and the randomisation flag, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from layer3_inference.explain.sanity import compare, rank_correlation


def test_identical_and_reversed_rankings() -> None:
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert rank_correlation(a, 10 * a + 5) == pytest.approx(1.0)  # only the order counts
    assert rank_correlation(a, a[::-1]) == pytest.approx(-1.0)


def test_one_swap_of_neighbours_known_answer() -> None:
    # rank differences 0, 1, -1, 0: rho = 1 - 6 * 2 / (4 * (16 - 1)) = 0.8; maps are compared pixel by pixel
    assert rank_correlation(np.array([[1, 2], [3, 4]]), np.array([[1, 3], [2, 4]])) == pytest.approx(0.8)


def test_ties_take_their_average_rank() -> None:
    # ranks (1.5, 1.5, 3, 4) against (1, 2, 3, 4): Pearson of ranks = 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    assert rank_correlation(np.array([1, 1, 2, 3]), np.array([1, 2, 3, 4])) == pytest.approx(3 / math.sqrt(10))


def test_constant_maps() -> None:
    zeros, ramp = np.zeros((2, 2)), np.arange(4.0).reshape(2, 2)
    assert rank_correlation(zeros, zeros) == 1.0  # unchanged
    assert rank_correlation(zeros, zeros + 1) == 0.0  # different constants: unrelated
    assert rank_correlation(zeros, ramp) == 0.0
    assert rank_correlation(ramp, zeros) == 0.0


def _maps(*orders: list[int]) -> np.ndarray:
    return np.stack([np.asarray(o, np.float64).reshape(2, 2) for o in orders])


def test_compare_median_mean_and_flag() -> None:
    trained = {"gradcam": _maps([1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4])}
    randomised = {"gradcam": _maps([2, 4, 6, 8], [1, 3, 2, 4], [4, 3, 2, 1])}  # rho 1.0, 0.8, -1.0
    result = compare(trained, randomised, 0.5)["gradcam"]
    assert result["rank_correlation"] == [pytest.approx(1.0), pytest.approx(0.8), pytest.approx(-1.0)]
    assert result["median"] == pytest.approx(0.8)
    assert result["mean"] == pytest.approx(0.8 / 3)
    assert result["flagged"] is True and result["threshold"] == 0.5
    at_median = compare(trained, randomised, result["median"])["gradcam"]
    assert at_median["flagged"] is False  # the median must exceed the threshold, not reach it


def test_compare_each_method_separately() -> None:
    same = _maps([1, 2, 3, 4])
    result = compare({"gradcam": same, "lime": same}, {"gradcam": same, "lime": _maps([4, 3, 2, 1])}, 0.5)
    assert (result["gradcam"]["flagged"], result["lime"]["flagged"]) == (True, False)


def test_compare_without_patches_is_not_flagged() -> None:
    empty = np.zeros((0, 2, 2))
    result = compare({"gradcam": empty}, {"gradcam": empty}, 0.5)["gradcam"]
    assert result["rank_correlation"] == [] and result["flagged"] is False
    assert math.isnan(result["median"]) and math.isnan(result["mean"])
