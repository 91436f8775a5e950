"""Layer 1's typed config: the schema `configs/layer1/*.yaml` is validated against."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from layer1_patches.shared.errors import ConfigError
from layer1_patches.shared.typedconfig import bounded, load_config

Codec = Literal["lz4", "gzip", "lzf", "none", "jpeg"]
Backend = Literal["auto", "openslide"]  # how patches are read: layer1_patches/reading.py


@dataclass(frozen=True)
class ResolutionConfig:
    """Working resolution: exactly one of `level`, `magnification`, `mpp`."""

    level: int | None = bounded(None, min=0, doc="pyramid level read as is (0: full resolution); null: use "
                                "magnification or mpp")
    magnification: float | None = bounded(None, min_exclusive=0, doc="objective power, e.g. 20 or 40 (10 / level-0 "
                                          "mpp when the slide records none)")
    mpp: float | None = bounded(None, min_exclusive=0, doc="micrometres per working pixel, e.g. 0.5")
    mpp_tolerance: float = bounded(0.1, min=0, max=1, doc="relative: a level this close to the asked mpp or "
                                   "magnification is read as is, else a finer level is resized")
    assume_mpp: float | None = bounded(None, min_exclusive=0, doc="level-0 mpp (micrometres per pixel) for slides "
                                       "whose metadata lacks it; null: such slides are an error")
    mpp_table: str | None = bounded(None, doc="CSV with header `slide,mpp`: level-0 mpp per slide (file name or "
                                    "stem), for scanners that record none; a listed slide's row wins over its "
                                    "metadata", path=True)

    def validate(self, path: str) -> None:
        chosen = [k for k in ("level", "magnification", "mpp") if getattr(self, k) is not None]
        if len(chosen) != 1:
            where = f"{path}." if path else ""
            raise ConfigError(
                f"config key '{where}level|magnification|mpp': set exactly one, got {chosen or 'none'}")


@dataclass(frozen=True)
class TissueConfig:
    method: Literal["otsu", "external"] = bounded("otsu", doc="otsu: Otsu threshold on saturation; external: a "
                                                  "mask image per slide from external_mask_dir")
    downsample: float = bounded(32.0, min=1, doc="downsample (relative to level 0) the otsu mask is computed at")
    external_mask_dir: str | None = bounded(None, doc="method external: folder of `<slide stem>.png` (or .tif, "
                                            ".tiff, .jpg) masks of the whole slide, non-zero = tissue", path=True)
    closing_radius: int = bounded(2, min=0, doc="otsu: radius in mask pixels of the closing that bridges gaps; 0: none")
    opening_radius: int = bounded(0, min=0, doc="otsu: radius in mask pixels of the opening that removes specks; "
                                  "0: none")
    min_region_px: int = bounded(16, min=0, doc="otsu: regions of at most this many mask pixels are dropped; 0: none")
    fill_holes: bool = bounded(True, doc="otsu: fill holes inside tissue regions")

    def validate(self, path: str) -> None:
        if self.method == "external" and not self.external_mask_dir:
            raise ConfigError(f"config key '{path}.external_mask_dir': required when method is 'external'")


@dataclass(frozen=True)
class AnnotationConfig:
    tumour_groups: list[str] = bounded(["Tumor", "Tumour", "_0", "_1"],
                                       doc="annotation groups that are tumour (any case); other groups are ignored")
    exclude_groups: list[str] = bounded(["_2", "Exclusion"],
                                        doc="annotation groups cut out of tumour (Camelyon `_2`), any case")
    downsample: float = bounded(16.0, min=1, doc="downsample (relative to level 0) the tumour mask is rasterised "
                                "at: Layer 3's pixel truth and the finest the stored tumour thumbnail is drawn at; "
                                "patch labels use exact polygon areas")


@dataclass(frozen=True)
class LabelConfig:
    tumour_threshold: float = bounded(0.5, min_exclusive=0, max=1,
                                      doc="annotated tumour share of a patch at or above which it is label 1")
    normal_max_tumour: float = bounded(0.0, min=0, max=1,
                                       doc="annotated tumour share at or below which a patch is label 0")
    drop_ambiguous: bool = bounded(True, doc="drop patches between the two thresholds; false: keep them as label 0")

    def validate(self, path: str) -> None:
        if self.normal_max_tumour >= self.tumour_threshold:
            raise ConfigError(f"config key '{path}.normal_max_tumour': must be below tumour_threshold")


@dataclass(frozen=True)
class RandomConfig:
    per_class: int = bounded(200, min=1, doc="patches wanted per class (tumour, normal) and slide")
    max_attempts_factor: float = bounded(5.0, min=1, doc="candidates tried per class = factor x per_class; a slide "
                                         "short of a class keeps what it found")
    grid_step: int = bounded(56, min=1, doc="working pixels between candidate positions")


@dataclass(frozen=True)
class DenseConfig:
    stride: int | None = bounded(None, min=1, doc="working pixels between patches; null: patch_size - overlap")
    overlap: int = bounded(0, min=0, doc="working pixels neighbouring patches share, when stride is null")


@dataclass(frozen=True)
class SamplingConfig:
    mode: Literal["random", "dense"] = bounded("random", doc="random per-class sampling or dense sliding window")
    seed: int = bounded(0, min=0, doc="random sampling seed; SLURM tasks add their array index")
    random: RandomConfig = bounded(RandomConfig(), doc="mode random: seeded per-class sampling on a grid")
    dense: DenseConfig = bounded(DenseConfig(), doc="mode dense: every grid position over tissue")


@dataclass(frozen=True)
class WhiteFilterConfig:
    level: int = bounded(200, min=0, max=255, doc="0-255: a pixel is glass when all three channels exceed this")
    max_fraction: float = bounded(0.8, min=0, max=1, doc="a patch with a larger share of glass pixels is rejected")


@dataclass(frozen=True)
class BlackFilterConfig:
    level: int = bounded(30, min=0, max=255, doc="0-255: a pixel is black when all three channels are below this")
    max_fraction: float = bounded(0.5, min=0, max=1, doc="a patch with a larger share of black pixels is rejected")


@dataclass(frozen=True)
class FilterConfig:
    min_tissue_fraction: float = bounded(0.5, min=0, max=1, doc="tissue-mask share a patch needs to be tried")
    white: WhiteFilterConfig | None = bounded(WhiteFilterConfig(), doc="rejects patches of mostly glass; null: off")
    black: BlackFilterConfig | None = bounded(BlackFilterConfig(), doc="rejects patches of mostly black (ink, "
                                              "scanner borders); null: off")


@dataclass(frozen=True)
class OutputConfig:
    codec: Codec = bounded("none", doc="patch compression in the store: none, or lossless lz4, gzip, lzf (5-9% "
                                       "smaller on H&E), or lossy jpeg")
    gzip_level: int = bounded(4, min=0, max=9, doc="compression level 0-9, with codec gzip")
    jpeg_quality: int = bounded(90, min=1, max=100, doc="JPEG quality 1-100, with codec jpeg")
    thumbnail_size: int = bounded(512, min=16, doc="pixels on the longest side of the tissue and tumour mask "
                                  "thumbnails stored")


@dataclass(frozen=True)
class MetadataConfig:
    name_regex: str = bounded(r"patient_(?P<patient>\d+)_node_(?P<node>\d+)",
                              doc="searched in the slide file stem: named groups patient, node, centre")
    patients_per_centre: int | None = bounded(20, min=1, doc="without a centre group: centre = patient // this "
                                              "(Camelyon17: 20); null: no centre")

    def validate(self, path: str) -> None:
        try:
            re.compile(self.name_regex)
        except re.error as err:
            raise ConfigError(f"config key '{path}.name_regex': invalid regex ({err})") from None


@dataclass(frozen=True)
class ReaderConfig:
    threads: int = bounded(2, min=1, max=64, doc="threads reading and filtering the patches of one slide")
    batch_size: int = bounded(64, min=1, doc="patches written to the store at a time; up to 4x this are read ahead")
    backend: Backend = bounded("auto", doc="auto: JPEG-tiled TIFF and SVS levels are cut from tiles decoded once "
                               "(same pixels, faster), other slides read through OpenSlide; openslide: always "
                               "OpenSlide")


@dataclass(frozen=True)
class Layer1Config:
    patch_size: int = bounded(224, min=8, max=4096, doc="patch side in working-resolution pixels")
    resolution: ResolutionConfig = bounded(ResolutionConfig(level=0), doc="working resolution: exactly one of "
                                           "level, magnification, mpp (default: level 0)")
    tissue: TissueConfig = bounded(TissueConfig(), doc="tissue mask: where patches may come from")
    annotation: AnnotationConfig = bounded(AnnotationConfig(), doc="tumour annotations (ASAP XML, GeoJSON): "
                                           "exact polygon areas label patches")
    labels: LabelConfig = bounded(LabelConfig(), doc="patch labels from the annotated tumour share")
    sampling: SamplingConfig = bounded(SamplingConfig(), doc="which patch positions are tried")
    filters: FilterConfig = bounded(FilterConfig(), doc="rejection of patches with little tissue, glass or black")
    output: OutputConfig = bounded(OutputConfig(), doc="the HDF5 patch store")
    metadata: MetadataConfig = bounded(MetadataConfig(), doc="patient, node and centre from slide file names")
    reader: ReaderConfig = bounded(ReaderConfig(), doc="reading patches from the slide")

    def validate(self, _path: str) -> None:
        stride = self.sampling.dense.stride
        if stride is None and self.sampling.dense.overlap >= self.patch_size:
            raise ConfigError("config key 'sampling.dense.overlap': must be below patch_size")


def load_layer1_config(path: Path | None, overrides: list[str] | None = None) -> Layer1Config:
    return load_config(Layer1Config, path, overrides)
