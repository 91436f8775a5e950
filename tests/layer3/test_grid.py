"""The patch grid and maps rendered from it: NaN means "no prediction" and is never filled in."""

from __future__ import annotations

import numpy as np
import pytest

from layer1_patches.masks import Mask
from layer1_patches.shared.errors import CamnetError
from layer1_patches.slide import WorkingResolution
from layer3_inference.config import GridConfig
from layer3_inference.grid import Raster, plan_grid, render_map, resample_mask, shard_batches


def test_render_map_averages_overlaps_and_leaves_uncovered_pixels_nan() -> None:
    coords = np.array([[0, 0], [16, 0]])
    out = render_map(coords, np.array([0.2, 0.6]), 32, Raster((4, 8), 8.0, 8.0))
    assert np.allclose(out[:, 0:2], 0.2)
    assert np.allclose(out[:, 2:4], 0.4)  # covered by both patches
    assert np.allclose(out[:, 4:6], 0.6)
    assert np.isnan(out[:, 6:]).all()


def test_render_map_keeps_values_inside_tissue_even_when_smoothing() -> None:
    inside = np.zeros((4, 8), bool)
    inside[:, :3] = True
    coords = np.array([[0, 0], [16, 0]])
    out = render_map(coords, np.array([1.0, 1.0]), 32, Raster((4, 8), 8.0, 8.0), inside, sigma=2.0)
    assert np.isnan(out[:, 3:]).all()
    # normalised convolution: smoothing a constant field gives the constant, not a fade towards zero
    assert np.allclose(out[:, :3], 1.0)


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_shards_partition_the_grid_at_batch_boundaries(size: int) -> None:
    n, batch = 103, 8
    shares = [shard_batches(n, batch, r, size) for r in range(size)]
    assert shares[0][0] == 0 and shares[-1][1] == n
    for (_, hi), (lo, _) in zip(shares, shares[1:], strict=False):
        assert hi == lo and lo % batch == 0


def test_grid_coords_are_level0_top_left_with_footprint() -> None:
    tissue = np.zeros((32, 32), bool)
    tissue[8:24, 8:24] = True
    res = WorkingResolution(level=1, level_downsample=2.0, downsample=2.0, mpp=1.0, magnification=10.0)
    grid = plan_grid((1024, 1024), res, 32, Mask(tissue, 32.0, 32.0), GridConfig(min_tissue=0.5), "x.tif")
    assert grid.footprint == 64 and grid.step == 64.0 and grid.shape == (16, 16)
    assert (grid.coords % 64 == 0).all()
    assert (grid.coords >= 256).all() and (grid.coords + 64 <= 768).all()
    assert np.array_equal(grid.coords // 64, grid.index[:, ::-1])
    full = grid.to_grid(np.ones(len(grid), np.float32))
    assert np.isnan(full[0, 0]) and np.isfinite(full).sum() == len(grid)


def test_grid_without_tissue_is_refused() -> None:
    res = WorkingResolution(0, 1.0, 1.0, 0.5, 20.0)
    with pytest.raises(CamnetError, match="x.tif: no tissue"):
        plan_grid((512, 512), res, 32, Mask(np.zeros((16, 16), bool), 32.0, 32.0), GridConfig(min_tissue=0.5), "x.tif")


def test_resample_mask_samples_pixel_centres() -> None:
    mask = Mask(np.eye(4, dtype=bool), 32.0, 32.0)
    out = resample_mask(mask, Raster((8, 8), 16.0, 16.0))
    assert out.shape == (8, 8) and out[0, 0] and out[1, 1] and not out[0, 2]
