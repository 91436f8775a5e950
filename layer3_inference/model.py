"""A Layer 2 run directory as Layer 3 needs it: the exported model, its sidecar, and where it reads a slide.

The sidecar (`<run>/model.json`, written by Layer 2 when training finishes) says at which resolution and
patch size the model was trained; inference resolves that on each slide with Layer 1's own resolution code,
so it reads exactly what training read. The sidecar's keys are Layer 2's contract, `layer2_training.sidecar`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layer1_patches.colour import ColourStats
from layer1_patches.config import ResolutionConfig
from layer1_patches.shared.errors import CamnetError, first_line, os_reason
from layer1_patches.slide import Slide, WorkingResolution, resolve_resolution
from layer2_training.sidecar import SIDECAR, FrameworkSidecar, ModelSidecar
from layer3_inference.config import MatchConfig

if TYPE_CHECKING:
    import tensorflow as tf



@dataclass(frozen=True)
class ModelSpec:
    """What Layer 3 relies on from a run directory."""

    run_dir: Path
    model_file: Path
    patch_size: int
    working_mpp: float
    level: int
    threshold: float
    backbone: str
    config_hash: str
    # not part of `identity()`: the model file's hash identifies the model, and old heatmaps keep their run hash
    colour: ColourStats | None = None  # training tissue's optical density (model.json `colour`)
    framework: FrameworkSidecar | None = None  # what saved the model (model.json `framework`)

    @cached_property
    def model_sha256(self) -> str:
        """The exported model's content hash: the model's identity, whatever path spelled it."""
        digest = hashlib.sha256()
        try:
            with open(self.model_file, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        except OSError as err:
            raise CamnetError(f"model {self.model_file}: cannot read ({os_reason(err)})") from None
        return digest.hexdigest()

    def identity(self) -> dict[str, Any]:
        # Resolved paths and the content hash: `--model run` and `--model /abs/run` are one model, and a model
        # re-exported into the same run dir is another.
        return {"run_dir": str(self.run_dir.resolve()), "model_file": str(self.model_file.resolve()),
                "model_sha256": self.model_sha256, "backbone": self.backbone, "patch_size": self.patch_size,
                "working_mpp": self.working_mpp, "level": self.level, "threshold": self.threshold,
                "config_hash": self.config_hash}


def sidecar_from_layer2(run_dir: Path, data: Any) -> ModelSpec:
    """Layer 3's view of Layer 2's sidecar, validated by its contract (`layer2_training.sidecar`)."""
    car = ModelSidecar.from_mapping(data, f"run dir {run_dir}: {run_dir / SIDECAR}")
    return ModelSpec(run_dir=run_dir, model_file=run_dir / car.model_file, patch_size=car.patch_size,
                     working_mpp=car.working_mpp, level=car.level, threshold=car.threshold, backbone=car.backbone,
                     config_hash=car.config_hash, colour=car.colour, framework=car.framework)


def read_spec(run_dir: Path) -> ModelSpec:
    """The run's sidecar, checked; a run still training (no sidecar or no exported model) is refused."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CamnetError(f"run dir {run_dir}: no such directory")
    path = run_dir / SIDECAR
    if not path.is_file():
        raise CamnetError(f"run dir {run_dir}: no {SIDECAR} (training not finished, or not a Layer 2 run dir)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CamnetError(f"run dir {run_dir}: {path} is not valid JSON ({err})") from None
    spec = sidecar_from_layer2(run_dir, data)
    if not spec.model_file.is_file():
        raise CamnetError(f"run dir {run_dir}: model file {spec.model_file} (key 'model_file' of {path}) is missing")
    return spec


def load_model(spec: ModelSpec) -> tf.keras.Model:
    """The exported model, whose input side must be the sidecar's patch size."""
    from layer1_patches.shared.kerasflavour import flavour
    from layer2_training.model import load_inference_model

    flavour()  # tf.keras must be Keras 2 (an error line naming the fix)
    try:
        model = load_inference_model(spec.model_file)
    except Exception as err:  # noqa: BLE001 - Keras raises many types for a truncated or foreign file
        raise CamnetError(load_error(spec, err)) from None
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[1:3] != (spec.patch_size, spec.patch_size) or shape[3] != 3:
        raise CamnetError(f"model {spec.model_file}: input shape {shape[1:]} does not match patch_size "
                          f"{spec.patch_size} of {spec.run_dir / SIDECAR}")
    return model


def load_error(spec: ModelSpec, err: Exception) -> str:
    """The one line for a model Keras could not load: when another TensorFlow or Keras saved it (saved models do
    not cross Keras versions), which environment made it and which one this is; else Keras' own first line."""
    first = first_line(err, limit=200)  # Keras may put the whole model config in it
    made = spec.framework
    if made is not None:
        from layer1_patches.shared.kerasflavour import flavour

        here = flavour()
        # another Keras package, or another minor version of it: a patch release reads its own files
        if keras_line(made.keras) != keras_line(here["keras"]):
            return (f"model {spec.model_file}: saved by TensorFlow {made.tensorflow} with {made.keras} (Python "
                    f"{made.python}; model.json `framework`), which this environment (TensorFlow "
                    f"{here['tensorflow']} with {here['keras']}) cannot load: run Layer 3 in an environment with "
                    f"{made.keras.split()[0]} {keras_line(made.keras)[1]} (README \"Training engines\") ({first})")
    return f"model {spec.model_file}: cannot load ({first})"


def keras_line(keras: str) -> tuple[str, str]:
    """("tf_keras", "2.21") of "tf_keras 2.21.0": the package and its minor version."""
    package, _, version = keras.partition(" ")
    return package, ".".join(version.split(".")[:2])


def working_resolution(slide: Slide, spec: ModelSpec, cfg: MatchConfig) -> WorkingResolution:
    """Where the model's patches come from on this slide, or an error naming slide and model."""
    if cfg.by == "level":
        res = ResolutionConfig(level=spec.level, assume_mpp=cfg.assume_mpp)
        asked = f"level {spec.level}"
    else:
        res = ResolutionConfig(mpp=spec.working_mpp, mpp_tolerance=cfg.mpp_tolerance, assume_mpp=cfg.assume_mpp)
        asked = f"working_mpp {spec.working_mpp:g}"
    try:
        out = resolve_resolution(slide, res)
    except CamnetError as err:
        raise CamnetError(f"{err} (model {spec.run_dir / SIDECAR} needs {asked})") from None
    w0, h0 = slide.dimensions
    footprint = out.footprint(spec.patch_size)
    if footprint > min(w0, h0):
        raise CamnetError(f"slide {slide.path}: {w0} x {h0} px is smaller than one {spec.patch_size}-px patch "
                          f"at {asked} ({footprint} level-0 px)")
    return out
