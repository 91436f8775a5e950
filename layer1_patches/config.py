"""Layer 1's typed config: the schema `configs/layer1/*.yaml` is validated against."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from layer1_patches.errors import ConfigError
from layer1_patches.typedconfig import bounded, load_config

Codec = Literal["lz4", "gzip", "lzf", "none", "jpeg"]


@dataclass(frozen=True)
class ResolutionConfig:
    """Working resolution: exactly one of `level`, `magnification`, `mpp`."""

    level: int | None = bounded(None, min=0, doc="pyramid level to read as is")
    magnification: float | None = bounded(None, min_exclusive=0, doc="objective power, e.g. 20 or 40")
    mpp: float | None = bounded(None, min_exclusive=0, doc="micrometres per working pixel")
    mpp_tolerance: float = bounded(0.1, min=0, max=1, doc="relative; a level within it is read as is")
    assume_mpp: float | None = bounded(None, min_exclusive=0, doc="level-0 um/px for slides without it")

    def validate(self, path: str) -> None:
        chosen = [k for k in ("level", "magnification", "mpp") if getattr(self, k) is not None]
        if len(chosen) != 1:
            where = f"{path}." if path else ""
            raise ConfigError(
                f"config key '{where}level|magnification|mpp': set exactly one, got {chosen or 'none'}")


@dataclass(frozen=True)
class TissueConfig:
    method: Literal["otsu", "external"] = bounded("otsu", doc="Otsu on saturation, or a mask image per slide")
    downsample: float = bounded(32.0, min=1, doc="mask level: the level nearest this downsample")
    external_mask_dir: str | None = bounded(None, doc="folder of <slide stem>.png masks (method external)")
    closing_radius: int = bounded(2, min=0, doc="mask pixels")
    opening_radius: int = bounded(0, min=0, doc="mask pixels")
    min_region_px: int = bounded(16, min=0, doc="mask pixels; smaller components are dropped")
    fill_holes: bool = bounded(True, doc="fill holes inside tissue regions")

    def validate(self, path: str) -> None:
        if self.method == "external" and not self.external_mask_dir:
            raise ConfigError(f"config key '{path}.external_mask_dir': required when method is 'external'")


@dataclass(frozen=True)
class AnnotationConfig:
    tumour_groups: list[str] = bounded(["Tumor", "Tumour", "_0", "_1"], doc="groups that are tumour (any case)")
    exclude_groups: list[str] = bounded(["_2", "Exclusion"], doc="groups cut out of tumour (Camelyon `_2`)")
    downsample: float = bounded(16.0, min=1, doc="resolution the tumour mask is rasterised at")


@dataclass(frozen=True)
class LabelConfig:
    tumour_threshold: float = bounded(0.5, min_exclusive=0, max=1, doc="tumour share of a patch for label 1")
    normal_max_tumour: float = bounded(0.0, min=0, max=1, doc="tumour share at or below which a patch is 0")
    drop_ambiguous: bool = bounded(True, doc="drop patches between the two thresholds; else label by threshold")

    def validate(self, path: str) -> None:
        if self.normal_max_tumour >= self.tumour_threshold:
            raise ConfigError(f"config key '{path}.normal_max_tumour': must be below tumour_threshold")


@dataclass(frozen=True)
class RandomConfig:
    per_class: int = bounded(200, min=1, doc="patches wanted per class (tumour, normal)")
    max_attempts_factor: float = bounded(5.0, min=1, doc="attempts per class = factor x per_class")
    grid_step: int = bounded(56, min=1, doc="candidate positions every this many working pixels")


@dataclass(frozen=True)
class DenseConfig:
    stride: int | None = bounded(None, min=1, doc="working pixels; default = patch size (no overlap)")
    overlap: int = bounded(0, min=0, doc="working pixels; used when stride is not set")


@dataclass(frozen=True)
class SamplingConfig:
    mode: Literal["random", "dense"] = bounded("random", doc="random per-class sampling or dense sliding window")
    seed: int = bounded(0, min=0, doc="random sampling seed; SLURM tasks add their array index")
    random: RandomConfig = field(default_factory=RandomConfig)
    dense: DenseConfig = field(default_factory=DenseConfig)


@dataclass(frozen=True)
class WhiteFilterConfig:
    level: int = bounded(200, min=0, max=255, doc="a pixel is glass when all channels exceed this")
    max_fraction: float = bounded(0.8, min=0, max=1, doc="reject when more of the patch is glass")


@dataclass(frozen=True)
class BlackFilterConfig:
    level: int = bounded(30, min=0, max=255, doc="a pixel is black when all channels are below this")
    max_fraction: float = bounded(0.5, min=0, max=1, doc="reject when more of the patch is black")


@dataclass(frozen=True)
class FilterConfig:
    min_tissue_fraction: float = bounded(0.5, min=0, max=1, doc="tissue-mask share a patch needs")
    white: WhiteFilterConfig | None = field(default_factory=WhiteFilterConfig)
    black: BlackFilterConfig | None = field(default_factory=BlackFilterConfig)


@dataclass(frozen=True)
class OutputConfig:
    codec: Codec = bounded("none", doc="lossless none/lz4/gzip/lzf, or lossy jpeg")
    gzip_level: int = bounded(4, min=0, max=9, doc="with codec gzip")
    jpeg_quality: int = bounded(90, min=1, max=100, doc="with codec jpeg")
    thumbnail_size: int = bounded(512, min=16, doc="longest side of the stored mask thumbnails")


@dataclass(frozen=True)
class MetadataConfig:
    name_regex: str = bounded(r"patient_(?P<patient>\d+)_node_(?P<node>\d+)",
                              doc="named groups patient, node, centre from the file stem")
    patients_per_centre: int | None = bounded(20, min=1, doc="Camelyon17: centre = patient // 20")

    def validate(self, path: str) -> None:
        try:
            re.compile(self.name_regex)
        except re.error as err:
            raise ConfigError(f"config key '{path}.name_regex': invalid regex ({err})") from None


@dataclass(frozen=True)
class ReaderConfig:
    threads: int = bounded(2, min=1, max=64, doc="reader threads per slide")
    batch: int = bounded(64, min=1, doc="patches read ahead per step")


@dataclass(frozen=True)
class Layer1Config:
    patch_size: int = bounded(224, min=8, max=4096, doc="working-resolution pixels")
    resolution: ResolutionConfig = field(default_factory=lambda: ResolutionConfig(level=0))
    tissue: TissueConfig = field(default_factory=TissueConfig)
    annotation: AnnotationConfig = field(default_factory=AnnotationConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    metadata: MetadataConfig = field(default_factory=MetadataConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)

    def validate(self, path: str) -> None:
        stride = self.sampling.dense.stride
        if stride is None and self.sampling.dense.overlap >= self.patch_size:
            raise ConfigError("config key 'sampling.dense.overlap': must be below patch_size")


def load_layer1_config(path: Path | None, overrides: list[str] | None = None) -> Layer1Config:
    return load_config(Layer1Config, path, overrides)
