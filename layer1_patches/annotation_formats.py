"""Annotation polygons and their XML formats: ASAP (Camelyon16/17) and Aperio ImageScope.

XML is parsed with defusedxml, so entity expansion (billion laughs) and external entities are refused rather
than evaluated. Geometry is checked on load: an annotation without coordinates is an error (it would silently
make the slide tumour-free), and an invalid polygon (self-intersecting outline, hole outside its shell) is
repaired with shapely's `make_valid` and reported, rather than left to the rasteriser's undefined behaviour.
Valid polygons are passed on untouched, so their masks never change.

Aperio ImageScope XML (root `<Annotations>`): each `<Annotation>` is a layer, its `Name` the group (empty: the
region's `Text`, else "None"). Each `<Region>` holds `<Vertices><Vertex X= Y=/>` in level-0 pixels. Region
`Type` 0 (freehand/polygon, also when absent) and 1 (rectangle: its four corners) are outlines; 2 (ellipse) gives
two opposite corners of its bounding box and is drawn as a 256-gon (area 0.01% below the ellipse's); any other
type (arrow, ruler, ...) encloses no area and is ignored with a warning. A region with `NegativeROA="1"` is cut
out of the layer's other regions, as ImageScope's negative (exclusion) pen does. Indica Labs HALO writes the same
layout with named types ("Polygon", "Rectangle" and "Ellipse" as two corners) and `<V X= Y=/>` vertices: read alike.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import defusedxml.ElementTree as SafeET
import numpy as np
import shapely
from defusedxml import DefusedXmlException
from shapely.validation import explain_validity

from layer1_patches.shared.errors import CamnetError

log = logging.getLogger(__name__)
ELLIPSE_VERTICES = 256  # inscribed 256-gon: area short of the ellipse by 1 - sin(2pi/n) n/2pi = 0.01%
# ImageScope's numeric region types, and the names HALO writes in the same layout
REGION_TYPES = {"0": "polygon", "1": "rectangle", "2": "ellipse",
                "Polygon": "polygon", "Rectangle": "rectangle", "Ellipse": "ellipse"}


@dataclass(frozen=True)
class Polygon:
    """One annotated region in level-0 pixels; `holes` are cut out of it (GeoJSON interior rings)."""

    name: str
    group: str
    points: np.ndarray
    holes: tuple[np.ndarray, ...] = field(default_factory=tuple)


def read_xml(path: Path) -> ET.Element:
    try:
        return SafeET.parse(str(path)).getroot()
    except DefusedXmlException as err:
        raise CamnetError(f"annotation {path}: refused unsafe XML ({type(err).__name__})") from None
    except SafeET.ParseError as err:
        raise CamnetError(f"annotation {path}: malformed XML ({err})") from None


def parse_xml(path: Path) -> list[Polygon]:
    root = read_xml(path)
    if root.tag == "ASAP_Annotations":
        return parse_asap(root, path)
    if root.tag == "Annotations":
        return parse_imagescope(root, path)
    raise CamnetError(f"annotation {path}: root element is <{root.tag}>, expected <ASAP_Annotations> (ASAP) "
                      "or <Annotations> (Aperio ImageScope)")


def parse_asap(root: ET.Element, path: Path) -> list[Polygon]:
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
        polygons += validated(Polygon(name, group, check_ring(array, path, label)), path, label)
    return polygons


def parse_imagescope(root: ET.Element, path: Path) -> list[Polygon]:
    polygons: list[Polygon] = []
    for i, ann in enumerate(root.iter("Annotation")):
        layer = ann.get("Name") or ""
        positive: list[Polygon] = []
        negative: list[np.ndarray] = []
        for j, region in enumerate(ann.iter("Region")):
            name = region.get("Text") or layer or f"Annotation {i}"
            label = f"Annotation {i} ('{layer}') region {j}"
            points = _region_outline(region, path, label)
            if points is None:
                continue
            if region.get("NegativeROA", "0").strip() == "1":
                negative.append(points)
            else:
                poly = Polygon(name, layer or region.get("Text") or "None", points)
                positive += validated(poly, path, label)
        polygons += [q for p in positive for q in cut(p, negative)]
    return polygons


def _region_outline(region: ET.Element, path: Path, label: str) -> np.ndarray | None:
    """The region's outline in level-0 pixels; None (with a warning) for a type that encloses no area."""
    kind = REGION_TYPES.get((region.get("Type") or "0").strip())
    if kind is None:
        log.warning("annotation %s: %s has Type %s, not a polygon (0), rectangle (1) or ellipse (2); ignored",
                    path, label, region.get("Type"))
        return None
    try:
        vertices = [(float(v.get("X", "nan")), float(v.get("Y", "nan")))
                    for v in region.iter() if v.tag in ("Vertex", "V")]
    except ValueError as err:
        raise CamnetError(f"annotation {path}: {label} has a non-numeric coordinate ({err})") from None
    if not vertices:
        raise CamnetError(f"annotation {path}: {label} has empty coordinates")
    points = np.array(vertices, dtype=np.float64).reshape(-1, 2)
    if kind == "polygon" or (kind == "rectangle" and len(points) != 2):
        return check_ring(points, path, label)
    if len(points) != 2 or not np.isfinite(points).all():
        raise CamnetError(f"annotation {path}: {label}: {kind} with {len(points)} vertices "
                          "(expected 2 finite bounding-box corners)")
    if kind == "rectangle":  # HALO writes a rectangle as two opposite corners
        (x0, y0), (x1, y1) = points
        return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
    return ellipse(points)


def ellipse(corners: np.ndarray) -> np.ndarray:
    """The ellipse inscribed in the box with these two opposite corners, as an `ELLIPSE_VERTICES`-gon."""
    centre = corners.mean(axis=0)
    radii = np.abs(corners[1] - corners[0]) / 2
    angles = np.linspace(0, 2 * np.pi, ELLIPSE_VERTICES, endpoint=False)
    return centre + radii * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def cut(poly: Polygon, negative: list[np.ndarray]) -> list[Polygon]:
    """`poly` less the layer's negative regions: those inside it become holes (the polygon otherwise untouched),
    those crossing its outline are subtracted as geometry."""
    shell = shape_of(poly.points, poly.holes)
    touching = [n for n in negative if shell.intersects(shape_of(n))]
    if not touching:
        return [poly]
    inside = [n for n in touching if shapely.contains_properly(shell, shape_of(n))]
    candidate = Polygon(poly.name, poly.group, poly.points, poly.holes + tuple(inside))
    if len(inside) == len(touching) and shape_of(candidate.points, candidate.holes).is_valid:
        return [candidate]
    area = shapely.difference(shell, shapely.union_all([polygonal(shapely.make_valid(shape_of(n)))[0]
                                                         for n in touching]))
    return pieces(poly, area)


def check_ring(points: np.ndarray, path: Path, label: str) -> np.ndarray:
    if points.ndim != 2 or points.shape[1] != 2:
        raise CamnetError(f"annotation {path}: {label} has malformed coordinates (expected [x, y] pairs)")
    if len(points) < 3:
        raise CamnetError(f"annotation {path}: {label} has fewer than 3 coordinates")
    if not np.isfinite(points).all():
        raise CamnetError(f"annotation {path}: {label} has a missing or non-finite coordinate")
    return points


def shape_of(points: np.ndarray, holes: tuple[np.ndarray, ...] = ()) -> shapely.Polygon:
    try:
        return shapely.Polygon(points, holes)
    except ValueError:  # shapely 2.0 refuses a closed ring of 3 coordinates (A, B, A); it has no area anyway
        return shapely.Polygon()


def validated(poly: Polygon, path: Path, label: str) -> list[Polygon]:
    """`poly` itself when valid (untouched: shapely would re-orient and re-node it, changing finished masks);
    otherwise its repair, announced with shapely's reason."""
    shape = shape_of(poly.points, poly.holes)
    if shape.is_valid and not shape.is_empty:
        return [poly]
    reason = explain_validity(shape) if not shape.is_empty else "too few distinct points"
    # make_valid's default ("linework") keeps what today's even-odd fill covered: a bow-tie's two lobes, less
    # any area an outline loops over twice. Shell and holes are repaired apart and the holes cut out, as
    # `tumour_mask` does: repairing the whole polygon at once would turn a hole outside its shell into tumour.
    area, dropped = polygonal(shapely.make_valid(shape_of(poly.points)))
    for hole in poly.holes:
        hole_area, hole_dropped = polygonal(shapely.make_valid(shape_of(hole)))
        area, dropped = shapely.difference(area, hole_area), dropped + hole_dropped
    parts = pieces(poly, area)
    if not parts:
        log.warning("annotation %s: %s is invalid (%s) and encloses no area; ignored", path, label, reason)
        return []
    extra = f"; dropped {dropped} line/point part(s) that enclose no area" if dropped else ""
    log.warning("annotation %s: %s is invalid (%s); repaired into %d polygon(s)%s",
                path, label, reason, len(parts), extra)
    return parts


def pieces(poly: Polygon, area: shapely.Geometry) -> list[Polygon]:
    """The polygons of `area`, named and grouped as `poly`."""
    parts, _ = polygonal(area)
    return [Polygon(poly.name, poly.group, _xy(part.exterior), tuple(_xy(r) for r in part.interiors))
            for part in shapely.get_parts(parts)]


def polygonal(geometry: shapely.Geometry) -> tuple[shapely.MultiPolygon, int]:
    """The polygons of a (nested) repaired geometry, and how many line or point parts were left out."""
    parts = shapely.get_parts(geometry)
    while any(isinstance(p, shapely.GeometryCollection | shapely.MultiPolygon) for p in parts):
        parts = shapely.get_parts(parts)
    polygons = [p for p in parts if isinstance(p, shapely.Polygon) and not p.is_empty]
    others = sum(1 for p in parts if not isinstance(p, shapely.Polygon) and not p.is_empty)
    return shapely.MultiPolygon(polygons), others


def _xy(ring: shapely.LinearRing) -> np.ndarray:
    return np.asarray(ring.coords, dtype=np.float64)[:, :2]
