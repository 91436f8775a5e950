"""Augmentation: the fast batch ops equal their straightforward definitions; draws are seeded."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from layer2_training.augment import _uniform, augment_batch, make_transform, orient
from layer2_training.config import AugmentConfig

X = np.random.default_rng(0).integers(0, 256, (16, 6, 6, 3)).astype(np.uint8)


def reference(x: np.ndarray, seed: tf.Tensor, cfg: AugmentConfig) -> np.ndarray:
    """The definition: per image, flip left-right, flip up-down, transpose, brightness, contrast, clip."""
    n = len(x)
    draws = {k: _uniform(seed, k, n, 0, 1).numpy() for k in (1, 2, 3)}
    out = x.astype(np.float32)
    for i in range(n):
        img = out[i]
        if cfg.flips and draws[1][i] < 0.5:
            img = img[:, ::-1]
        if cfg.flips and draws[2][i] < 0.5:
            img = img[::-1]
        if cfg.rot90 and draws[3][i] < 0.5:
            img = img.transpose(1, 0, 2)
        if cfg.brightness:
            img = img + _uniform(seed, 4, n, -cfg.brightness, cfg.brightness).numpy()[i] * 255
        if cfg.contrast:
            factor = _uniform(seed, 5, n, 1 - cfg.contrast, 1 + cfg.contrast).numpy()[i]
            img = (img - img.mean()) * factor + img.mean()
        out[i] = img
    return np.clip(out, 0, 255)


@pytest.mark.parametrize("cfg", [AugmentConfig(), AugmentConfig(rot90=False), AugmentConfig(flips=False),
                                 AugmentConfig(brightness=0.2, contrast=0.3),
                                 AugmentConfig(flips=False, rot90=False, contrast=0.5)])
def test_augment_matches_definition(cfg: AugmentConfig) -> None:
    seed = tf.constant([3, 4], tf.int64)
    got = augment_batch(tf.constant(X), seed, cfg).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, reference(X, seed, cfg), atol=1e-3)


def test_orient_reaches_all_eight_orientations() -> None:
    img = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1).repeat(8, axis=0)
    out = orient(tf.constant(img), tf.range(8)).numpy()
    assert len({o.tobytes() for o in out}) == 8
    np.testing.assert_array_equal(out[0], img[0])
    np.testing.assert_array_equal(out[4], img[0].transpose(1, 0, 2))


def test_transform_is_seeded_by_step_and_rank() -> None:
    cfg = AugmentConfig(brightness=0.1, hue=0.05, saturation=0.1)
    a = make_transform(cfg, 1, 0)(tf.constant(X), tf.constant([2, 5], tf.int64)).numpy()
    np.testing.assert_array_equal(a, make_transform(cfg, 1, 0)(tf.constant(X), tf.constant([2, 5], tf.int64)))
    assert not np.array_equal(a, make_transform(cfg, 1, 0)(tf.constant(X), tf.constant([2, 6], tf.int64)))
    assert not np.array_equal(a, make_transform(cfg, 1, 1)(tf.constant(X), tf.constant([2, 5], tf.int64)))
    assert a.min() >= 0 and a.max() <= 255
