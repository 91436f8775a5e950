"""Known answers for the binary losses: focal loss as published (Lin et al. 2017), weighted BCE, make_loss.

Every expected number is worked by hand from the definitions (ln is the natural logarithm):
  BCE(y, p)            = -(y ln p + (1 - y) ln(1 - p))
  weighted BCE         = -(w y ln p + (1 - y) ln(1 - p))
  FL(p_t)              = -alpha_t (1 - p_t)^gamma ln(p_t),  p_t = p if y = 1 else 1 - p,
                         alpha_t = alpha if y = 1 else 1 - alpha
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from layer2_training.config import LossConfig
from layer2_training.losses import LossFn, focal, make_loss, weighted_bce

LN_09, LN_08, LN_02, LN_01, LN_05 = -0.10536052, -0.22314355, -1.60943791, -2.30258509, -0.69314718


def per_sample(loss: LossFn | tf.keras.losses.Loss, y: list[float], p: list[float]) -> np.ndarray:
    """The loss of each sample: (n, 1) sigmoid outputs as the model emits them."""
    out = loss(tf.constant(y, tf.float32)[:, None], tf.constant(p, tf.float32)[:, None])
    return np.asarray(out, dtype=np.float64)


def test_focal_matches_hand_worked_values() -> None:
    # gamma 2, alpha 0.25 (the paper's defaults):
    #   y=1, p=0.9: p_t=0.9, alpha_t=0.25, (0.1)^2=0.01  -> 0.25 * 0.01 * 0.10536052 = 2.634013e-4
    #   y=0, p=0.9: p_t=0.1, alpha_t=0.75, (0.9)^2=0.81  -> 0.75 * 0.81 * 2.30258509 = 1.3988204
    #   y=1, p=0.5: p_t=0.5, alpha_t=0.25, (0.5)^2=0.25  -> 0.25 * 0.25 * 0.69314718 = 0.0433217
    got = per_sample(focal(2.0, 0.25), [1, 0, 1], [0.9, 0.9, 0.5])
    np.testing.assert_allclose(got, [0.25 * 0.01 * -LN_09, 0.75 * 0.81 * -LN_01, 0.25 * 0.25 * -LN_05],
                               rtol=1e-5)
    np.testing.assert_allclose(got, [2.634013e-4, 1.3988204, 0.0433217], rtol=1e-5)


def test_focal_with_gamma_zero_is_alpha_weighted_bce() -> None:
    # gamma 0: (1 - p_t)^0 = 1, so FL = alpha_t * BCE
    #   y=1, p=0.8: 0.25 * 0.22314355 = 0.0557859;  y=0, p=0.8: 0.75 * 1.60943791 = 1.2070784
    got = per_sample(focal(0.0, 0.25), [1, 0], [0.8, 0.8])
    np.testing.assert_allclose(got, [0.25 * -LN_08, 0.75 * -LN_02], rtol=1e-5)
    # alpha 0.5 weighs both classes alike: exactly half of plain BCE
    half = per_sample(focal(0.0, 0.5), [1, 0, 1], [0.8, 0.8, 0.3])
    bce = per_sample(tf.keras.losses.binary_crossentropy, [1, 0, 1], [0.8, 0.8, 0.3])
    np.testing.assert_allclose(half, 0.5 * bce, rtol=1e-5)


def test_focal_down_weights_easy_examples_more_than_hard_ones() -> None:
    # FL / (alpha_t BCE) = (1 - p_t)^gamma: 0.1^2 = 0.01 for an easy example (p_t 0.9), 0.7^2 = 0.49 for a hard one
    easy, hard = per_sample(focal(2.0, 0.5), [1, 1], [0.9, 0.3])
    np.testing.assert_allclose(easy / (0.5 * -LN_09), 0.01, rtol=1e-4)
    np.testing.assert_allclose(hard / (0.5 * -np.log(0.3)), 0.49, rtol=1e-4)


def test_weighted_bce_matches_hand_worked_values() -> None:
    # pos_weight 3: y=1, p=0.8 -> 3 * 0.22314355 = 0.6694307; y=0, p=0.8 -> 1.6094379 (negatives unweighted)
    np.testing.assert_allclose(per_sample(weighted_bce(3.0), [1, 0], [0.8, 0.8]), [3 * -LN_08, -LN_02],
                               rtol=1e-5)
    # pos_weight 1 is plain binary cross-entropy
    np.testing.assert_allclose(per_sample(weighted_bce(1.0), [1, 0, 1], [0.8, 0.8, 0.3]),
                               per_sample(tf.keras.losses.binary_crossentropy, [1, 0, 1], [0.8, 0.8, 0.3]),
                               rtol=1e-5)


def test_label_smoothing_moves_targets_half_way() -> None:
    # smoothing 0.2: y=1 becomes 0.9 (y (1 - s) + s / 2)
    #   weighted BCE, w 3, p 0.8: -(3 * 0.9 ln 0.8 + 0.1 ln 0.2) = 0.60248759 + 0.16094379 = 0.7634314
    np.testing.assert_allclose(per_sample(weighted_bce(3.0, 0.2), [1], [0.8]), [0.7634314], rtol=1e-5)
    #   focal, gamma 2, alpha 0.25, p 0.8: p_t = 0.9*0.8 + 0.1*0.2 = 0.74, alpha_t = 0.9*0.25 + 0.1*0.75 = 0.3,
    #   soft BCE = -(0.9 ln 0.8 + 0.1 ln 0.2) = 0.36177299 -> 0.3 * 0.26^2 * 0.36177299 = 0.00733676
    np.testing.assert_allclose(per_sample(focal(2.0, 0.25, 0.2), [1], [0.8]), [0.00733676], rtol=1e-5)


def test_saturated_probabilities_give_finite_losses() -> None:
    # p is clipped to [1e-7, 1 - 1e-7]: a confidently wrong sample costs -ln(1e-7) = 16.118096, not inf; in
    # float32 1 - 1e-7 rounds to 1 - 2^-23, so the other side costs -ln(2^-23) = 23 ln 2 = 15.942385
    got = per_sample(weighted_bce(1.0), [1, 0, 1, 0], [0.0, 1.0, 1.0, 0.0])
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got[:2], [16.118096, 23 * -LN_05], rtol=1e-5)
    assert np.all(got[2:] < 1e-5)
    assert np.all(np.isfinite(per_sample(focal(2.0, 0.25), [1, 0], [0.0, 1.0])))


def test_losses_are_per_sample() -> None:
    # one value per sample (Keras then averages over the batch); labels may come as (n,) or (n, 1)
    y, p = tf.constant([[1.0], [0.0], [1.0]]), tf.constant([[0.8], [0.8], [0.5]])
    for loss in (focal(2.0, 0.25), weighted_bce(2.0)):
        out = loss(y, p)
        assert out.shape == (3,)
        np.testing.assert_allclose(out.numpy(), loss(tf.reshape(y, [-1]), p).numpy())


@pytest.mark.parametrize(("cfg", "n_tumour", "n_normal", "expected"), [
    # default pos_weight = n_normal / n_tumour = 30 / 10 = 3: 3 * 0.22314355
    (LossConfig(kind="weighted_bce"), 10, 30, 3 * -LN_08),
    # an explicit pos_weight wins over the class ratio
    (LossConfig(kind="weighted_bce", pos_weight=2.0), 10, 30, 2 * -LN_08),
    # no tumour samples: the ratio's denominator is taken as 1, not 0
    (LossConfig(kind="weighted_bce"), 0, 5, 5 * -LN_08),
    # focal with the configured gamma 0 and alpha 0.25: 0.25 * 0.22314355
    (LossConfig(kind="focal", focal_gamma=0.0, focal_alpha=0.25), 10, 30, 0.25 * -LN_08),
    (LossConfig(kind="bce"), 10, 30, -LN_08),
])
def test_make_loss_builds_the_configured_loss(cfg: LossConfig, n_tumour: int, n_normal: int,
                                              expected: float) -> None:
    loss = make_loss(cfg, n_tumour, n_normal)
    # one sample (y=1, p=0.8), so Keras' batch mean (kind bce) equals the per-sample value
    np.testing.assert_allclose(float(np.mean(per_sample(loss, [1], [0.8]))), expected, rtol=1e-5)
