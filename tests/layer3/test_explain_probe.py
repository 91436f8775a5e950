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


def test_default_gradcam_layer_is_the_deepest_one_of_at_least_min_size(nested: tf.keras.Model) -> None:
    # at 32 px: conv1 32 x 32, pool1 and conv2 16 x 16, pool2, conv3 and conv3_relu 8 x 8
    flat = probe.flatten(nested)
    assert probe.gradcam_layer(flat, None, 7) == probe.LayerChoice("conv3_relu", (8, 8), None)
    assert probe.gradcam_layer(flat, None, 9).name == "conv2"
    assert probe.gradcam_layer(flat, None, 16).name == "conv2"
    assert probe.gradcam_layer(flat, None, 7).name == "conv3_relu"


def test_no_layer_of_min_size_takes_the_largest_with_a_note(nested: tf.keras.Model) -> None:
    choice = probe.gradcam_layer(probe.flatten(nested), None, 40)
    assert (choice.name, choice.size) == ("conv1", (32, 32))
    assert choice.note is not None and "conv1 is 32 x 32" in choice.note and "gradcam.min_size 40" in choice.note


def test_configured_layer_is_kept_and_noted_when_small(nested: tf.keras.Model) -> None:
    flat = probe.flatten(nested)
    choice = probe.gradcam_layer(flat, "conv3", 9)
    assert (choice.name, choice.size) == ("conv3", (8, 8)) and choice.note is not None
    assert probe.gradcam_layer(flat, "conv2", 7).note is None


@pytest.fixture(scope="module")
def mobilenet64() -> tuple[tf.keras.Model, tf.keras.Model]:
    from layer2_training.config import HeadConfig, ModelConfig
    from layer2_training.model import build_model

    tf.keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(backbone="mobilenetv2", head=HeadConfig(dropout=0.2)), 64, 64, None, None)
    return model, probe.flatten(model)


def test_layer2_mobilenet_export_flattens(mobilenet64: tuple[tf.keras.Model, tf.keras.Model]) -> None:
    model, flat = mobilenet64
    x = patches(size=64)
    np.testing.assert_allclose(1 / (1 + np.exp(-probe.predict_logits(flat, x, 3))),
                               model(x.astype(np.float32)).numpy().ravel(), rtol=1e-4, atol=1e-6)


def test_default_gradcam_layer_is_not_a_2x2_grid_at_64_px(mobilenet64: tuple[tf.keras.Model, tf.keras.Model]) -> None:
    """Regression: the default was the backbone's output, out_relu, 2 x 2 cells at 64-px patches: upsampled, the
    same blob on every patch. Now the deepest layer of at least 7 x 7 (padding layers excluded)."""
    _, flat = mobilenet64
    assert probe.spatial_size(flat, "out_relu") == (2, 2)
    choice = probe.gradcam_layer(flat, None, 7)
    assert choice.size is not None and min(choice.size) >= 7 and choice.note is None
    spatial = probe.spatial_layers(flat)
    deeper = spatial[spatial.index(choice.name) + 1:]
    assert all(min(probe.spatial_size(flat, n) or (0, 0)) < 7 or n.endswith("_pad") for n in deeper)


def test_unknown_layer_is_a_clear_error(nested: tf.keras.Model) -> None:
    with pytest.raises(CamnetError, match=r"config key 'gradcam.layer': unknown layer 'conv9'.*conv3_relu"):
        probe.check_layer(probe.flatten(nested), "conv9", "gradcam.layer")


def test_randomised_copy_has_new_weights(nested: tf.keras.Model) -> None:
    flat = probe.flatten(nested)
    clone = probe.randomised_copy(nested, seed=3, patches=patches())
    for name in ("conv1", "conv2", "conv3", "tumour_logit"):
        assert not np.allclose(flat.get_layer(name).get_weights()[0], clone.get_layer(name).get_weights()[0])


def test_auto_layers_end_at_the_last_spatial_layer(nested: tf.keras.Model) -> None:
    flat = probe.flatten(nested)
    picks = probe.auto_layers(flat, 2)
    assert picks[-1] == probe.spatial_layers(flat)[-1] and len(picks) == 2
