"""Training-time augmentation of RGB 0-255 batches (uint8 from the reader), seeded by (seed, rank, epoch, step).

Whole-batch TF ops (no per-image Python or map_fn), run inside tf.data.

Stateless random ops make a resumed run draw exactly the augmentations an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from layer2_training.config import AugmentConfig


def _uniform(seed: tf.Tensor, k: int, n: tf.Tensor, lo: float, hi: float) -> tf.Tensor:
    return tf.random.stateless_uniform([n], seed=seed + tf.constant([0, k * 7919], tf.int64), minval=lo,
                                       maxval=hi)


def orient(x: tf.Tensor, code: tf.Tensor) -> tf.Tensor:
    """Per-image dihedral orientation of a square batch; code (n,) int32 in 0..7: bit 0 flips left-right,
    bit 1 flips up-down, bit 2 transposes (applied in that order).

    The batch is partitioned by code and each part transformed by static ops: every pixel is copied a
    couple of times, unlike `tf.where` over whole-batch reversed copies (5-10x slower on CPU).
    """
    n = tf.shape(x)[0]
    parts = tf.dynamic_partition(x, code, 8)
    where = tf.dynamic_partition(tf.range(n), code, 8)
    out = []
    for k, part in enumerate(parts):
        if k & 1:
            part = tf.reverse(part, axis=[2])
        if k & 2:
            part = tf.reverse(part, axis=[1])
        if k & 4:
            part = tf.transpose(part, [0, 2, 1, 3])
        out.append(part)
    return tf.dynamic_stitch(where, out)


def augment_batch(x: tf.Tensor, seed: tf.Tensor, cfg: AugmentConfig) -> tf.Tensor:
    """x: (n, s, s, 3) uint8 or float 0-255; seed: (2,) int64. Per-image independent draws; float32 out.

    Orientation runs on the input dtype (uint8 from the reader: a quarter of float32's bytes), then one
    cast, then per-image affine colour changes and (when configured) HSV jitter.
    """
    n = tf.shape(x)[0]
    per_image = (n, 1, 1, 1)
    code = tf.zeros([n], tf.int32)
    if cfg.flips:
        code += tf.where(_uniform(seed, 1, n, 0, 1) < 0.5, 1, 0)
        code += tf.where(_uniform(seed, 2, n, 0, 1) < 0.5, 2, 0)
    if cfg.rot90:
        # a transpose plus the flips above reaches all 8 dihedral orientations of a square patch
        code += tf.where(_uniform(seed, 3, n, 0, 1) < 0.5, 4, 0)
    if cfg.flips or cfg.rot90:
        x = orient(x, code)
    x = tf.cast(x, tf.float32)
    if cfg.brightness == 0 and cfg.contrast == 0 and cfg.hue == 0 and cfg.saturation == 0:
        return x
    if cfg.brightness > 0 or cfg.contrast > 0:
        # brightness then contrast, fused: ((x + d) - mean(x + d)) * f + mean(x + d) = x * f + (1 - f) * mean + d
        delta = tf.zeros([n])
        factor = tf.ones([n])
        if cfg.brightness > 0:
            delta = _uniform(seed, 4, n, -cfg.brightness, cfg.brightness) * 255.0
        if cfg.contrast > 0:
            factor = _uniform(seed, 5, n, 1 - cfg.contrast, 1 + cfg.contrast)
            mean = tf.reduce_mean(x, axis=[1, 2, 3])
            delta = delta + (1 - factor) * mean
        x = x * tf.reshape(factor, per_image) + tf.reshape(delta, per_image)
    if cfg.hue > 0 or cfg.saturation > 0:
        hsv = tf.image.rgb_to_hsv(tf.clip_by_value(x, 0.0, 255.0) / 255.0)
        h, s, v = tf.unstack(hsv, axis=-1)
        if cfg.hue > 0:
            h = tf.math.floormod(h + tf.reshape(_uniform(seed, 6, n, -cfg.hue, cfg.hue), (n, 1, 1)), 1.0)
        if cfg.saturation > 0:
            sat = _uniform(seed, 7, n, 1 - cfg.saturation, 1 + cfg.saturation)
            s = tf.clip_by_value(s * tf.reshape(sat, (n, 1, 1)), 0.0, 1.0)
        x = tf.image.hsv_to_rgb(tf.stack([h, s, v], axis=-1)) * 255.0
    return tf.clip_by_value(x, 0.0, 255.0)


def make_transform(cfg: AugmentConfig, seed: int, rank: int) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """A tf.data transform (images uint8/float 0-255, (epoch, step)) -> float32 images."""
    base = tf.constant([seed * 1000 + rank, 0], dtype=tf.int64)

    def transform(x: tf.Tensor, es: tf.Tensor) -> tf.Tensor:
        step_seed = base + tf.stack([tf.constant(0, tf.int64), es[0] * 1_000_003 + es[1]])
        return augment_batch(x, step_seed, cfg)

    return transform
