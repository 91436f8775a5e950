"""`layer3_inference/outputs.py`: tumour polygons, slide score, tile detections and the overlay, on hand-built maps.

Map pixel (row r, col c) at downsample (ds_x, ds_y) covers level-0 x in [c * ds_x, (c + 1) * ds_x] and
y in [r * ds_y, (r + 1) * ds_y] (`grid.render_map` samples pixel centres at (c + 0.5) * ds). Region outlines
are iso-lines at 0.5 of the 0/1 raster: they run along pixel edges and cut each corner at the edges'
midpoints, so a lone pixel is a diamond through the midpoints of its four sides.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from layer1_patches.masks import Mask
from layer1_patches.slide import WorkingResolution
from layer3_inference.config import HeatmapConfig, ScoreConfig
from layer3_inference.geojson import tile_features, tumour_regions
from layer3_inference.grid import TissueGrid, map_shape
from layer3_inference.model import ModelSpec
from layer3_inference.outputs import SlideInfo, SlideOutput, overlay_rgba, slide_score, write_slide

Point = tuple[float, float]


def _rings(feature: dict[str, Any]) -> list[list[list[float]]]:
    assert feature["geometry"]["type"] == "Polygon"
    return feature["geometry"]["coordinates"]


def _vertices(ring: list[list[float]]) -> set[Point]:
    """The ring's corner points without the closing repeat, as a set (orientation and start are free)."""
    assert ring[0] == ring[-1], "ring not closed"
    return {(float(x), float(y)) for x, y in ring[:-1]}


def _inside(point: Point, ring: list[list[float]]) -> bool:
    """Even-odd ray casting: is `point` strictly inside the closed ring?"""
    x, y = point
    hit = False
    for (x0, y0), (x1, y1) in zip(ring[:-1], ring[1:], strict=True):
        if (y0 > y) != (y1 > y) and x < x0 + (y - y0) * (x1 - x0) / (y1 - y0):
            hit = not hit
    return hit


def _assert_valid_ring(ring: list[list[float]], dims: tuple[int, int]) -> None:
    assert len(ring) >= 4, ring
    assert ring[0] == ring[-1], f"ring not closed: {ring[0]} != {ring[-1]}"
    for x, y in ring:
        assert 0 <= x <= dims[0] and 0 <= y <= dims[1], f"({x}, {y}) outside the slide {dims}"


# --- tumour_regions ---------------------------------------------------------------------------------------


def test_one_square_blob_is_an_octagon_on_its_pixel_edges() -> None:
    # 2 x 2 map pixels at rows 1-2, cols 2-3; one map pixel = 16 x 8 level-0 pixels
    # -> level-0 square x 32..64, y 8..24, each corner cut at the pixel edges' midpoints (8 px in x, 4 px in y)
    prob = np.zeros((6, 8), np.float32)
    prob[1:3, 2:4] = [[0.9, 0.7], [0.8, 0.6]]
    features = tumour_regions(prob, 0.5, (16.0, 8.0), (128, 48), 0.0)
    assert len(features) == 1
    (outer,) = _rings(features[0])
    assert len(outer) == 9
    assert _vertices(outer) == {(40, 8), (56, 8), (64, 12), (64, 20), (56, 24), (40, 24), (32, 20), (32, 12)}
    props = features[0]["properties"]
    assert props["name"] == "tumour region 1"
    assert props["classification"]["name"] == "Tumor"
    assert props["measurements"] == {"max_probability": pytest.approx(0.9), "mean_probability": pytest.approx(0.75)}


def test_two_separate_blobs_are_two_regions_in_raster_order() -> None:
    # A: one pixel (1, 1) -> level-0 [10, 20] x [10, 20]; B: pixels (3, 5) and (4, 5) -> [50, 60] x [30, 50]
    prob = np.zeros((6, 8), np.float32)
    prob[1, 1] = 0.8
    prob[3:5, 5] = 0.6
    features = tumour_regions(prob, 0.5, (10.0, 10.0), (80, 60), 0.0)
    assert len(features) == 2
    assert [f["properties"]["name"] for f in features] == ["tumour region 1", "tumour region 2"]
    (a,) = _rings(features[0])
    (b,) = _rings(features[1])
    assert _vertices(a) == {(15, 10), (20, 15), (15, 20), (10, 15)}
    assert _vertices(b) == {(55, 30), (60, 35), (60, 45), (55, 50), (50, 45), (50, 35)}


def test_blob_with_a_hole_has_an_outer_ring_and_a_hole_ring() -> None:
    # 5 x 5 pixels at rows/cols 1-5 without the centre pixel (3, 3); one map pixel = 2 x 3 level-0 pixels.
    # Outer: x 2..12, y 3..18, with one vertex per pixel edge midpoint along each side (5 a side).
    # Hole: pixel (3, 3) -> x 6..8, y 9..12 -> the diamond through its side midpoints.
    prob = np.zeros((7, 7), np.float32)
    prob[1:6, 1:6] = 0.9
    prob[3, 3] = 0.1
    features = tumour_regions(prob, 0.5, (2.0, 3.0), (14, 21), 0.0)
    assert len(features) == 1
    outer, hole = _rings(features[0])
    mids_x = [3.0, 5.0, 7.0, 9.0, 11.0]  # centres of cols 1..5 in level-0 x
    mids_y = [4.5, 7.5, 10.5, 13.5, 16.5]  # centres of rows 1..5 in level-0 y
    expected_outer = ({(x, 3.0) for x in mids_x} | {(x, 18.0) for x in mids_x}
                      | {(2.0, y) for y in mids_y} | {(12.0, y) for y in mids_y})
    assert _vertices(outer) == expected_outer
    assert _vertices(hole) == {(7, 9), (8, 10.5), (7, 12), (6, 10.5)}
    assert features[0]["properties"]["measurements"]["mean_probability"] == pytest.approx(0.9)


def test_region_below_min_region_is_dropped_and_equal_is_kept() -> None:
    prob = np.zeros((6, 8), np.float32)
    prob[1:3, 1:3] = 0.9  # 4 px
    prob[4, 6] = 0.9  # 1 px
    kept = {min_px: len(tumour_regions(prob, 0.5, (1.0, 1.0), (8, 6), min_px)) for min_px in (0.0, 2.0, 4.0, 4.5)}
    assert kept == {0.0: 2, 2.0: 1, 4.0: 1, 4.5: 0}
    (only,) = tumour_regions(prob, 0.5, (1.0, 1.0), (8, 6), 2.0)
    assert only["properties"]["name"] == "tumour region 1"
    assert max(x for x, _ in _rings(only)[0]) == 3.0  # the 2 x 2 blob (x 1..3), not the pixel at x 6..7


def test_threshold_is_inclusive_and_no_prediction_is_not_tumour() -> None:
    prob = np.full((4, 4), np.nan, np.float32)
    prob[1, 1] = 0.5  # exactly at the threshold
    prob[2, 3] = 0.49
    features = tumour_regions(prob, 0.5, (4.0, 4.0), (16, 16), 0.0)
    assert len(features) == 1
    assert _vertices(_rings(features[0])[0]) == {(6, 4), (8, 6), (6, 8), (4, 6)}


def test_threshold_zero_makes_no_region_where_there_is_no_prediction() -> None:
    prob = np.full((4, 4), np.nan, np.float32)
    prob[1, 1] = 0.3
    features = tumour_regions(prob, 0.0, (4.0, 4.0), (16, 16), 0.0)
    assert len(features) == 1
    assert _vertices(_rings(features[0])[0]) == {(6, 4), (8, 6), (6, 8), (4, 6)}
    json.dumps(features, allow_nan=False)


def test_diagonally_joined_region_polygon_covers_all_its_pixels() -> None:
    prob = np.zeros((5, 5), np.float32)
    prob[1, 1] = 0.9
    prob[2, 2] = 0.8  # touches (1, 1) only at a corner: one 8-connected region
    features = tumour_regions(prob, 0.5, (1.0, 1.0), (5, 5), 0.0)
    assert len(features) == 1
    assert features[0]["properties"]["measurements"]["mean_probability"] == pytest.approx(0.85)
    outer = _rings(features[0])[0]
    assert _inside((1.5, 1.5), outer) and _inside((2.5, 2.5), outer), outer


def test_region_on_the_slide_edge_stays_inside_the_slide() -> None:
    dims = (100, 70)
    shape, ds_x, ds_y = map_shape(dims, 16)  # (4, 6) pixels of 16.67 x 17.5 level-0 px: exactly 100 x 70
    prob = np.zeros(shape, np.float32)
    prob[-1, -1] = 0.9
    (feature,) = tumour_regions(prob, 0.5, (ds_x, ds_y), dims, 0.0)
    for ring in _rings(feature):
        _assert_valid_ring(ring, dims)


# --- slide_score ------------------------------------------------------------------------------------------


def test_slide_score_max() -> None:
    assert slide_score(np.array([0.1, 0.5, 0.2, 0.9, 0.3]), ScoreConfig(method="max")) == pytest.approx(0.9)


def test_slide_score_percentiles() -> None:
    probs = np.array([0.0, 1.0, 0.2, 0.4])  # sorted 0.0, 0.2, 0.4, 1.0
    # linear interpolation between order statistics: p75 -> position 0.75 * 3 = 2.25 -> 0.4 + 0.25 * 0.6
    assert slide_score(probs, ScoreConfig(method="percentile", percentile=75.0)) == pytest.approx(0.55)
    assert slide_score(probs, ScoreConfig(method="percentile", percentile=50.0)) == pytest.approx(0.3)
    assert slide_score(probs, ScoreConfig(method="percentile", percentile=100.0)) == pytest.approx(1.0)
    assert slide_score(probs, ScoreConfig(method="percentile", percentile=0.0)) == pytest.approx(0.0)


def test_slide_score_of_no_patches_is_zero() -> None:
    assert slide_score(np.zeros(0), ScoreConfig(method="max")) == 0.0
    assert slide_score(np.zeros(0), ScoreConfig(method="percentile", percentile=99.0)) == 0.0


# --- tile_features ----------------------------------------------------------------------------------------


def _grid(coords: list[list[int]], footprint: int, shape: tuple[int, int], step: float) -> TissueGrid:
    c = np.asarray(coords, np.int64)
    index = np.stack([c[:, 1] // int(step), c[:, 0] // int(step)], axis=1)
    return TissueGrid(c, index, shape, step, footprint, np.ones(len(c), np.float32))


def test_tile_squares_and_classification_by_threshold() -> None:
    grid = _grid([[0, 0], [64, 0], [0, 64]], 64, (2, 2), 64.0)
    tiles = tile_features(grid, np.array([0.2, 0.5, 0.7123456789]), 0.5)
    assert [t["geometry"]["coordinates"] for t in tiles] == [
        [[[0, 0], [64, 0], [64, 64], [0, 64], [0, 0]]],
        [[[64, 0], [128, 0], [128, 64], [64, 64], [64, 0]]],
        [[[0, 64], [64, 64], [64, 128], [0, 128], [0, 64]]],
    ]
    assert [t["properties"]["classification"]["name"] for t in tiles] == ["Normal", "Tumor", "Tumor"]
    assert [t["properties"]["objectType"] for t in tiles] == ["detection"] * 3
    assert tiles[2]["properties"]["measurements"] == {"tumor_probability": 0.712346}


# --- overlay_rgba -----------------------------------------------------------------------------------------


def test_overlay_is_transparent_exactly_where_there_is_no_prediction() -> None:
    prob = np.array([[np.nan, 0.0], [1.0, np.nan]], np.float32)
    rgba = overlay_rgba(prob, "gray", 0.6)
    assert rgba.dtype == np.uint8 and rgba.shape == (2, 2, 4)
    assert rgba[..., 3].tolist() == [[0, 153], [153, 0]]  # round(0.6 * 255) = 153
    assert rgba[0, 1, :3].tolist() == [0, 0, 0]  # gray: 0 -> black
    assert rgba[1, 0, :3].tolist() == [255, 255, 255]  # 1 -> white


# --- the GeoJSON write_slide writes -----------------------------------------------------------------------


def _written_geojson(tmp_path: Path, probs: np.ndarray) -> tuple[dict[str, Any], tuple[int, int]]:
    """write_slide on a 200 x 130 px slide (not a multiple of the map downsample) with a 6 x 4 grid of
    32-px patches whose last column ends exactly at x = 200 and last row at y = 130."""
    dims = (200, 130)
    xs, ys = np.meshgrid([0, 32, 64, 96, 128, 168], [0, 32, 64, 98])
    coords = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.int64)
    index = np.stack(np.divmod(np.arange(len(coords)), 6), axis=1)
    grid = TissueGrid(coords, index, (4, 6), 32.0, 32, np.ones(len(coords), np.float32))
    res = WorkingResolution(level=0, level_downsample=1.0, downsample=1.0, mpp=0.5, magnification=20.0)
    info = SlideInfo("edge", str(tmp_path / "edge.svs"), dims, 0.5, res, Mask(np.ones((13, 20), bool), 10.0, 10.0),
                     np.full((65, 100, 3), 220, np.uint8), (2.0, 2.0))
    cfg = HeatmapConfig()
    cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, map_downsample=16.0, geojson_tiles=True))
    (tmp_path / "model.keras").write_bytes(b"not a real model: only hashed")
    spec = ModelSpec(tmp_path, tmp_path / "model.keras", 32, 0.5, 0, 0.5, "hand", "test")
    out = SlideOutput(info, grid, probs, cfg, spec, 0.5, "digest", {"infer_s": 1.0}, 1, 0.0)
    final = tmp_path / "out" / "edge"
    final.parent.mkdir()
    write_slide(final, out)
    return json.loads((final / "edge.geojson").read_text()), dims


def _hand_probs() -> np.ndarray:
    probs = np.full((4, 6), 0.1)
    probs[0:2, 0:2] = 0.9  # a blob at the top-left corner
    probs[3, 2] = 0.8  # a lone patch, no neighbour above 0.1
    probs[2:4, 4:6] = 0.95  # a blob at the bottom-right: ends on the slide's right edge
    return probs.ravel()


def test_written_geojson_rings_are_closed(tmp_path: Path) -> None:
    geojson, _ = _written_geojson(tmp_path, _hand_probs())
    regions = [f for f in geojson["features"] if f["properties"]["objectType"] == "annotation"]
    tiles = [f for f in geojson["features"] if f["properties"]["objectType"] == "detection"]
    assert len(regions) == 3 and len(tiles) == 24
    for feature in geojson["features"]:
        for ring in _rings(feature):
            assert len(ring) >= 4 and ring[0] == ring[-1], ring


def test_written_geojson_geometries_lie_inside_the_slide(tmp_path: Path) -> None:
    geojson, dims = _written_geojson(tmp_path, _hand_probs())
    for feature in geojson["features"]:
        for ring in _rings(feature):
            _assert_valid_ring(ring, dims)
