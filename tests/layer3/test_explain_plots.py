"""`layer3_inference/explain/plots.py`: what each figure shows (panels, colour limits, lines, skipped rows).

The figures are captured before saving (`_save` replaced) and their axes inspected; one test saves for real.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from layer3_inference.explain import plots


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    captured: list[Any] = []

    def keep(fig: Any, path: Path, _dpi: int) -> Path:
        captured.append(fig)
        return path

    monkeypatch.setattr(plots, "_save", keep)
    yield captured
    for fig in captured:
        plots.plt.close(fig)


PATCH = np.full((8, 8, 3), 200, np.uint8)


def test_panel_shows_the_patch_then_each_map_with_its_colour_limits(figures: list[Any]) -> None:
    cam = np.zeros((8, 8), np.float32)
    cam[2, 3] = 4.0
    lime = np.zeros((8, 8), np.float32)
    lime[0, 0], lime[1, 1] = -3.0, 1.5
    plots.panel(Path("p.png"), PATCH, {"lime": lime, "gradcam_pp": np.zeros((8, 8)), "gradcam": cam}, "t", 50)
    (fig,) = figures
    axes = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in axes] == ["patch", "Grad-CAM", "Grad-CAM++", "LIME (tumour weight)"]
    clims = [ax.get_images()[-1].get_clim() for ax in axes[1:]]
    assert clims == [(0.0, 4.0), (0.0, 1.0), (-3.0, 3.0)]  # CAM 0..max (1 when all zero), LIME symmetric


def test_panels_were_each_on_their_own_scale_so_none_could_be_compared(figures: list[Any]) -> None:
    """Regression (issue 16): each panel scaled its maps to its own maximum, so a patch whose Grad-CAM peaked at
    0.1 looked exactly as hot as one peaking at 4. One scale per method across the selected patches now."""
    weak, strong = np.full((8, 8), 0.1, np.float32), np.zeros((8, 8), np.float32)
    strong[1, 1] = 4.0
    lime_a, lime_b = np.full((8, 8), 0.5, np.float32), np.full((8, 8), -2.0, np.float32)
    maps = [{"gradcam": weak, "lime": lime_a}, {"gradcam": strong, "lime": lime_b}]
    scales = plots.shared_scales(maps)
    assert scales == {"gradcam": 4.0, "lime": 2.0}  # by hand: max CAM 4.0, max |LIME| 2.0
    for row in maps:
        plots.panel(Path("p.png"), PATCH, row, "t", 50, scales)
    for fig in figures:
        axes = [ax for ax in fig.axes if ax.get_title()]
        assert [ax.get_images()[-1].get_clim() for ax in axes[1:]] == [(0.0, 4.0), (-2.0, 2.0)]
        assert all(ax.title.get_fontsize() >= 12 for ax in axes)


def test_panel_with_only_some_maps(figures: list[Any]) -> None:
    plots.panel(Path("p.png"), PATCH, {"lime": np.zeros((8, 8))}, "t", 50)
    titles = [ax.get_title() for ax in figures[0].axes if ax.get_title()]
    assert titles == ["patch", "LIME (tumour weight)"]
    assert figures[0].axes[1].get_images()[-1].get_clim() == (-1.0, 1.0)  # all-zero LIME: +-1


def test_r2_by_layer_one_line_per_concept_nan_where_missing(figures: list[Any]) -> None:
    rows = [{"layer": "b1", "concept": "area", "r2_heldout": 0.1},
            {"layer": "b2", "concept": "area", "r2_heldout": 0.6},
            {"layer": "b2", "concept": "contrast", "r2_heldout": -0.2}]
    plots.r2_by_layer(Path("r2.png"), rows, 50)
    (ax,) = figures[0].axes
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()
             if not str(line.get_label()).startswith("_")}
    assert lines["area"] == [0.1, 0.6]
    assert math.isnan(lines["contrast"][0]) and lines["contrast"][1] == -0.2
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b1", "b2"]
    assert not [line for line in ax.get_lines() if line.get_linestyle() == "--"]  # no baseline in the rows: none


def test_r2_by_layer_draws_each_concepts_label_baseline_dashed_in_its_colour(figures: list[Any]) -> None:
    rows = [{"layer": "b1", "concept": "area", "r2_heldout": 0.3, "r2_label_baseline": 0.25},
            {"layer": "b2", "concept": "area", "r2_heldout": 0.7, "r2_label_baseline": 0.25},
            {"layer": "b1", "concept": "count", "r2_heldout": 0.1, "r2_label_baseline": None}]
    plots.r2_by_layer(Path("r2.png"), rows, 50)
    (ax,) = figures[0].axes
    solid = {str(line.get_label()): line for line in ax.get_lines() if line.get_linestyle() == "-"}
    (dashed,) = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert list(dashed.get_ydata()) == [0.25, 0.25] and dashed.get_color() == solid["area"].get_color()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["area", "count"]  # baselines not in the legend


def test_tcav_vs_random_shows_status_and_adjusted_p_and_undefined_rows_as_such(figures: list[Any]) -> None:
    rows: list[dict[str, Any]] = [
        {"layer": "b1", "concept": "area", "tcav_random": [0.4, 0.5, 0.6], "tcav_repeats": [0.9, 0.95],
         "p_adjusted": 0.012, "significant": True, "status": "significant"},
        {"layer": "b1", "concept": "contrast", "tcav_random": [], "tcav_repeats": [], "p_adjusted": None,
         "significant": None, "status": "undefined"},
        {"layer": "b2", "concept": "area", "tcav_random": [0.2, 0.8], "tcav_repeats": [0.9, 0.9],
         "p_adjusted": 0.001, "significant": False, "status": "restates class"},
        {"layer": "b2", "concept": "contrast", "tcav_random": [0.5, 0.4], "tcav_repeats": [0.5, 0.6],
         "p_adjusted": 0.5, "significant": False, "status": "not significant"}]
    plots.tcav_vs_random(Path("tcav.png"), rows, 50)
    ax1, ax2 = figures[0].axes
    assert [t.get_text() for t in ax1.texts] == ["p_adj=0.012*", "undefined"]
    assert ax1.texts[1].get_color() == "grey"
    assert [t.get_text() for t in ax2.texts] == ["restates class\np_adj=0.001", "p_adj=0.5"]
    assert len(ax1.collections[0].get_offsets()) == 2 and len(ax1.collections[1].get_offsets()) == 0
    assert [t.get_text() for t in ax1.get_xticklabels()] == ["area", "contrast"]


def test_figures_are_saved_atomically_as_png(tmp_path: Path) -> None:
    path = plots.panel(tmp_path / "panel.png", PATCH, {"gradcam": np.ones((8, 8))}, "t", 30)
    assert path == tmp_path / "panel.png"
    assert Image.open(path).format == "PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["panel.png"]
