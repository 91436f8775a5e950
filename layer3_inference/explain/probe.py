"""Flat views of a CamNet model: raw RGB in, activations at named layers and the tumour logit out.

Layer 2's export nests the backbone as one layer ("backbone"), so its inner layers are not reachable
from the outer model's input and tf-keras-vis cannot find them. `flatten` replays both graphs layer by
layer into one functional model in which every inner layer is a top-level layer. Each layer is a fresh
copy (same config, same weights): a shared layer object would keep its original graph node as
`layer.output`, which is what tf-keras-vis and `tap_model` read. The final sigmoid Dense becomes a
linear copy, the logit, because gradients of a saturated sigmoid vanish on exactly the confident
patches one wants explained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from layer1_patches.shared.errors import CamnetError

BACKBONE = "backbone"
_CONV = (tf.keras.layers.Conv2D, tf.keras.layers.DepthwiseConv2D, tf.keras.layers.SeparableConv2D)
_BORDER = (tf.keras.layers.ZeroPadding2D, tf.keras.layers.Cropping2D)


def _is_functional(layer: Any) -> bool:
    return isinstance(layer, tf.keras.Model) and hasattr(layer, "_nodes_by_depth") and bool(layer.inputs)


def _copy_and_call(layer: Any, args: Any, kwargs: Any, linear: bool) -> Any:
    config = layer.get_config()
    if linear:
        config = {**config, "activation": "linear", "name": f"{layer.name}_logit"}
    copy = layer.__class__.from_config(config)
    outputs = copy(*args, **kwargs)
    copy.set_weights(layer.get_weights())
    return outputs


def _replay(model: tf.keras.Model, inputs: list[tf.Tensor], logit_output: bool) -> list[tf.Tensor]:
    """Keras' own `Functional._run_internal_graph`, recursing into nested functional models."""
    usage = model._tensor_usage_count
    tensors: dict[str, list[Any]] = {}
    for ref, new in zip(model.inputs, inputs, strict=True):
        tensors[str(id(ref))] = [new] * usage[str(id(ref))]
    out_ids = {str(id(t)) for t in model.outputs}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input or any(t not in tensors for t in node.flat_input_ids):
                continue
            args, kwargs = node.map_arguments(tensors)
            layer = node.layer
            if _is_functional(layer):
                outputs: Any = _replay(layer, tf.nest.flatten(args[0]), False)
                outputs = outputs[0] if len(outputs) == 1 else outputs
            else:
                linear = (logit_output and isinstance(layer, tf.keras.layers.Dense)
                          and set(node.flat_output_ids) <= out_ids
                          and layer.activation is tf.keras.activations.sigmoid)
                outputs = _copy_and_call(layer, args, kwargs, linear)
            for ref_id, new in zip(node.flat_output_ids, tf.nest.flatten(outputs), strict=True):
                tensors[ref_id] = [new] * usage[ref_id]
    return [tensors[str(id(t))].pop() for t in model.outputs]


def flatten(model: tf.keras.Model, logit: bool = True) -> tf.keras.Model:
    """One-level functional copy of `model` (shared weights); output: the logit, or the model's output."""
    inputs = [tf.keras.Input(t.shape[1:], dtype=t.dtype, name=t.name.split(":")[0]) for t in model.inputs]
    outputs = _replay(model, inputs, logit)
    try:
        return tf.keras.Model(inputs, outputs[0] if len(outputs) == 1 else outputs, name=f"{model.name}_flat")
    except ValueError as err:  # e.g. an inner layer sharing a name with an outer one
        raise CamnetError(f"model {model.name}: cannot be flattened for explanation ({err})") from None


def layer_names(flat: tf.keras.Model) -> list[str]:
    return [layer.name for layer in flat.layers]


def spatial_layers(flat: tf.keras.Model) -> list[str]:
    """Layers with (n, h, w, c) outputs after the preprocessing, in graph order."""
    names = []
    for layer in flat.layers:
        shape = layer.output_shape
        if isinstance(shape, tuple) and len(shape) == 4 and not isinstance(layer, tf.keras.layers.InputLayer):
            names.append(layer.name)
    return names


def check_layer(flat: tf.keras.Model, name: str, key: str) -> str:
    """`name` if the flat model has it, else a CamnetError naming the config key and some valid names."""
    names = layer_names(flat)
    if name not in names:
        spatial = spatial_layers(flat)
        raise CamnetError(f"config key '{key}': unknown layer {name!r} in model {flat.name.removesuffix('_flat')} "
                          f"(its last spatial layers: {', '.join(spatial[-4:])}; {len(names)} layers in all)")
    return name


def spatial_size(flat: tf.keras.Model, name: str) -> tuple[int, int] | None:
    """(height, width) of a layer's output at the model's input size; None when not spatial or not fixed."""
    shape = flat.get_layer(name).output_shape
    if not (isinstance(shape, tuple) and len(shape) == 4 and shape[1] and shape[2]):
        return None
    return int(shape[1]), int(shape[2])


@dataclass(frozen=True)
class LayerChoice:
    """The Grad-CAM layer, its output size, and a note when it is coarser than `gradcam.min_size`."""

    name: str
    size: tuple[int, int] | None
    note: str | None = None


def _candidates(flat: tf.keras.Model) -> list[tuple[str, tuple[int, int]]]:
    """Spatial layers from the first convolution on; padding and cropping only change the border."""
    first = next((i for i, layer in enumerate(flat.layers) if isinstance(layer, _CONV)), None)
    if first is None:
        raise CamnetError(f"model {flat.name.removesuffix('_flat')}: no convolutional layer for Grad-CAM")
    out = []
    for layer in flat.layers[first:]:
        size = spatial_size(flat, layer.name)
        if size is not None and not isinstance(layer, _BORDER):
            out.append((layer.name, size))
    return out


def gradcam_layer(flat: tf.keras.Model, configured: str | None, min_size: int) -> LayerChoice:
    """`configured` if given, else the deepest spatial layer at least `min_size` on both sides: the backbone's
    last block is the textbook target, but at 64-px patches it is 2 x 2 cells and upsampling it paints the same
    blob on every patch. When no layer is that large, the largest (deepest among equals), with a note."""
    if configured:
        name = check_layer(flat, configured, "gradcam.layer")
        size = spatial_size(flat, name)
    else:
        candidates = _candidates(flat)
        large = [c for c in candidates if min(c[1]) >= min_size]
        name, size = large[-1] if large else max(reversed(candidates), key=lambda c: min(c[1]))
    note = None
    if size is not None and min(size) < min_size:
        note = (f"Grad-CAM layer {name} is {size[0]} x {size[1]} cells, below gradcam.min_size {min_size}: "
                "its maps are coarse blobs upsampled to the patch")
    return LayerChoice(name, size, note)


def auto_layers(flat: tf.keras.Model, count: int) -> list[str]:
    """`count` spatial layers evenly spaced over the second half of the network, ending at its last one."""
    spatial = spatial_layers(flat)
    if not spatial:
        raise CamnetError(f"model {flat.name}: no spatial layer to probe")
    half = spatial[len(spatial) // 2:]
    picks = np.unique(np.linspace(len(half) - 1, 0, count).round().astype(int))[::-1]
    return [half[i] for i in sorted(picks)]


def tap_model(flat: tf.keras.Model, layers: list[str]) -> tf.keras.Model:
    """Outputs: the activations of `layers` (in order), then the logit."""
    outs = [flat.get_layer(name).output for name in layers]
    return tf.keras.Model(flat.inputs, [*outs, flat.outputs[0]], name="taps")


def predict_logits(flat: tf.keras.Model, patches: np.ndarray, batch: int) -> np.ndarray:
    out = [np.asarray(flat(tf.constant(patches[i:i + batch], tf.float32), training=False)).reshape(-1)
           for i in range(0, len(patches), batch)]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def randomised_copy(model: tf.keras.Model, seed: int, patches: np.ndarray | None = None) -> tf.keras.Model:
    """A flat logit model with every block re-initialised (full cascading randomisation, `randomise`); the
    re-initialised BatchNorm layers take their statistics from `patches` (without patches they keep their
    initializers' mean 0 and variance 1, and a deep network is dead: see `randomise`)."""
    from layer3_inference.explain import randomise

    flat = flatten(model)
    steps = randomise.plan(flat, 1)
    randomise.reinitialise(flat, steps[-1].layers, seed)
    if patches is not None:
        randomise.calibrate_batchnorm(flat, set(steps[-1].layers), patches)
    return flat
