"""The experiment templates users copy: each validates, and the tutorial's runs without ImageNet weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from layer1_patches.shared.errors import CamnetError
from layer2_training.weights import resolve_weights
from layer3_inference.pipeline.config import load_experiment

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = sorted((REPO / "configs" / "experiment").glob("*.yaml"))


def layer2_weights(template: Path) -> Path | None:
    """Layer 2's weights resolution for the template's resolved Layer 2 config, as `train` runs it."""
    model = load_experiment(template, base=REPO).layers["layer2"].model
    return resolve_weights(model.weights, model.backbone, model.input_size or 224, model.weights_cache)


def test_templates_include_the_tutorial_and_camelyon16() -> None:
    assert {"tutorial.yaml", "camelyon16.yaml", "demo.yaml"} <= {p.name for p in TEMPLATES}


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_every_experiment_template_validates(template: Path) -> None:
    exp = load_experiment(template, base=REPO)
    assert exp.cfg.slides and set(exp.layers) >= {"layer1", "layer2", "heatmap", "evaluate"}


def test_tutorial_template_needs_no_downloaded_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-cache"))  # what a machine without internet has
    assert layer2_weights(REPO / "configs" / "experiment" / "tutorial.yaml") is None


def test_camelyon16_without_cached_weights_is_one_line_naming_cache_and_fetch_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "empty-cache"
    monkeypatch.setenv("KERAS_HOME", str(cache))
    with pytest.raises(CamnetError) as err:
        layer2_weights(REPO / "configs" / "experiment" / "camelyon16.yaml")
    message = str(err.value)
    assert "\n" not in message
    assert f"--cache {cache}" in message and "fetch-weights --backbone resnet50" in message
    assert str(cache / "models") in message  # the file that is missing, so the user can check the path
