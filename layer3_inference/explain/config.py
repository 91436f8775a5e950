"""The typed config of `explain`: the schema `configs/layer3/explain.yaml` is validated against."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from layer1_patches.errors import ConfigError
from layer1_patches.typedconfig import bounded, load_config

METHODS = ("gradcam", "gradcam_pp", "lime")
CONCEPTS = ("nuclei_count", "nuclei_area", "nuclei_perimeter", "nuclei_eccentricity",
            "glcm_contrast", "glcm_asm", "glcm_correlation", "glcm_dissimilarity")


@dataclass(frozen=True)
class SelectConfig:
    """Which patches get per-patch maps (Grad-CAM, Grad-CAM++, LIME, sanity check)."""

    mode: Literal["top_k", "random_per_class", "indices", "coords"] = "top_k"
    k: int = bounded(8, min=1, doc="top_k: patches with the highest tumour probability")
    per_class: int = bounded(4, min=1, doc="random_per_class: patches per label")
    indices: list[int] = bounded([], doc="indices: rows of the (first) store")
    coords: list[list[int]] = bounded([], doc="coords: level-0 [x, y] top-left corners")
    seed: int = bounded(0, min=0)

    def validate(self, path: str) -> None:
        if any(i < 0 for i in self.indices):
            raise ConfigError(f"config key '{path}.indices': indices must be non-negative")
        if any(len(c) != 2 for c in self.coords):
            raise ConfigError(f"config key '{path}.coords': each entry must be [x, y]")


@dataclass(frozen=True)
class GradcamConfig:
    enabled: bool = True
    layer: str | None = None  # a backbone (or outer) layer name; None: the backbone's last conv layer
    score: Literal["logit", "probability"] = "logit"  # logit: no sigmoid saturation in confident patches


@dataclass(frozen=True)
class LimeConfig:
    enabled: bool = True
    target: Literal["logit", "probability"] = "logit"  # logit: a saturated probability gives flat maps
    segmentation: Literal["slic", "quickshift", "felzenszwalb"] = "slic"
    n_segments: int = bounded(40, min=2, doc="slic")
    compactness: float = bounded(10.0, min_exclusive=0, doc="slic")
    sigma: float = bounded(1.0, min=0, doc="slic / felzenszwalb smoothing")
    kernel_size: float = bounded(4.0, min_exclusive=0, doc="quickshift")
    max_dist: float = bounded(20.0, min_exclusive=0, doc="quickshift")
    scale: float = bounded(50.0, min_exclusive=0, doc="felzenszwalb")
    num_samples: int = bounded(300, min=10, doc="perturbed images per patch")
    batch_size: int = bounded(64, min=1)
    hide_color: float | None = bounded(None, min=0, max=255, doc="None: each superpixel's mean colour")
    seed: int = bounded(0, min=0)


@dataclass(frozen=True)
class SanityConfig:
    """Adebayo et al. 2018 model randomisation: a map that survives random weights explains nothing."""

    enabled: bool = True
    seed: int = bounded(1234, min=0)
    max_rank_correlation: float = bounded(0.5, min=-1, max=1, doc="median Spearman above this: flagged")
    methods: list[str] = bounded(list(METHODS), doc="maps recomputed on random weights")

    def validate(self, path: str) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"config key '{path}.methods': unknown method {unknown[0]!r} "
                              f"(known: {', '.join(METHODS)})")


@dataclass(frozen=True)
class ConceptConfig:
    masks: str | None = None  # HDF5/npz with `masks` (n, H, W) labelled nuclei per store row; else segment
    min_nucleus_area: int = bounded(12, min=1, doc="px; smaller objects are noise")
    min_distance: int = bounded(4, min=1, doc="px between watershed seeds")
    glcm_levels: int = bounded(32, min=4, max=256, doc="grey levels over nuclei pixels")
    glcm_distances: list[int] = bounded([1, 2])
    glcm_angles: list[float] = bounded([0.0, 45.0, 90.0, 135.0], doc="degrees")

    def validate(self, path: str) -> None:
        if not self.glcm_distances or any(d < 1 for d in self.glcm_distances):
            raise ConfigError(f"config key '{path}.glcm_distances': need positive distances")
        if not self.glcm_angles:
            raise ConfigError(f"config key '{path}.glcm_angles': need at least one angle")


@dataclass(frozen=True)
class RcvConfig:
    enabled: bool = True
    per_class: int = bounded(60, min=5, doc="patches per label drawn (seeded) from the stores for RCV")
    layers: list[str] = bounded([], doc="layers whose pooled activations are regressed; [] = auto")
    auto_layers: int = bounded(3, min=1, doc="with layers: [], this many backbone layers, evenly spaced")
    concepts: list[str] = bounded(list(CONCEPTS))
    alphas: list[float] = bounded([0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0])
    folds: int = bounded(5, min=2, doc="outer folds: held-out R^2; RidgeCV picks alpha inside each")
    n_random: int = bounded(100, min=10, doc="random unit directions for the TCAV baseline")
    n_repeats: int = bounded(20, min=3, doc="bootstrap refits of the RCV for the significance test")
    test: Literal["ttest", "mannwhitney"] = "ttest"  # Welch two-sided, as in TCAV (Kim et al. 2018)
    alpha_level: float = bounded(0.05, min_exclusive=0, max=0.5, doc="significance level")
    batch_size: int = bounded(32, min=1)
    seed: int = bounded(0, min=0)

    def validate(self, path: str) -> None:
        unknown = [c for c in self.concepts if c not in CONCEPTS]
        if unknown:
            raise ConfigError(f"config key '{path}.concepts': unknown concept {unknown[0]!r} "
                              f"(known: {', '.join(CONCEPTS)})")
        if not self.alphas or any(a <= 0 for a in self.alphas):
            raise ConfigError(f"config key '{path}.alphas': need positive ridge penalties")


@dataclass(frozen=True)
class OutputConfig:
    panels: bool = True
    maps_npz: bool = True
    plots: bool = True
    dpi: int = bounded(100, min=30, max=600)


@dataclass(frozen=True)
class ExplainConfig:
    select: SelectConfig = field(default_factory=SelectConfig)
    gradcam: GradcamConfig = field(default_factory=GradcamConfig)
    lime: LimeConfig = field(default_factory=LimeConfig)
    sanity: SanityConfig = field(default_factory=SanityConfig)
    concepts: ConceptConfig = field(default_factory=ConceptConfig)
    rcv: RcvConfig = field(default_factory=RcvConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    batch_size: int = bounded(64, min=1, doc="prediction batch")


def load_explain_config(path: Path | None, overrides: list[str] | None = None) -> ExplainConfig:
    return load_config(ExplainConfig, path, overrides)
