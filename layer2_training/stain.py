"""Stain normalisation (Reinhard, Macenko) as TF ops, so it runs inside the saved model.

One implementation serves fitting the reference (run eagerly on the reference patch) and normalising
(a model layer), so training and inference cannot drift apart. Layer 3 gets it for free by loading the
model (`layer2_training.model.load_inference_model`) or can call `normalize` on its own batches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from layer1_patches.shared.errors import CamnetError

# Ruderman's l-alpha-beta space, as in Reinhard et al. 2001
_RGB2LMS = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]])
_LMS2LAB = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1, 1, 1], [1, 1, -2], [1, -1, 0]])
_LAB2LMS = np.linalg.inv(_LMS2LAB)
_LMS2RGB = np.linalg.inv(_RGB2LMS)
_EPS = 1e-6
IO = 240.0  # Macenko's transmitted-light intensity
BETA = 0.15  # optical density below which a pixel counts as background
ALPHA = 1.0  # percentile for the robust stain-vector angles


def _mat(m: np.ndarray) -> tf.Tensor:
    return tf.constant(m.T, dtype=tf.float32)  # row vectors times m.T


def rgb_to_lab(x: tf.Tensor) -> tf.Tensor:
    lms = tf.maximum(tf.matmul(tf.reshape(x, [-1, 3]), _mat(_RGB2LMS)), 1.0)
    return tf.matmul(tf.math.log(lms) / np.log(10.0), _mat(_LMS2LAB))


def lab_to_rgb(lab: tf.Tensor) -> tf.Tensor:
    lms = tf.pow(10.0, tf.matmul(lab, _mat(_LAB2LMS)))
    return tf.matmul(lms, _mat(_LMS2RGB))


def reinhard_stats(image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    lab = rgb_to_lab(tf.cast(image, tf.float32))
    return tf.reduce_mean(lab, axis=0), tf.math.reduce_std(lab, axis=0)


def reinhard(images: tf.Tensor, mean: tf.Tensor, std: tf.Tensor) -> tf.Tensor:
    """Each image of an (n, h, w, 3) batch moved from its own l-alpha-beta mean and std onto (mean, std).

    The statistics are per image, but as reductions over the pixel axis of (n, pixels, 3) they are one op
    for the whole batch rather than a `map_fn` loop of small ops per image.
    """
    shape = tf.shape(images)
    lab = tf.reshape(rgb_to_lab(images), [shape[0], shape[1] * shape[2], 3])
    mu = tf.reduce_mean(lab, axis=1, keepdims=True)
    sd = tf.math.reduce_std(lab, axis=1, keepdims=True)
    out = (lab - mu) / (sd + _EPS) * std + mean
    return tf.reshape(lab_to_rgb(tf.reshape(out, [-1, 3])), shape)


def _percentile(v: tf.Tensor, q: float) -> tf.Tensor:
    s = tf.sort(v)
    n = tf.shape(s)[0]
    i = tf.cast(tf.round(q / 100.0 * tf.cast(n - 1, tf.float32)), tf.int32)
    return s[tf.clip_by_value(i, 0, n - 1)]


def macenko_stains(image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(HE (3, 2) stain vectors, max concentrations (2,), tissue pixel count) of one RGB 0-255 image."""
    od = -tf.math.log((tf.reshape(tf.cast(image, tf.float32), [-1, 3]) + 1.0) / IO)
    tissue = tf.boolean_mask(od, tf.reduce_all(od > BETA, axis=1))
    n = tf.shape(tissue)[0]
    centred = tissue - tf.reduce_mean(tissue, axis=0)
    cov = tf.matmul(centred, centred, transpose_a=True) / tf.cast(tf.maximum(n - 1, 1), tf.float32)
    _, vecs = tf.linalg.eigh(cov)
    plane = vecs[:, 1:3]
    # eigenvectors have arbitrary sign; point them into positive optical density
    plane = plane * tf.where(tf.reduce_sum(plane, axis=0) < 0, -1.0, 1.0)
    proj = tf.matmul(tissue, plane)
    phi = tf.atan2(proj[:, 1], proj[:, 0])
    lo, hi = _percentile(phi, ALPHA), _percentile(phi, 100 - ALPHA)
    v1 = tf.linalg.matvec(plane, tf.stack([tf.cos(lo), tf.sin(lo)]))
    v2 = tf.linalg.matvec(plane, tf.stack([tf.cos(hi), tf.sin(hi)]))
    he = tf.where(v1[0] > v2[0], tf.stack([v1, v2], axis=1), tf.stack([v2, v1], axis=1))
    conc = tf.matmul(tf.linalg.pinv(he), od, transpose_b=True)
    max_c = tf.stack([_percentile(conc[0], 99.0), _percentile(conc[1], 99.0)])
    return he, max_c, n


def _macenko_one(image: tf.Tensor, he_ref: tf.Tensor, max_ref: tf.Tensor) -> tf.Tensor:
    od = -tf.math.log((tf.reshape(image, [-1, 3]) + 1.0) / IO)
    enough = tf.reduce_sum(tf.cast(tf.reduce_all(od > BETA, axis=1), tf.int32)) >= 16

    def normalise() -> tf.Tensor:
        he, max_c, _ = macenko_stains(image)
        conc = tf.matmul(tf.linalg.pinv(he), od, transpose_b=True)
        conc = conc * tf.expand_dims(max_ref / (max_c + _EPS), 1)
        rgb = IO * tf.exp(-tf.matmul(he_ref, conc)) - 1.0
        return tf.reshape(tf.transpose(rgb), tf.shape(image))

    # background-only patches carry no stain to estimate: pass them through
    return tf.cond(enough, normalise, lambda: image)


def fit_reference(image: np.ndarray, method: str) -> dict[str, list[float] | list[list[float]]]:
    """The reference parameters `normalize` maps every image onto."""
    if method == "reinhard":
        mean, std = reinhard_stats(tf.constant(image))
        return {"mean": mean.numpy().tolist(), "std": std.numpy().tolist()}
    if method == "macenko":
        he, max_c, n = macenko_stains(tf.constant(image))
        if int(n) < 16:
            raise CamnetError("stain reference: too little tissue (optical density) for Macenko")
        return {"he": he.numpy().tolist(), "max_c": max_c.numpy().tolist()}
    raise CamnetError(f"unknown stain method {method!r}")


def normalize(images: tf.Tensor, method: str, params: dict[str, Any]) -> tf.Tensor:
    """(n, h, w, 3) float RGB 0-255 -> stain-normalised, clipped to 0-255."""
    x = tf.cast(images, tf.float32)
    if method == "reinhard":
        mean, std = tf.constant(params["mean"], tf.float32), tf.constant(params["std"], tf.float32)
        out = reinhard(x, mean, std)
    elif method == "macenko":
        he, mx = tf.constant(params["he"], tf.float32), tf.constant(params["max_c"], tf.float32)
        out = tf.map_fn(lambda im: _macenko_one(im, he, mx), x)
    else:
        raise CamnetError(f"unknown stain method {method!r}")
    return tf.clip_by_value(out, 0.0, 255.0)


def read_reference(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError) as err:
        raise CamnetError(f"stain reference {path}: cannot read image ({err})") from None


@tf.keras.utils.register_keras_serializable(package="camnet")
class StainNormalize(tf.keras.layers.Layer):
    def __init__(self, method: str, params: dict[str, Any], **kwargs: Any) -> None:
        kwargs["dtype"] = "float32"  # stain maths stays in float32 under mixed precision
        super().__init__(**kwargs)
        self.method, self.params = method, params

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return normalize(inputs, self.method, self.params)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "method": self.method, "params": self.params}
