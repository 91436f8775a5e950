"""Pathologists' annotations: ASAP XML (Camelyon16/17) and QuPath GeoJSON, to a tumour mask.

XML is parsed with defusedxml, so entity expansion (billion laughs) and external entities are
refused rather than evaluated. Geometry is checked on load: an annotation without coordinates is an
error (it would silently make the slide tumour-free), and an invalid polygon (self-intersecting outline,
hole outside its shell) is repaired with shapely's `make_valid` and reported, rather than left to the
rasteriser's undefined behaviour. Valid polygons are passed on untouched, so their masks never change.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as SafeET
import numpy as np
import shapely
from defusedxml import DefusedXmlException
from shapely.validation import explain_validity
from skimage.draw import polygon as fill_polygon

from layer1_patches.config import AnnotationConfig
from layer1_patches.masks import Mask
from layer1_patches.shared.errors import CamnetError

log = logging.getLogger(__name__)
EDGE_TOLERANCE = 1.0  # level-0 px: annotation tools snap vertices onto the last pixel edge


@dataclass(frozen=True)
class Polygon:
    """One annotated region in level-0 pixels; `holes` are cut out of it (GeoJSON interior rings)."""

    name: str
    group: str
    points: np.ndarray
    holes: tuple[np.ndarray, ...] = field(default_factory=tuple)


def load_annotations(path: Path) -> list[Polygon]:
    path = Path(path)
    if not path.is_file():
        raise CamnetError(f"annotation {path}: no such file")
    if path.suffix.lower() == ".xml":
        return parse_asap(path)
    if path.suffix.lower() in (".geojson", ".json"):
        return parse_geojson(path)
    raise CamnetError(f"annotation {path}: unknown format (expected .xml, .geojson or .json)")


def parse_asap(path: Path) -> list[Polygon]:
    try:
        root = SafeET.parse(str(path)).getroot()
    except DefusedXmlException as err:
        raise CamnetError(f"annotation {path}: refused unsafe XML ({type(err).__name__})") from None
    except SafeET.ParseError as err:
        raise CamnetError(f"annotation {path}: malformed XML ({err})") from None
    if root.tag != "ASAP_Annotations":
        raise CamnetError(f"annotation {path}: root element is <{root.tag}>, expected <ASAP_Annotations>")
    polygons = []
    for i, ann in enumerate(root.iter("Annotation")):
        name = ann.get("Name") or f"Annotation {i}"
        group = ann.get("PartOfGroup") or "None"
        label = f"Annotation {i} ('{name}')"
        try:
            points = sorted(
                (int(c.get("Order", "0")), float(c.get("X", "nan")), float(c.get("Y", "nan")))
                for c in ann.iter("Coordinate"))
        except ValueError as err:
            raise CamnetError(f"annotation {path}: {label} has a non-numeric coordinate ({err})") from None
        if not points:
            raise CamnetError(f"annotation {path}: {label} has empty coordinates")
        array = np.array([(x, y) for _, x, y in points], dtype=np.float64).reshape(-1, 2)
        polygons += _validated(Polygon(name, group, _check_ring(array, path, label)), path, label)
    return polygons


def parse_geojson(path: Path) -> list[Polygon]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CamnetError(f"annotation {path}: malformed GeoJSON ({err})") from None
    features: Iterable[Any]
    if isinstance(data, list):
        features = data
    elif isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features", [])
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    else:
        raise CamnetError(f"annotation {path}: expected a GeoJSON Feature, FeatureCollection or list")
    polygons = []
    for i, feature in enumerate(features):
        if not isinstance(feature, dict):
            raise CamnetError(f"annotation {path}: feature {i} is not an object")
        props = feature.get("properties") or {}
        classification = props.get("classification") or {}
        group = str(classification.get("name") or props.get("name") or "None")
        name = str(props.get("name") or feature.get("id") or f"feature {i}")
        geometry = feature.get("geometry") or {}
        kind = geometry.get("type")
        label = f"feature {i} ('{name}')"
        if kind not in ("Polygon", "MultiPolygon"):
            log.warning("annotation %s: %s is a %s, not a polygon; ignored", path, label, kind)
            continue
        coordinates = geometry.get("coordinates") or []
        rings_list = [coordinates] if kind == "Polygon" else coordinates
        if not isinstance(rings_list, list) or not all(isinstance(rings, list) for rings in rings_list):
            raise CamnetError(f"annotation {path}: {label} has malformed coordinates")
        # An empty polygon (or member, or ring) is a region the annotator meant but that is not there:
        # skipping it would make the slide tumour-free without a word.
        if not rings_list or any(not rings or any(r == [] for r in rings) for rings in rings_list):
            raise CamnetError(f"annotation {path}: {label} has empty coordinates")
        for rings in rings_list:
            try:
                arrays = [np.asarray(r, dtype=np.float64)[:, :2] for r in rings]
            except (ValueError, IndexError, TypeError):
                raise CamnetError(f"annotation {path}: {label} has malformed coordinates") from None
            outer = _check_ring(arrays[0], path, label)
            holes = tuple(_check_ring(h, path, label) for h in arrays[1:])
            polygons += _validated(Polygon(name, group, outer, holes), path, label)
    return polygons


def _check_ring(points: np.ndarray, path: Path, label: str) -> np.ndarray:
    if points.ndim != 2 or points.shape[1] != 2:
        raise CamnetError(f"annotation {path}: {label} has malformed coordinates (expected [x, y] pairs)")
    if len(points) < 3:
        raise CamnetError(f"annotation {path}: {label} has fewer than 3 coordinates")
    if not np.isfinite(points).all():
        raise CamnetError(f"annotation {path}: {label} has a missing or non-finite coordinate")
    return points


def _shape(points: np.ndarray, holes: tuple[np.ndarray, ...] = ()) -> shapely.Polygon:
    try:
        return shapely.Polygon(points, holes)
    except ValueError:  # shapely 2.0 refuses a closed ring of 3 coordinates (A, B, A); it has no area anyway
        return shapely.Polygon()


def _validated(poly: Polygon, path: Path, label: str) -> list[Polygon]:
    """`poly` itself when valid (untouched: shapely would re-orient and re-node it, changing finished masks);
    otherwise its repair, announced with shapely's reason."""
    shape = _shape(poly.points, poly.holes)
    if shape.is_valid and not shape.is_empty:
        return [poly]
    reason = explain_validity(shape) if not shape.is_empty else "too few distinct points"
    # make_valid's default ("linework") keeps what today's even-odd fill covered: a bow-tie's two lobes, less
    # any area an outline loops over twice. Shell and holes are repaired apart and the holes cut out, as
    # `tumour_mask` does: repairing the whole polygon at once would turn a hole outside its shell into tumour.
    area, dropped = _polygonal(shapely.make_valid(_shape(poly.points)))
    for hole in poly.holes:
        hole_area, hole_dropped = _polygonal(shapely.make_valid(_shape(hole)))
        area, dropped = shapely.difference(area, hole_area), dropped + hole_dropped
    parts, _ = _polygonal(area)
    pieces = [Polygon(poly.name, poly.group, _xy(part.exterior), tuple(_xy(r) for r in part.interiors))
              for part in shapely.get_parts(parts)]
    if not pieces:
        log.warning("annotation %s: %s is invalid (%s) and encloses no area; ignored", path, label, reason)
        return []
    extra = f"; dropped {dropped} line/point part(s) that enclose no area" if dropped else ""
    log.warning("annotation %s: %s is invalid (%s); repaired into %d polygon(s)%s",
                path, label, reason, len(pieces), extra)
    return pieces


def _polygonal(geometry: shapely.Geometry) -> tuple[shapely.MultiPolygon, int]:
    """The polygons of a (nested) repaired geometry, and how many line or point parts were left out."""
    parts = shapely.get_parts(geometry)
    while any(isinstance(p, shapely.GeometryCollection | shapely.MultiPolygon) for p in parts):
        parts = shapely.get_parts(parts)
    polygons = [p for p in parts if isinstance(p, shapely.Polygon) and not p.is_empty]
    others = sum(1 for p in parts if not isinstance(p, shapely.Polygon) and not p.is_empty)
    return shapely.MultiPolygon(polygons), others


def _xy(ring: shapely.LinearRing) -> np.ndarray:
    return np.asarray(ring.coords, dtype=np.float64)[:, :2]


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
    return group.casefold() in {g.casefold() for g in groups}


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
    return _polygonal(shapely.make_valid(_shape(points)))[0]  # a degenerate ring's line parts have no area


def _raster(points: np.ndarray, shape: tuple[int, int], ds_x: float, ds_y: float) -> np.ndarray:
    # Pixel (r, c) covers level-0 [c*ds, (c+1)*ds); it is inside when its centre is.
    out = np.zeros(shape, dtype=bool)
    rr, cc = fill_polygon(points[:, 1] / ds_y - 0.5, points[:, 0] / ds_x - 0.5, shape)
    out[rr, cc] = True
    return out
