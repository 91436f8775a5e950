from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
from skimage.draw import polygon as fill_polygon

from layer1_patches.annotations import Polygon, check_inside, load_annotations, tumour_mask
from layer1_patches.config import AnnotationConfig
from layer1_patches.shared.errors import CamnetError
from tests.helpers import assert_one_error

from .conftest import CMU, REPO, run_cli

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
         "</Coordinates></Annotation></Annotations></ASAP_Annotations>",
         "Annotation 0 ('a') has fewer than 3 coordinates"),
        ('<ASAP_Annotations><Annotations><Annotation Name="b"><Coordinates><Coordinate Order="0" X="one" Y="1"/>'
         "</Coordinates></Annotation></Annotations></ASAP_Annotations>",
         "Annotation 0 ('b') has a non-numeric coordinate"),
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


# --- geometry validation (issue 13, item 6) ---------------------------------------------------------------

SQUARE = [[100, 100], [400, 100], [400, 400], [100, 400], [100, 100]]
BOW_TIE = [[0, 0], [10, 10], [10, 0], [0, 10]]


def _feature(name: str, geometry: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geometry, "properties": {"name": name, "classification": {"name": "Tumor"}}}


def _geojson(path: Path, *features: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": list(features)}))
    return path


def _asap(path: Path, *outlines: tuple[str, Sequence[Sequence[float]]]) -> Path:
    annotations = "".join(
        f'<Annotation Name="{name}" PartOfGroup="Tumor"><Coordinates>'
        + "".join(f'<Coordinate Order="{k}" X="{x}" Y="{y}"/>' for k, (x, y) in enumerate(points))
        + "</Coordinates></Annotation>" for name, points in outlines)
    path.write_text(f"<ASAP_Annotations><Annotations>{annotations}</Annotations></ASAP_Annotations>")
    return path


def _square_features() -> list[dict[str, Any]]:
    return [_feature(f"ok {k}", {"type": "Polygon", "coordinates": [SQUARE]}) for k in range(3)]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize(
    "geometry",
    [{"type": "Polygon", "coordinates": []}, {"type": "Polygon", "coordinates": [[]]},
     {"type": "Polygon"}, {"type": "Polygon", "coordinates": None},
     {"type": "Polygon", "coordinates": [SQUARE, []]},
     {"type": "MultiPolygon", "coordinates": []}, {"type": "MultiPolygon", "coordinates": [[]]},
     {"type": "MultiPolygon", "coordinates": [[SQUARE], []]}, {"type": "MultiPolygon", "coordinates": [[[]]]}],
    ids=["polygon-[]", "polygon-[[]]", "polygon-missing", "polygon-null", "empty-hole", "multi-[]",
         "multi-[[]]", "multi-empty-member", "multi-[[[]]]"],
)
def test_empty_geojson_polygon_is_an_error_not_a_tumour_free_slide(tmp_path: Path, geometry: dict[str, Any]) -> None:
    path = _geojson(tmp_path / "X.geojson", *_square_features(), _feature("Tumor 1", geometry))
    with pytest.raises(CamnetError) as err:
        load_annotations(path)
    assert str(err.value) == f"annotation {path}: feature 3 ('Tumor 1') has empty coordinates"


def test_xml_annotation_without_coordinates_says_empty(tmp_path: Path) -> None:
    path = _asap(tmp_path / "X.xml", ("T0", SQUARE), ("T1", []))
    with pytest.raises(CamnetError) as err:
        load_annotations(path)
    assert str(err.value) == f"annotation {path}: Annotation 1 ('T1') has empty coordinates"


@pytest.mark.parametrize(
    "geometry",
    [{"type": "MultiPolygon", "coordinates": 5}, {"type": "Polygon", "coordinates": "abc"},
     {"type": "Polygon", "coordinates": [[[0], [5], [9]]]}],
    ids=["multi-number", "polygon-string", "one-number-points"],
)
def test_non_list_or_one_number_coordinates_are_malformed_not_a_traceback(
        tmp_path: Path, geometry: dict[str, Any]) -> None:
    path = _geojson(tmp_path / "X.geojson", _feature("odd", geometry))
    with pytest.raises(CamnetError, match=r"X\.geojson: feature 0 \('odd'\) has malformed coordinates"):
        check_inside(load_annotations(path), path, DIMS)


def _raster_today(rings: Sequence[Sequence[Sequence[float]]], shape: tuple[int, ...], ds: float) -> np.ndarray:
    """Today's rasterisation written out: outer ring filled, holes cut, pixel centres at (c + 0.5) * ds."""
    out = np.zeros(shape, dtype=bool)
    for k, ring in enumerate(rings):
        points = np.asarray(ring, dtype=np.float64)
        inside = np.zeros(shape, dtype=bool)
        inside[fill_polygon(points[:, 1] / ds - 0.5, points[:, 0] / ds - 0.5, shape)] = True
        out = inside if k == 0 else out & ~inside
    return out


def _outline(vertices: int, seed: int) -> list[list[float]]:
    """A real-looking tumour outline: a wobbly star of fractional level-0 coordinates, counter-clockwise."""
    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    radii = 300 * (1 + sum(rng.uniform(0, 0.05) * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
                           for k in range(2, 12)) + rng.uniform(-0.01, 0.01, vertices))
    return np.stack([1000 + radii * np.cos(angles), 500 + radii * np.sin(angles)], axis=1).round(3).tolist()


def test_valid_polygons_are_passed_on_untouched_and_rasterise_as_today(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    outline = _outline(500, seed=3)
    shell = [[100, 100], [900, 100], [900, 900], [100, 900], [100, 100]]
    hole = [[300, 300], [500, 300], [500, 500], [300, 500], [300, 300]]  # wound like its shell: re-orienting flips it
    concave = [[1500, 100], [1900, 100], [1900, 900], [1700, 300], [1500, 900]]
    shapes: list[list[Any]] = [[outline], [shell, hole], [concave]]
    assert all(shapely.Polygon(rings[0], rings[1:]).is_valid for rings in shapes)  # else this test proves nothing
    path = _geojson(tmp_path / "ok.geojson",
                    *[_feature(f"v{k}", {"type": "Polygon", "coordinates": rings}) for k, rings in enumerate(shapes)])
    caplog.set_level(logging.WARNING)
    polygons = load_annotations(path) + load_annotations(_asap(tmp_path / "ok.xml", ("o", outline), ("c", concave)))
    assert not _warnings(caplog)
    got = [[p.points.tolist(), *(h.tolist() for h in p.holes)] for p in polygons]
    assert got == [*shapes, [outline], [concave]]  # same vertices, same order, same orientation
    cfg = AnnotationConfig(downsample=4)
    mask = tumour_mask(polygons, cfg, DIMS).array
    today = np.zeros_like(mask)
    for rings in shapes:
        today |= _raster_today(rings, mask.shape, 4)
    assert np.array_equal(mask, today)


def test_bow_tie_is_repaired_into_two_triangles_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _geojson(tmp_path / "bow.geojson", _feature("ok", {"type": "Polygon", "coordinates": [SQUARE]}),
                    _feature("bow", {"type": "Polygon", "coordinates": [BOW_TIE]}))
    caplog.set_level(logging.WARNING)
    polygons = load_annotations(path)[1:]
    assert _warnings(caplog) == [f"annotation {path}: feature 1 ('bow') is invalid (Self-intersection[5 5]); "
                                 "repaired into 2 polygon(s)"]
    assert sorted(sorted(set(map(tuple, p.points.tolist()))) for p in polygons) == [
        [(0, 0), (0, 10), (5, 5)], [(5, 5), (10, 0), (10, 10)]]
    cfg = AnnotationConfig(downsample=1)
    mask = tumour_mask(polygons, cfg, (10, 10)).array
    left = Polygon("l", "Tumor", np.array([[0, 0], [5, 5], [0, 10]], dtype=np.float64))
    right = Polygon("r", "Tumor", np.array([[10, 0], [5, 5], [10, 10]], dtype=np.float64))
    assert np.array_equal(mask, tumour_mask([left], cfg, (10, 10)).array | tumour_mask([right], cfg, (10, 10)).array)
    # By hand: pixel (r, c) is centred at (c + .5, r + .5); a closed triangle takes c <= min(r, 9 - r) (left).
    r, c = np.mgrid[:10, :10]
    assert np.array_equal(mask, (c <= np.minimum(r, 9 - r)) | (9 - c <= np.minimum(r, 9 - r)))


def test_xml_self_intersecting_outline_is_repaired_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    crossing = [[x * 100, y * 100] for x, y in BOW_TIE]
    path = _asap(tmp_path / "cross.xml", ("T0", SQUARE), ("T1", crossing))
    caplog.set_level(logging.WARNING)
    polygons = load_annotations(path)
    assert _warnings(caplog) == [f"annotation {path}: Annotation 1 ('T1') is invalid (Self-intersection[500 500]); "
                                 "repaired into 2 polygon(s)"]
    assert [p.name for p in polygons] == ["T0", "T1", "T1"] and {p.group for p in polygons} == {"Tumor"}
    cfg = AnnotationConfig(downsample=10)
    triangles = [Polygon("t", "Tumor", np.array(t, dtype=np.float64))
                 for t in ([[0, 0], [500, 500], [0, 1000]], [[1000, 0], [500, 500], [1000, 1000]])]
    expected = tumour_mask(polygons[:1] + triangles, cfg, DIMS).array
    assert np.array_equal(tumour_mask(polygons, cfg, DIMS).array, expected)


def test_repair_keeps_polygons_and_says_it_dropped_a_spike(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spike = [*SQUARE, [250, 250]]  # back to the start, then a zero-width spike into the middle
    path = _geojson(tmp_path / "spike.geojson", _feature("spiky", {"type": "Polygon", "coordinates": [spike]}))
    caplog.set_level(logging.WARNING)
    polygons = load_annotations(path)
    [message] = _warnings(caplog)
    assert "feature 0 ('spiky') is invalid (Ring Self-intersection[100 100])" in message
    assert message.endswith("repaired into 1 polygon(s); dropped 1 line/point part(s) that enclose no area")
    cfg = AnnotationConfig(downsample=10)
    square = Polygon("s", "Tumor", np.array(SQUARE, dtype=np.float64))
    assert np.array_equal(tumour_mask(polygons, cfg, DIMS).array, tumour_mask([square], cfg, DIMS).array)


def test_hole_outside_its_shell_is_reported_and_does_not_become_tumour(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stray = [[600, 600], [800, 600], [800, 800], [600, 800], [600, 600]]
    path = _geojson(tmp_path / "hole.geojson", _feature("holey", {"type": "Polygon", "coordinates": [SQUARE, stray]}))
    caplog.set_level(logging.WARNING)
    polygons = load_annotations(path)
    [message] = _warnings(caplog)
    assert "feature 0 ('holey') is invalid (Hole lies outside shell[600 600])" in message
    cfg = AnnotationConfig(downsample=10)
    square = Polygon("s", "Tumor", np.array(SQUARE, dtype=np.float64))
    assert np.array_equal(tumour_mask(polygons, cfg, DIMS).array, tumour_mask([square], cfg, DIMS).array)


def test_outline_enclosing_no_area_is_reported_and_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _asap(tmp_path / "flat.xml", ("flat", [[0, 0], [10, 0], [20, 0]]))
    caplog.set_level(logging.WARNING)
    assert load_annotations(path) == []
    [message] = _warnings(caplog)
    assert "Annotation 0 ('flat') is invalid (" in message and message.endswith("encloses no area; ignored")


def test_extract_refuses_an_empty_tumour_polygon(tmp_path: Path) -> None:
    path = _geojson(tmp_path / "ann.geojson", _feature("Tumor 1", {"type": "Polygon", "coordinates": []}))
    out = tmp_path / "out"
    proc = run_cli("extract", "--config", str(REPO / "configs" / "layer1" / "random.yaml"), "--slide", str(CMU),
                   "--annotation", str(path), "--out", str(out))
    assert_one_error(proc, str(path), "feature 0 ('Tumor 1') has empty coordinates")
    assert not list(out.glob("*.h5")) if out.exists() else True
