"""The patch grid over a slide's tissue, and probability maps rendered from it.

Grid positions are Layer 1's (`SlideField.grid`): level-0 top-left corners every `stride * downsample`
pixels, each covering `footprint` level-0 pixels. Positions with too little tissue are not predicted and
stay NaN ("no prediction") in every map: nothing outside tissue is ever given a probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from layer1_patches.config import LabelConfig
from layer1_patches.masks import Mask
from layer1_patches.shared.errors import CamnetError
from layer1_patches.slide import WorkingResolution
from layer1_patches.tiler import SlideField
from layer3_inference.config import GridConfig


@dataclass(frozen=True)
class TissueGrid:
    """Predicted positions (row-major) of a `shape` grid; `index` is each one's (row, col)."""

    coords: np.ndarray  # (n, 2) int64 level-0 (x, y) top-left
    index: np.ndarray  # (n, 2) int64 (row, col)
    shape: tuple[int, int]
    step: float  # level-0 pixels between neighbours
    footprint: int  # level-0 pixels per patch side
    tissue_fraction: np.ndarray  # (n,) float32

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def to_grid(self, probs: np.ndarray) -> np.ndarray:
        out = np.full(self.shape, np.nan, dtype=np.float32)
        out[self.index[:, 0], self.index[:, 1]] = probs
        return out


def plan_grid(dimensions: tuple[int, int], res: WorkingResolution, patch_size: int, tissue: Mask,
              cfg: GridConfig, where: str) -> TissueGrid:
    """All grid positions whose tissue share reaches `cfg.min_tissue`; `where` names the slide in errors."""
    stride, min_tissue = cfg.stride, cfg.min_tissue
    if not tissue.array.any():
        raise CamnetError(f"slide {where}: no tissue found")
    footprint = res.footprint(patch_size)
    step = (stride if stride is not None else patch_size) * res.downsample
    field = SlideField(dimensions, footprint, res.downsample, tissue, None, min_tissue, LabelConfig())
    full = field.grid(step)
    w0, h0 = dimensions
    cols = len(np.arange(0, w0 - footprint + 1, step))
    rows = len(np.arange(0, h0 - footprint + 1, step))
    fraction = field.tissue_fraction(full)
    keep = np.flatnonzero(fraction >= min_tissue)
    if len(keep) == 0:
        raise CamnetError(f"slide {where}: no patch has a tissue share of at least {min_tissue:g} "
                          "(grid.min_tissue)")
    index = np.stack([keep // cols, keep % cols], axis=1).astype(np.int64)
    return TissueGrid(full[keep], index, (rows, cols), float(step), footprint, fraction[keep])


class Raster(NamedTuple):
    """A raster over the whole slide: (rows, cols), and the level-0 pixels per raster pixel in x and y."""

    shape: tuple[int, int]
    ds_x: float
    ds_y: float


def render_map(coords: np.ndarray, probs: np.ndarray, footprint: int, raster: Raster,
               inside: np.ndarray | None = None, sigma: float = 0.0) -> np.ndarray:
    """Probability per map pixel: the mean over patches covering its centre, NaN where none does.

    `inside` (same shape, bool) further limits values to tissue. Smoothing is a normalised convolution
    over predicted pixels only, so NaN areas neither receive values nor pull neighbours towards zero.
    """
    (h, w), ds_x, ds_y = raster
    total = np.zeros((h + 1, w + 1), dtype=np.float64)
    count = np.zeros((h + 1, w + 1), dtype=np.float64)
    if len(coords):
        # Pixel c has centre (c + 0.5) * ds; it is covered by [x, x + footprint) when its centre is.
        c0 = np.clip(np.ceil(coords[:, 0] / ds_x - 0.5), 0, w).astype(np.int64)
        c1 = np.clip(np.ceil((coords[:, 0] + footprint) / ds_x - 0.5), 0, w).astype(np.int64)
        r0 = np.clip(np.ceil(coords[:, 1] / ds_y - 0.5), 0, h).astype(np.int64)
        r1 = np.clip(np.ceil((coords[:, 1] + footprint) / ds_y - 0.5), 0, h).astype(np.int64)
        p = probs.astype(np.float64)
        for arr, value in ((total, p), (count, np.ones_like(p))):
            np.add.at(arr, (r0, c0), value)
            np.add.at(arr, (r0, c1), -value)
            np.add.at(arr, (r1, c0), -value)
            np.add.at(arr, (r1, c1), value)
    total = total.cumsum(0).cumsum(1)[:h, :w]
    count = np.rint(count.cumsum(0).cumsum(1)[:h, :w])
    covered = count > 0
    if inside is not None:
        covered &= inside
    value = np.where(covered, total / np.maximum(count, 1), 0.0)
    if sigma > 0:
        weight = ndimage.gaussian_filter(covered.astype(np.float64), sigma, mode="constant")
        value = ndimage.gaussian_filter(value, sigma, mode="constant") / np.maximum(weight, 1e-12)
    out = np.where(covered, np.clip(value, 0.0, 1.0), np.nan)
    return out.astype(np.float32)


def resample_mask(mask: Mask, raster: Raster) -> np.ndarray:
    """A mask sampled (nearest) at the centres of another raster's pixels."""
    (h, w), ds_x, ds_y = raster
    rows = np.clip(((np.arange(h) + 0.5) * ds_y / mask.ds_y).astype(np.int64), 0, mask.array.shape[0] - 1)
    cols = np.clip(((np.arange(w) + 0.5) * ds_x / mask.ds_x).astype(np.int64), 0, mask.array.shape[1] - 1)
    return np.asarray(mask.array[np.ix_(rows, cols)], dtype=bool)


def map_shape(dimensions: tuple[int, int], downsample: float) -> Raster:
    """The raster over the slide at about `downsample`, with its exact level-0 px per pixel in x and y."""
    w0, h0 = dimensions
    shape = (max(1, round(h0 / downsample)), max(1, round(w0 / downsample)))
    return Raster(shape, w0 / shape[1], h0 / shape[0])


def shard_batches(n: int, batch: int, rank: int, size: int) -> tuple[int, int]:
    """Positions [lo, hi) of rank's contiguous share, cut at global batch boundaries.

    Every batch then holds the same patches at the same places whatever the number of ranks, which is
    what makes multi-rank output bit-identical to one rank.
    """
    n_batches = -(-n // batch)
    b0, b1 = n_batches * rank // size, n_batches * (rank + 1) // size
    return min(n, b0 * batch), min(n, b1 * batch)
