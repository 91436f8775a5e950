"""Cascading model-parameter randomisation (Adebayo et al. 2018, "Sanity Checks for Saliency Maps", 3.1).

Starting at the output layer, blocks are re-initialised from the top down, cumulatively: depth 1 randomises the
top block, the last depth every block. A block is a layer with a kernel (Conv, DepthwiseConv, Dense) together
with the weighted layers above it up to the next such layer (its BatchNorm, say). Each weight is redrawn from
its own layer's initializer (`kernel_initializer`, `gamma_initializer`, ...), seeded per layer, so a block keeps
the same random weights at every depth.

BatchNorm: its own initializer sets moving mean 0 and variance 1, an identity at inference. With random kernels
an inference-mode network then shrinks its activations at every layer (Glorot variance under a ReLU halves the
signal), and a 50-layer MobileNetV2 outputs logits of 1e-12: a dead network whose maps are constant or
numerical noise, against which every explanation "passes". So every re-initialised BatchNorm gets the mean and
variance of its own input on the explained patches as moving statistics (computed in graph order, one pass),
which is what it would normalise with in training mode: each randomised block outputs standardised activations
and the randomised logit varies across patches. `sanity.json` records that variation (`random_logit_std`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from layer1_patches.shared.errors import CamnetError

_KERNELS = ("kernel", "depthwise_kernel", "pointwise_kernel")
_INITIALIZER = {"depthwise_kernel": "depthwise_initializer", "pointwise_kernel": "pointwise_initializer",
                "recurrent_kernel": "recurrent_initializer"}


@dataclass(frozen=True)
class Step:
    """One cascade depth: `layers` are the weighted layers re-initialised, top (output) first."""

    depth: int
    layers: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"depth": self.depth, "randomised_from": self.layers[0], "randomised_to": self.layers[-1],
                "layers": len(self.layers)}


def _weight_kind(weight: tf.Variable) -> str:
    return str(weight.name).split("/")[-1].split(":")[0]


def _initializer(layer: Any, weight: tf.Variable) -> Any:
    kind = _weight_kind(weight)
    init = getattr(layer, _INITIALIZER.get(kind, f"{kind}_initializer"), None)
    if init is None:
        raise CamnetError(f"sanity check: cannot re-initialise weight {kind!r} of layer {layer.name!r} "
                          f"({type(layer).__name__} has no {kind}_initializer); set sanity.enabled=false")
    return init


def weighted_layers(flat: tf.keras.Model) -> list[Any]:
    """Layers with weights, in graph order (input first)."""
    return [layer for layer in flat.layers if layer.weights]


def plan(flat: tf.keras.Model, steps: int) -> list[Step]:
    """`steps` depths evenly spaced over the blocks, the last one full randomisation (fewer when the model
    has fewer blocks). Checks every weight has an initializer, so a bad model fails before any map."""
    weighted = weighted_layers(flat)
    for layer in weighted:
        for weight in layer.weights:
            _initializer(layer, weight)
    starts = [i for i, layer in enumerate(weighted) if any(_weight_kind(w) in _KERNELS for w in layer.weights)]
    if not starts:
        raise CamnetError(f"model {flat.name}: no layer with a kernel to randomise for the sanity check")
    blocks = sorted({max(1, round(k * len(starts) / steps)) for k in range(1, steps + 1)})
    names = [layer.name for layer in weighted]
    return [Step(d, tuple(reversed(names[starts[len(starts) - n]:]))) for d, n in enumerate(blocks, start=1)]


def _seeded(init: Any, seed: int) -> Any:
    config = init.get_config()
    return init.__class__.from_config({**config, "seed": seed}) if "seed" in config else init


def reinitialise(flat: tf.keras.Model, names: tuple[str, ...], seed: int) -> None:
    """Redraw every weight of the named layers from its own initializer; the seed depends on the layer's
    position, not on the depth, so deeper cascade steps only add randomised blocks."""
    position = {layer.name: i for i, layer in enumerate(flat.layers)}
    for name in names:
        layer = flat.get_layer(name)
        for j, weight in enumerate(layer.weights):
            init = _seeded(_initializer(layer, weight), (seed * 100_003 + position[name] * 101 + j) % 2**31)
            weight.assign(tf.cast(init(weight.shape, dtype=weight.dtype), weight.dtype))


def _standardise(layer: tf.keras.layers.BatchNormalization, x: tf.Tensor) -> None:
    channel = [a % len(x.shape) for a in np.atleast_1d(layer.axis)]
    axes = [a for a in range(len(x.shape)) if a not in channel]
    x = tf.cast(x, tf.float32)
    layer.moving_mean.assign(tf.reshape(tf.reduce_mean(x, axes), layer.moving_mean.shape))
    layer.moving_variance.assign(tf.reshape(tf.math.reduce_variance(x, axes), layer.moving_variance.shape))


def calibrate_batchnorm(flat: tf.keras.Model, names: set[str], patches: np.ndarray) -> None:
    """One inference pass in graph order (as `probe._replay`); each BatchNorm in `names` takes the statistics
    of its own input on `patches` just before it is applied, so the layers above see its new output."""
    bns = {n for n in names if isinstance(flat.get_layer(n), tf.keras.layers.BatchNormalization)}
    if not bns:
        return
    usage = flat._tensor_usage_count
    x = tf.constant(patches, tf.float32)
    tensors: dict[str, list[Any]] = {str(id(ref)): [x] * usage[str(id(ref))] for ref in flat.inputs}
    for depth in sorted(flat._nodes_by_depth, reverse=True):
        for node in flat._nodes_by_depth[depth]:
            if node.is_input or any(t not in tensors for t in node.flat_input_ids):
                continue
            args, kwargs = node.map_arguments(tensors)
            if node.layer.name in bns:
                _standardise(node.layer, tf.nest.flatten(args)[0])
            outputs = node.layer(*args, **kwargs)
            for ref_id, new in zip(node.flat_output_ids, tf.nest.flatten(outputs), strict=True):
                tensors[ref_id] = [new] * usage[ref_id]


def cascade(flat: tf.keras.Model, steps: list[Step], seed: int, patches: np.ndarray,
            ) -> Iterator[tuple[Step, tf.keras.Model]]:
    """(step, `flat`) for each step in order: `flat`, a flat copy of the trained model (`probe.flatten`), is
    randomised further in place at each step (use each before asking for the next)."""
    done: tuple[str, ...] = ()
    for step in steps:
        reinitialise(flat, tuple(n for n in step.layers if n not in done), seed)
        done = step.layers
        calibrate_batchnorm(flat, set(done), patches)
        yield step, flat


def logit_std(logits: np.ndarray) -> float:
    """Standard deviation of the logits across patches (0.0 for fewer than two)."""
    values = np.asarray(logits, np.float64).reshape(-1)
    return float(np.std(values)) if len(values) > 1 else 0.0
