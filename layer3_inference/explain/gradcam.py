"""Grad-CAM and Grad-CAM++ through tf-keras-vis on the flattened model (see `probe.flatten`).

The score is the tumour logit by default (`gradcam.score: logit`): the sigmoid's gradient vanishes on
confidently classified patches, which would blank exactly the maps of interest; `probability` gives the
textbook score on the sigmoid output. Grad-CAM++ (as in its paper and tf-keras-vis) weighs gradients by
exp(score), which overflows float32 for logits above ~88 and turns whole maps into NaN; since that
factor only rescales each patch's map, Grad-CAM++ gets the score minus its own stopped value (exp = 1,
identical gradients). Maps are returned unnormalised (ReLU of the weighted activations,
upsampled to the patch) so that mass comparisons and the randomisation check see real magnitudes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf
from tf_keras_vis.gradcam import Gradcam
from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus

from layer2_training.progress import Ticker

METHODS = ("gradcam", "gradcam_pp")


def score_fn(kind: str) -> Callable[[tf.Tensor], tf.Tensor]:
    if kind == "logit":
        return lambda out: out[:, 0]
    return lambda out: tf.sigmoid(out[:, 0])


def cams(flat: tf.keras.Model, patches: np.ndarray, layer: str, score: str, batch: int = 16,
         ) -> dict[str, np.ndarray]:
    """{"gradcam": (n, H, W), "gradcam_pp": (n, H, W)} float32 maps for uint8 RGB `patches`."""
    makers = {"gradcam": Gradcam(flat, clone=False), "gradcam_pp": GradcamPlusPlus(flat, clone=False)}
    out: dict[str, list[np.ndarray]] = {name: [] for name in METHODS}
    fn = score_fn(score)
    fns = {"gradcam": fn, "gradcam_pp": lambda out: fn(out) - tf.stop_gradient(fn(out))}
    ticker = Ticker("gradcam and gradcam_pp", len(patches), "patches")
    for start in range(0, len(patches), batch):
        x = tf.constant(patches[start:start + batch], tf.float32)
        for name, maker in makers.items():
            cam = maker(fns[name], x, penultimate_layer=layer, seek_penultimate_conv_layer=False, normalize_cam=False)
            out[name].append(np.asarray(cam, np.float32).reshape(len(x), *patches.shape[1:3]))
        ticker.tick(start + len(x))
    return {name: np.concatenate(parts) if parts else np.zeros((0, *patches.shape[1:3]), np.float32)
            for name, parts in out.items()}
