"""Aperio ImageScope XML (issue 15, part 3): areas and holes known by hand, as the ASAP tests do.

`tests/data/annotations/imagescope.xml` is hand-written in ImageScope's layout (layers with Attributes,
RegionAttributeHeaders, Regions of Vertices, Plots), in level-0 pixels:
- layer "Tumor": freehand square (1000,1000)-(2000,2000) [1e6 px^2], a NegativeROA square (1200,1200)-(1400,1400)
  inside it [4e4], a rectangle (Type 1) (2500,1000)-(3000,1400) [500 x 400 = 2e5], an ellipse (Type 2) with
  bounding-box corners (1000,2200), (1400,2400) [semi-axes 200, 100: pi * 2e4], an arrow (Type 3; no area);
- layer "Exclusion": square (1800,1800)-(2200,2200), overlapping the tumour square's corner by 200 x 200 [4e4];
- an unnamed layer with one triangle labelled (region Text) "Stroma": neither tumour nor excluded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from layer1_patches.annotations import load_annotations, tumour_mask, tumour_region
from layer1_patches.config import AnnotationConfig
from layer1_patches.fractions import TumourGeometry
from layer1_patches.shared.errors import CamnetError

from .conftest import REPO

FIXTURE = REPO / "tests" / "data" / "annotations" / "imagescope.xml"
DIMS = (4000, 3000)
ELLIPSE_AREA = np.pi * 200 * 100


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def _region(kind: str, vertices: Sequence[Sequence[float]], negative: int = 0) -> str:
    points = "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in vertices)
    return f'<Region Id="1" Type="{kind}" NegativeROA="{negative}"><Vertices>{points}</Vertices></Region>'


def _imagescope(path: Path, *layers: tuple[str, Sequence[str]]) -> Path:
    body = "".join(f'<Annotation Id="{k}" Name="{name}"><Regions>{"".join(regions)}</Regions></Annotation>'
                   for k, (name, regions) in enumerate(layers))
    path.write_text(f'<?xml version="1.0"?><Annotations MicronsPerPixel="0.25">{body}</Annotations>')
    return path


def _square(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def test_imagescope_xml_is_read_not_rejected_for_its_annotations_root(tmp_path: Path) -> None:
    # Issue 15: "Aperio ImageScope XML (rejected: root is <Annotations>)".
    path = _imagescope(tmp_path / "s.xml", ("Tumor", [_region("0", _square(0, 0, 100, 100))]))
    polygons = load_annotations(path)
    assert [(p.name, p.group) for p in polygons] == [("Tumor", "Tumor")]
    assert tumour_region(polygons, AnnotationConfig()).area == 100 * 100


def test_imagescope_fixture_areas_holes_and_groups(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    polygons = load_annotations(FIXTURE)
    assert [p.group for p in polygons] == ["Tumor", "Tumor", "Tumor", "Exclusion", "Stroma"]
    assert len(polygons[0].holes) == 1  # the NegativeROA square, kept as a hole of the untouched outline
    assert polygons[0].points.tolist() == [[1000, 1000], [2000, 1000], [2000, 2000], [1000, 2000]]
    assert _warnings(caplog) == [f"annotation {FIXTURE}: Annotation 0 ('Tumor') region 4 has Type 3, not a polygon "
                                 "(0), rectangle (1) or ellipse (2); ignored"]
    region = tumour_region(polygons, AnnotationConfig())
    # square - hole - excluded corner + rectangle + ellipse (a 256-gon: within 0.01% of pi a b)
    assert region.area == pytest.approx(1e6 - 4e4 - 4e4 + 2e5 + ELLIPSE_AREA, abs=ELLIPSE_AREA * 2e-4)
    ellipse = polygons[2]
    assert ellipse.points[:, 0].min() == pytest.approx(1000) and ellipse.points[:, 0].max() == pytest.approx(1400)
    assert ellipse.points[:, 1].min() == pytest.approx(2200) and ellipse.points[:, 1].max() == pytest.approx(2400)


def test_imagescope_hole_and_exclusion_reach_the_mask_and_the_exact_fractions() -> None:
    polygons = load_annotations(FIXTURE)
    cfg = AnnotationConfig(downsample=10)
    mask = tumour_mask(polygons, cfg, DIMS).array  # pixel (r, c) covers level-0 [10c, 10c + 10) x [10r, 10r + 10)
    assert mask[110, 110] and mask[120, 260] and mask[230, 120]  # square, rectangle, ellipse centre
    assert not mask[130, 130] and not mask[195, 195] and not mask[230, 320]  # hole, excluded corner, Stroma
    geometry = TumourGeometry.of(tumour_region(polygons, cfg))
    coords = np.array([[1200, 1200], [1100, 1200], [1700, 1700], [1500, 1500]])
    # the hole itself: 0; half over the hole: 0.5; 100 x 100 of its 200 x 200 in the exclusion: 0.75; inside: 1
    assert geometry.fractions(coords, 200).tolist() == [0.0, 0.5, 0.75, 1.0]


def test_imagescope_negative_region_across_the_outline_is_cut_out(tmp_path: Path) -> None:
    path = _imagescope(tmp_path / "cross.xml", ("tumour", [
        _region("0", _square(0, 0, 1000, 1000)), _region("0", _square(900, 0, 1100, 1000), negative=1)]))
    polygons = load_annotations(path)
    assert tumour_region(polygons, AnnotationConfig()).area == 900 * 1000
    mask = tumour_mask(polygons, AnnotationConfig(downsample=10), (2000, 1000)).array
    assert mask.sum() == 90 * 100


def test_imagescope_triangle_and_rectangle_areas(tmp_path: Path) -> None:
    triangle = [(100, 100), (700, 100), (100, 500)]  # legs 600 and 400: area 600 * 400 / 2 = 120000
    path = _imagescope(tmp_path / "t.xml", ("Tumor", [_region("0", triangle)]),
                       ("_0", [_region("1", _square(1000, 0, 1300, 200))]))  # 300 x 200, Camelyon group _0
    assert tumour_region(load_annotations(path), AnnotationConfig()).area == 120000 + 60000


def test_imagescope_layer_without_name_takes_its_region_text(tmp_path: Path) -> None:
    region = '<Region Type="0" Text="Tumour"><Vertices>' + "".join(
        f'<Vertex X="{x}" Y="{y}"/>' for x, y in _square(0, 0, 10, 10)) + "</Vertices></Region>"
    path = _imagescope(tmp_path / "t.xml", ("", [region]))
    assert [p.group for p in load_annotations(path)] == ["Tumour"]


def test_negative_region_of_another_layer_does_not_cut(tmp_path: Path) -> None:
    path = _imagescope(tmp_path / "t.xml", ("Tumor", [_region("0", _square(0, 0, 100, 100))]),
                       ("Other", [_region("0", _square(0, 0, 50, 50), negative=1)]))
    assert tumour_region(load_annotations(path), AnnotationConfig()).area == 100 * 100


@pytest.mark.parametrize(
    ("region", "message"),
    [(_region("2", [(0, 0), (10, 10), (20, 0)]), "region 0: ellipse with 3 vertices"),
     (_region("0", []), "region 0 has empty coordinates"),
     (_region("0", [(0, 0), (10, 0)]), "region 0 has fewer than 3 coordinates"),
     ('<Region Type="0"><Vertices><Vertex X="a" Y="1"/></Vertices></Region>', "region 0 has a non-numeric coordinate")],
    ids=["ellipse-3-vertices", "empty", "two-vertices", "non-numeric"],
)
def test_malformed_imagescope_region_is_one_error_naming_file_and_region(
        tmp_path: Path, region: str, message: str) -> None:
    path = _imagescope(tmp_path / "bad.xml", ("Tumor", [region]))
    with pytest.raises(CamnetError) as err:
        load_annotations(path)
    assert str(err.value).startswith(f"annotation {path}: Annotation 0 ('Tumor') {message}")


def test_halo_named_types_and_short_vertices_read_as_imagescope(tmp_path: Path) -> None:
    def region(kind: str, vertices: Sequence[Sequence[float]]) -> str:
        points = "".join(f'<V X="{x}" Y="{y}"/>' for x, y in vertices)
        return f'<Region Type="{kind}" HasEndcaps="0" NegativeROA="0"><Vertices>{points}</Vertices></Region>'

    path = _imagescope(tmp_path / "halo.xml", ("Tumor", [
        region("Polygon", [(0, 0), (300, 0), (0, 200)]),  # triangle: 300 * 200 / 2 = 30000
        region("Rectangle", [(1000, 0), (1300, 200)]),  # two corners: 300 x 200 = 60000
        region("Ellipse", [(0, 500), (400, 700)]),  # semi-axes 200, 100
        region("Ruler", [(0, 900), (500, 900)])]))
    assert tumour_region(load_annotations(path), AnnotationConfig()).area == pytest.approx(
        30000 + 60000 + ELLIPSE_AREA, abs=ELLIPSE_AREA * 2e-4)


def test_other_xml_root_names_both_formats(tmp_path: Path) -> None:
    path = tmp_path / "o.xml"
    path.write_text("<Regions/>")
    with pytest.raises(CamnetError, match=r"root element is <Regions>, expected <ASAP_Annotations> \(ASAP\) or "
                                          r"<Annotations> \(Aperio ImageScope\)"):
        load_annotations(path)
