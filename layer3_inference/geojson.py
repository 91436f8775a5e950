"""The QuPath GeoJSON of one slide: tumour regions as annotations, patches as detections.

QuPath (0.4-0.7, `qupath.lib.io.GsonTools.PathClassTypeAdapter.read`) accepts a classification object only
when it has `name` (or `names`) and `color`, and rejects the whole file otherwise; so every classification here
carries both. Each feature has an `id` QuPath keeps as the object's UUID: derived from the slide and the
feature's position, so a rerun writes the same bytes. Coordinates are level-0 pixels.
"""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
from scipy import ndimage
from skimage import measure

from layer3_inference.grid import TissueGrid

TUMOUR = "Tumor"  # QuPath's built-in class name, so its default colour and counts apply
NORMAL = "Normal"
# [r, g, b] ints, the form QuPath itself writes; Tumor is QuPath's own default colour for that class
COLOURS: dict[str, tuple[int, int, int]] = {TUMOUR: (200, 0, 0), NORMAL: (80, 160, 80)}
# fixed namespace: ids must not change between runs, versions or machines
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "camnet:layer3_inference/geojson")


def classification(name: str) -> dict[str, Any]:
    return {"name": name, "color": list(COLOURS[name])}


def feature_id(slide: str, position: int) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{slide}/{position}"))


def feature_collection(slide: str, features: list[dict[str, Any]]) -> dict[str, Any]:
    """The file's content: every feature gets its stable id, placed after `type` as QuPath writes it."""
    return {"type": "FeatureCollection",
            "features": [{"type": "Feature", "id": feature_id(slide, i), **{k: v for k, v in f.items() if k != "type"}}
                         for i, f in enumerate(features)]}


def _ring(contour: np.ndarray, ds: tuple[float, float], dims: tuple[int, int],
          offset: tuple[int, int]) -> list[list[float]]:
    # contour is (row, col) in a 1-px padded raster of the region's box, whose top-left map pixel is `offset`
    # (row, col); level 0.5 lies on pixel edges. Clipped to the slide only once in level-0 coordinates.
    x = np.clip((contour[:, 1] - 0.5 + offset[1]) * ds[0], 0, dims[0])
    y = np.clip((contour[:, 0] - 0.5 + offset[0]) * ds[1], 0, dims[1])
    ring = np.round(np.stack([x, y], axis=1), 1).tolist()
    if ring[0] != ring[-1]:
        ring.append(ring[0])
    return ring


def _outline(region: np.ndarray, ds: tuple[float, float], dims: tuple[int, int],
             offset: tuple[int, int]) -> list[list[float]] | None:
    # 'high': pixels touching at a corner are one outline, as they are one region (8-connected labels below)
    contours = measure.find_contours(np.pad(region, 1).astype(np.float32), 0.5, fully_connected="high")
    if not contours:
        return None
    ring = _ring(max(contours, key=len), ds, dims, offset)
    return ring if len(ring) >= 4 else None


def tumour_regions(prob_map: np.ndarray, threshold: float, ds: tuple[float, float], dims: tuple[int, int],
                   min_px: float) -> list[dict[str, Any]]:
    """Thresholded map -> one GeoJSON polygon (with holes) per connected region."""
    above = np.isfinite(prob_map) & (np.nan_to_num(prob_map, nan=0.0) >= threshold)  # no prediction: never tumour
    labels, n = ndimage.label(above, structure=np.ones((3, 3)))
    features: list[dict[str, Any]] = []
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        region = labels[box] == k
        if region.sum() < max(min_px, 1):
            continue
        offset = (box[0].start, box[1].start)
        outer = _outline(region, ds, dims, offset)
        if outer is None:
            continue
        rings = [outer]
        holes, n_holes = ndimage.label(ndimage.binary_fill_holes(region) & ~region)
        for h in range(1, n_holes + 1):
            ring = _outline(holes == h, ds, dims, offset)
            if ring is not None:
                rings.append(ring)
        values = prob_map[box][region]
        features.append({
            "type": "Feature", "geometry": {"type": "Polygon", "coordinates": rings},
            "properties": {"objectType": "annotation", "name": f"tumour region {len(features) + 1}",
                           "classification": classification(TUMOUR),
                           "measurements": {"max_probability": round(float(values.max()), 6),
                                            "mean_probability": round(float(values.mean()), 6)}}})
    return features


def tile_features(grid: TissueGrid, probs: np.ndarray, threshold: float) -> list[dict[str, Any]]:
    """One square detection per patch, its probability as a measurement QuPath can colour and filter by."""
    f = grid.footprint
    out = []
    for (x, y), p in zip(grid.coords.tolist(), probs.tolist(), strict=True):
        out.append({
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[x, y], [x + f, y], [x + f, y + f], [x, y + f], [x, y]]]},
            "properties": {"objectType": "detection",
                           "classification": classification(TUMOUR if p >= threshold else NORMAL),
                           "measurements": {"tumor_probability": round(float(p), 6)}}})
    return out
