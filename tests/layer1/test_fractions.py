"""Exact tumour fractions: known areas by hand, against which the 16x raster is off (issue 14, item 4)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely

from layer1_patches.annotations import Polygon, tumour_mask, tumour_region
from layer1_patches.config import AnnotationConfig
from layer1_patches.fractions import TumourGeometry, subdivide


def rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def regular(cx: float, cy: float, r: float, n: int) -> np.ndarray:
    """A regular n-gon with a vertex at angle 0: area n/2 r^2 sin(2 pi / n), symmetric about x = cx."""
    t = 2 * np.pi * np.arange(n) / n
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def shares(polygons: list[Polygon], coords: list[tuple[int, int]], footprint: int,
           cfg: AnnotationConfig | None = None) -> np.ndarray:
    """What extraction labels from: the exact share of each level-0 square."""
    geometry = TumourGeometry.of(tumour_region(polygons, cfg or AnnotationConfig()))
    return geometry.fractions(np.array(coords, dtype=np.int64).reshape(-1, 2), footprint)


def test_square_covering_half_a_patch_has_fraction_one_half() -> None:
    # tumour x in [0, 50) of the patch [0, 100)^2: 50 * 100 / 100^2 = 0.5; the patch [50, 150) shares only an edge;
    # [25, 125) holds x in [25, 50): 0.25; [0, 25) x [0, 25) lies wholly inside: 1
    tumour = [Polygon("t", "Tumor", rect(0, 0, 50, 100))]
    got = shares(tumour, [(0, 0), (50, 0), (25, 0), (200, 200)], 100)
    np.testing.assert_array_equal(got, np.array([0.5, 0.0, 0.25, 0.0], dtype=np.float32))
    assert shares(tumour, [(0, 0)], 25)[0] == 1.0


def test_triangle_with_known_area_over_a_patch() -> None:
    # right triangle, legs 80 and 60: area 2400 -> 0.24 of [0, 100)^2. Right of x = 50 its height is 0.75 (90 - x),
    # so the patch [50, 150) x [0, 100) holds the integral of 0.75 (90 - x) over [50, 90] = 0.75 * 40^2 / 2 = 600.
    tumour = [Polygon("t", "_0", np.array([[10, 10], [90, 10], [10, 70]], dtype=np.float64))]
    np.testing.assert_allclose(shares(tumour, [(0, 0), (50, 0)], 100), [0.24, 0.06], atol=1e-7)


def test_annulus_with_a_patch_across_its_hole() -> None:
    # 64-gons of radius 40 and 20 about (50, 50): area 32 (40^2 - 20^2) sin(2 pi / 64); the patch [50, 150) holds
    # the right half of it (the 64-gon is symmetric about x = 50). The patch [40, 60)^2 lies inside the hole.
    ring = Polygon("t", "Tumor", regular(50, 50, 40, 64), (regular(50, 50, 20, 64),))
    area = 32 * (40**2 - 20**2) * math.sin(2 * math.pi / 64)
    np.testing.assert_allclose(shares([ring], [(0, 0), (50, 0)], 100), [area / 1e4, area / 2 / 1e4], atol=1e-7)
    assert shares([ring], [(40, 40)], 20)[0] == 0.0
    # a square patch half over the hole's edge: shell [0, 400)^2, hole [100, 300)^2, patch [50, 150) x [150, 250)
    square = Polygon("t", "Tumor", rect(0, 0, 400, 400), (rect(100, 100, 300, 300),))
    np.testing.assert_array_equal(shares([square], [(50, 150), (150, 150), (0, 0)], 100), [0.5, 0.0, 1.0])


def test_excluded_group_cuts_the_tumour_region() -> None:
    # tumour [0, 200) x [0, 100) less the `_2` band x in [50, 150): each 100 px patch keeps a 50 px wide strip
    polygons = [Polygon("t", "Tumor", rect(0, 0, 200, 100)), Polygon("x", "_2", rect(50, -50, 150, 250))]
    np.testing.assert_array_equal(shares(polygons, [(0, 0), (100, 0), (50, 0)], 100), [0.5, 0.5, 0.0])
    # as in `tumour_mask`, an excluded polygon's own hole is still excluded, and group names match in any case
    holed = [Polygon("t", "tumor", rect(0, 0, 200, 100)),
             Polygon("x", "EXCLUSION", rect(50, -50, 150, 250), (rect(60, 0, 140, 100),))]
    np.testing.assert_array_equal(shares(holed, [(0, 0), (100, 0)], 100), [0.5, 0.5])


def test_groups_that_are_neither_tumour_nor_excluded_are_ignored() -> None:
    polygons = [Polygon("t", "Tumor", rect(0, 0, 50, 100)), Polygon("o", "Other", rect(50, 0, 100, 100))]
    assert shares(polygons, [(0, 0)], 100)[0] == 0.5


def test_sliver_thinner_than_a_raster_pixel_keeps_its_area() -> None:
    # 2 x 100 px: 200 / 100^2 = 0.02. At 16x the raster pixel [0, 16) has its centre (8) outside, so it missed it.
    sliver = [Polygon("s", "Tumor", rect(10, 0, 12, 100))]
    assert shares(sliver, [(0, 0)], 100)[0] == pytest.approx(0.02, abs=1e-7)
    # 0.5 px wide: 50 / 100^2, far below one raster pixel at any downsample
    thin = [Polygon("s", "Tumor", rect(30, 0, 30.5, 100))]
    assert shares(thin, [(0, 0)], 100)[0] == pytest.approx(0.005, abs=1e-7)


def test_edges_at_044_to_049_of_a_patch_are_not_rounded_up_to_one_half() -> None:
    """Regression (issue 14): the 16x raster counted the 16 px column [16, 32) whole when its centre (24) was inside,
    so an edge at 28-31.4 px into a 64 px patch read as 32 / 64 = 0.5. Exact: (edge - x) / 64."""
    cuts = np.array([28.16, 29.44, 30.72, 31.36])  # 0.44, 0.46, 0.48, 0.49 of 64 px
    polygons = [Polygon(f"t{i}", "Tumor", rect(128 * i, 0, 128 * i + c, 64)) for i, c in enumerate(cuts)]
    coords = [(128 * i, 0) for i in range(len(cuts))]
    np.testing.assert_allclose(shares(polygons, coords, 64), [0.44, 0.46, 0.48, 0.49], atol=1e-6)


def test_exact_fractions_agree_with_a_level0_raster_of_tumour_mask() -> None:
    """Same tumour as `tumour_mask` (holes, exclusions, even-odd rings): at downsample 1 the raster differs from
    exact areas only along edges, by at most half a pixel of perimeter per patch."""
    polygons = [Polygon("t", "Tumor", regular(120, 100, 90, 37), (regular(110, 90, 30, 11),)),
                Polygon("u", "_1", np.array([[150, 20], [260, 60], [180, 190], [230, 40]], dtype=np.float64)),
                Polygon("x", "_2", regular(170, 150, 25, 9), (rect(165, 145, 175, 155),))]
    cfg = AnnotationConfig(downsample=1)
    coords = np.array([(x, y) for x in range(0, 240, 23) for y in range(0, 200, 19)])
    raster = tumour_mask(polygons, cfg, (300, 260)).fractions(coords, 40)
    exact = shares(polygons, coords.tolist(), 40, cfg)
    assert np.abs(exact - raster).max() < 4 * 40 * 0.5 / 40**2 + 1e-6
    assert (exact > 0).sum() > 20 and (exact == 1).sum() > 5


def test_pieces_of_a_many_vertex_region_cover_it_once() -> None:
    region = shapely.Polygon(regular(5000, 5000, 3000, 3000), [regular(5200, 5100, 800, 1000)])
    pieces = subdivide(region, 64)
    assert max(shapely.get_num_coordinates(p) for p in pieces) <= 64 and len(pieces) > 50
    assert sum(p.area for p in pieces) == pytest.approx(region.area, rel=1e-12)
    assert shapely.union_all(pieces).symmetric_difference(region).area < 1e-6


def test_fractions_over_a_many_vertex_region_equal_direct_intersections() -> None:
    """The piecewise sum (pieces near each square) against one intersection of each square with the whole region."""
    region = shapely.Polygon(regular(5000, 5000, 3000, 3000), [regular(5200, 5100, 800, 1000)])
    polygons = [Polygon("t", "Tumor", regular(5000, 5000, 3000, 3000), (regular(5200, 5100, 800, 1000),))]
    rng = np.random.default_rng(0)
    coords = rng.integers(1500, 8300, size=(300, 2))
    direct = [region.intersection(shapely.box(x, y, x + 224, y + 224)).area / 224**2 for x, y in coords]
    got = shares(polygons, coords.tolist(), 224)
    np.testing.assert_allclose(got, direct, atol=1e-6)
    assert ((got > 0) & (got < 1)).sum() > 20  # the check reached squares across both boundaries


def test_no_tumour_and_no_patches() -> None:
    assert shares([], [(0, 0)], 100).tolist() == [0.0]
    assert shares([Polygon("t", "Tumor", rect(0, 0, 50, 100))], [], 100).shape == (0,)
