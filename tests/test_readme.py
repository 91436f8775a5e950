"""The README is the user's manual: its config reference must list every key the schemas accept."""

from __future__ import annotations

from pathlib import Path

import pytest

from layer1_patches.config import Layer1Config
from layer1_patches.typedconfig import describe
from layer2_training.config import Layer2Config
from layer3_inference.config import EvaluateConfig, HeatmapConfig
from layer3_inference.explain.config import ExplainConfig
from layer3_inference.pipeline.config import ExperimentConfig

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


SCHEMAS = [Layer1Config, Layer2Config, HeatmapConfig, EvaluateConfig, ExplainConfig, ExperimentConfig]


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda c: c.__name__)
def test_every_config_key_is_documented(schema: type) -> None:
    missing = [path for path, *_ in describe(schema) if f"`{path}`" not in README]
    assert not missing, f"README lacks config keys: {missing}"


def test_readme_gives_the_two_setup_commands() -> None:
    assert "make demo" in README and "make test" in README
