"""Flattening Layer 2's nested export: same predictions, every inner layer reachable, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from layer1_patches.shared.errors import CamnetError  # noqa: E402
from layer3_inference.explain import probe, toy  # noqa: E402


@pytest.fixture(scope="module")
def nested() -> tf.keras.Model:
    tf.keras.utils.set_random_seed(0)
    return toy.tiny_model(32, width=4)


def patches(n: int = 3, size: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3)).astype(np.uint8)


def test_flat_logit_reproduces_the_probability(nested: tf.keras.Model) -> None:
    flat = probe.flatten(nested)
    x = patches()
    prob = nested(x.astype(np.float32)).numpy().ravel()
    logit = probe.predict_logits(flat, x, batch=2)
    np.testing.assert_allclose(1 / (1 + np.exp(-logit)), prob, rtol=1e-5, atol=1e-6)
    assert "conv2" in probe.layer_names(flat) and "backbone" not in probe.layer_names(flat)


def test_tapped_inner_activation_equals_the_nested_one(nested: tf.keras.Model) -> None:
    flat = probe.flatten(nested)
    x = patches().astype(np.float32)
    conv2_flat, _ = probe.tap_model(flat, ["conv2"])(x)
    base = nested.get_layer("backbone")
    inner = tf.keras.Model(base.inputs, base.get_layer("conv2").output)
    expected = inner(nested.get_layer("preprocess")(x))
    np.testing.assert_allclose(conv2_flat.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_default_gradcam_layer_is_the_backbone_output(nested: tf.keras.Model) -> None:
    assert probe.default_gradcam_layer(nested, probe.flatten(nested)) == "conv3_relu"


def test_layer2_mobilenet_export_flattens() -> None:
    from layer2_training.config import HeadConfig, ModelConfig
    from layer2_training.model import build_model

    model = build_model(ModelConfig(backbone="mobilenetv2", head=HeadConfig(dropout=0.2)), 32, 32, None, None)
    flat = probe.flatten(model)
    assert probe.default_gradcam_layer(model, flat) == "out_relu"
    x = patches()
    np.testing.assert_allclose(1 / (1 + np.exp(-probe.predict_logits(flat, x, 3))),
                               model(x.astype(np.float32)).numpy().ravel(), rtol=1e-4, atol=1e-6)


def test_unknown_layer_is_a_clear_error(nested: tf.keras.Model) -> None:
    with pytest.raises(CamnetError, match=r"config key 'gradcam.layer': unknown layer 'conv9'.*conv3_relu"):
        probe.check_layer(probe.flatten(nested), "conv9", "gradcam.layer")


def test_randomised_copy_has_new_weights(nested: tf.keras.Model) -> None:
    clone = probe.randomised_copy(nested, seed=3)
    for a, b in zip(nested.get_layer("backbone").layers, clone.get_layer("backbone").layers, strict=True):
        for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
            if wa.ndim > 1:
                assert not np.allclose(wa, wb)


def test_auto_layers_end_at_the_last_spatial_layer(nested: tf.keras.Model) -> None:
    flat = probe.flatten(nested)
    picks = probe.auto_layers(flat, 2)
    assert picks[-1] == probe.spatial_layers(flat)[-1] and len(picks) == 2
