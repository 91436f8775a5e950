"""Layer 2's typed config: the schema `configs/layer2/*.yaml` is validated against."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from layer1_patches.errors import ConfigError
from layer1_patches.typedconfig import bounded, load_config

Backbone = Literal["resnet50", "resnet101", "inceptionv3", "densenet121", "inceptionresnetv2", "mobilenetv2"]


@dataclass(frozen=True)
class SplitNames:
    train: str = "train"
    val: str = "val"
    test: str | None = "test"


@dataclass(frozen=True)
class DataConfig:
    index: str = ""
    splits: SplitNames = field(default_factory=SplitNames)
    balance: Literal["none", "oversample", "undersample"] = "none"
    max_per_slide: int | None = bounded(None, min=1, doc="seeded subsample per slide and split")
    read_block: int = bounded(32, min=1, doc="contiguous rows read together: the shuffle unit")
    shuffle_window: int = bounded(16, min=1, doc="blocks whose samples are mixed after block shuffling")
    read_threads: int = bounded(2, min=1, max=64)
    prefetch: int = bounded(4, min=1, doc="batches prepared ahead")
    record_sample_ids: bool = False  # diagnostics: <run>/sample_ids/ ids per rank and epoch, weight digests


@dataclass(frozen=True)
class HeadConfig:
    pooling: Literal["avg", "max"] = "avg"
    dropout: float = bounded(0.5, min=0, max=0.99)
    dense_units: list[int] = bounded([])


@dataclass(frozen=True)
class ModelConfig:
    backbone: Backbone = "resnet50"
    weights: str = "imagenet"  # imagenet | none | path to an .h5 weights file of the headless backbone
    weights_cache: str | None = None  # KERAS_HOME-style root: weights at <cache>/models/<file>
    input_size: int | None = bounded(None, min=8, doc="default: the stores' patch size")
    resize: bool = False  # required to let input_size differ from the stores' patch size
    batchnorm_momentum: float | None = bounded(None, min=0, max=1, doc="override for short runs from scratch")
    head: HeadConfig = field(default_factory=HeadConfig)


@dataclass(frozen=True)
class PhasesConfig:
    head_epochs: int = bounded(0, min=0, doc="epochs with the backbone frozen")
    fine_tune_from: str | None = None  # first backbone layer trained afterwards; None = all
    fine_tune_lr_factor: float = bounded(1.0, min_exclusive=0)


@dataclass(frozen=True)
class LossConfig:
    kind: Literal["bce", "weighted_bce", "focal"] = "bce"
    pos_weight: float | None = bounded(None, min_exclusive=0, doc="weighted_bce; default n_normal/n_tumour")
    focal_gamma: float = bounded(2.0, min=0)
    focal_alpha: float = bounded(0.25, min=0, max=1)
    label_smoothing: float = bounded(0.0, min=0, max=0.5)


@dataclass(frozen=True)
class OptimizerConfig:
    kind: Literal["sgd", "adam"] = "sgd"
    momentum: float = bounded(0.9, min=0, max=1)
    nesterov: bool = True
    epsilon: float = bounded(1e-7, min_exclusive=0)


@dataclass(frozen=True)
class ScheduleConfig:
    lr: float = bounded(0.01, min_exclusive=0, doc="per replica; scaled by the number of ranks")
    scale_by_ranks: bool = True
    warmup_epochs: float = bounded(0.0, min=0)
    kind: Literal["constant", "step", "cosine"] = "constant"
    step_epochs: list[int] = bounded([])
    step_gamma: float = bounded(0.1, min_exclusive=0, max=1)
    min_lr_factor: float = bounded(0.0, min=0, max=1, doc="cosine floor as a share of the peak")


@dataclass(frozen=True)
class AugmentConfig:
    flips: bool = True
    rot90: bool = True
    brightness: float = bounded(0.0, min=0, max=1, doc="max delta, share of the 0-255 range")
    contrast: float = bounded(0.0, min=0, max=1, doc="factor drawn from [1-c, 1+c]")
    hue: float = bounded(0.0, min=0, max=0.5)
    saturation: float = bounded(0.0, min=0, max=1)


@dataclass(frozen=True)
class StainConfig:
    method: Literal["none", "reinhard", "macenko"] = "none"
    reference: str | None = None  # RGB image (PNG/JPEG/TIFF) of a well-stained reference patch

    def validate(self, path: str) -> None:
        if self.method != "none" and not self.reference:
            raise ConfigError(f"config key '{path}.reference': required when method is '{self.method}'")


@dataclass(frozen=True)
class OutputConfig:
    run_dir: str = "runs/default"
    threshold: float = bounded(0.5, min=0, max=1)
    monitor: Literal["val_auc", "val_loss"] = "val_auc"
    tensorboard: bool = True


@dataclass(frozen=True)
class Layer2Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    phases: PhasesConfig = field(default_factory=PhasesConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    stain: StainConfig = field(default_factory=StainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    batch_size: int = bounded(32, min=1, doc="per replica")
    epochs: int = bounded(10, min=1)
    steps_per_epoch: int | None = bounded(None, min=1, doc="cap on steps per epoch; default: the whole split")
    mixed_precision: bool = False
    seed: int = bounded(0, min=0)

    def validate(self, path: str) -> None:
        if not self.data.index:
            raise ConfigError("config key 'data.index': required (the dataset index JSON from layer1 index)")
        if self.phases.head_epochs >= self.epochs and self.phases.head_epochs > 0:
            raise ConfigError("config key 'phases.head_epochs': must be below epochs")
        if any(e < 1 for e in self.schedule.step_epochs):
            raise ConfigError("config key 'schedule.step_epochs': epochs must be at least 1")
        if any(u < 1 for u in self.model.head.dense_units):
            raise ConfigError("config key 'model.head.dense_units': units must be at least 1")


def load_layer2_config(path: Path | None, overrides: list[str] | None = None) -> Layer2Config:
    return load_config(Layer2Config, path, overrides)
