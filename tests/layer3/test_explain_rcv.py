"""RCV statistics on constructed data: held-out (not in-sample) R^2 and its class-label baseline, signed
sensitivities, the TCAV test of Kim et al. 2018 (concept refits against permuted-concept fits, n = fits,
two-sided, Bonferroni over layers x concepts), the undefined case of a gradient shared by every patch, and the
spatial-gradient rule for pooled activations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from sklearn.linear_model import Ridge

from layer3_inference.explain import rcv
from layer3_inference.explain.config import RcvConfig

CFG = RcvConfig(n_random=20, n_repeats=20)


def test_heldout_r2_of_noise_is_not_inflated() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((60, 200)), rng.standard_normal(60)
    r2, folds = rcv.heldout_r2(x, y, RcvConfig(alphas=[1e-3]))
    in_sample = rcv._ridge([1e-3]).fit(x, y).score(x, y)
    assert in_sample > 0.9  # 200 features, 60 samples: an in-sample fit explains anything
    assert r2 < 0.1
    assert len(folds) == CFG.folds


def test_heldout_r2_finds_a_linear_concept() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((120, 30))
    y = x @ rng.standard_normal(30) + 0.3 * rng.standard_normal(120)
    assert rcv.heldout_r2(x, y, CFG)[0] > 0.8


def test_label_baseline_r2_known_answer_leave_one_out() -> None:
    # 6 folds of 6 patches = leave-one-out, whatever the shuffle. Each left-out patch is predicted by the mean of
    # the other two of its class: class 0 (1, 2, 3) -> 2.5, 2, 1.5; class 1 (5, 6, 7) -> 6.5, 6, 5.5.
    # Residuals -1.5, 0, 1.5, -1.5, 0, 1.5: SSE 9. Mean 4: SST 9+4+1+1+4+9 = 28. R^2 = 1 - 9/28 = 19/28.
    label = np.array([0, 0, 0, 1, 1, 1])
    y = np.array([1.0, 2.0, 3.0, 5.0, 6.0, 7.0])
    assert rcv.label_baseline_r2(label, y, RcvConfig(folds=6)) == pytest.approx(19 / 28)


def test_ridge_direction_is_scikit_learns_ridge_direction() -> None:
    rng = np.random.default_rng(3)
    for n, c in ((40, 100), (100, 10)):  # both closed forms: n < c and n >= c
        x, y = rng.standard_normal((n, c)) * 3 + 1, rng.standard_normal(n)
        scale = float(np.sqrt(np.mean(x.var(axis=0))))
        w = Ridge(alpha=5.0).fit(x / scale, y).coef_  # centring is Ridge's own intercept
        np.testing.assert_allclose(rcv.ridge_direction(x, y, 5.0), w / np.linalg.norm(w), atol=1e-10)


def test_gradient_variation_known_answers() -> None:
    assert rcv.gradient_variation(np.tile([3.0, -1.0], (5, 1))) == 0.0
    # mean 0: deviations are the gradients themselves, RMS 1 over RMS norm 1
    assert rcv.gradient_variation(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(1.0)
    # mean (1, 0): deviations (+-1, 0), RMS 1; RMS norm sqrt((4 + 0) / 2) = sqrt 2
    assert rcv.gradient_variation(np.array([[2.0, 0.0], [0.0, 0.0]])) == pytest.approx(1 / math.sqrt(2))
    assert rcv.gradient_variation(np.zeros((4, 3))) == 0.0


def constructed(sign: float, seed: int = 2) -> tuple[rcv.LayerData, np.ndarray, np.ndarray]:
    """Concept = activation 0 (+ noise), unrelated to the alternating label; tumour patches' logit gradients point
    along `sign` * e0 plus patch-specific noise in the other directions."""
    rng = np.random.default_rng(seed)
    n, c = 120, 24
    pooled = rng.standard_normal((n, c))
    concept = pooled[:, 0] + 0.2 * rng.standard_normal(n)
    grad = rng.standard_normal((n, c))
    grad[:, 0] = sign * (2.0 + 0.3 * rng.standard_normal(n))
    label = (np.arange(n) % 2).astype(np.int64)
    return rcv.LayerData(pooled, grad), concept, label


def one(data: rcv.LayerData, concept: np.ndarray, label: np.ndarray, cfg: RcvConfig = CFG) -> dict:
    (row,) = rcv.score_all({"layer": data}, concept[:, None], ["c"], label, cfg)
    return row


def test_aligned_concept_scores_one_and_beats_random_fits() -> None:
    row = one(*constructed(+1.0))
    assert row["r2_heldout"] > 0.8 and row["r2_label_baseline"] < 0.05  # the label says nothing about it
    assert row["tcav"] == 1.0 and row["tcav_repeats"] == [1.0] * CFG.n_repeats
    assert 0.2 < row["tcav_random_mean"] < 0.8
    assert row["p_value"] < 1e-6 and row["p_adjusted"] == row["p_value"]  # one pair tested: m = 1
    assert row["significant"] is True and row["status"] == "significant"
    assert row["br"] > 0
    assert len(row["tcav_random"]) == CFG.n_random


def test_a_concept_that_lowers_the_logit_is_significant_below_random() -> None:
    """The test is two-sided (Kim et al. 2018): sign kept, a concept that consistently lowers the tumour logit is
    significant too, with a TCAV below the random mean."""
    row = one(*constructed(-1.0))
    assert row["tcav"] == 0.0  # |S| would have given 1.0
    assert row["sensitivity_mean"] < 0 and row["br"] < 0
    assert row["tcav_random_mean"] > 0.2 and row["status"] == "significant"


def test_identical_gradients_make_the_test_undefined_not_significant() -> None:
    """Regression: before a linear head on pooled activations every patch has the same gradient, so every
    direction's TCAV is 0 or 1; the refits of any stable direction all score 1 against a 0/1 mix of random ones,
    and the old code reported p ~ 5e-17, "significant", for every concept."""
    data, concept, label = constructed(+1.0)
    same = rcv.LayerData(data.pooled, np.tile(data.grad[1], (len(label), 1)))
    row = one(same, concept, label)
    assert row["status"] == "undefined" and row["significant"] is None
    assert math.isnan(row["p_value"]) and math.isnan(row["p_adjusted"])
    assert "same for every tumour patch" in row["reason"]
    assert row["r2_heldout"] > 0.8  # the R^2 is still reported: only the TCAV test is undefined


def test_a_gradient_dominated_by_its_shared_part_makes_the_test_undefined() -> None:
    """Regression: the per-patch part of the gradient varies (no exact constant) but is ten times smaller than the
    shared part, so for almost every direction all tumour patches move the logit the same way and TCAV is 0 or 1;
    any stable direction then tested "significant" (p ~ 1e-17 on the toy model's layers, where the concept was
    no more extreme than 60-97% of random fits)."""
    data, concept, label = constructed(+1.0)
    rng = np.random.default_rng(3)
    shared = rng.standard_normal(data.grad.shape[1])
    grad = shared + 0.05 * rng.standard_normal(data.grad.shape)
    row = one(rcv.LayerData(data.pooled, grad), concept, label)
    assert CFG.min_gradient_variation < row["gradient_variation"] < 0.1  # not caught by the exact-constant check
    assert row["tcav_random_saturated"] > CFG.max_saturated
    assert row["status"] == "undefined" and row["significant"] is None and math.isnan(row["p_value"])
    assert "all tumour patches move the logit the same way" in row["reason"]


def test_saturated_share_known_answer() -> None:
    assert rcv.saturated_share(np.array([0.0, 1.0, 0.5, 1.0, 0.25])) == pytest.approx(3 / 5)
    assert math.isnan(rcv.saturated_share(np.array([])))


def test_a_linear_head_on_pooled_activations_gives_undefined() -> None:
    tf = pytest.importorskip("tensorflow")
    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((8, 8, 3))
    conv = tf.keras.layers.Conv2D(6, 3, padding="same", name="conv")(inp)
    logit = tf.keras.layers.Dense(1)(tf.keras.layers.GlobalAveragePooling2D()(conv))
    taps = tf.keras.Model(inp, [conv, logit])
    x = np.random.default_rng(0).uniform(0, 255, (30, 8, 8, 3)).astype(np.uint8)
    data, _ = rcv.activations(taps, ["conv"], x, batch=16)
    concept = data["conv"].pooled[:, 0] + np.random.default_rng(1).normal(0, 0.01, 30)
    row = one(data["conv"], concept, (np.arange(30) % 2).astype(np.int64))
    assert row["gradient_variation"] < 1e-5
    assert row["status"] == "undefined" and row["significant"] is None


def test_constant_scores_on_both_sides_are_undefined() -> None:
    assert math.isnan(rcv.compare(np.ones(20), np.ones(20), "ttest"))
    assert math.isnan(rcv.compare(np.ones(20), np.zeros(20), "mannwhitney"))
    assert math.isnan(rcv.compare(np.array([0.5]), np.linspace(0, 1, 20), "ttest"))  # one fit is no sample


@pytest.mark.filterwarnings("ignore:Precision loss")  # all 12 refits score 1.0: exact zero variance
def test_ttest_is_welchs_on_the_fits_not_on_patches() -> None:
    a = np.array([0.9, 1.0, 0.8, 0.95])
    b = np.array([0.5, 0.4, 0.6, 0.55, 0.45])
    # Welch by hand: means 0.9125 and 0.5; sample variances va = 0.0072917, vb = 0.00625; n = 4 and 5 fits
    va, vb = a.var(ddof=1), b.var(ddof=1)
    se2 = va / 4 + vb / 5
    t = (a.mean() - b.mean()) / math.sqrt(se2)
    df = se2 ** 2 / ((va / 4) ** 2 / 3 + (vb / 5) ** 2 / 4)
    assert rcv.compare(a, b, "ttest") == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9)
    # and in a scored row: the p-value is that of the two stored lists, n_repeats and n_random long
    row = one(*constructed(+1.0, seed=4), cfg=RcvConfig(n_random=15, n_repeats=12, min_r2_gain=0.0))
    assert len(row["tcav_repeats"]) == 12 and len(row["tcav_random"]) == 15
    assert row["p_value"] == stats.ttest_ind(row["tcav_repeats"], row["tcav_random"], equal_var=False).pvalue


@pytest.mark.parametrize("test", ["ttest", "mannwhitney"])
def test_scores_from_one_distribution_are_rarely_significant(test: str) -> None:
    """Both samples are shares of 60 patches with the same rate: at alpha 0.05 about 2 of 40 seeds reject (more
    than 6 has probability < 0.5%); a test that counted patches, or bootstrap means, instead of fits rejects far
    more often."""
    rejected = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        rate = rng.uniform(0.2, 0.8)
        concept, random = rng.binomial(60, rate, 20) / 60, rng.binomial(60, rate, 20) / 60
        rejected += rcv.compare(concept, random, test) < 0.05
    assert rejected <= 6


def test_concept_orthogonal_to_the_gradient_is_rarely_significant() -> None:
    """Encoded concept (R^2 ~ 0.96) along activation 0, but the tumour gradients' component along it is
    zero-mean noise (their shared part lies in the other directions): its TCAV is a coin flip like the random
    fits', so at most a few of 20 seeds may come out significant; the aligned concept does in all."""
    hits, aligned = 0, 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        pooled = rng.standard_normal((120, 24))
        concept = pooled[:, 0] + 0.2 * rng.standard_normal(120)
        common = 0.5 * rng.standard_normal(24)
        common[0] = 0.0
        grad = rng.standard_normal((120, 24)) + common
        label = (np.arange(120) % 2).astype(np.int64)
        hits += bool(one(rcv.LayerData(pooled, grad), concept, label)["significant"])
        grad[:, 0] = 2.0 + 0.3 * rng.standard_normal(120)
        aligned += bool(one(rcv.LayerData(pooled, grad), concept, label)["significant"])
    assert hits <= 3 and aligned == 20


def test_bonferroni_multiplies_by_the_number_of_tests_made() -> None:
    # three defined p-values (the NaN is an undefined test, not a test): m = 3
    adjusted = rcv.bonferroni([0.01, 0.2, math.nan, 0.5])
    assert adjusted[0] == pytest.approx(0.03) and adjusted[1] == pytest.approx(0.6)
    assert math.isnan(adjusted[2]) and adjusted[3] == 1.0


def test_bonferroni_runs_over_layers_and_concepts() -> None:
    data, concept, label = constructed(+1.0)
    noise = np.random.default_rng(5).standard_normal(len(label))
    rows = rcv.score_all({"a": data, "b": data}, np.column_stack([concept, noise]), ["x", "y"], label, CFG)
    assert [r["n_tests"] for r in rows] == [4] * 4  # 2 layers x 2 concepts, all defined
    for r in rows:
        assert r["p_adjusted"] == pytest.approx(min(1.0, 4 * r["p_value"]))


def test_concept_equal_to_the_class_label_restates_class() -> None:
    """The activations encode the label (activation 0 = label + noise) and the concept is the label plus
    noise: the activations predict it no better than the label alone does, whatever its TCAV."""
    rng = np.random.default_rng(6)
    n = 120
    label = (np.arange(n) % 2).astype(np.int64)
    pooled = rng.standard_normal((n, 16))
    pooled[:, 0] = 3.0 * label + 0.3 * rng.standard_normal(n)
    concept = label + 0.1 * rng.standard_normal(n)
    grad = rng.standard_normal((n, 16))
    grad[:, 0] = 2.0 + 0.3 * rng.standard_normal(n)  # it does drive the logit: TCAV 1, p tiny
    row = one(rcv.LayerData(pooled, grad), concept, label)
    assert row["r2_label_baseline"] > 0.9 and row["r2_heldout"] < row["r2_label_baseline"] + CFG.min_r2_gain
    assert row["p_value"] < 1e-6  # the test alone would have called it significant
    assert row["status"] == "restates class" and row["significant"] is False
    # where the test is undefined too, the status says so and the reason keeps the R^2 verdict
    flat = one(rcv.LayerData(pooled, np.tile(grad[1], (n, 1))), concept, label)
    assert flat["status"] == "undefined" and "does not exceed the class label's" in flat["reason"]


def test_unencoded_concept_is_not_significant_and_gets_zero_br() -> None:
    data, _, label = constructed(+1.0)
    noise = np.random.default_rng(9).standard_normal(len(label))
    row = one(data, noise, label)
    assert row["r2_heldout"] < 0.1
    assert row["status"] == "not significant" and row["significant"] is False
    assert "does not encode" in row["reason"]
    if row["r2_heldout"] <= 0:
        assert row["br"] == 0.0
    else:
        assert abs(row["br"]) < 0.1 * abs(row["sensitivity_mean"] / row["sensitivity_std"])


def test_fits_are_seeded() -> None:
    data, concept, label = constructed(+1.0, seed=7)
    noise = concept + np.random.default_rng(2).normal(0, 3, len(label))  # weaker: scores vary between fits
    a = rcv.score_concept(data, noise, label, CFG, seed=5)
    b = rcv.score_concept(data, noise, label, CFG, seed=5)
    c = rcv.score_concept(data, noise, label, CFG, seed=6)
    assert a["tcav_random"] == b["tcav_random"] and a["tcav_repeats"] == b["tcav_repeats"]
    assert a["tcav_random"] != c["tcav_random"]


def test_summary_rows_have_the_published_keys_and_no_nan() -> None:
    data, concept, label = constructed(+1.0)
    same = rcv.LayerData(data.pooled, np.tile(data.grad[1], (len(label), 1)))
    rows = rcv.summary_rows(rcv.score_all({"a": data, "b": same}, concept[:, None], ["c"], label, CFG))
    assert list(rows[0]) == ["layer", "concept", "r2_heldout", "r2_label_baseline", "tcav", "tcav_std",
                             "tcav_random_mean", "tcav_random_std", "p_value", "p_adjusted", "significant", "status",
                             "reason"]
    assert rows[1]["p_value"] is None and rows[1]["significant"] is None and rows[1]["status"] == "undefined"


def test_constant_sensitivity_has_undefined_br() -> None:
    assert math.isnan(rcv.ratio(0.5, 0.0))
    assert rcv.ratio(1.0, 2.0) == 0.5


def test_spatial_gradient_sum_is_the_gradient_of_the_pooled_activation() -> None:
    tf = pytest.importorskip("tensorflow")
    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((8, 8, 3))
    conv = tf.keras.layers.Conv2D(5, 3, padding="same", name="conv")(inp)
    pooled = tf.keras.layers.GlobalAveragePooling2D()(conv)
    logit = tf.keras.layers.Dense(1, name="head")(pooled)
    taps = tf.keras.Model(inp, [conv, logit])
    x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype(np.uint8)
    data, logits = rcv.activations(taps, ["conv"], x, batch=3)
    kernel = taps.get_layer("head").get_weights()[0][:, 0]
    # logit = kernel . mean_hw(conv) + b: d logit / d pooled = kernel for every patch
    np.testing.assert_allclose(data["conv"].grad, np.tile(kernel, (4, 1)), rtol=1e-5, atol=1e-6)
    conv_out = tf.keras.Model(inp, conv)(x.astype(np.float32)).numpy()
    np.testing.assert_allclose(data["conv"].pooled, conv_out.mean(axis=(1, 2)), rtol=1e-5, atol=1e-5)
    assert logits.shape == (4,)


def test_a_rank_without_patches_gives_empty_activations_of_the_right_width() -> None:
    """Regression: RCV shares are whole global batches, so with fewer batches than ranks a rank has no patches;
    `activations` raised on concatenating nothing (a traceback, and the other ranks hung in the gather)."""
    tf = pytest.importorskip("tensorflow")
    inp = tf.keras.Input((8, 8, 3))
    conv = tf.keras.layers.Conv2D(5, 3, padding="same", name="conv")(inp)
    logit = tf.keras.layers.Dense(1)(tf.keras.layers.GlobalAveragePooling2D()(conv))
    taps = tf.keras.Model(inp, [conv, logit])
    data, logits = rcv.activations(taps, ["conv"], np.zeros((0, 8, 8, 3), np.uint8), batch=3)
    assert data["conv"].pooled.shape == data["conv"].grad.shape == (0, 5) and logits.shape == (0,)
    merged = np.concatenate([data["conv"].pooled, rcv.activations(taps, ["conv"], np.zeros((2, 8, 8, 3), np.uint8),
                                                                 batch=3)[0]["conv"].pooled])
    assert merged.shape == (2, 5)
