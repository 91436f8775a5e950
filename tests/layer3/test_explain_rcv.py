"""RCV statistics on constructed data: held-out (not in-sample) R^2, signed sensitivities, the random
baseline and its significance test, and the spatial-gradient rule for pooled activations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from layer3_inference.explain import rcv
from layer3_inference.explain.config import RcvConfig

CFG = RcvConfig(n_random=100, n_repeats=20)


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


def constructed(sign: float, seed: int = 2) -> tuple[rcv.LayerData, np.ndarray, np.ndarray]:
    """Concept = activation 0 (+ noise); tumour patches' logit gradients point along `sign` * e0 plus
    patch-specific noise in the other directions."""
    rng = np.random.default_rng(seed)
    n, c = 120, 24
    pooled = rng.standard_normal((n, c))
    concept = pooled[:, 0] + 0.2 * rng.standard_normal(n)
    grad = rng.standard_normal((n, c))
    grad[:, 0] = sign * (2.0 + 0.3 * rng.standard_normal(n))
    label = (np.arange(n) % 2).astype(np.int64)
    return rcv.LayerData(pooled, grad), concept, label


def test_aligned_concept_scores_one_and_beats_random_directions() -> None:
    data, concept, label = constructed(+1.0)
    row = rcv.score_concept(data, concept, label, CFG, seed=0, random_seed=1)
    assert row["r2_heldout"] > 0.8
    assert row["tcav"] == 1.0
    assert 0.2 < row["random_tcav_mean"] < 0.8
    assert row["p_value"] < 1e-6 and row["significant"]
    assert row["br"] > 0
    assert len(row["random_tcav"]) == CFG.n_random and len(row["tcav_boot"]) == CFG.n_repeats


def test_sign_is_kept() -> None:
    data, concept, label = constructed(-1.0)
    row = rcv.score_concept(data, concept, label, CFG, seed=0, random_seed=1)
    assert row["tcav"] == 0.0  # |S| would have given 1.0
    assert row["sensitivity_mean"] < 0 and row["br"] < 0
    assert not row["significant"]  # significantly *below* the baseline is no evidence for the concept


def test_random_baseline_is_seeded() -> None:
    data, concept, label = constructed(+1.0)
    a = rcv.score_concept(data, concept, label, CFG, seed=0, random_seed=5)
    b = rcv.score_concept(data, concept, label, CFG, seed=0, random_seed=5)
    c = rcv.score_concept(data, concept, label, CFG, seed=0, random_seed=6)
    assert a["random_tcav"] == b["random_tcav"] and a["tcav_boot"] == b["tcav_boot"]
    assert a["random_tcav"] != c["random_tcav"]


def test_unencoded_concept_gets_zero_br() -> None:
    data, _, label = constructed(+1.0)
    noise = np.random.default_rng(9).standard_normal(len(label))
    row = rcv.score_concept(data, noise, label, CFG, seed=0, random_seed=1)
    assert row["r2_heldout"] < 0.1
    if row["r2_heldout"] <= 0:
        assert row["br"] == 0.0
    else:
        assert abs(row["br"]) < 0.1 * abs(row["sensitivity_mean"] / row["sensitivity_std"])


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
