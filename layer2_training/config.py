"""Layer 2's typed config: the schema `configs/layer2/*.yaml` is validated against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from layer1_patches.shared.errors import ConfigError
from layer1_patches.shared.typedconfig import bounded, load_config

Backbone = Literal["resnet50", "resnet101", "inceptionv3", "densenet121", "inceptionresnetv2", "mobilenetv2"]


@dataclass(frozen=True)
class SplitNames:
    train: str = bounded("train", doc="split trained on")
    val: str = bounded("val", doc="split validated after each epoch; it picks the best checkpoint")
    test: str | None = bounded("test", doc="split evaluated once at the end; null: none")


@dataclass(frozen=True)
class DataConfig:
    index: str = bounded("", doc="dataset index JSON written by `layer1_patches index` (required; the pipeline "
                             "sets it)", path=True)
    splits: SplitNames = bounded(SplitNames(), doc="names of the splits in the dataset index")
    balance: Literal["none", "oversample", "undersample"] = bounded(
        "none", doc="training split only: oversample the smaller class or undersample the larger (seeded)")
    max_per_slide: int | None = bounded(None, min=1, doc="at most this many patches per slide and split (seeded "
                                        "subsample); null: all")
    read_block: int = bounded(32, min=1, doc="contiguous store rows read together: the shuffle unit")
    shuffle_window: int = bounded(16, min=1, doc="blocks whose samples are mixed after block shuffling")
    read_threads: int = bounded(2, min=1, max=64, doc="groups of batches read from the stores in parallel")
    prefetch: int = bounded(4, min=1, doc="batches prepared ahead of training")
    record_sample_ids: bool = bounded(False, doc="diagnostics: sample ids per rank and epoch and weight digests "
                                      "in `<run>/sample_ids/`")


@dataclass(frozen=True)
class HeadConfig:
    pooling: Literal["avg", "max"] = bounded("avg", doc="global pooling of the backbone's feature map")
    dropout: float = bounded(0.5, min=0, max=0.99, doc="dropout rate after each dense layer (after pooling when "
                             "there is none); 0: none")
    dense_units: list[int] = bounded([], doc="units of the ReLU dense layers between pooling and the output; []: "
                                     "none")


@dataclass(frozen=True)
class ModelConfig:
    backbone: Backbone = bounded("resnet50", doc="Keras application used as the backbone, without its top")
    weights: str = bounded("imagenet", doc="backbone weights: imagenet (from the cache, never downloaded), none "
                           "(random) or the path of a headless backbone .h5")
    weights_cache: str | None = bounded(None, doc="KERAS_HOME-style folder holding `models/<weights file>`; null: "
                                        "KERAS_HOME, else ~/.keras", path=True)
    input_size: int | None = bounded(None, min=8, doc="model input side in pixels; null: the stores' patch size")
    resize: bool = bounded(False, doc="resize patches to input_size inside the model (needed when they differ)")
    batchnorm_momentum: float | None = bounded(None, min=0, max=1, doc="backbone BatchNorm momentum, e.g. 0.9 for "
                                               "short runs from scratch; null: Keras' default")
    head: HeadConfig = bounded(HeadConfig(), doc="layers between the backbone and the sigmoid output")


@dataclass(frozen=True)
class PhasesConfig:
    head_epochs: int = bounded(0, min=0, doc="first epochs with the backbone frozen (head only); 0: none")
    fine_tune_from: str | None = bounded(None, doc="first backbone layer trained after the head phase (earlier "
                                         "ones stay frozen); null: all")
    fine_tune_lr_factor: float = bounded(1.0, min_exclusive=0, doc="learning-rate factor after the head phase "
                                         "(with head_epochs > 0)")


@dataclass(frozen=True)
class LossConfig:
    kind: Literal["bce", "weighted_bce", "focal"] = bounded(
        "bce", doc="binary cross-entropy, the same with tumour samples weighted, or focal loss (Lin et al. 2017)")
    pos_weight: float | None = bounded(None, min_exclusive=0, doc="weighted_bce: weight of tumour samples; null: "
                                       "n_normal / n_tumour of the training split")
    focal_gamma: float = bounded(2.0, min=0, doc="focal: easy samples are down-weighted by (1 - p_t)^gamma")
    focal_alpha: float = bounded(0.25, min=0, max=1, doc="focal: weight of tumour samples (normal: 1 - alpha)")
    label_smoothing: float = bounded(0.0, min=0, max=0.5, doc="targets moved towards 0.5: y (1 - s) + s / 2")


@dataclass(frozen=True)
class OptimizerConfig:
    kind: Literal["sgd", "adam"] = bounded("sgd", doc="SGD or Adam (Keras legacy optimisers, which Horovod wraps)")
    momentum: float = bounded(0.9, min=0, max=1, doc="sgd: momentum")
    nesterov: bool = bounded(True, doc="sgd: Nesterov momentum")
    epsilon: float = bounded(1e-7, min_exclusive=0, doc="adam: epsilon")


@dataclass(frozen=True)
class ScheduleConfig:
    lr: float = bounded(0.01, min_exclusive=0, doc="learning rate of one rank; the peak is lr x ranks with "
                        "scale_by_ranks")
    scale_by_ranks: bool = bounded(True, doc="multiply lr by the number of ranks (Goyal et al. 2017)")
    warmup_epochs: float = bounded(0.0, min=0, doc="epochs ramping linearly from lr to the peak; 0: none")
    kind: Literal["constant", "step", "cosine"] = bounded(
        "constant", doc="after warm-up: constant, step (x step_gamma at each of step_epochs) or cosine decay")
    step_epochs: list[int] = bounded([], doc="step: epochs at which the rate is multiplied by step_gamma")
    step_gamma: float = bounded(0.1, min_exclusive=0, max=1, doc="step: factor applied at each of step_epochs")
    min_lr_factor: float = bounded(0.0, min=0, max=1, doc="cosine: floor reached at the last epoch, share of the "
                                   "peak")


@dataclass(frozen=True)
class AugmentConfig:
    flips: bool = bounded(True, doc="random horizontal and vertical flips")
    rot90: bool = bounded(True, doc="random transposes: with flips, all 8 orientations of a square patch")
    brightness: float = bounded(0.0, min=0, max=1, doc="max brightness shift, share of the 0-255 range; 0: off")
    contrast: float = bounded(0.0, min=0, max=1, doc="contrast factor drawn from [1-c, 1+c]; 0: off")
    hue: float = bounded(0.0, min=0, max=0.5, doc="max hue shift, share of the colour circle; 0: off")
    saturation: float = bounded(0.0, min=0, max=1, doc="saturation factor drawn from [1-s, 1+s]; 0: off")


@dataclass(frozen=True)
class StainConfig:
    method: Literal["none", "reinhard", "macenko"] = bounded(
        "none", doc="stain normalisation, a layer of the model (so Layer 3 applies it too)")
    reference: str | None = bounded(None, doc="RGB image (PNG/JPEG/TIFF) of a well-stained reference patch; "
                                    "required unless method is none", path=True)

    def validate(self, path: str) -> None:
        if self.method != "none" and not self.reference:
            raise ConfigError(f"config key '{path}.reference': required when method is '{self.method}'")


@dataclass(frozen=True)
class OutputConfig:
    run_dir: str = bounded("runs/default", doc="run directory: checkpoints, history, metrics, exported model "
                           "(the pipeline sets it)", path=True)
    threshold: float = bounded(0.5, min=0, max=1, doc="probability at or above which a patch is tumour: metrics "
                               "and model.json (Layer 3's default)")
    monitor: Literal["val_auc", "val_loss"] = bounded("val_auc", doc="validation metric that picks the best "
                                                      "checkpoint, which is exported")
    tensorboard: bool = bounded(True, doc="write TensorBoard logs to `<run>/tensorboard`")
    colour_patches: int = bounded(2000, min=0, doc="distinct training patches (seeded sample) whose stained pixels' "
                                  "optical-density mean/std go into model.json `colour`; 0: not recorded (null)")


@dataclass(frozen=True)
class DistributedConfig:
    engine: Literal["horovod", "tf_distribute"] | None = bounded(
        None, doc="horovod (TF 2.15, the default when importable) or tf_distribute (TensorFlow's "
                  "MultiWorkerMirroredStrategy; also TF 2.21 + tf_keras); null: horovod when importable, else "
                  "tf_distribute. One process trains alone with either")
    port: int | None = bounded(None, min=1024, max=65000, doc="tf_distribute under srun: first gRPC port of a "
                               "node's ranks (rank i on a node uses port + i); null: 20000 + 40 x (job id % 1000)")


@dataclass(frozen=True)
class Layer2Config:
    data: DataConfig = bounded(DataConfig(), doc="training data: the dataset index and how it is read")
    model: ModelConfig = bounded(ModelConfig(), doc="the network: backbone, weights, input size, head")
    phases: PhasesConfig = bounded(PhasesConfig(), doc="head-only epochs, then fine-tuning")
    loss: LossConfig = bounded(LossConfig(), doc="training loss")
    optimizer: OptimizerConfig = bounded(OptimizerConfig(), doc="optimiser")
    schedule: ScheduleConfig = bounded(ScheduleConfig(), doc="learning rate per step: warm-up, then constant, step "
                                       "or cosine")
    augment: AugmentConfig = bounded(AugmentConfig(), doc="random changes to training batches (per patch, seeded)")
    stain: StainConfig = bounded(StainConfig(), doc="stain normalisation to a reference patch")
    output: OutputConfig = bounded(OutputConfig(), doc="run directory and evaluation")
    distributed: DistributedConfig = bounded(DistributedConfig(), doc="how ranks train together (launch them "
                                             "with srun, or horovodrun for Horovod)")
    batch_size: int = bounded(32, min=1, doc="patches per batch and rank (replica)")
    epochs: int = bounded(10, min=1, doc="training epochs, head phase included")
    steps_per_epoch: int | None = bounded(None, min=1, doc="cap on steps per epoch; null: the whole training split")
    mixed_precision: bool = bounded(False, doc="mixed_float16 compute (for GPUs); the output stays float32")
    seed: int = bounded(0, min=0, doc="seeds subsampling, balancing, epoch order, augmentation and initial weights")

    def validate(self, _path: str) -> None:
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
