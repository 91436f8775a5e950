from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from layer1_patches.config import Layer1Config, load_layer1_config
from layer1_patches.shared.errors import ConfigError
from layer1_patches.shared.sources import anchor_paths, path_keys
from layer1_patches.shared.typedconfig import apply_overrides, bounded, config_hash, from_mapping

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


def test_bad_set_value_is_reported_against_the_command_line_not_the_file(tmp_path: Path) -> None:
    """Regression: `--set patch_size=big` was reported as `random.yaml: config key 'patch_size': ...`."""
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("patch_size: 64\nresolution: {mpp: 0.5}\n")
    with pytest.raises(ConfigError) as err:
        load_layer1_config(cfg, ["patch_size=big"])
    assert str(err.value) == "--set patch_size: config key 'patch_size': expected an integer, got 'big'"
    cfg.write_text("patch_size: big\nresolution: {mpp: 0.5}\n")  # the file's own bad value still names the file
    with pytest.raises(ConfigError, match=f"^{cfg}: config key 'patch_size': expected an integer"):
        load_layer1_config(cfg, ["sampling.seed=1"])


def test_set_with_a_typo_in_a_section_name_is_reported_against_the_command_line(tmp_path: Path) -> None:
    """Regression (review of issue 16): the error names the unknown section (`sampling.randm`), a prefix of the
    `--set` key, so only exact or deeper keys were matched and the file was blamed."""
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("patch_size: 64\nresolution: {mpp: 0.5}\n")
    with pytest.raises(ConfigError) as err:
        load_layer1_config(cfg, ["sampling.randm.per_class=3"])
    assert str(err.value).startswith("--set sampling.randm.per_class: config key 'sampling.randm': unknown key")


def test_plus_equals_appends_to_a_list_instead_of_replacing_it() -> None:
    given: set[str] = set()
    data = apply_overrides({"annotation": {"tumour_groups": ["A"]}},
                           ["annotation.tumour_groups+=[B, C]", "annotation.tumour_groups+=D"], Layer1Config, given)
    assert data["annotation"]["tumour_groups"] == ["A", "B", "C", "D"]
    assert given == {"annotation.tumour_groups[1]", "annotation.tumour_groups[2]", "annotation.tumour_groups[3]"}
    # a key the file does not set grows from its default, not from nothing
    data = apply_overrides({}, ["annotation.exclude_groups+=Other"], Layer1Config)
    assert data["annotation"]["exclude_groups"] == [*Layer1Config().annotation.exclude_groups, "Other"]


@pytest.mark.parametrize("data", [{}, {"patch_size": 64}])
def test_plus_equals_on_a_non_list_key_is_an_error_naming_the_key(data: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"^--set 'patch_size\+=8': config key 'patch_size' is not a list"):
        apply_overrides(data, ["patch_size+=8"], Layer1Config)


@dataclass(frozen=True)
class _Inner:
    table: str | None = bounded(None, doc="a file", path=True)
    name: str = bounded("x", doc="not a path")


@dataclass(frozen=True)
class _Outer:
    files: list[str] = bounded([], doc="files", path=True)
    inner: _Inner | None = bounded(_Inner(), doc="a section")


def test_path_fields_are_listed_and_anchored_to_the_given_folder(tmp_path: Path) -> None:
    assert path_keys(_Outer) == ["files", "inner.table"]
    data: dict[str, object] = {"files": ["a.svs", "/abs/b.svs", "../c.svs"], "inner": {"table": "t.csv", "name": "n"}}
    anchored = anchor_paths(data, path_keys(_Outer), tmp_path / "cfg")
    assert data == {"files": [str(tmp_path / "cfg" / "a.svs"), "/abs/b.svs", str(tmp_path / "c.svs")],
                    "inner": {"table": str(tmp_path / "cfg" / "t.csv"), "name": "n"}}
    assert anchored == ["files", "inner.table"]
