"""The classifier: raw RGB 0-255 in, tumour probability out, with all preprocessing inside the model.

Resize (when configured), stain normalisation (when configured) and the backbone's own
`preprocess_input` are layers of the saved model, so Layer 3 feeds raw patches and cannot preprocess
differently from training. Custom layers register under the `camnet` package: Layer 3 loads models with
`load_inference_model`, which imports them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from layer1_patches.shared.errors import CamnetError
from layer2_training.config import ModelConfig
from layer2_training.stain import StainNormalize
from layer2_training.weights import build_backbone, spec

_TORCH_MEAN = np.array([0.485, 0.456, 0.406]) * 255.0
_TORCH_STD = np.array([0.229, 0.224, 0.225]) * 255.0
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])
BACKBONE_NAME = "backbone"


def preprocess(x: tf.Tensor, mode: str) -> tf.Tensor:
    """keras.applications' preprocess_input for RGB 0-255, as graph ops."""
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "torch":
        return (x - _TORCH_MEAN.astype(np.float32)) / _TORCH_STD.astype(np.float32)
    if mode == "caffe":
        return x[..., ::-1] - _CAFFE_MEAN_BGR.astype(np.float32)
    raise CamnetError(f"unknown preprocessing mode {mode!r}")


@tf.keras.utils.register_keras_serializable(package="camnet")
class BackbonePreprocess(tf.keras.layers.Layer):
    def __init__(self, mode: str, **kwargs: Any) -> None:
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return preprocess(tf.cast(inputs, tf.float32), self.mode)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


def build_model(cfg: ModelConfig, patch_size: int, input_size: int, weights: Path | None,
                stain: tuple[str, dict[str, Any]] | None) -> tf.keras.Model:
    """Input (patch_size, patch_size, 3) RGB 0-255 -> sigmoid probability of tumour, float32.

    From `cfg`: the backbone, the head and the BatchNorm momentum; `weights` is the resolved weights file (None:
    random), `stain` the fitted normalisation (None: none).
    """
    backbone, head, bn_momentum = cfg.backbone, cfg.head, cfg.batchnorm_momentum
    inputs = tf.keras.Input((patch_size, patch_size, 3), name="rgb")
    x = inputs
    if input_size != patch_size:
        x = tf.keras.layers.Resizing(input_size, input_size, name="resize", dtype="float32")(x)
    if stain is not None:
        x = StainNormalize(stain[0], stain[1], name="stain")(x)
    x = BackbonePreprocess(spec(backbone).preprocessing, name="preprocess")(x)
    base = build_backbone(backbone, input_size)
    if weights is not None:
        try:
            base.load_weights(str(weights))
        except (ValueError, OSError) as err:
            raise CamnetError(f"weights file {weights}: does not fit a headless {backbone} ({err})") from None
    if bn_momentum is not None:
        # Keras' defaults (0.99-0.999) suit ImageNet-length runs; short runs from scratch need faster
        # moving statistics or validation sees stale ones
        for layer in base.layers:
            if isinstance(layer, tf.keras.layers.BatchNormalization):
                layer.momentum = bn_momentum
    base._name = BACKBONE_NAME  # a stable name for `fine_tune_from` lookups and checkpoints
    x = base(x)
    layers = tf.keras.layers
    pool = layers.GlobalAveragePooling2D if head.pooling == "avg" else layers.GlobalMaxPooling2D
    x = pool(name="pool")(x)
    for i, units in enumerate(head.dense_units):
        x = tf.keras.layers.Dense(units, activation="relu", name=f"head_dense{i}")(x)
        if head.dropout > 0:
            x = tf.keras.layers.Dropout(head.dropout, name=f"head_dropout{i}")(x)
    if head.dropout > 0 and not head.dense_units:
        x = tf.keras.layers.Dropout(head.dropout, name="head_dropout")(x)
    out = tf.keras.layers.Dense(1, activation="sigmoid", dtype="float32", name="tumour")(x)
    return tf.keras.Model(inputs, out, name=f"camnet_{backbone}")


def _backbone_layers(model: tf.keras.Model, fine_tune_from: str | None) -> tuple[Any, int]:
    base = model.get_layer(BACKBONE_NAME)
    if fine_tune_from is None:
        return base, 0
    names = [layer.name for layer in base.layers]
    if fine_tune_from not in names:
        raise CamnetError(f"config key 'phases.fine_tune_from': {fine_tune_from!r} is no backbone layer "
                          f"(its last layers: {', '.join(names[-3:])})")
    return base, names.index(fine_tune_from)


def check_phases(model: tf.keras.Model, fine_tune_from: str | None) -> None:
    _backbone_layers(model, fine_tune_from)


def set_phase(model: tf.keras.Model, head_only: bool, fine_tune_from: str | None) -> None:
    """Freeze the backbone (head phase) or unfreeze it from the named layer on (fine-tune phase)."""
    base, start = _backbone_layers(model, fine_tune_from)
    base.trainable = not head_only
    if head_only:
        return
    for i, layer in enumerate(base.layers):
        # BatchNorm statistics of frozen blocks stay ImageNet's: the usual Keras fine-tuning recipe
        layer.trainable = i >= start


def load_inference_model(path: Path) -> tf.keras.Model:
    """Load an exported model (`<run>/export/model.keras`) with CamNet's preprocessing layers."""
    return tf.keras.models.load_model(str(path), compile=False)
