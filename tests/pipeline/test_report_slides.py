"""The report's heatmap section: the annotation as a contour over the probabilities, the tissue under them, no
overlap figures for a slide without annotation, and each slide's GeoJSON linked for QuPath."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from layer3_inference.pipeline.config import load_experiment
from layer3_inference.pipeline.layout import Layout
from layer3_inference.pipeline.report import render

from .conftest import parse_report
from .test_report import EVALUATION_V2, computed  # noqa: F401 (computed: a pytest fixture, used by name)


def test_a_slide_without_annotation_showed_dice_0_and_a_red_annotation(computed: Path) -> None:  # noqa: F811
    from layer3_inference.pipeline.collect import collect

    exp = load_experiment(computed)
    layout = Layout(exp.out)
    # evaluate scores an unannotated slide against an empty mask: Dice 0 for any prediction
    (layout.evaluate / "cohort.csv").write_text(
        "slide,split,label,slide_score,pixel_auc,dice,iou,annotation\n"
        "patient_000_node_0,test,1,0.97,0.95,0.81,0.7,/a/patient_000_node_0.xml\n"
        "patient_001_node_0,test,0,0.91,,0.0,0.0,\n")
    (layout.evaluate / "summary.json").write_text(json.dumps(EVALUATION_V2))
    (layout.heatmaps / "patient_001_node_0" / "overlay.png").write_bytes(png(np.full((8, 12, 4), 200, np.uint8)))
    data = collect(exp)
    parsed = parse_report(render(data))
    cohort = {r["slide"]: r for r in parsed.tables["cohort"]}
    assert cohort["patient_001_node_0"]["dice"] == cohort["patient_001_node_0"]["pixel_auc"] == "no annotation"
    assert cohort["patient_000_node_0"]["dice"] == "0.8100"
    test_rows = {r["slide"]: r for r in parsed.tables["evaluate-test"]}
    assert test_rows["patient_001_node_0"]["dice"] == "no annotation" and test_rows["patient_000_node_0"]["dice"] \
        == "0.8100"
    caption = parsed.texts["caption-patient_001_node_0"]
    assert "no annotation" in caption and "red" not in caption


def png(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def decoded(data: bytes) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def test_the_annotation_is_a_contour_over_the_heatmap_not_a_picture_beside_it() -> None:
    from layer3_inference.pipeline.report_figures import slide_figure

    overlay = np.zeros((60, 80, 4), np.uint8)
    overlay[10:50, 10:70] = (68, 1, 84, 128)  # viridis' 0, half opaque
    tissue = np.zeros((30, 40), bool)
    tissue[3:27, 3:37] = True
    tumour = np.zeros((30, 40), bool)
    tumour[10:20, 15:25] = True
    red = [np.nonzero((p[..., 0] > 200) & (p[..., 1] < 80) & (p[..., 2] < 80))[0]
           for p in (decoded(slide_figure(overlay, tissue, tumour, "viridis")),
                     decoded(slide_figure(overlay, tissue, None, "viridis")))]
    # the contour is drawn in the picture (rows spanning a third of it, not just the legend's line below it),
    # and only when there is one
    assert len(red[0]) and red[0].max() - red[0].min() > 100 and len(red[1]) == 0


def test_report_figure_shows_the_tissue_under_the_probabilities() -> None:
    from layer3_inference.pipeline.report_figures import slide_figure

    overlay = np.zeros((60, 80, 4), np.uint8)  # no prediction anywhere: only the tissue should show
    tissue = np.zeros((60, 80), bool)
    tissue[:, :40] = True
    pixels = decoded(slide_figure(overlay, tissue, None, "viridis"))
    assert np.sum(np.all(pixels == 215, axis=-1)) > 20000  # the tissue's light grey: half the image, not the legend


def test_heatmaps_default_to_a_perceptually_uniform_colormap() -> None:
    from layer3_inference.config import OutputConfig

    assert OutputConfig().colormap == "viridis"


def test_each_slide_links_its_geojson_relative_to_the_report(computed: Path) -> None:  # noqa: F811
    from layer3_inference.pipeline.collect import collect

    exp = load_experiment(computed)
    layout = Layout(exp.out)
    (layout.heatmaps / "normal_9" / "normal_9.geojson").write_text("{}")
    data = collect(exp)
    links = {v.slide: v.geojson for v in data.slides}
    assert links == {"patient_000_node_0": None, "patient_001_node_0": None,
                     "normal_9": "../heatmaps/normal_9/normal_9.geojson"}
    assert (layout.report.parent / str(links["normal_9"])).resolve() == (layout.heatmaps / "normal_9" /
                                                                          "normal_9.geojson").resolve()
    page = render(data)
    assert 'href="../heatmaps/normal_9/normal_9.geojson"' in page and "QuPath" in parse_report(page).texts["qupath"]
