"""`layer3_inference/explain/gradcam.py`: Grad-CAM and Grad-CAM++ maps of a hand-built linear model, by hand.

Model: a 1x1 convolution "feat" copying the red and green channels (A_r = R, A_g = G), global average pooling
over the 4 x 4 patch, and a dense logit S = 2 mean(R) - mean(G) + b. Every gradient is then constant over the
patch: dS/dA_r = 2/16, dS/dA_g = -1/16.

Grad-CAM weighs each channel by its mean gradient: map = ReLU((2 R - G) / 16) * s', with s' = 1 for the logit
score and sigmoid'(S) for the probability score. Grad-CAM++'s alphas are 1/16 at every position when the
gradients are constant, so its channel weights are the summed positive gradients: map = ReLU(2 R / 16) * s' --
provided exp(score) is 1, as `cams` arranges (score minus its own stopped value); otherwise the map would be
multiplied by exp(S), and overflow to NaN for S above ~88.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from layer3_inference.explain import gradcam

R = (np.arange(16) * 10).reshape(4, 4).astype(np.float64)  # 0 .. 150, mean 75
G = 150.0 - R  # mean 75


@pytest.fixture(scope="module")
def linear() -> tf.keras.Model:
    inp = tf.keras.Input((4, 4, 3))
    feat = tf.keras.layers.Conv2D(2, 1, use_bias=False, name="feat")(inp)
    pooled = tf.keras.layers.GlobalAveragePooling2D()(feat)
    out = tf.keras.layers.Dense(1, name="logit")(pooled)
    model = tf.keras.Model(inp, out)
    model.get_layer("feat").set_weights([np.array([[[[1, 0], [0, 1], [0, 0]]]], np.float32)])
    return model


def _patches() -> np.ndarray:
    rng = np.random.default_rng(0)
    blue = rng.integers(0, 256, (4, 4))  # weighted 0 by the convolution: must not matter
    one = np.stack([R, G, blue], axis=-1).astype(np.uint8)
    return np.stack([one, one[::-1, ::-1]])  # a second patch, flipped: maps are per patch


def _set_bias(model: tf.keras.Model, b: float) -> None:
    model.get_layer("logit").set_weights([np.array([[2.0], [-1.0]], np.float32), np.array([b], np.float32)])


def test_gradcam_and_gradcam_pp_of_the_logit_known_answer(linear: tf.keras.Model) -> None:
    _set_bias(linear, 30.0)  # S = 2 * 75 - 75 + 30 = 105: exp(S) overflows float32
    maps = gradcam.cams(linear, _patches(), "feat", "logit", batch=1)
    assert set(maps) == {"gradcam", "gradcam_pp"}
    expected_cam = np.maximum(2 * R - G, 0) / 16  # zero where R < 50
    expected_pp = 2 * R / 16
    for i, flip in enumerate((lambda a: a, lambda a: a[::-1, ::-1])):
        assert maps["gradcam"][i] == pytest.approx(flip(expected_cam), rel=1e-5, abs=1e-5)
        assert maps["gradcam_pp"][i] == pytest.approx(flip(expected_pp), rel=1e-5, abs=1e-5)
    assert maps["gradcam"].dtype == np.float32 and maps["gradcam"].shape == (2, 4, 4)
    assert maps["gradcam"][0, 0, 0] == 0.0 and maps["gradcam"][0, 3, 3] == pytest.approx((300 - 0) / 16)


def test_gradcam_of_the_probability_scales_by_the_sigmoid_slope(linear: tf.keras.Model) -> None:
    _set_bias(linear, -75.0)  # S = 0: sigmoid'(0) = 1/4
    maps = gradcam.cams(linear, _patches()[:1], "feat", "probability")
    assert maps["gradcam"][0] == pytest.approx(np.maximum(2 * R - G, 0) / 64, rel=1e-5, abs=1e-6)
    assert maps["gradcam_pp"][0] == pytest.approx(2 * R / 64, rel=1e-5, abs=1e-6)


def test_no_patches_give_empty_maps(linear: tf.keras.Model) -> None:
    maps = gradcam.cams(linear, np.zeros((0, 4, 4, 3), np.uint8), "feat", "logit")
    assert {k: v.shape for k, v in maps.items()} == {"gradcam": (0, 4, 4), "gradcam_pp": (0, 4, 4)}
