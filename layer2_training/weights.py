"""Backbone registry and ImageNet weights from the Keras cache, never from the network on compute nodes."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layer1_patches.shared.errors import CamnetError


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    builder: str  # attribute of tf.keras.applications
    preprocessing: str  # keras.applications preprocess_input mode: caffe | tf | torch
    min_size: int
    weights_file: Callable[[int], str]  # headless ImageNet weights file name for an input size


def _fixed(name: str) -> Callable[[int], str]:
    return lambda _size: name


def _mobilenet_v2(size: int) -> str:
    # Keras ships these input sizes; for any other size it loads the 224 weights (convolutions are size-free)
    rows = size if size in (96, 128, 160, 192, 224) else 224
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"


BACKBONES: dict[str, BackboneSpec] = {s.name: s for s in (
    BackboneSpec("resnet50", "ResNet50", "caffe", 32,
                 _fixed("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")),
    BackboneSpec("resnet101", "ResNet101", "caffe", 32,
                 _fixed("resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5")),
    BackboneSpec("inceptionv3", "InceptionV3", "tf", 75,
                 _fixed("inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5")),
    BackboneSpec("densenet121", "DenseNet121", "torch", 32,
                 _fixed("densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5")),
    BackboneSpec("inceptionresnetv2", "InceptionResNetV2", "tf", 75,
                 _fixed("inception_resnet_v2_weights_tf_dim_ordering_tf_kernels_notop.h5")),
    BackboneSpec("mobilenetv2", "MobileNetV2", "tf", 32, _mobilenet_v2),
)}


def spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise CamnetError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})") from None


def cache_root(configured: str | None) -> Path:
    """Keras' own rule: KERAS_HOME, else ~/.keras; a configured cache wins over both."""
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


def resolve_weights(weights: str, backbone: str, input_size: int, cache: str | None) -> Path | None:
    """The weights file to load (None for random init); a missing file is a user error naming it."""
    if weights == "none":
        return None
    if weights == "imagenet":
        root = cache_root(cache)
        path = root / "models" / spec(backbone).weights_file(input_size)
        if not path.is_file():
            raise CamnetError(
                f"ImageNet weights for {backbone} not in the cache: missing {path}; fetch them on a machine "
                f"with internet: python -m layer2_training fetch-weights --backbone {backbone} "
                f"--cache {root}")
        return path
    path = Path(weights).expanduser()
    if not path.is_file():
        raise CamnetError(f"config key 'model.weights': weights file {path} does not exist "
                          "(expected imagenet, none or an .h5 file)")
    return path


def build_backbone(backbone: str, input_size: int) -> Any:
    import tensorflow as tf

    s = spec(backbone)
    if input_size < s.min_size:
        raise CamnetError(f"{backbone} needs inputs of at least {s.min_size} px, got {input_size} "
                          "(set model.input_size with model.resize: true)")
    builder = getattr(tf.keras.applications, s.builder)
    return builder(include_top=False, weights=None, input_shape=(input_size, input_size, 3))


def fetch(backbone: str, cache: Path, input_size: int = 224) -> Path:
    """Download the headless ImageNet weights into `cache`/models via Keras (needs internet)."""
    os.environ["KERAS_HOME"] = str(cache)
    import tensorflow as tf

    s = spec(backbone)
    path = cache / "models" / s.weights_file(input_size)
    if path.is_file():
        return path
    cache.mkdir(parents=True, exist_ok=True)
    try:
        getattr(tf.keras.applications, s.builder)(include_top=False, weights="imagenet",
                                                   input_shape=(input_size, input_size, 3))
    except Exception as err:  # noqa: BLE001 - any download failure is reported as one line
        raise CamnetError(f"fetching {backbone} ImageNet weights failed: {err}") from None
    # Keras 2.15's get_file ignores KERAS_HOME and always downloads into ~/.keras/models: move it to the cache.
    downloaded = Path.home() / ".keras" / "models" / s.weights_file(input_size)
    if not path.is_file() and downloaded.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(downloaded, path)
    if not path.is_file():
        raise CamnetError(f"Keras did not write {path} or {downloaded} (is {cache} writable?)")
    return path
