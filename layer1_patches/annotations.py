"""Pathologists' annotations to a tumour mask and tumour geometry.

Formats (parsers in `annotation_formats` and `annotation_geojson`): ASAP XML (Camelyon16/17), Aperio ImageScope
XML (both `.xml`, told apart by the root element) and GeoJSON (QuPath's and others', `.geojson` / `.json`).
A polygon's group is matched against `annotation.tumour_groups` / `exclude_groups` case-insensitively, as a whole
or by any one of its QuPath derived-class parts ("Tumor: Positive" is in group "Tumor").
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import shapely
from skimage.draw import polygon as fill_polygon

from layer1_patches.annotation_formats import Polygon, parse_xml, polygonal, shape_of
from layer1_patches.annotation_geojson import CLASS_SEPARATOR, parse_geojson
from layer1_patches.config import AnnotationConfig
from layer1_patches.masks import Mask
from layer1_patches.shared.errors import CamnetError

__all__ = ["Polygon", "check_inside", "load_annotations", "tumour_mask", "tumour_region"]
log = logging.getLogger(__name__)
EDGE_TOLERANCE = 1.0  # level-0 px: annotation tools snap vertices onto the last pixel edge


def load_annotations(path: Path) -> list[Polygon]:
    path = Path(path)
    if not path.is_file():
        raise CamnetError(f"annotation {path}: no such file")
    if path.suffix.lower() == ".xml":
        return parse_xml(path)
    if path.suffix.lower() in (".geojson", ".json"):
        return parse_geojson(path)
    raise CamnetError(f"annotation {path}: unknown format (expected .xml, .geojson or .json)")


def check_inside(polygons: list[Polygon], path: Path, dimensions: tuple[int, int]) -> None:
    """Coordinates off the slide mean the annotation belongs to another slide or another level."""
    w0, h0 = dimensions
    for poly in polygons:
        for ring in (poly.points, *poly.holes):
            x, y = ring[:, 0], ring[:, 1]
            bad = (x < -EDGE_TOLERANCE) | (y < -EDGE_TOLERANCE) | (x > w0 + EDGE_TOLERANCE) | (y > h0 + EDGE_TOLERANCE)
            if bad.any():
                i = int(np.argmax(bad))
                raise CamnetError(
                    f"annotation {path}: '{poly.name}' has coordinate ({x[i]:g}, {y[i]:g}) outside the slide "
                    f"({w0} x {h0} level-0 pixels)")


def _in(group: str, groups: list[str]) -> bool:
    wanted = {g.casefold() for g in groups}
    return group.casefold() in wanted or any(part.casefold() in wanted for part in group.split(CLASS_SEPARATOR))


def tumour_mask(polygons: list[Polygon], cfg: AnnotationConfig, dimensions: tuple[int, int]) -> Mask:
    """Tumour = union of tumour-group polygons minus exclusion-group polygons and holes."""
    w0, h0 = dimensions
    ds = cfg.downsample
    shape = (max(1, round(h0 / ds)), max(1, round(w0 / ds)))
    ds_x, ds_y = w0 / shape[1], h0 / shape[0]
    tumour = np.zeros(shape, dtype=bool)
    exclude = np.zeros(shape, dtype=bool)
    ignored = sorted({p.group for p in polygons
                      if not _in(p.group, cfg.tumour_groups) and not _in(p.group, cfg.exclude_groups)})
    if ignored:
        log.warning("annotation groups %s are neither tumour %s nor excluded %s; ignored",
                    ignored, cfg.tumour_groups, cfg.exclude_groups)
    for poly in polygons:
        if _in(poly.group, cfg.tumour_groups):
            region = _raster(poly.points, shape, ds_x, ds_y)
            for hole in poly.holes:
                region &= ~_raster(hole, shape, ds_x, ds_y)
            tumour |= region
        elif _in(poly.group, cfg.exclude_groups):
            exclude |= _raster(poly.points, shape, ds_x, ds_y)
    return Mask(tumour & ~exclude, ds_x, ds_y)


def tumour_region(polygons: list[Polygon], cfg: AnnotationConfig) -> shapely.Geometry:
    """The tumour of `tumour_mask` as geometry in level-0 pixels, for exact patch fractions (`fractions.py`).

    Same definition: each tumour-group polygon less its own holes, united, minus the exclusion-group polygons'
    outlines (`tumour_mask` ignores an excluded polygon's holes, so this does too). Rings are filled even-odd,
    as the rasteriser fills them: `make_valid` leaves a valid ring as it is and splits a self-crossing one into
    the lobes the raster covers (`load_annotations` has already repaired invalid ones).
    """
    tumour = [shapely.difference(_filled(p.points), shapely.union_all([_filled(h) for h in p.holes]))
              for p in polygons if _in(p.group, cfg.tumour_groups)]
    excluded = [_filled(p.points) for p in polygons if _in(p.group, cfg.exclude_groups)]
    return shapely.difference(shapely.union_all(tumour), shapely.union_all(excluded))


def _filled(points: np.ndarray) -> shapely.Geometry:
    return polygonal(shapely.make_valid(shape_of(points)))[0]  # a degenerate ring's line parts have no area


def _raster(points: np.ndarray, shape: tuple[int, int], ds_x: float, ds_y: float) -> np.ndarray:
    # Pixel (r, c) covers level-0 [c*ds, (c+1)*ds); it is inside when its centre is.
    out = np.zeros(shape, dtype=bool)
    rr, cc = fill_polygon(points[:, 1] / ds_y - 0.5, points[:, 0] / ds_x - 0.5, shape)
    out[rr, cc] = True
    return out
