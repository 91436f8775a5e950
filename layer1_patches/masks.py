"""Tissue masks and per-patch area fractions.

A `Mask` is a boolean image covering the whole slide at a known downsample. Patch fractions
come from its integral image, interpolated bilinearly: for a piecewise-constant mask that is
the exact area share of any level-0 rectangle, so a label never hinges on one pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image
from scipy import ndimage

from layer1_patches.config import TissueConfig
from layer1_patches.shared.cohort import MASK_SUFFIXES, find_mask
from layer1_patches.shared.errors import CamnetError
from layer1_patches.slide import Slide


@dataclass(frozen=True)
class Mask:
    """Boolean (h, w) mask; one mask pixel spans `ds_x` x `ds_y` level-0 pixels."""

    array: np.ndarray
    ds_x: float
    ds_y: float

    def fractions(self, coords: np.ndarray, footprint: int) -> np.ndarray:
        """Share of each level-0 square (x, y, footprint) that lies inside the mask."""
        return area_fractions(self.integral, coords, footprint, self.ds_x, self.ds_y)

    @cached_property
    def integral(self) -> np.ndarray:
        integral = np.zeros((self.array.shape[0] + 1, self.array.shape[1] + 1), dtype=np.float64)
        integral[1:, 1:] = self.array.astype(np.float64).cumsum(0).cumsum(1)
        return integral

    def thumbnail(self, size: int) -> np.ndarray:
        """uint8 (255 inside) with the longest side at most `size`."""
        image = Image.fromarray(self.array.astype(np.uint8) * 255)
        image.thumbnail((size, size), Image.Resampling.NEAREST)
        return np.asarray(image)


def area_fractions(integral: np.ndarray, coords: np.ndarray, footprint: int, ds_x: float,
                   ds_y: float) -> np.ndarray:
    if len(coords) == 0:
        return np.zeros(0, dtype=np.float32)
    x0 = coords[:, 0] / ds_x
    y0 = coords[:, 1] / ds_y
    x1 = (coords[:, 0] + footprint) / ds_x
    y1 = (coords[:, 1] + footprint) / ds_y
    total = (_sample(integral, x1, y1) - _sample(integral, x0, y1) - _sample(integral, x1, y0)
             + _sample(integral, x0, y0))
    area = (x1 - x0) * (y1 - y0)
    return np.clip(total / area, 0.0, 1.0).astype(np.float32)


def _sample(integral: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear sample of the integral image at continuous mask coordinates (u = column)."""
    h, w = integral.shape[0] - 1, integral.shape[1] - 1
    u = np.clip(u, 0.0, w)
    v = np.clip(v, 0.0, h)
    i = np.minimum(np.floor(u).astype(np.int64), w - 1)
    j = np.minimum(np.floor(v).astype(np.int64), h - 1)
    fu, fv = u - i, v - j
    return ((1 - fu) * (1 - fv) * integral[j, i] + fu * (1 - fv) * integral[j, i + 1]
            + (1 - fu) * fv * integral[j + 1, i] + fu * fv * integral[j + 1, i + 1])


class TissueMasker(Protocol):
    """A strategy that finds tissue on a slide."""

    def __call__(self, slide: Slide) -> Mask: ...


@dataclass(frozen=True)
class OtsuMasker:
    """Otsu threshold on saturation of a low-resolution image, then morphological clean-up.

    Saturation separates stained tissue from white glass and grey shadows better than
    brightness, and does not depend on the stain's hue.
    """

    cfg: TissueConfig

    def __call__(self, slide: Slide) -> Mask:
        rgb, ds_x, ds_y = slide.read_downsampled(self.cfg.downsample)
        return Mask(otsu_tissue(rgb, self.cfg), ds_x, ds_y)


def otsu_tissue(rgb: np.ndarray, cfg: TissueConfig) -> np.ndarray:
    saturation = median3x3(hsv_saturation(rgb))
    if float(saturation.max() - saturation.min()) < 1e-3:
        return np.zeros(saturation.shape, dtype=bool)  # uniform image: nothing to separate
    threshold = otsu_threshold(saturation)
    # A slide that is nearly all glass has a meaningless Otsu split; demand real stain.
    mask = saturation > max(threshold, 0.05)
    return clean_mask(mask, cfg)


def hsv_saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max in [0, 1]: what `rgb2hsv(rgb)[..., 1]` gives, without the hue work."""
    high = np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]).astype(np.float32)
    low = np.minimum(np.minimum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]).astype(np.float32)
    return np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)


MEDIAN_STRIP_ROWS = 256


def median3x3(image: np.ndarray) -> np.ndarray:
    """`ndimage.median_filter(image, size=3)` (mode reflect, which for a 3 x 3 window repeats the edge pixel),
    exactly and 5-10x faster (8 ms against 42-83 ms on a 937 px image, issue 17). Each column's vertical triple
    is sorted once; the median of a window's 9 values is then the median of (the largest of its 3 column minima,
    the median of its 3 column middles, the smallest of its 3 column maxima): Paeth's decomposition.
    tests/layer1/test_masks.py compares with scipy. In strips of MEDIAN_STRIP_ROWS rows: the ten temporaries of a
    whole 1,875 px image added 90 MB to a 60,000 px slide's peak memory."""
    padded = np.pad(image, 1, mode="edge")
    out = np.empty_like(image)
    for r0 in range(0, image.shape[0], MEDIAN_STRIP_ROWS):
        r1 = min(r0 + MEDIAN_STRIP_ROWS, image.shape[0])
        p = padded[r0:r1 + 2]
        a, b, c = p[:-2], p[1:-1], p[2:]  # each padded column's vertical triple, sorted into lo <= mid <= hi
        lo, mid, hi = np.minimum(np.minimum(a, b), c), median3(a, b, c), np.maximum(np.maximum(a, b), c)
        l0, l1, l2 = lo[:, :-2], lo[:, 1:-1], lo[:, 2:]  # left, centre and right column of each window
        m0, m1, m2 = mid[:, :-2], mid[:, 1:-1], mid[:, 2:]
        h0, h1, h2 = hi[:, :-2], hi[:, 1:-1], hi[:, 2:]
        out[r0:r1] = median3(np.maximum(np.maximum(l0, l1), l2), median3(m0, m1, m2),
                             np.minimum(np.minimum(h0, h1), h2))
    return out


def median3(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))


# Otsu, disk and small-region removal as scikit-image 0.26 defines them (tests/layer1/test_masks.py compares):
# written out here because importing skimage.morphology cost every array task a fifth of a second.
def otsu_threshold(values: np.ndarray, nbins: int = 256) -> float:
    """The histogram bin centre that maximises the between-class variance (`skimage.filters.threshold_otsu`)."""
    counts, edges = np.histogram(values, bins=nbins, range=(float(values.min()), float(values.max())))
    counts = counts.astype(np.float32)  # as scikit-image does: float64 counts can pick a neighbouring bin
    centres = (edges[:-1] + edges[1:]) / 2
    weight1 = np.cumsum(counts)
    weight2 = np.cumsum(counts[::-1])[::-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean1 = np.cumsum(counts * centres) / weight1
        mean2 = (np.cumsum((counts * centres)[::-1]) / weight2[::-1])[::-1]
    variance = weight1[:-1] * weight2[1:] * (mean1[:-1] - mean2[1:]) ** 2
    return float(centres[int(np.argmax(variance))])


def disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return np.asarray(x * x + y * y <= radius * radius)


def remove_small_regions(mask: np.ndarray, max_size: int) -> np.ndarray:
    """Drops 4-connected regions of at most `max_size` pixels."""
    labels, _ = ndimage.label(mask)
    small = np.bincount(labels.ravel()) <= max_size
    small[0] = False
    return np.asarray(mask & ~small[labels])


def clean_mask(mask: np.ndarray, cfg: TissueConfig) -> np.ndarray:
    if cfg.closing_radius:
        # Pad first: closing erodes from an all-background border, which would strip tissue that
        # touches the slide's edge.
        r = cfg.closing_radius
        padded = np.pad(mask, r, mode="edge")
        mask = ndimage.binary_closing(padded, disk(r))[r:-r, r:-r]
    if cfg.opening_radius:
        mask = ndimage.binary_opening(mask, disk(cfg.opening_radius))
    if cfg.min_region_px:
        mask = remove_small_regions(mask, cfg.min_region_px)
    if cfg.fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    return np.asarray(mask, dtype=bool)


@dataclass(frozen=True)
class ExternalMasker:
    """A mask image made elsewhere (e.g. HistoQC), `<dir>/<slide stem>.png`, covering the whole slide."""

    directory: Path

    def __call__(self, slide: Slide) -> Mask:
        path = find_mask(slide.name, self.directory)
        if path is None:
            raise CamnetError(f"tissue mask for slide {slide.name}: none of "
                              f"{self.directory}/{slide.name}{{{','.join(MASK_SUFFIXES)}}} exists")
        try:
            array = np.asarray(Image.open(path).convert("L")) > 0
        except OSError as err:
            raise CamnetError(f"tissue mask {path}: cannot read ({err})") from None
        w0, h0 = slide.dimensions
        return Mask(array, w0 / array.shape[1], h0 / array.shape[0])


def masker_from_config(cfg: TissueConfig) -> TissueMasker:
    if cfg.method == "external":
        assert cfg.external_mask_dir is not None  # validated by TissueConfig
        return ExternalMasker(Path(cfg.external_mask_dir))
    return OtsuMasker(cfg)
