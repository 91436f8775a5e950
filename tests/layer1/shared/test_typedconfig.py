from __future__ import annotations

from pathlib import Path

import pytest

from layer1_patches.config import Layer1Config, load_layer1_config
from layer1_patches.shared.errors import ConfigError
from layer1_patches.shared.typedconfig import apply_overrides, config_hash, from_mapping

from ..conftest import REPO


@pytest.mark.parametrize("name", ["random.yaml", "dense.yaml"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_layer1_config(REPO / "configs" / "layer1" / name)
    assert cfg.sampling.mode == name.removesuffix(".yaml")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"patch_size": "big"}, "config key 'patch_size': expected an integer, got 'big'"),
        ({"patch_size": 4}, "config key 'patch_size': 4 is below the minimum 8"),
        ({"patch_size": True}, "config key 'patch_size': expected an integer"),
        ({"sampling": {"mode": "grid"}}, "config key 'sampling.mode': 'grid' is not one of 'random', 'dense'"),
        ({"sampling": {"dense": {"strid": 3}}}, "config key 'sampling.dense.strid': unknown key"),
        ({"filters": {"white": {"level": 256}}}, "config key 'filters.white.level': 256 is above the maximum 255"),
        ({"resolution": {"level": 0, "mpp": 0.5}}, "config key 'resolution.level|magnification|mpp': set exactly one"),
        ({"resolution": {}}, "set exactly one, got none"),
        ({"labels": {"tumour_threshold": 0.2, "normal_max_tumour": 0.3}}, "'labels.normal_max_tumour': must be below"),
        ({"tissue": {"method": "external"}}, "'tissue.external_mask_dir': required"),
        ({"metadata": {"name_regex": "("}}, "'metadata.name_regex': invalid regex"),
        ({"annotation": {"tumour_groups": "Tumor"}}, "'annotation.tumour_groups': expected a list"),
        ({"sampling": {"random": {"per_class": 0}}}, "'sampling.random.per_class': 0 is below the minimum 1"),
        ({"output": {"codec": "png"}}, "'output.codec': 'png' is not one of"),
        ({"filters": {"white": None}, "foo": 1}, "config key 'foo': unknown key"),
    ],
)
def test_bad_values_name_the_key_path(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_mapping(Layer1Config, data)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_overrides_parse_yaml_values_and_nest() -> None:
    data = apply_overrides({}, ["sampling.random.per_class=7", "filters.white=null", "annotation.tumour_groups=[A, B]"])
    cfg = from_mapping(Layer1Config, data)
    assert cfg.sampling.random.per_class == 7
    assert cfg.filters.white is None
    assert cfg.annotation.tumour_groups == ["A", "B"]


def test_override_without_equals_is_an_error() -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["sampling.seed"])


def test_config_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling: {mode: [\n")
    with pytest.raises(ConfigError, match=f"config file {bad}: line"):
        load_layer1_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("sampling:\n  seed: -1\n")
    with pytest.raises(ConfigError, match=f"{wrong}: config key 'sampling.seed'"):
        load_layer1_config(wrong)
    with pytest.raises(ConfigError, match="cannot read"):
        load_layer1_config(tmp_path / "missing.yaml")


def test_hash_changes_with_any_value() -> None:
    a = from_mapping(Layer1Config, {})
    b = from_mapping(Layer1Config, {"sampling": {"seed": 1}})
    assert config_hash(a) == config_hash(from_mapping(Layer1Config, {}))
    assert config_hash(a) != config_hash(b)
