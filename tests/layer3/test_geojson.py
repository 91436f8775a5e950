"""`layer3_inference/geojson.py`: every feature CamNet writes is one QuPath imports, and Layer 1 reads it back.

The validator below re-implements QuPath's GeoJSON import rules (read in qupath/qupath, commit e7662d89, v0.7.0;
the classification rule is the same in v0.4.0 GsonTools.java:427 and v0.5.0 :506), all paths under
qupath-core/src/main/java/qupath/lib/io/:
- GsonTools.java:395-440 `addPathObjects`: a FeatureCollection, a Feature, a list of them, or a bare geometry
  (Point, MultiPoint, LineString, MultiLineString, Polygon, MultiPolygon, GeometryCollection).
- GsonTools.java:506-536 `PathClassTypeAdapter.read`: a classification is null, a string, an empty/legacy object
  (`colorRGB` or `parentClass`), or an object with `name` or `names` AND `color`; anything else throws
  "Unable to parse PathClass", which fails the whole import. :582-593 `arrayToRgb`: `color` is an int array of
  length 0, 1 (packed int), 3 (r, g, b) or 4 (r, g, b, alpha); other lengths throw.
- QuPathTypeAdapters.java:460-640 `parseObject`: `id` a UUID (anything else is dropped, :468-481);
  `properties.name` read as a string; `properties.color` an int or a 3-int array; `measurements` an object or a
  legacy list of {name, value} (:526; anything else is ignored); `objectType` one of tile, cell, tmaCore/tma_core,
  detection, root, annotation or the Path*Object class names (:557-590); an unknown type is made an annotation
  with a warning, a missing one an annotation.
- QuPathTypeAdapters.java:673-712 `MeasurementListTypeAdapter.read`: map values are numbers, or strings
  "nan"/"inf"/"-inf" or parseable as a double (else NumberFormatException); others are dropped with a warning.
Where QuPath silently drops or changes something (non-UUID id, unknown objectType, ignored measurements), this
validator reports a problem too: the outputs must arrive in QuPath exactly as CamNet meant them.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
import shapely.geometry

from layer1_patches.annotations import load_annotations
from layer3_inference.geojson import feature_collection, feature_id, tile_features, tumour_regions
from tests.layer3.test_outputs import _grid, _hand_probs, _written_geojson

GEOMETRY_TYPES = {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon",
                  "GeometryCollection"}
OBJECT_TYPES = {"tile", "PathTileObject", "cell", "PathCellObject", "tmaCore", "tma_core", "TMACoreObject",
                "detection", "PathDetectionObject", "root", "PathRootObject", "annotation", "PathAnnotationObject"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _classification_problems(value: Any) -> list[str]:
    if value is None or isinstance(value, str):
        return []
    if not isinstance(value, dict):
        return [f"classification {value!r}: not null, a string or an object"]
    if not value or "colorRGB" in value or "parentClass" in value:
        return []  # QuPath's pre-0.4 serialisation
    if not ("name" in value or "names" in value) or "color" not in value:
        return [f"classification {value!r}: needs 'name' or 'names' and 'color' (Unable to parse PathClass)"]
    colour = value["color"]
    if _is_int(colour):
        return []  # Gson reads a lone int as a 1-element int[]
    if not isinstance(colour, list) or len(colour) not in (0, 1, 3, 4) or not all(map(_is_int, colour)):
        return [f"classification color {colour!r}: not an int array of length 0, 1, 3 or 4"]
    return []


def _measurement_problems(value: Any) -> list[str]:
    if isinstance(value, list):
        ok = all(isinstance(m, dict) and isinstance(m.get("name"), str) and _is_number(m.get("value"))
                 for m in value)
        return [] if ok else [f"measurements {value!r}: a list entry is not {{name, value}}"]
    if not isinstance(value, dict):
        return [f"measurements {value!r}: neither an object nor a list (QuPath ignores it)"]
    problems = []
    for key, v in value.items():
        if isinstance(v, str):
            try:
                float(v)
            except ValueError:
                if v.lower() not in ("nan", "inf", "-inf"):
                    problems.append(f"measurement {key}={v!r}: not a number")
        elif not _is_number(v):
            problems.append(f"measurement {key}={v!r}: not a number (QuPath drops it)")
    return problems


def _property_problems(props: Any) -> list[str]:
    if not isinstance(props, dict):
        return ["properties: not an object"]
    problems = []
    if props.get("objectType") not in OBJECT_TYPES:
        problems.append(f"objectType {props.get('objectType')!r}: not a QuPath object type")
    if "name" in props and not isinstance(props["name"], (str, int, float)):
        problems.append(f"name {props['name']!r}: not a string")
    colour = props.get("color")
    if colour is not None and not _is_int(colour) and not (
            isinstance(colour, list) and len(colour) == 3 and all(map(_is_int, colour))):
        problems.append(f"color {colour!r}: not an int or [r, g, b]")
    if "classification" in props:
        problems += _classification_problems(props["classification"])
    if "measurements" in props:
        problems += _measurement_problems(props["measurements"])
    return problems


def _geometry_problems(geometry: Any) -> list[str]:
    if not isinstance(geometry, dict) or geometry.get("type") not in GEOMETRY_TYPES:
        return [f"geometry {geometry!r:.80}: not a GeoJSON geometry"]
    try:
        shape = shapely.geometry.shape(geometry)
    except (ValueError, TypeError, AttributeError, IndexError, shapely.errors.ShapelyError) as err:
        return [f"geometry: unreadable ({err})"]
    if shape.is_empty or not shape.is_valid:
        return [f"geometry: invalid ({shapely.is_valid_reason(shape)})"]
    return []


def _feature_problems(feature: Any) -> list[str]:
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        return ["not a Feature"]
    problems = []
    try:
        uuid.UUID(str(feature.get("id")))
    except ValueError:
        problems.append(f"id {feature.get('id')!r}: not a UUID (QuPath drops it)")
    return problems + _geometry_problems(feature.get("geometry")) + _property_problems(feature.get("properties"))


def qupath_problems(collection: Any) -> list[str]:
    """Everything in a GeoJSON document that QuPath would refuse, drop or change; [] when it imports as written."""
    if not isinstance(collection, dict) or collection.get("type") != "FeatureCollection":
        return ["not a FeatureCollection"]
    features = collection.get("features")
    if not isinstance(features, list):
        return ["features: not a list"]
    return [f"feature {i}: {p}" for i, f in enumerate(features) for p in _feature_problems(f)]


# --- the validator itself ----------------------------------------------------------------------------------

SQUARE = {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]]}


def _feature(**props: Any) -> dict[str, Any]:
    return {"type": "Feature", "id": "0b5c1f5e-6f6e-4d0e-9d0a-6f1c2b3a4d5e", "geometry": SQUARE,
            "properties": {"objectType": "annotation", **props}}


def _one(feature: dict[str, Any]) -> list[str]:
    return qupath_problems({"type": "FeatureCollection", "features": [feature]})


@pytest.mark.parametrize("classification", [
    None, "Tumor", {"name": "Tumor", "color": [200, 0, 0]}, {"names": ["Tumor", "Positive"], "color": [1, 2, 3]},
    {"name": "Tumor", "color": -3670016}, {"name": "Tumor", "color": [200, 0, 0, 128]}, {},
])
def test_validator_accepts_classifications_qupath_parses(classification: Any) -> None:
    assert _one(_feature(classification=classification)) == []


@pytest.mark.parametrize("classification", [
    {"name": "Tumor"}, {"names": ["Tumor"]}, {"color": [200, 0, 0]}, {"name": "Tumor", "color": [200, 0]},
    {"name": "Tumor", "color": [200.5, 0, 0]}, ["Tumor"],
])
def test_validator_refuses_classifications_qupath_cannot_parse(classification: Any) -> None:
    (problem,) = _one(_feature(classification=classification))
    assert "classification" in problem


def test_heatmap_tile_without_a_classification_colour_is_refused() -> None:
    # the tile CamNet wrote before the fix (issue 15: QuPath refused all 7 demo files for this)
    old = _feature(objectType="detection", classification={"name": "Tumor"},
                   measurements={"tumor_probability": 0.93})
    (problem,) = _one(old)
    assert "'color'" in problem


@pytest.mark.parametrize(("change", "expected"), [
    ({"objectType": "patch"}, "objectType"),
    ({"measurements": {"p": "high"}}, "measurement p"),
    ({"measurements": {"p": [1]}}, "measurement p"),
    ({"measurements": [{"name": "p"}]}, "list entry"),
    ({"measurements": 0.9}, "neither an object"),
    ({"color": [1, 2, 3, 4]}, "color"),
    ({"name": {"a": 1}}, "name"),
])
def test_validator_refuses_properties_qupath_rejects_or_drops(change: dict[str, Any], expected: str) -> None:
    (problem,) = _one(_feature(**change))
    assert expected in problem


def test_validator_accepts_legacy_and_special_measurements() -> None:
    assert _one(_feature(measurements=[{"name": "p", "value": 0.5}])) == []
    assert _one(_feature(measurements={"p": "NaN", "q": "-inf", "r": "0.25", "s": 3})) == []
    assert _one(_feature(objectType="tile")) == []


def test_validator_refuses_bad_ids_geometries_and_collections() -> None:
    assert "UUID" in _one({**_feature(), "id": "tile-3"})[0]
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [4, 4], [4, 0], [0, 4], [0, 0]]]}
    assert "invalid" in _one({**_feature(), "geometry": bowtie})[0]
    assert "not a GeoJSON geometry" in _one({**_feature(), "geometry": {"type": "Circle"}})[0]
    assert qupath_problems({"type": "Feature", "features": []}) == ["not a FeatureCollection"]
    assert _one({**_feature(), "type": "Featur"}) == ["feature 0: not a Feature"]


# --- what CamNet writes ------------------------------------------------------------------------------------


def test_every_feature_of_a_written_heatmap_passes_qupaths_rules(tmp_path: Path) -> None:
    geojson, _ = _written_geojson(tmp_path, _hand_probs())
    assert qupath_problems(geojson) == []
    kinds = [f["properties"]["objectType"] for f in geojson["features"]]
    assert kinds.count("annotation") == 3 and kinds.count("detection") == 24
    tiles = [f for f in geojson["features"] if f["properties"]["objectType"] == "detection"]
    assert {t["properties"]["classification"]["name"] for t in tiles} == {"Tumor", "Normal"}
    assert all(set(t["properties"]["measurements"]) == {"tumor_probability"} for t in tiles)


def test_rerun_writes_the_same_feature_ids(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, _ = _written_geojson(tmp_path / "a", _hand_probs())
    second, _ = _written_geojson(tmp_path / "b", _hand_probs())
    ids = [f["id"] for f in first["features"]]
    assert len(set(ids)) == len(ids) == 27
    assert all(uuid.UUID(i).version == 5 for i in ids)
    assert first == second


def test_feature_ids_differ_between_slides_and_positions() -> None:
    assert len({feature_id("a", 0), feature_id("a", 1), feature_id("b", 0)}) == 3
    assert feature_id("a", 0) == feature_id("a", 0)


def test_diagonal_and_edge_regions_are_valid_geometries() -> None:
    prob = np.zeros((6, 6), np.float32)
    prob[0, 0] = prob[1, 1] = 0.9  # touching only at a corner: one 8-connected region
    prob[3:6, 3:6] = 0.9
    prob[4, 4] = 0.1  # a hole
    prob[5, 0] = 0.9  # on the slide's corner, clipped
    regions = tumour_regions(prob, 0.5, (10.0, 7.0), (55, 40), 0.0)
    assert len(regions) == 3
    assert qupath_problems(feature_collection("s", regions)) == []


def test_tile_classifications_carry_qupath_colours() -> None:
    tiles = tile_features(_grid([[0, 0], [64, 0]], 64, (1, 2), 64.0), np.array([0.2, 0.9]), 0.5)
    assert [t["properties"]["classification"] for t in tiles] == [
        {"name": "Normal", "color": [80, 160, 80]}, {"name": "Tumor", "color": [200, 0, 0]}]


# --- round trip through Layer 1 ----------------------------------------------------------------------------


def _area(polygon: Any) -> float:
    return float(shapely.Polygon(polygon.points, [h for h in polygon.holes]).area)


def test_layer1_reads_written_regions_back_with_known_areas(tmp_path: Path) -> None:
    # (a) 2 x 2 map pixels at ds (16, 8): a 32 x 16 square with each corner cut at the pixel edges' midpoints,
    #     four right triangles of legs 8 and 4: 512 - 4 * 16 = 448.
    # (b) a 3 x 3 ring of pixels at ds 1 around a one-pixel hole: outer octagon 9 - 4 * 0.125 = 8.5, the hole a
    #     diamond through its sides' midpoints of area 0.5: 8.5 - 0.5 = 8.0.
    prob = np.zeros((8, 12), np.float32)
    prob[1:3, 1:3] = 0.9
    a = tumour_regions(prob, 0.5, (16.0, 8.0), (192, 64), 0.0)
    ring = np.zeros((5, 5), np.float32)
    ring[1:4, 1:4] = 0.9
    ring[2, 2] = 0.0
    b = tumour_regions(ring, 0.5, (1.0, 1.0), (5, 5), 0.0)
    path = tmp_path / "regions.geojson"
    path.write_text(json.dumps(feature_collection("s", a + b)))
    polygons = load_annotations(path)
    assert [p.group for p in polygons] == ["Tumor", "Tumor"]
    assert [p.name for p in polygons] == ["tumour region 1", "tumour region 1"]
    assert [_area(p) for p in polygons] == [pytest.approx(448.0), pytest.approx(8.0)]
    assert len(polygons[1].holes) == 1


def test_layer1_reads_every_region_of_a_written_heatmap(tmp_path: Path) -> None:
    geojson, _ = _written_geojson(tmp_path, _hand_probs())
    path = tmp_path / "out" / "edge" / "edge.geojson"
    regions = [f for f in geojson["features"] if f["properties"]["objectType"] == "annotation"]
    read = [p for p in load_annotations(path) if p.name.startswith("tumour region")]
    assert len(read) == len(regions) == 3
    for polygon, feature in zip(read, regions, strict=True):
        assert polygon.group == "Tumor"
        assert math.isclose(_area(polygon), shapely.geometry.shape(feature["geometry"]).area)
