"""Pathologists' annotations: ASAP XML (Camelyon16/17) and QuPath GeoJSON, to a tumour mask.

XML is parsed with defusedxml, so entity expansion (billion laughs) and external entities are
refused rather than evaluated.
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
from defusedxml import DefusedXmlException
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
        try:
            points = sorted(
                (int(c.get("Order", "0")), float(c.get("X", "nan")), float(c.get("Y", "nan")))
                for c in ann.iter("Coordinate"))
        except ValueError as err:
            raise CamnetError(f"annotation {path}: '{name}' has a non-numeric coordinate ({err})") from None
        array = np.array([(x, y) for _, x, y in points], dtype=np.float64).reshape(-1, 2)
        polygons.append(Polygon(name, group, _check_ring(array, path, name)))
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
        if kind == "Polygon":
            rings_list = [geometry.get("coordinates", [])]
        elif kind == "MultiPolygon":
            rings_list = geometry.get("coordinates", [])
        else:
            log.warning("annotation %s: feature '%s' is a %s, not a polygon; ignored", path, name, kind)
            continue
        for rings in rings_list:
            try:
                arrays = [np.asarray(r, dtype=np.float64)[:, :2] for r in rings]
            except (ValueError, IndexError, TypeError):
                raise CamnetError(f"annotation {path}: feature '{name}' has malformed coordinates") from None
            if not arrays:
                continue
            outer = _check_ring(arrays[0], path, name)
            holes = tuple(_check_ring(h, path, name) for h in arrays[1:])
            polygons.append(Polygon(name, group, outer, holes))
    return polygons


def _check_ring(points: np.ndarray, path: Path, name: str) -> np.ndarray:
    if points.ndim != 2 or len(points) < 3:
        raise CamnetError(f"annotation {path}: '{name}' has fewer than 3 coordinates")
    if not np.isfinite(points).all():
        raise CamnetError(f"annotation {path}: '{name}' has a missing or non-finite coordinate")
    return points


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


def _raster(points: np.ndarray, shape: tuple[int, int], ds_x: float, ds_y: float) -> np.ndarray:
    # Pixel (r, c) covers level-0 [c*ds, (c+1)*ds); it is inside when its centre is.
    out = np.zeros(shape, dtype=bool)
    rr, cc = fill_polygon(points[:, 1] / ds_y - 0.5, points[:, 0] / ds_x - 0.5, shape)
    out[rr, cc] = True
    return out
