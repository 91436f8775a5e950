"""Layer 3's typed configs (heatmap and evaluate): the schemas `configs/layer3/*.yaml` are validated against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from layer1_patches.config import AnnotationConfig, TissueConfig
from layer1_patches.shared.errors import ConfigError
from layer1_patches.shared.typedconfig import apply_overrides, bounded, from_mapping, load_config, read_yaml


@dataclass(frozen=True)
class MatchConfig:
    """How the model's training resolution (from its `model.json`) is found on a slide."""

    by: Literal["mpp", "level"] = bounded("mpp", doc="mpp: the model's working mpp; level: the pyramid level "
                                          "recorded at training, read as is")
    mpp_tolerance: float = bounded(0.1, min=0, max=1, doc="by mpp, relative: a level this close is read as is, "
                                   "else a finer level is resized")
    assume_mpp: float | None = bounded(None, min_exclusive=0, doc="level-0 mpp (micrometres per pixel) for slides "
                                       "whose metadata lacks it; null: such slides are an error")
    mpp_table: str | None = bounded(None, doc="CSV with header `slide,mpp`: level-0 mpp per slide (file name or "
                                    "stem), for scanners that record none; a listed slide's row wins over its "
                                    "metadata", path=True)


@dataclass(frozen=True)
class GridConfig:
    stride: int | None = bounded(None, min=1, doc="working pixels between grid positions; null: the patch size "
                                 "(no overlap)")
    min_tissue: float = bounded(0.5, min=0, max=1, doc="tissue share a patch needs to be predicted")


@dataclass(frozen=True)
class ReaderConfig:
    threads: int = bounded(2, min=1, max=64, doc="threads reading and decoding the slide's patches")
    batch_size: int = bounded(64, min=1, doc="patches per model call; ranks split a slide at batch boundaries")
    prefetch: int = bounded(4, min=1, doc="batches read ahead of the model")


@dataclass(frozen=True)
class ScoreConfig:
    """Slide-level score from the patch probabilities."""

    method: Literal["max", "percentile"] = bounded("max", doc="the highest patch probability, or a percentile")
    percentile: float = bounded(99.0, min=0, max=100, doc="method percentile: percentile (0-100) of the patch "
                                "probabilities")


@dataclass(frozen=True)
class OutputConfig:
    map_downsample: float = bounded(16.0, min=1, doc="downsample (relative to level 0) of the probability map: "
                                    "level-0 pixels per map pixel")
    smooth_sigma: float = bounded(0.0, min=0, doc="Gaussian sigma in map pixels, over predicted pixels only; 0: none")
    thumbnail_size: int = bounded(1024, min=64, doc="pixels on the longest side of heatmap.png and overlay.png")
    colormap: str = bounded("viridis", doc="matplotlib colormap of the probabilities (perceptually uniform by "
                            "default: equal steps of probability look like equal steps of colour)")
    alpha: float = bounded(0.5, min=0, max=1, doc="heatmap opacity over tissue")
    npy: bool = bounded(True, doc="also write grid.npy (rows x cols, NaN = no prediction)")
    geojson_tiles: bool = bounded(True, doc="patches as QuPath detections in the GeoJSON (large for big slides)")
    threshold: float | None = bounded(None, min=0, max=1, doc="probability for tumour regions and area; null: the "
                                      "model's threshold")
    min_region_um2: float = bounded(0.0, min=0, doc="square micrometres: thresholded regions smaller than this are "
                                    "not contoured")


@dataclass(frozen=True)
class WarningsConfig:
    """When a slide's summary warns that its heatmap may not be trustworthy (the heatmap is written either way)."""

    max_colour_shift: float | None = bounded(
        0.7, min_exclusive=0, doc="warn when the slide's tissue colour lies further than this from the training "
        "colour: the largest per-channel |slide mean - training mean| optical density, in training standard "
        "deviations (model.json `colour`; measured against synthetic training tissue: other synthetic slides "
        "<= 0.58, real H&E >= 0.78); null: no colour check")
    max_tumour_share: float | None = bounded(
        0.5, min=0, max=1, doc="warn when more than this share of the slide's tissue patches is at or above the "
        "threshold (in Camelyon16 metastases cover far less than half a node's tissue); null: no check")


@dataclass(frozen=True)
class HeatmapConfig:
    match: MatchConfig = bounded(MatchConfig(), doc="where the model's training resolution (model.json) is on "
                                 "each slide")
    tissue: TissueConfig = bounded(TissueConfig(), doc="tissue mask (Layer 1's): background is never predicted")
    grid: GridConfig = bounded(GridConfig(), doc="the patch grid over tissue")
    reader: ReaderConfig = bounded(ReaderConfig(), doc="reading patches ahead of the model")
    score: ScoreConfig = bounded(ScoreConfig(), doc="slide score from the patch probabilities")
    output: OutputConfig = bounded(OutputConfig(), doc="map, images and GeoJSON per slide")
    warnings: WarningsConfig = bounded(WarningsConfig(), doc="checks that the slide suits the model: tissue colour "
                                       "and share called tumour")

    def validate(self, _path: str) -> None:
        import matplotlib

        if self.output.colormap not in matplotlib.colormaps:
            raise ConfigError(f"config key 'output.colormap': unknown matplotlib colormap {self.output.colormap!r}")


@dataclass(frozen=True)
class FrocConfig:
    """Camelyon16 lesion detection: candidate points are the local maxima of the smoothed probability map, kept
    strongest first with non-maximum suppression; the FROC curve sweeps every confidence they carry."""

    smoothing_um: float = bounded(25.0, min=0, doc="micrometres: Gaussian sigma of the map smoothing before "
                                  "maxima are sought (over predicted pixels only); 0: none")
    nms_radius_um: float = bounded(150.0, min=0, doc="micrometres: a maximum this close to a stronger one kept "
                                   "already is dropped")
    min_confidence: float = bounded(0.01, min_exclusive=0, max=1, doc="maxima of the smoothed map below this are "
                                    "not detections (keep it low: the curve sweeps every threshold above it)")
    dilation_um: float = bounded(75.0, min=0, doc="micrometres: tumour regions closer than this merge into one "
                                 "lesion")
    itc_um: float = bounded(275.0, min=0, doc="micrometres: lesions with a shorter major axis are isolated tumour "
                            "cells (not counted)")
    fp_rates: list[float] = bounded([0.25, 0.5, 1.0, 2.0, 4.0, 8.0], doc="false positives per slide at which "
                                    "sensitivity is reported; the FROC score is their mean")

    def validate(self, path: str) -> None:
        if not self.fp_rates or any(r <= 0 for r in self.fp_rates):
            raise ConfigError(f"config key '{path}.fp_rates': needs positive false-positive rates")


# Keys a config may still carry from an earlier schema, with what replaced them: a clear error, not "unknown key".
REMOVED_EVALUATE_KEYS = {
    ("froc", "detection_threshold"): "removed: detections are now every local maximum of the smoothed map at or "
    "above froc.min_confidence and the FROC curve sweeps all thresholds; delete the key (see froc.min_confidence, "
    "froc.nms_radius_um, froc.smoothing_um)",
}


@dataclass(frozen=True)
class EvaluateConfig:
    annotation: AnnotationConfig = bounded(AnnotationConfig(), doc="tumour annotations (as in Layer 1): the "
                                           "ground truth")
    threshold: float | None = bounded(None, min=0, max=1, doc="probability for pixel Dice and IoU; null: the "
                                      "threshold the heatmap used")
    score: ScoreConfig = bounded(ScoreConfig(), doc="slide score for the slide-level AUC")
    froc: FrocConfig = bounded(FrocConfig(), doc="Camelyon16 lesion detection (FROC)")
    missing_annotation: Literal["negative", "skip"] = bounded(
        "negative", doc="slides without annotation file: negative (tumour-free, as Camelyon16's normals) or skip")
    trained_split: str = bounded("train", doc="the index split the model was trained on (Layer 2's "
                                 "data.splits.train): scored on its own, last, and never the headline unless alone")


def load_heatmap_config(path: Path | None, overrides: list[str] | None = None) -> HeatmapConfig:
    return load_config(HeatmapConfig, path, overrides)


def load_evaluate_config(path: Path | None, overrides: list[str] | None = None) -> EvaluateConfig:
    data = read_yaml(path) if path is not None else {}
    apply_overrides(data, list(overrides or []))
    for (section, key), why in REMOVED_EVALUATE_KEYS.items():
        if isinstance(data.get(section), dict) and key in data[section]:
            where = f"{path}: " if path is not None else ""
            raise ConfigError(f"{where}config key '{section}.{key}': {why}")
    try:
        return from_mapping(EvaluateConfig, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path is not None else str(err)) from None
