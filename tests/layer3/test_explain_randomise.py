"""`layer3_inference/explain/randomise.py`: cascading randomisation (Adebayo et al. 2018, 3.1) on small models."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from skimage.filters import sobel

from layer1_patches.shared.errors import CamnetError
from layer3_inference.explain import probe, randomise, sanity, toy
from layer3_inference.explain.config import SanityConfig


def patches(n: int = 8, size: int = 32, seed: int = 0) -> np.ndarray:
    """Noise plus a bright square at a random place: patches that differ in structure, not only in noise."""
    rng = np.random.default_rng(seed)
    x = rng.integers(60, 140, (n, size, size, 3))
    for img in x:
        side = size // 3
        r, c = rng.integers(0, size - side, 2)
        img[r:r + side, c:c + side] += 100
    return x.astype(np.uint8)


@pytest.fixture(scope="module")
def tiny() -> tf.keras.Model:
    tf.keras.utils.set_random_seed(0)
    return toy.tiny_model(32, width=4)


def weights_of(flat: tf.keras.Model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [w.copy() for w in layer.get_weights()] for layer in randomise.weighted_layers(flat)}


def changed(a: dict[str, list[np.ndarray]], b: dict[str, list[np.ndarray]]) -> set[str]:
    return {name for name in a if not all(np.array_equal(x, y) for x, y in zip(a[name], b[name], strict=True))}


def test_cascade_goes_from_the_top_down_cumulatively(tiny: tf.keras.Model) -> None:
    # the tiny model's weighted layers, input first: conv1, conv2, conv3, and the logit Dense (flattened copy)
    flat = probe.flatten(tiny)
    steps = randomise.plan(flat, 4)
    assert [s.layers for s in steps] == [("tumour_logit",), ("tumour_logit", "conv3"),
                                         ("tumour_logit", "conv3", "conv2"),
                                         ("tumour_logit", "conv3", "conv2", "conv1")]
    assert steps[1].to_dict() == {"depth": 2, "randomised_from": "tumour_logit", "randomised_to": "conv3",
                                  "layers": 2}
    # two steps over four blocks: the top two, then all four
    assert [len(s.layers) for s in randomise.plan(flat, 2)] == [2, 4]
    assert [len(s.layers) for s in randomise.plan(flat, 9)] == [1, 2, 3, 4]  # no more steps than blocks
    trained = weights_of(flat)
    seen = []
    for step, model in randomise.cascade(probe.flatten(tiny), steps, seed=5, patches=patches()):
        now = weights_of(model)
        assert changed(trained, now) == set(step.layers)  # exactly the blocks of this depth, cumulatively
        seen.append(now)
    # a block keeps its random weights at every deeper step (seeded per layer, not per depth)
    np.testing.assert_array_equal(seen[1]["conv3"][0], seen[3]["conv3"][0])


def test_reinitialise_draws_from_each_layers_own_initializers() -> None:
    inp = tf.keras.Input((8, 8, 3))
    h = tf.keras.layers.Conv2D(4, 3, kernel_initializer=tf.keras.initializers.RandomUniform(-0.01, 0.01),
                               bias_initializer="ones", name="conv")(inp)
    out = tf.keras.layers.Dense(1, kernel_initializer="zeros", bias_initializer=tf.keras.initializers.Constant(3.0),
                                name="dense")(tf.keras.layers.GlobalAveragePooling2D()(h))
    model = tf.keras.Model(inp, out)
    for layer in (model.get_layer("conv"), model.get_layer("dense")):
        layer.set_weights([np.full_like(w, 7.0) for w in layer.get_weights()])  # "trained" weights
    randomise.reinitialise(model, ("dense", "conv"), seed=1)
    kernel, bias = model.get_layer("conv").get_weights()
    assert np.abs(kernel).max() <= 0.01 and np.ptp(kernel) > 0 and np.all(bias == 1.0)
    dense_kernel, dense_bias = model.get_layer("dense").get_weights()
    assert np.all(dense_kernel == 0.0) and np.all(dense_bias == 3.0)
    again = tf.keras.models.clone_model(model)
    randomise.reinitialise(again, ("conv",), seed=1)
    np.testing.assert_array_equal(again.get_layer("conv").get_weights()[0], kernel)  # seeded


def test_batchnorm_takes_the_statistics_of_its_input_on_the_patches() -> None:
    """By the definition of BatchNorm at inference, (x - moving_mean) / sqrt(moving_variance + eps) * gamma + beta:
    with the input's own per-channel mean and variance, gamma 1 and beta 0, the output has mean 0 and variance
    var / (var + eps), i.e. 1 up to eps."""
    inp = tf.keras.Input((8, 8, 3))
    h = tf.keras.layers.Conv2D(4, 3, name="conv")(inp)
    h = tf.keras.layers.BatchNormalization(name="bn")(h)
    model = tf.keras.Model(inp, tf.keras.layers.Dense(1, name="dense")(tf.keras.layers.Flatten()(h)))
    x = patches(16, 8)
    randomise.reinitialise(model, ("dense", "bn", "conv"), seed=2)
    randomise.calibrate_batchnorm(model, {"dense", "bn", "conv"}, x)
    bn_out = tf.keras.Model(inp, model.get_layer("bn").output)(x.astype(np.float32), training=False).numpy()
    np.testing.assert_allclose(bn_out.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    conv_var = tf.keras.Model(inp, model.get_layer("conv").output)(x.astype(np.float32)).numpy().var(axis=(0, 1, 2))
    np.testing.assert_allclose(bn_out.var(axis=(0, 1, 2)), conv_var / (conv_var + 1e-3), rtol=1e-3)


def test_randomised_mobilenet_is_not_a_dead_network() -> None:
    """Regression: the randomised copy (Keras' clone_model: every layer at its initializer, BatchNorm an identity
    at inference) of a MobileNetV2 output logits of ~1e-12 on every patch, so the check compared noise. The same
    re-initialisation without recomputed BatchNorm statistics reproduces that dead network."""
    from layer2_training.config import HeadConfig, ModelConfig
    from layer2_training.model import build_model

    tf.keras.utils.set_random_seed(0)
    model = build_model(ModelConfig(backbone="mobilenetv2", head=HeadConfig(dropout=0.2)), 32, 32, None, None)
    x = patches(8, 32)
    flat = probe.flatten(model)
    (step,) = randomise.plan(flat, 1)
    assert step.layers[-1] == "Conv1" and len(step.layers) == len(randomise.weighted_layers(flat))
    randomise.reinitialise(flat, step.layers, seed=1234)
    assert randomise.logit_std(probe.predict_logits(flat, x, 8)) < 1e-3  # the dead network the check used
    randomise.calibrate_batchnorm(flat, set(step.layers), x)
    assert randomise.logit_std(probe.predict_logits(flat, x, 8)) > 0.05


def test_edge_detector_fails_the_randomisation_check(tiny: tf.keras.Model) -> None:
    """Adebayo et al.'s known-bad explainer: an edge detector is a function of the patch alone, so its "maps"
    are identical under every randomisation (rank correlation 1) and it must fail, conclusively (the randomised
    networks are alive)."""
    x = patches(8, 32)

    def edges(batch: np.ndarray) -> np.ndarray:
        return np.stack([sobel(p.astype(np.float64).mean(axis=-1)) for p in batch])

    flat = probe.flatten(tiny)
    depths = [sanity.DepthMaps(step.to_dict(), randomise.logit_std(probe.predict_logits(model, x, 8)),
                               {"edges": edges(x)})
              for step, model in randomise.cascade(probe.flatten(tiny), randomise.plan(flat, 3), seed=1, patches=x)]
    doc = sanity.document({"edges": edges(x)}, depths, randomise.logit_std(probe.predict_logits(flat, x, 8)),
                          SanityConfig())
    assert all(d["random_logit_std"] > 1e-3 for d in doc["depths"])
    result: dict[str, Any] = doc["methods"]["edges"]
    assert result["status"] == "failed" and doc["status"] == "failed"
    assert [d["status"] for d in result["by_depth"]] == ["failed"] * 3
    assert [w.code for w in sanity.warnings(doc)] == ["sanity_failed"]


def test_weight_without_an_initializer_is_a_clear_error() -> None:
    class Scale(tf.keras.layers.Layer):
        def build(self, input_shape: Any) -> None:
            del input_shape  # one scalar factor whatever the input
            self.factor = self.add_weight(name="factor", shape=(1,))

        def call(self, x: tf.Tensor) -> tf.Tensor:
            return x * self.factor

    inp = tf.keras.Input((4, 4, 3))
    h = Scale(name="scale")(tf.keras.layers.Conv2D(2, 1, name="conv")(inp))
    model = tf.keras.Model(inp, h)
    with pytest.raises(CamnetError, match=r"cannot re-initialise weight 'factor' of layer 'scale'"):
        randomise.plan(model, 2)


def test_a_model_without_kernels_is_a_clear_error() -> None:
    inp = tf.keras.Input((4, 4, 3))
    model = tf.keras.Model(inp, tf.keras.layers.GlobalAveragePooling2D(name="pool")(inp), name="bare")
    with pytest.raises(CamnetError, match=r"^model bare: no layer with a kernel to randomise for the sanity check$"):
        randomise.plan(model, 2)
