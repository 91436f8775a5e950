"""The typed config of `explain`: the schema `configs/layer3/explain.yaml` is validated against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from layer1_patches.shared.errors import ConfigError
from layer1_patches.shared.typedconfig import bounded, load_config

METHODS = ("gradcam", "gradcam_pp", "lime")
CONCEPTS = ("nuclei_count", "nuclei_area", "nuclei_perimeter", "nuclei_eccentricity",
            "glcm_contrast", "glcm_asm", "glcm_correlation", "glcm_dissimilarity")


@dataclass(frozen=True)
class SelectConfig:
    """Which patches get per-patch maps (Grad-CAM, Grad-CAM++, LIME, sanity check)."""

    mode: Literal["top_k", "random_per_class", "indices", "coords"] = bounded(
        "top_k", doc="highest tumour probability, a seeded sample per label, store rows or level-0 corners")
    k: int = bounded(8, min=1, doc="top_k (and with --heatmap): patches with the highest tumour probability")
    per_class: int = bounded(4, min=1, doc="random_per_class: patches per label")
    indices: list[int] = bounded([], doc="indices: rows of the (first) store")
    coords: list[list[int]] = bounded([], doc="coords: level-0 [x, y] top-left corners of store patches")
    seed: int = bounded(0, min=0, doc="random_per_class: sampling seed")
    split: str = bounded("test", doc="patches only from stores of this split of --index (train, val, test, ...); "
                         "all: every given store")

    def validate(self, path: str) -> None:
        if not self.split.strip():
            raise ConfigError(f"config key '{path}.split': empty split name (use all for every store)")
        if any(i < 0 for i in self.indices):
            raise ConfigError(f"config key '{path}.indices': indices must be non-negative")
        if any(len(c) != 2 for c in self.coords):
            raise ConfigError(f"config key '{path}.coords': each entry must be [x, y]")


@dataclass(frozen=True)
class GradcamConfig:
    enabled: bool = bounded(True, doc="compute Grad-CAM and Grad-CAM++ maps")
    layer: str | None = bounded(None, doc="a backbone (or outer) layer name; null: the deepest spatial layer "
                                "at least min_size cells on both sides")
    min_size: int = bounded(7, min=1, doc="with layer: null, the smallest output side (cells at the model's "
                            "patch size) of the default layer; a coarser layer gets a gradcam_layer_small warning")
    score: Literal["logit", "probability"] = bounded("logit", doc="output differentiated; logit: no sigmoid "
                                                     "saturation in confident patches")


@dataclass(frozen=True)
class LimeConfig:
    enabled: bool = bounded(True, doc="compute LIME maps")
    target: Literal["logit", "probability"] = bounded("logit", doc="output explained; logit: a saturated "
                                                      "probability gives flat maps")
    segmentation: Literal["slic", "quickshift", "felzenszwalb"] = bounded(
        "slic", doc="superpixel algorithm (scikit-image)")
    n_segments: int = bounded(40, min=2, doc="slic: approximate number of superpixels")
    compactness: float = bounded(10.0, min_exclusive=0, doc="slic: colour against space; higher: squarer "
                                 "superpixels")
    sigma: float = bounded(1.0, min=0, doc="slic / felzenszwalb: Gaussian pre-smoothing in pixels")
    kernel_size: float = bounded(4.0, min_exclusive=0, doc="quickshift: Gaussian kernel width; higher: fewer "
                                 "superpixels")
    max_dist: float = bounded(20.0, min_exclusive=0, doc="quickshift: cut-off distance; higher: fewer superpixels")
    scale: float = bounded(50.0, min_exclusive=0, doc="felzenszwalb: higher: larger superpixels")
    num_samples: int = bounded(300, min=10, doc="perturbed images per patch")
    batch_size: int = bounded(64, min=1, doc="perturbed images per model call")
    hide_color: float | None = bounded(None, min=0, max=255, doc="0-255 value of hidden superpixels; null: each "
                                       "superpixel's mean colour")
    seed: int = bounded(0, min=0, doc="seeds the perturbations (and quickshift)")


@dataclass(frozen=True)
class SanityConfig:
    """Adebayo et al. 2018 model randomisation: a map that survives random weights explains nothing."""

    enabled: bool = bounded(True, doc="recompute the maps with randomly re-initialised weights")
    seed: int = bounded(1234, min=0, doc="seed of the re-initialisation")
    max_rank_correlation: float = bounded(0.5, min=-1, max=1, doc="a method whose median Spearman correlation "
                                          "with the trained maps at the deepest conclusive depth exceeds this "
                                          "fails")
    depths: int = bounded(4, min=1, doc="cascade steps from the output layer down, evenly spaced over the "
                          "weighted blocks; the last one randomises every block")
    min_logit_std: float = bounded(1e-3, min=0, doc="below this spread of the randomised model's logits across "
                                   "the patches the network is dead and the check inconclusive")
    max_cross_patch_correlation: float = bounded(0.9, min=-1, max=1, doc="a method whose trained maps of "
                                                 "different patches correlate (mean pairwise Spearman) above "
                                                 "this is flagged input-independent")
    methods: list[str] = bounded(list(METHODS), doc="maps recomputed on random weights (of gradcam, gradcam_pp, lime)")

    def validate(self, path: str) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"config key '{path}.methods': unknown method {unknown[0]!r} "
                              f"(known: {', '.join(METHODS)})")


@dataclass(frozen=True)
class ConceptConfig:
    masks: str | None = bounded(None, doc="HDF5/npz with `masks` (n, H, W), labelled nuclei per row of the one "
                                "store; null: segment them (--masks wins)", path=True)
    min_nucleus_area: int = bounded(12, min=1, doc="patch pixels; smaller objects are noise")
    min_distance: int = bounded(4, min=1, doc="patch pixels between watershed seeds")
    glcm_levels: int = bounded(32, min=4, max=256, doc="grey levels of the co-occurrence matrix over nuclei pixels")
    glcm_distances: list[int] = bounded([1, 2], doc="pixel offsets of the co-occurrence matrix")
    glcm_angles: list[float] = bounded([0.0, 45.0, 90.0, 135.0], doc="directions of those offsets, in degrees")

    def validate(self, path: str) -> None:
        if not self.glcm_distances or any(d < 1 for d in self.glcm_distances):
            raise ConfigError(f"config key '{path}.glcm_distances': need positive distances")
        if not self.glcm_angles:
            raise ConfigError(f"config key '{path}.glcm_angles': need at least one angle")


@dataclass(frozen=True)
class RcvConfig:
    enabled: bool = bounded(True, doc="compute Regression Concept Vectors and their TCAV scores")
    per_class: int = bounded(60, min=5, doc="patches per label drawn (seeded) from the stores for RCV")
    layers: list[str] = bounded([], doc="layers whose pooled activations are regressed; []: auto_layers")
    auto_layers: int = bounded(3, min=1, doc="with layers: [], this many spatial layers, evenly spaced over the "
                               "network's second half")
    concepts: list[str] = bounded(list(CONCEPTS), doc="concept measures regressed on the activations")
    alphas: list[float] = bounded([0.01, 0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0],
                                  doc="ridge penalties RidgeCV chooses from")
    folds: int = bounded(5, min=2, doc="outer folds: held-out R^2; RidgeCV picks alpha inside each")
    n_random: int = bounded(100, min=10, doc="random directions for the TCAV test: RCVs refitted on bootstrap "
                            "resamples with permuted concept values")
    n_repeats: int = bounded(20, min=3, doc="RCV refits on bootstrap resamples: the concept's TCAV scores in the test")
    test: Literal["ttest", "mannwhitney"] = bounded(
        "ttest", doc="concept against random TCAV scores (n = fits), two-sided: Welch's t-test (TCAV, Kim et al. "
                     "2018, 3.5) or Mann-Whitney U")
    alpha_level: float = bounded(0.05, min_exclusive=0, max=0.5, doc="significance level, applied to p-values "
                                 "Bonferroni-adjusted over the (layer, concept) pairs tested")
    min_r2_gain: float = bounded(0.05, min=0, max=1, doc="held-out R^2 must exceed max(0, the class-label baseline's) "
                                 "by this much; else status 'restates class' (or not encoded), never significant")
    min_gradient_variation: float = bounded(
        1e-3, min=0, max=1, doc="relative spread of the tumour patches' logit gradients below which the test is "
                                "undefined (one gradient for all patches: every TCAV is 0 or 1)")
    max_saturated: float = bounded(0.5, min=0, max=1, doc="share of random fits whose TCAV is exactly 0 or 1 (one "
                                   "sign on all tumour patches) above which the test is undefined")
    batch_size: int = bounded(32, min=1, doc="patches per activation and gradient batch")
    seed: int = bounded(0, min=0, doc="seeds the patch draw, folds, bootstrap and random directions")

    def validate(self, path: str) -> None:
        unknown = [c for c in self.concepts if c not in CONCEPTS]
        if unknown:
            raise ConfigError(f"config key '{path}.concepts': unknown concept {unknown[0]!r} "
                              f"(known: {', '.join(CONCEPTS)})")
        if not self.alphas or any(a <= 0 for a in self.alphas):
            raise ConfigError(f"config key '{path}.alphas': need positive ridge penalties")


@dataclass(frozen=True)
class OutputConfig:
    panels: bool = bounded(True, doc="a PNG per patch: patch, Grad-CAM, Grad-CAM++, LIME")
    maps_npz: bool = bounded(True, doc="the raw maps per patch, `maps/<id>.npz`")
    plots: bool = bounded(True, doc="R^2 by layer and TCAV against random plots")
    dpi: int = bounded(100, min=30, max=600, doc="resolution of the PNG figures, dots per inch")


@dataclass(frozen=True)
class ExplainConfig:
    select: SelectConfig = bounded(SelectConfig(), doc="which patches get per-patch maps")
    gradcam: GradcamConfig = bounded(GradcamConfig(), doc="Grad-CAM and Grad-CAM++ (tf-keras-vis)")
    lime: LimeConfig = bounded(LimeConfig(), doc="LIME (lime_image) on superpixels")
    sanity: SanityConfig = bounded(SanityConfig(), doc="model randomisation check (Adebayo et al. 2018)")
    concepts: ConceptConfig = bounded(ConceptConfig(), doc="nuclei segmentation and concept measures for RCV")
    rcv: RcvConfig = bounded(RcvConfig(), doc="Regression Concept Vectors (Graziani et al.) and TCAV")
    output: OutputConfig = bounded(OutputConfig(), doc="optional outputs")
    batch_size: int = bounded(64, min=1, doc="patches per batch when predicting tumour probabilities (top_k)")


def load_explain_config(path: Path | None, overrides: list[str] | None = None) -> ExplainConfig:
    return load_config(ExplainConfig, path, overrides)
