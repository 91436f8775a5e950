"""Binary losses on (n, 1) sigmoid outputs: plain, class-weighted and focal cross-entropy."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from layer2_training.config import LossConfig

LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
_EPS = 1e-7


def _smooth(y: tf.Tensor, amount: float) -> tf.Tensor:
    return y * (1.0 - amount) + 0.5 * amount


def weighted_bce(pos_weight: float, smoothing: float = 0.0) -> LossFn:
    def loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        y = _smooth(tf.cast(tf.reshape(y_true, tf.shape(y_pred)), tf.float32), smoothing)
        p = tf.clip_by_value(tf.cast(y_pred, tf.float32), _EPS, 1 - _EPS)
        per = -(pos_weight * y * tf.math.log(p) + (1 - y) * tf.math.log(1 - p))
        return tf.reduce_mean(per, axis=-1)

    return loss


def focal(gamma: float, alpha: float, smoothing: float = 0.0) -> LossFn:
    """Lin et al. 2017: down-weights easy examples by (1 - p_t)^gamma; alpha weighs the tumour class."""

    def loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
        y = _smooth(tf.cast(tf.reshape(y_true, tf.shape(y_pred)), tf.float32), smoothing)
        p = tf.clip_by_value(tf.cast(y_pred, tf.float32), _EPS, 1 - _EPS)
        p_t = y * p + (1 - y) * (1 - p)
        a_t = y * alpha + (1 - y) * (1 - alpha)
        ce = -(y * tf.math.log(p) + (1 - y) * tf.math.log(1 - p))
        return tf.reduce_mean(a_t * tf.pow(1 - p_t, gamma) * ce, axis=-1)

    return loss


def make_loss(cfg: LossConfig, n_tumour: int, n_normal: int) -> LossFn | tf.keras.losses.Loss:
    if cfg.kind == "focal":
        return focal(cfg.focal_gamma, cfg.focal_alpha, cfg.label_smoothing)
    if cfg.kind == "weighted_bce":
        weight = cfg.pos_weight if cfg.pos_weight is not None else n_normal / max(n_tumour, 1)
        return weighted_bce(weight, cfg.label_smoothing)
    return tf.keras.losses.BinaryCrossentropy(label_smoothing=cfg.label_smoothing)
