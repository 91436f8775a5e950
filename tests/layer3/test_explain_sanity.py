"""`layer3_inference/explain/sanity.py`: rank correlations, statuses per depth and method, input independence."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from layer3_inference.explain.config import SanityConfig
from layer3_inference.explain.sanity import (
    DepthMaps,
    cross_patch_correlation,
    depth_result,
    document,
    method_result,
    overall,
    rank_correlation,
    summary,
    warnings,
)


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


CFG = SanityConfig(max_rank_correlation=0.5, min_logit_std=1e-3, max_cross_patch_correlation=0.9)
TRAINED = _maps([1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4])
LIVE, DEAD = 0.8, 2e-12  # randomised logits' std across patches: a working and a dead network


def test_depth_median_mean_and_status() -> None:
    randomised = _maps([2, 4, 6, 8], [1, 3, 2, 4], [4, 3, 2, 1])  # rho 1.0, 0.8, -1.0 (see above)
    result = depth_result(TRAINED, randomised, LIVE, CFG)
    assert result["rank_correlation"] == [pytest.approx(1.0), pytest.approx(0.8), pytest.approx(-1.0)]
    assert result["median"] == pytest.approx(0.8) and result["mean"] == pytest.approx(0.8 / 3)
    assert result["status"] == "failed" and result["ranked_patches"] == 3
    at_median = depth_result(TRAINED, randomised, LIVE, replace(CFG, max_rank_correlation=result["median"]))
    assert at_median["status"] == "passed"  # the median must exceed the threshold to fail, not reach it


def test_dead_randomised_model_is_inconclusive_never_passed() -> None:
    """Regression: the randomised copy's logits were ~1e-12 on every patch, its maps constant or noise, and every
    method passed (a constant map's rank correlation is 0.0 by rule)."""
    unrelated = _maps([4, 3, 2, 1], [4, 3, 2, 1], [4, 3, 2, 1])  # rho -1: would pass on a live network
    assert depth_result(TRAINED, unrelated, LIVE, CFG)["status"] == "passed"
    assert depth_result(TRAINED, unrelated, DEAD, CFG)["status"] == "inconclusive"
    blank = np.zeros_like(TRAINED)  # a constant randomised map: rho 0.0 by rule, no evidence either way
    result = depth_result(TRAINED, blank, LIVE, CFG)
    assert result["rank_correlation"] == [0.0, 0.0, 0.0] and result["status"] == "inconclusive"
    assert result["ranked_patches"] == 0 and math.isnan(result["median"])
    # one blank map of three: two ranked patches (rho -1, -1) decide
    mixed = depth_result(TRAINED, np.stack([unrelated[0], unrelated[1], blank[0]]), LIVE, CFG)
    assert (mixed["status"], mixed["ranked_patches"], mixed["median"]) == ("passed", 2, pytest.approx(-1.0))
    # two blank of three: fewer than half ranked, inconclusive
    assert depth_result(TRAINED, np.stack([unrelated[0], blank[0], blank[1]]), LIVE, CFG)["status"] == "inconclusive"


def _depth(d: int, maps: np.ndarray, std: float, methods: tuple[str, ...] = ("gradcam",)) -> DepthMaps:
    return DepthMaps({"depth": d, "randomised_from": "logit", "randomised_to": f"conv{d}", "layers": d}, std,
                     {m: maps for m in methods})


def test_a_dead_fully_randomised_network_was_reported_as_passed_from_a_shallower_depth() -> None:
    """The review found `passed` next to `random_logit_std` 2e-12: the status came from the deepest *live* depth
    while the recorded spread is the full randomisation's. The status is decided at full randomisation only."""
    same, reversed_ = TRAINED.copy(), TRAINED[:, ::-1, ::-1]  # rho 1 and -1 on every patch
    depths = [_depth(1, same, LIVE), _depth(2, reversed_, LIVE), _depth(3, reversed_, DEAD)]
    result = method_result(TRAINED, depths, "gradcam", CFG)
    assert [d["status"] for d in result["by_depth"]] == ["failed", "passed", "inconclusive"]
    assert (result["status"], result["decided_at_depth"]) == ("inconclusive", None)
    live = method_result(TRAINED, depths[:2], "gradcam", CFG)
    assert (live["status"], live["decided_at_depth"], live["median"]) == ("passed", 2, pytest.approx(-1.0))


def test_an_inverted_signed_map_passed_the_check() -> None:
    """Adebayo et al. compare magnitudes: a randomised map that is the trained one with its sign flipped (a signed
    LIME map) follows the same structure and must fail, where the signed rank correlation (-1) passed it."""
    signed = TRAINED - TRAINED.mean(axis=(1, 2), keepdims=True)
    result = method_result(signed, [_depth(1, -signed, LIVE, ("lime",))], "lime", CFG)
    assert result["status"] == "failed" and result["median"] == pytest.approx(1.0)


def test_cross_patch_correlation_known_answer() -> None:
    # rho(a, b) = 0.8 (one neighbour swap), rho(a, c) = -1 (reversed), rho(b, c): rank differences -3, 0, 0, 3,
    # rho = 1 - 6 * 18 / (4 * 15) = -0.8; mean of the three pairs = (0.8 - 1 - 0.8) / 3 = -1/3
    assert cross_patch_correlation(_maps([1, 2, 3, 4], [1, 3, 2, 4], [4, 3, 2, 1])) == pytest.approx(-1 / 3)
    # constant maps: two equal zero maps 1.0, zero against a ramp 0.0: (1 + 0 + 0) / 3
    assert cross_patch_correlation(_maps([0, 0, 0, 0], [0, 0, 0, 0], [1, 2, 3, 4])) == pytest.approx(1 / 3)
    assert cross_patch_correlation(_maps([1, 2, 3, 4])) is None  # one patch: no pair


def test_same_map_for_every_patch_is_flagged_input_independent() -> None:
    """Regression: the default Grad-CAM layer (2 x 2 at 64 px) painted one blob on every patch, undetected."""
    varied = _maps([1, 2, 3, 4], [1, 3, 2, 4], [4, 3, 2, 1])
    depths = [_depth(1, varied[::-1], LIVE)]
    same = method_result(TRAINED, depths, "gradcam", CFG)
    assert same["input_independent"] is True and same["cross_patch_correlation"] == pytest.approx(1.0)
    assert method_result(varied, depths, "gradcam", CFG)["input_independent"] is False
    blank = method_result(np.zeros_like(TRAINED), depths, "gradcam", CFG)  # all-zero maps: also the same picture
    assert blank["input_independent"] is True
    warned = warnings(document({"gradcam": TRAINED}, depths, 1.0, CFG))
    assert "input_independent" in [w.code for w in warned]


def test_document_and_summary_format() -> None:
    both = ("gradcam", "lime")
    depths = [_depth(1, TRAINED, LIVE, both), _depth(2, TRAINED[:, ::-1, ::-1], 0.3, both)]
    doc = document({"gradcam": _maps([1, 2, 3, 4], [1, 3, 2, 4], [4, 3, 2, 1]), "lime": TRAINED}, depths, 2.1, CFG)
    assert doc["random_logit_std"] == 0.3 and doc["trained_logit_std"] == 2.1 and doc["min_logit_std"] == 1e-3
    assert doc["depths"][1] == {"depth": 2, "randomised_from": "logit", "randomised_to": "conv2", "layers": 2,
                                "random_logit_std": 0.3}
    assert set(doc["methods"]["gradcam"]) >= {"status", "input_independent", "cross_patch_correlation",
                                               "threshold", "by_depth", "rank_correlation"}
    assert set(doc["methods"]["gradcam"]["by_depth"][0]) >= {"depth", "median", "mean", "status"}
    assert summary(doc)["methods"]["lime"] == {"status": "passed", "median": pytest.approx(-1.0),
                                               "input_independent": True}
    codes = sorted(w.to_dict()["code"] for w in warnings(doc))
    assert codes == ["input_independent"] and all(w.split is None for w in warnings(doc))


def test_overall_status() -> None:
    assert overall(["passed", "failed", "inconclusive"]) == "failed"
    assert overall(["passed", "inconclusive"]) == "inconclusive"
    assert overall(["passed", "passed"]) == "passed"
    assert overall([]) == "inconclusive"
