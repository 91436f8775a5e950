"""LIME (`lime_image`) on superpixels of one patch, with the saved model's own preprocessing.

The classifier LIME perturbs takes raw RGB 0-255, so the perturbed images pass through exactly the
resize, stain normalisation and backbone preprocessing layers of the exported model. With
`lime.target: probability` it is the exported model itself; with `logit` (default) it is the flattened
copy of it (`probe.flatten`: the same layers and weights, sigmoid removed), because LIME fits a linear
model to the target and a saturated probability (1.0 on a confident tumour patch) is flat under every
perturbation, which leaves an all-zero map. The map gives every pixel its superpixel's weight.
"""

from __future__ import annotations

from collections.abc import Callable
from unittest import mock

import numpy as np
import tensorflow as tf
from lime import lime_image
from skimage.segmentation import felzenszwalb, quickshift, slic

from layer2_training.progress import ticking
from layer3_inference.explain.config import LimeConfig


def segmenter(cfg: LimeConfig) -> Callable[[np.ndarray], np.ndarray]:
    """Superpixels labelled 0..n-1 without gaps: LIME hides segment j for feature j, so a label
    sequence starting at 1 (slic's default) would leave one superpixel never hidden."""

    def segment(image: np.ndarray) -> np.ndarray:
        if cfg.segmentation == "slic":
            seg = slic(image, n_segments=cfg.n_segments, compactness=cfg.compactness, sigma=cfg.sigma,
                       start_label=0)
        elif cfg.segmentation == "quickshift":
            seg = quickshift(image, kernel_size=cfg.kernel_size, max_dist=cfg.max_dist, ratio=0.2,
                             rng=cfg.seed)
        else:
            seg = felzenszwalb(image, scale=cfg.scale, sigma=cfg.sigma)
        return np.unique(seg, return_inverse=True)[1].reshape(seg.shape)

    return segment


def classifier(model: tf.keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    """(n, H, W, 3) images -> (n, 2) [-score, score]; LIME regresses column 1 (tumour)."""

    def predict(images: np.ndarray) -> np.ndarray:
        p = np.asarray(model(tf.constant(images, tf.float32), training=False), np.float64).reshape(-1)
        return np.stack([-p, p], axis=1)

    return predict


def lime_map(model: tf.keras.Model, patch: np.ndarray, cfg: LimeConfig) -> tuple[np.ndarray, np.ndarray]:
    """(per-pixel tumour weight (H, W) float32, superpixel labels (H, W) int32) of one uint8 patch."""
    explainer = lime_image.LimeImageExplainer(random_state=cfg.seed)
    segment = segmenter(cfg)
    segments = segment(patch)
    # lime 0.2.0.1 draws a tqdm progress bar per patch on stderr and has no switch for it
    with mock.patch.object(lime_image, "tqdm", lambda rows: rows):
        exp = explainer.explain_instance(
            patch.astype(np.float64), classifier(model), labels=(1,), top_labels=None,
            hide_color=cfg.hide_color, num_features=int(segments.max()) + 1, num_samples=cfg.num_samples,
            batch_size=cfg.batch_size, segmentation_fn=lambda _image: segments, random_seed=cfg.seed)
    weights = np.zeros(int(segments.max()) + 1, np.float32)
    for feature, weight in exp.local_exp[1]:
        weights[feature] = weight
    return weights[segments], segments.astype(np.int32)


def lime_maps(model: tf.keras.Model, patches: np.ndarray, cfg: LimeConfig) -> np.ndarray:
    if not len(patches):
        return np.zeros((0, *patches.shape[1:3]), np.float32)
    # each patch is `num_samples` forward passes: the slowest loop of explain
    return np.stack([lime_map(model, p, cfg)[0]
                     for p in ticking(list(patches), "lime", "patches", f"{cfg.num_samples} samples")])
