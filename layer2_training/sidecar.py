"""The model sidecar, `<run dir>/model.json`: the contract between a trained model and whoever runs it.

Layer 2 writes it when training finishes; Layer 3 (and any other consumer) reads it to know at which resolution
and patch size the model was trained, so inference reads exactly what training read. One dataclass serves both
sides: `to_dict` writes it, `from_mapping` reads it through the same typed validation as every CamNet config, and
`json_schema(ModelSidecar)` is the published schema (README, "Contracts"). Importing this module loads no
TensorFlow: a bad run dir fails before the model does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from layer1_patches.colour import ColourStats
from layer1_patches.shared.typedconfig import bounded, load_contract, required, to_dict

SIDECAR = "model.json"
SIDECAR_VERSION = 1


@dataclass(frozen=True)
class StainSidecar:
    """Stain normalisation built into the model (inputs are raw RGB either way)."""

    method: Literal["none", "reinhard", "macenko"] = bounded("none", doc="normalisation inside the model")
    params: dict[str, Any] = bounded({}, doc="fitted reference statistics (Reinhard: mean/std; Macenko: he/max_c)")
    reference: str | None = bounded(None, doc="reference image the parameters were fitted on")
    in_model: bool = bounded(True, doc="true: applied by the exported model itself")


@dataclass(frozen=True)
class FrameworkSidecar:
    """The software that saved the model: saved models do not cross Keras versions (Keras 3 reads no Keras 2 file
    and the reverse; tf_keras 2.21 reads TF 2.15's)."""

    tensorflow: str = bounded("unknown", doc="TensorFlow version")
    keras: str = bounded("unknown", doc="Keras package and version, e.g. `keras 2.15.0` (TF 2.15's own) or "
                                        "`tf_keras 2.21.0`")
    python: str = bounded("unknown", doc="Python version")


@dataclass(frozen=True)
class ModelSidecar:
    """What a trained CamNet model needs from its caller, and what it returns."""

    model_file: str = required("exported Keras model, relative to the run dir")
    patch_size: int = required("side of the square patch the model reads, in pixels at the working resolution",
                               min=8)
    working_mpp: float = required("micrometres per pixel of the training patches", min_exclusive=0)
    level: int = required("pyramid level the training patches were read from", min=0)
    threshold: float = required("probability at or above which a patch is called tumour", min=0, max=1)
    sidecar_version: int = bounded(SIDECAR_VERSION, doc="version of this contract", min=SIDECAR_VERSION,
                                   max=SIDECAR_VERSION)
    backbone: str = bounded("unknown", doc="ImageNet backbone the model was built on (informative)")
    input_size: int | None = bounded(None, min=8, doc="backbone input side; differs from patch_size when the "
                                                     "model resizes inside (informative)")
    resized_in_model: bool = bounded(False, doc="true when the model resizes patch_size to input_size itself")
    input: str = bounded("", doc="what the model expects (informative)")
    output: str = bounded("", doc="what the model returns (informative)")
    classes: list[str] = bounded(["normal", "tumour"], doc="class 0 and class 1")
    preprocessing: str = bounded("", doc="the backbone's input scaling, applied inside the model (informative)")
    stain: StainSidecar = dataclasses.field(default_factory=StainSidecar,
                                            metadata={"doc": "stain normalisation inside the model"})
    config_hash: str = bounded("", doc="hash of the resolved Layer 2 config that trained the model")
    steps_per_epoch: int | None = bounded(None, min=1, doc="training steps per epoch (informative)")
    colour: ColourStats | None = bounded(None, doc="optical-density statistics of the training patches' stained "
                                         "pixels: a heatmap warns on tissue far outside them (null: not recorded)")
    framework: FrameworkSidecar | None = bounded(None, doc="TensorFlow, Keras and Python that saved the model "
                                                 "(null: not recorded)")

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_mapping(cls, data: Any, where: str) -> ModelSidecar:
        """Validated sidecar from parsed JSON; errors are one line naming `where` and the key."""
        return load_contract(cls, data, where)
