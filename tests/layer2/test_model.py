"""Preprocessing inside the model, export round trip, stain normalisation, ImageNet weights from a cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from layer2_training import stain
from layer2_training.config import HeadConfig, ModelConfig
from layer2_training.model import build_model, load_inference_model, preprocess, set_phase
from layer2_training.weights import resolve_weights
from tests.layer2.conftest import synthetic_patches

RGB = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)


@pytest.mark.parametrize(("mode", "keras_fn"), [
    ("caffe", tf.keras.applications.resnet50.preprocess_input),
    ("tf", tf.keras.applications.mobilenet_v2.preprocess_input),
    ("torch", tf.keras.applications.densenet.preprocess_input),
])
def test_preprocess_matches_keras(mode: str, keras_fn) -> None:
    np.testing.assert_allclose(preprocess(tf.constant(RGB), mode).numpy(), keras_fn(RGB.copy()), rtol=1e-5,
                               atol=1e-4)


def test_export_round_trip_keeps_preprocessing(tmp_path: Path) -> None:
    ref = synthetic_patches(np.array([1]), 32, np.random.default_rng(1))[0]
    params = stain.fit_reference(ref, "reinhard")
    model = build_model(ModelConfig(backbone="mobilenetv2", head=HeadConfig(dense_units=[8])), 32, 40, None,
                        ("reinhard", params))
    x = synthetic_patches(np.array([0, 1]), 32, np.random.default_rng(2))
    before = model.predict(x, verbose=0)
    model.save(str(tmp_path / "m.keras"))
    loaded = load_inference_model(tmp_path / "m.keras")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), before, rtol=1e-5, atol=1e-6)
    names = [layer.name for layer in loaded.layers]
    assert names[:4] == ["rgb", "resize", "stain", "preprocess"]


def test_set_phase_freezes_and_unfreezes() -> None:
    model = build_model(ModelConfig(backbone="mobilenetv2", head=HeadConfig()), 32, 32, None, None)
    set_phase(model, True, None)
    assert {v.name.split("/")[0] for v in model.trainable_variables} == {"tumour"}
    set_phase(model, False, "block_16_expand")
    names = [v.name for v in model.trainable_variables]
    assert any("block_16" in n for n in names) and not any("block_15" in n for n in names)


def he_image(h_vec: list[float], e_vec: list[float], h_scale: float, seed: int = 3) -> np.ndarray:
    """An RGB patch made of two stains (Beer-Lambert), so stain normalisers have something to find."""
    rng = np.random.default_rng(seed)
    he = np.array([h_vec, e_vec]).T
    he = he / np.linalg.norm(he, axis=0)
    conc = np.stack([rng.gamma(2.0, 0.3, 48 * 48) * h_scale, rng.gamma(3.0, 0.15, 48 * 48)])
    return np.clip(240 * np.exp(-(he @ conc)).T.reshape(48, 48, 3) - 1, 0, 255).astype(np.float32)


@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_stain_normalisation_maps_reference_onto_itself(method: str) -> None:
    ref = he_image([0.65, 0.70, 0.29], [0.07, 0.99, 0.11], 1.0)
    params = stain.fit_reference(ref, method)
    out = stain.normalize(tf.constant(ref[None], tf.float32), method, params).numpy()[0]
    assert np.abs(out - ref).mean() < 3.0
    other = he_image([0.55, 0.80, 0.25], [0.15, 0.95, 0.2], 0.6)
    moved = stain.normalize(tf.constant(other[None]), method, params).numpy()[0]
    target = ref.mean((0, 1))
    assert np.abs(moved.mean((0, 1)) - target).mean() < np.abs(other.mean((0, 1)) - target).mean()


def test_imagenet_weights_load_from_cache_without_network(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    (tmp_path / "keras" / "models").mkdir(parents=True)
    source = tf.keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "keras" / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    source.save_weights(str(path))
    resolved = resolve_weights("imagenet", "mobilenetv2", 32, None)
    assert resolved == path
    model = build_model(ModelConfig(backbone="mobilenetv2", head=HeadConfig()), 32, 32, resolved, None)
    for a, b in zip(model.get_layer("backbone").get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
