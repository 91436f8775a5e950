"""The README is the user's manual: its config tables, generated from the schemas, list every key with its doc."""

from __future__ import annotations

from pathlib import Path

import pytest

from layer1_patches.config import Layer1Config
from layer1_patches.shared.typedconfig import describe
from layer2_training.config import Layer2Config
from layer3_inference.config import EvaluateConfig, HeatmapConfig
from layer3_inference.explain.config import ExplainConfig
from layer3_inference.pipeline import configdoc
from layer3_inference.pipeline.config import ExperimentConfig

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


SCHEMAS = [Layer1Config, Layer2Config, HeatmapConfig, EvaluateConfig, ExplainConfig, ExperimentConfig]


def readme_table(name: str) -> str:
    begin, end = configdoc.markers(name)
    return README.partition(begin)[2].partition(end)[0]


def test_the_generator_covers_every_layer_config() -> None:
    assert sorted(c.__name__ for c in configdoc.TABLES.values()) == sorted(c.__name__ for c in SCHEMAS)


@pytest.mark.parametrize("name", list(configdoc.TABLES))
def test_every_config_key_is_documented(name: str) -> None:
    rows = describe(configdoc.TABLES[name])
    undocumented = [key for key, _, _, doc in rows if not doc.strip()]
    assert not undocumented, f"{configdoc.TABLES[name].__name__}: keys without a doc: {undocumented}"
    table = readme_table(name)
    missing = [key for key, *_ in rows if f"| `{key}` |" not in table]
    assert not missing, f"README's {name} config table lacks keys: {missing}"


def test_readme_config_tables_are_the_generated_ones() -> None:
    stale = configdoc.stale(README)
    assert not stale, f"stale config tables in README.md: {stale}; run {configdoc.COMMAND}"


def test_readme_gives_the_two_setup_commands() -> None:
    assert "make demo" in README and "make test" in README
