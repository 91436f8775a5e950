"""Layer 3's typed configs (heatmap and evaluate): the schemas `configs/layer3/*.yaml` are validated against."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from layer1_patches.config import AnnotationConfig, TissueConfig
from layer1_patches.errors import ConfigError
from layer1_patches.typedconfig import bounded, load_config


@dataclass(frozen=True)
class MatchConfig:
    """How the model's training resolution (from its `model.json`) is found on a slide."""

    by: Literal["mpp", "level"] = "mpp"  # level: the pyramid index recorded at training, as is
    mpp_tolerance: float = bounded(0.1, min=0, max=1, doc="relative; a level within it is read as is")
    assume_mpp: float | None = bounded(None, min_exclusive=0, doc="level-0 um/px for slides without it")


@dataclass(frozen=True)
class GridConfig:
    stride: int | None = bounded(None, min=1, doc="working pixels; default = patch size (no overlap)")
    min_tissue: float = bounded(0.5, min=0, max=1, doc="tissue share of a patch for it to be predicted")


@dataclass(frozen=True)
class ReaderConfig:
    threads: int = bounded(2, min=1, max=64, doc="slide reading/decoding threads")
    batch_size: int = bounded(64, min=1)
    prefetch: int = bounded(4, min=1, doc="batches read ahead of the model")


@dataclass(frozen=True)
class ScoreConfig:
    """Slide-level score from the patch probabilities."""

    method: Literal["max", "percentile"] = "max"
    percentile: float = bounded(99.0, min=0, max=100)


@dataclass(frozen=True)
class OutputConfig:
    map_downsample: float = bounded(16.0, min=1, doc="level-0 px per pixel of the probability map")
    smooth_sigma: float = bounded(0.0, min=0, doc="Gaussian sigma in map pixels; 0 = none")
    thumbnail_size: int = bounded(1024, min=64, doc="longest side of the heatmap PNG's thumbnail")
    colormap: str = "jet"
    alpha: float = bounded(0.5, min=0, max=1, doc="heatmap opacity over tissue")
    npy: bool = True  # also write grid.npy (rows x cols, NaN = no prediction)
    geojson_tiles: bool = True  # tiles as QuPath detections (can be large for big slides)
    threshold: float | None = bounded(None, min=0, max=1, doc="default: the model's threshold")
    min_region_um2: float = bounded(0.0, min=0, doc="thresholded regions smaller than this are not contoured")


@dataclass(frozen=True)
class HeatmapConfig:
    match: MatchConfig = field(default_factory=MatchConfig)
    tissue: TissueConfig = field(default_factory=TissueConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def validate(self, path: str) -> None:
        import matplotlib

        if self.output.colormap not in matplotlib.colormaps:
            raise ConfigError(f"config key 'output.colormap': unknown matplotlib colormap {self.output.colormap!r}")


@dataclass(frozen=True)
class FrocConfig:
    """Camelyon16 lesion detection: detections are local maxima of the map above `detection_threshold`."""

    detection_threshold: float = bounded(0.5, min=0, max=1)
    dilation_um: float = bounded(75.0, min=0, doc="tumour regions closer than this merge into one lesion")
    itc_um: float = bounded(275.0, min=0, doc="lesions with a shorter major axis are ITCs (not counted)")
    fp_rates: list[float] = bounded([0.25, 0.5, 1.0, 2.0, 4.0, 8.0])

    def validate(self, path: str) -> None:
        if not self.fp_rates or any(r <= 0 for r in self.fp_rates):
            raise ConfigError(f"config key '{path}.fp_rates': needs positive false-positive rates")


@dataclass(frozen=True)
class EvaluateConfig:
    annotation: AnnotationConfig = field(default_factory=AnnotationConfig)
    threshold: float | None = bounded(None, min=0, max=1, doc="default: the threshold the heatmap used")
    score: ScoreConfig = field(default_factory=ScoreConfig)
    froc: FrocConfig = field(default_factory=FrocConfig)
    missing_annotation: Literal["negative", "skip"] = "negative"  # Camelyon16: normal slides have none


def load_heatmap_config(path: Path | None, overrides: list[str] | None = None) -> HeatmapConfig:
    return load_config(HeatmapConfig, path, overrides)


def load_evaluate_config(path: Path | None, overrides: list[str] | None = None) -> EvaluateConfig:
    return load_config(EvaluateConfig, path, overrides)
