from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from layer1_patches.annotations import check_inside, load_annotations, tumour_mask
from layer1_patches.config import AnnotationConfig
from layer1_patches.shared.errors import CamnetError

DIMS = (2000, 1000)


def test_asap_groups_and_holes(cmu_xml: Path) -> None:
    polygons = load_annotations(cmu_xml)
    assert [(p.name, p.group) for p in polygons] == [("T0", "Tumor"), ("H0", "_2")]
    assert polygons[0].points.tolist() == [[1000, 1200], [1800, 1200], [1800, 2200], [1000, 2200]]
    mask = tumour_mask(polygons, AnnotationConfig(downsample=10), (2220, 2967))
    assert mask.array[170, 140] and not mask.array[150, 130]  # tumour; inside the _2 hole
    area = mask.array.sum() * 100
    assert area == pytest.approx(800 * 1000 - 300 * 300, rel=0.02)


def test_coordinates_are_sorted_by_order(tmp_path: Path) -> None:
    path = tmp_path / "a.xml"
    path.write_text('<ASAP_Annotations><Annotations><Annotation Name="a" PartOfGroup="Tumor"><Coordinates>'
                    '<Coordinate Order="2" X="10" Y="10"/><Coordinate Order="0" X="0" Y="0"/>'
                    '<Coordinate Order="1" X="10" Y="0"/></Coordinates></Annotation></Annotations>'
                    '</ASAP_Annotations>')
    assert load_annotations(path)[0].points.tolist() == [[0, 0], [10, 0], [10, 10]]


def test_geojson_with_interior_ring(tmp_path: Path) -> None:
    path = tmp_path / "a.geojson"
    outer = [[100, 100], [900, 100], [900, 900], [100, 900], [100, 100]]
    hole = [[300, 300], [500, 300], [500, 500], [300, 500], [300, 300]]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [outer, hole]},
         "properties": {"classification": {"name": "Tumor"}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {}},
    ]}))
    polygons = load_annotations(path)
    assert len(polygons) == 1 and len(polygons[0].holes) == 1
    mask = tumour_mask(polygons, AnnotationConfig(downsample=10), DIMS)
    assert mask.array[20, 20] and not mask.array[40, 40]
    assert mask.array.sum() * 100 == pytest.approx(800 * 800 - 200 * 200, rel=0.02)


def test_group_names_match_case_insensitively(tmp_path: Path) -> None:
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps([{"type": "Feature", "properties": {"classification": {"name": "tumour"}},
                                 "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [500, 0], [500, 500]]]}}]))
    assert tumour_mask(load_annotations(path), AnnotationConfig(), DIMS).array.any()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<ASAP_Annotations><Annotations>", "malformed XML"),
        ("<Other/>", "root element is <Other>"),
        ('<ASAP_Annotations><Annotations><Annotation Name="a"><Coordinates><Coordinate Order="0" X="1" Y="1"/>'
         "</Coordinates></Annotation></Annotations></ASAP_Annotations>", "'a' has fewer than 3 coordinates"),
        ('<ASAP_Annotations><Annotations><Annotation Name="b"><Coordinates><Coordinate Order="0" X="one" Y="1"/>'
         "</Coordinates></Annotation></Annotations></ASAP_Annotations>", "'b' has a non-numeric coordinate"),
    ],
)
def test_malformed_xml(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(CamnetError) as err:
        load_annotations(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_entity_bomb_is_refused_not_expanded(tmp_path: Path) -> None:
    path = tmp_path / "bomb.xml"
    lol = "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10))
    path.write_text(f'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol0 "lol">{lol}]>'
                    "<ASAP_Annotations>&lol9;</ASAP_Annotations>")
    with pytest.raises(CamnetError, match="refused unsafe XML"):
        load_annotations(path)


def test_external_entity_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "xxe.xml"
    path.write_text('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                    "<ASAP_Annotations>&x;</ASAP_Annotations>")
    with pytest.raises(CamnetError, match="refused unsafe XML"):
        load_annotations(path)


def test_coordinates_outside_the_slide(cmu_xml: Path) -> None:
    polygons = load_annotations(cmu_xml)
    with pytest.raises(CamnetError, match=r"'T0' has coordinate \(1800, 1200\) outside the slide \(1500 x 3000"):
        check_inside(polygons, cmu_xml, (1500, 3000))
    check_inside(polygons, cmu_xml, (2220, 2967))


def test_missing_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(CamnetError, match="no such file"):
        load_annotations(tmp_path / "none.xml")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(CamnetError, match="unknown format"):
        load_annotations(tmp_path / "a.txt")
    (tmp_path / "b.geojson").write_text("{not json")
    with pytest.raises(CamnetError, match="malformed GeoJSON"):
        load_annotations(tmp_path / "b.geojson")


def test_unknown_groups_are_not_tumour(cmu_xml: Path) -> None:
    polygons = load_annotations(cmu_xml)
    mask = tumour_mask(polygons, AnnotationConfig(tumour_groups=["Metastasis"]), (2220, 2967))
    assert not np.any(mask.array)
