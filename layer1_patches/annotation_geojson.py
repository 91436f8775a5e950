"""QuPath (and any) GeoJSON annotations, to `Polygon`s.

Accepted: a FeatureCollection, a single Feature, or a bare list of features (QuPath's "Export objects" writes a
list). Only annotations are read: a feature whose `objectType` is given and is not "annotation" (QuPath's
detection, cell, tile, ...) is skipped, with one warning per type naming the file, the count and the first.

A feature's group is its `classification`: an object with `name` (QuPath's single class), an object with `names`
(QuPath 0.4+'s derived class, e.g. ["Tumor", "Positive"]: joined as QuPath displays it, "Tumor: Positive", and
matched when the whole or any one name is a tumour or exclusion group), or a plain string (other tools); without
one, the feature's `name`, else "None". Geometry: Polygon (interior rings are holes), MultiPolygon (each member),
GeometryCollection (its polygonal members, nested collections too). Points and lines enclose no area and are
ignored with a warning naming the file and feature; an unknown geometry type or classification is an error.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from layer1_patches.annotation_formats import Polygon, check_ring, validated
from layer1_patches.shared.errors import CamnetError

log = logging.getLogger(__name__)
AREAL = ("Polygon", "MultiPolygon", "GeometryCollection")
NON_AREAL = ("Point", "MultiPoint", "LineString", "MultiLineString")
CLASS_SEPARATOR = ": "  # QuPath's display of a derived class, e.g. "Tumor: Positive"


def parse_geojson(path: Path) -> list[Polygon]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CamnetError(f"annotation {path}: malformed GeoJSON ({err})") from None
    polygons = []
    skipped: dict[str, list[int]] = {}
    for i, feature in enumerate(features_of(data, path)):
        if not isinstance(feature, dict):
            raise CamnetError(f"annotation {path}: feature {i} is not an object")
        props = feature.get("properties") or {}
        kind = str(props.get("objectType") or "annotation")
        if kind != "annotation":
            skipped.setdefault(kind, []).append(i)
            continue
        name = str(props.get("name") or feature.get("id") or f"feature {i}")
        label = f"feature {i} ('{name}')"
        group = group_of(props, f"annotation {path}: {label}")
        for rings, where in polygon_rings(feature.get("geometry"), path, label):
            polygons += _polygon(rings, Polygon(name, group, np.empty((0, 2))), path, where)
    for kind, indices in skipped.items():
        # Detections and cells are a model's output, not the pathologist's outline: a QuPath "export all objects"
        # with 10^5 cells classified Tumor would otherwise become the ground truth.
        log.warning("annotation %s: %d feature(s) of objectType '%s' (first: feature %d) are not annotations; "
                    "ignored", path, len(indices), kind, indices[0])
    return polygons


def features_of(data: Any, path: Path) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features", [])
        if not isinstance(features, list):
            raise CamnetError(f"annotation {path}: FeatureCollection 'features' is not a list")
        return features
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [data]
    raise CamnetError(f"annotation {path}: expected a GeoJSON Feature, FeatureCollection or list")


def group_of(props: dict[str, Any], where: str) -> str:
    """The feature's annotation group from its QuPath classification (see the module docstring)."""
    classification = props.get("classification")
    if isinstance(classification, str) and classification.strip():
        return classification
    if isinstance(classification, dict):
        if classification.get("name"):
            return str(classification["name"])
        names = classification.get("names")
        if names is not None:
            if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
                raise CamnetError(f"{where} has classification 'names' {names!r}, expected a list of class names")
            return CLASS_SEPARATOR.join(names)
    elif classification not in (None, ""):
        raise CamnetError(f"{where} has classification {classification!r}, expected a name, "
                          "{\"name\": ...} or {\"names\": [...]}")
    return str(props.get("name") or "None")


def polygon_rings(geometry: Any, path: Path, label: str) -> list[tuple[Any, str]]:
    """Each polygon's rings (outer first) in `geometry`, with its label (a collection member's names it)."""
    where = f"annotation {path}: {label}"
    if geometry is None:
        log.warning("%s has no geometry; ignored", where)
        return []
    kind = geometry.get("type") if isinstance(geometry, dict) else None
    if kind in NON_AREAL:
        log.warning("%s is a %s, not a polygon; ignored", where, kind)
        return []
    if kind not in AREAL:
        raise CamnetError(f"{where} has geometry type {kind!r}, expected one of {', '.join(AREAL + NON_AREAL)}")
    if kind == "GeometryCollection":
        members = geometry.get("geometries")
        if not isinstance(members, list):
            raise CamnetError(f"{where} is a GeometryCollection without a 'geometries' list")
        if not members:
            raise CamnetError(f"{where} has empty coordinates")
        return [found for k, member in enumerate(members)
                for found in polygon_rings(member, path, f"{label} member {k}")]
    coordinates = geometry.get("coordinates") or []
    rings_list = [coordinates] if kind == "Polygon" else coordinates
    if not isinstance(rings_list, list) or not all(isinstance(rings, list) for rings in rings_list):
        raise CamnetError(f"{where} has malformed coordinates")
    # An empty polygon (or member, or ring) is a region the annotator meant but that is not there:
    # skipping it would make the slide tumour-free without a word.
    if not rings_list or any(not rings or any(r == [] for r in rings) for rings in rings_list):
        raise CamnetError(f"{where} has empty coordinates")
    return [(rings, label) for rings in rings_list]


def _polygon(rings: list[Any], template: Polygon, path: Path, label: str) -> list[Polygon]:
    try:
        arrays = [np.asarray(r, dtype=np.float64)[:, :2] for r in rings]
    except (ValueError, IndexError, TypeError):
        raise CamnetError(f"annotation {path}: {label} has malformed coordinates") from None
    outer = check_ring(arrays[0], path, label)
    holes = tuple(check_ring(h, path, label) for h in arrays[1:])
    return validated(Polygon(template.name, template.group, outer, holes), path, label)
