"""QuPath GeoJSON variants (issue 15, part 3): classifications and geometries QuPath writes, areas known by hand."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from layer1_patches.annotations import load_annotations, tumour_mask, tumour_region
from layer1_patches.config import AnnotationConfig
from layer1_patches.fractions import TumourGeometry
from layer1_patches.shared.errors import CamnetError

DIMS = (2000, 1000)
SQUARE = [[100, 100], [500, 100], [500, 500], [100, 500], [100, 100]]  # 400 x 400 = 160000
HOLE = [[200, 200], [300, 200], [300, 300], [200, 300], [200, 200]]  # 100 x 100 = 10000
TRIANGLE = [[600, 100], [900, 100], [600, 300], [600, 100]]  # legs 300 and 200: 30000
FAR_SQUARE = [[1000, 0], [1200, 0], [1200, 200], [1000, 200], [1000, 0]]  # 200 x 200 = 40000


def _feature(classification: Any, geometry: dict[str, Any], name: str = "r") -> dict[str, Any]:
    return {"type": "Feature", "id": "5f0c", "geometry": geometry,
            "properties": {"objectType": "annotation", "name": name, "classification": classification}}


def _write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def _polygon(*rings: list[list[int]]) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": list(rings)}


def _area(path: Path) -> float:
    return float(tumour_region(load_annotations(path), AnnotationConfig()).area)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_classification_given_as_a_string_is_a_group_not_an_attribute_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.geojson", [_feature("Tumor", _polygon(SQUARE))])
    assert [p.group for p in load_annotations(path)] == ["Tumor"]
    assert _area(path) == 160000


def test_classification_names_list_keeps_tumour_as_tumour_not_group_none(tmp_path: Path) -> None:
    # QuPath 0.4+ writes a derived class "Tumor: Positive" as {"names": ["Tumor", "Positive"], "color": [...]}.
    classification = {"names": ["Tumor", "Positive"], "color": [200, 0, 0]}
    path = _write(tmp_path / "n.geojson", [_feature(classification, _polygon(SQUARE, HOLE))])
    assert [p.group for p in load_annotations(path)] == ["Tumor: Positive"]
    assert _area(path) == 160000 - 10000
    mask = tumour_mask(load_annotations(path), AnnotationConfig(downsample=10), DIMS).array
    assert mask.sum() == 40 * 40 - 10 * 10  # the mask (Layer 3's truth) matches the group the same way
    excluded = _write(tmp_path / "x.geojson", [_feature({"names": ["Tumor"]}, _polygon(SQUARE)),
                                               _feature({"names": ["Exclusion", "Fold"]}, _polygon(HOLE))])
    assert _area(excluded) == 160000 - 10000


def test_derived_class_is_matched_by_whole_names_not_substrings(tmp_path: Path) -> None:
    path = _write(tmp_path / "n.geojson", [_feature({"names": ["Peritumoral stroma", "Positive"]}, _polygon(SQUARE))])
    assert _area(path) == 0  # "tumor" is in "Peritumoral" but Peritumoral stroma is not tumour


def test_geometry_collection_polygons_are_read_not_dropped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    collection = {"type": "GeometryCollection", "geometries": [
        _polygon(SQUARE, HOLE), {"type": "LineString", "coordinates": [[0, 0], [50, 50]]},
        {"type": "MultiPolygon", "coordinates": [[TRIANGLE]]}]}
    path = _write(tmp_path / "gc.geojson", {"type": "FeatureCollection", "features": [
        _feature({"name": "Tumor", "color": [200, 0, 0]}, collection, name="region 7")]})
    caplog.set_level(logging.WARNING)
    polygons = load_annotations(path)
    assert _warnings(caplog) == [f"annotation {path}: feature 0 ('region 7') member 1 is a LineString, not a "
                                 "polygon; ignored"]
    assert [len(p.holes) for p in polygons] == [1, 0]
    assert _area(path) == 160000 - 10000 + 30000


def test_multipolygon_area_is_the_sum_of_its_members_less_their_holes(tmp_path: Path) -> None:
    multi = {"type": "MultiPolygon", "coordinates": [[SQUARE, HOLE], [TRIANGLE], [FAR_SQUARE]]}
    path = _write(tmp_path / "m.geojson", _feature({"name": "Tumor"}, multi))
    assert _area(path) == 160000 - 10000 + 30000 + 40000
    mask = tumour_mask(load_annotations(path), AnnotationConfig(downsample=10), DIMS).array
    assert mask[12, 12] and not mask[25, 25] and mask[10, 110] and not mask[30, 110]  # square, hole, far square
    geometry = TumourGeometry.of(tumour_region(load_annotations(path), AnnotationConfig()))
    # (150,150)-(250,250) overlaps the hole by 50 x 50 of 100 x 100: 0.75; (1100,100)-(1200,200) in the far square: 1
    assert geometry.fractions(np.array([[150, 150], [1100, 100]]), 100).tolist() == [0.75, 1.0]


@pytest.mark.parametrize("wrap", ["collection", "feature", "list"])
def test_collection_single_feature_and_bare_list_read_alike(tmp_path: Path, wrap: str) -> None:
    feature = _feature({"name": "Tumor"}, _polygon(TRIANGLE))
    data = {"collection": {"type": "FeatureCollection", "features": [feature]}, "feature": feature,
            "list": [feature]}[wrap]
    assert _area(_write(tmp_path / "w.geojson", data)) == 30000


@pytest.mark.parametrize(
    ("classification", "geometry", "message"),
    [(5, _polygon(SQUARE), "feature 0 ('r') has classification 5, expected a name"),
     ({"names": "Tumor"}, _polygon(SQUARE), "feature 0 ('r') has classification 'names' 'Tumor', expected a list"),
     ({"name": "Tumor"}, {"type": "Circle", "coordinates": [1, 2]}, "feature 0 ('r') has geometry type 'Circle'"),
     ({"name": "Tumor"}, {"type": "GeometryCollection"}, "feature 0 ('r') is a GeometryCollection without"),
     ({"name": "Tumor"}, {"type": "GeometryCollection", "geometries": []}, "feature 0 ('r') has empty coordinates"),
     ({"name": "Tumor"}, {"type": "GeometryCollection", "geometries": [_polygon([])]},
      "feature 0 ('r') member 0 has empty coordinates")],
    ids=["number-class", "names-string", "unknown-type", "collection-no-list", "collection-empty", "member-empty"],
)
def test_anything_else_is_one_error_naming_file_and_feature(
        tmp_path: Path, classification: Any, geometry: dict[str, Any], message: str) -> None:
    path = _write(tmp_path / "bad.geojson", [_feature(classification, geometry)])
    with pytest.raises(CamnetError) as err:
        load_annotations(path)
    assert str(err.value).startswith(f"annotation {path}: {message}")


def test_feature_without_geometry_is_ignored_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path / "g.geojson", [_feature("Tumor", _polygon(SQUARE)), {"type": "Feature", "id": "a1",
                                                                                "geometry": None, "properties": {}}])
    caplog.set_level(logging.WARNING)
    assert len(load_annotations(path)) == 1
    assert _warnings(caplog) == [f"annotation {path}: feature 1 ('a1') has no geometry; ignored"]


def test_detections_and_cells_are_not_read_as_the_pathologists_tumour(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tile = {**_feature({"name": "Tumor"}, _polygon(FAR_SQUARE)), "properties": {
        "objectType": "detection", "classification": {"name": "Tumor", "color": [200, 0, 0]}}}
    cell = {**tile, "properties": {**tile["properties"], "objectType": "cell"}}
    path = _write(tmp_path / "all.geojson", [_feature({"name": "Tumor"}, _polygon(TRIANGLE)), tile, tile, cell])
    caplog.set_level(logging.WARNING)
    assert _area(path) == 30000  # the annotated triangle only, not the 40000 of the tiles
    assert _warnings(caplog)[:2] == [
        f"annotation {path}: 2 feature(s) of objectType 'detection' (first: feature 1) are not annotations; ignored",
        f"annotation {path}: 1 feature(s) of objectType 'cell' (first: feature 3) are not annotations; ignored"]


def test_a_feature_that_is_not_an_object_names_its_index(tmp_path: Path) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": ["Tumor"]}))
    with pytest.raises(CamnetError) as err:
        load_annotations(path)
    assert str(err.value) == f"annotation {path}: feature 0 is not an object"
