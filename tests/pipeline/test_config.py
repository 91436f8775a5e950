"""Experiment configs: the shipped ones load; bad ones fail with one `error:` line naming the key or file."""

from __future__ import annotations

from pathlib import Path

import pytest

from layer1_patches.shared.errors import ConfigError
from layer1_patches.shared.typedconfig import describe
from layer3_inference.pipeline.config import ExperimentConfig, load_experiment

from .conftest import REPO, run_pipeline, write_experiment


@pytest.mark.parametrize("name", ["demo.yaml", "camelyon16.yaml"])
def test_shipped_experiment_configs_load(name: str) -> None:
    exp = load_experiment(REPO / "configs" / "experiment" / name, base=REPO)
    assert Path(exp.cfg.out).is_absolute() and set(exp.layers) >= {"layer1", "layer2", "heatmap", "evaluate"}
    # the chain's own paths are what Layer 2 was validated with
    assert exp.layers["layer2"].data.index == str(Path(exp.cfg.out) / "patches" / "index.json")


def test_every_key_is_documented() -> None:
    rows = describe(ExperimentConfig)
    keys = {r[0] for r in rows}
    assert {"slides", "layer2.overrides", "slurm.heatmap.max_parallel", "index.fractions", "container"} <= keys
    assert [key for key, _, _, doc in rows if not doc.strip()] == []  # and the README table is generated from these


def _status(tmp_path: Path, **keys: object) -> tuple[int, str, str]:
    cfg = write_experiment(tmp_path / "exp.yaml", slides=[str(tmp_path)], out=str(tmp_path / "out"), **keys)
    proc = run_pipeline(["status", "--config", str(cfg)], timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


def test_unknown_key_is_one_error_line_naming_it(tmp_path: Path) -> None:
    code, out, err = _status(tmp_path, slurm={"layer2": {"gpu": 4}})
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "'slurm.layer2.gpu': unknown key" in err


def test_missing_layer_config_file_names_the_key_and_the_file(tmp_path: Path) -> None:
    code, _, err = _status(tmp_path, layer2={"config": "configs/layer2/nope.yaml"})
    assert code == 2 and err.count("\n") == 1
    assert "'layer2.config'" in err and "nope.yaml: no such file" in err


def test_bad_key_inside_a_layer_config_names_both(tmp_path: Path) -> None:
    code, _, err = _status(tmp_path, heatmap={"config": "configs/layer3/heatmap.yaml",
                                              "overrides": ["grid.min_tissue=7"]})
    assert code == 2 and err.count("\n") == 1
    assert "heatmap.yaml" in err and "'grid.min_tissue'" in err and "experiment key 'heatmap.config'" in err


def test_no_slides_and_bad_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'slides': lists no slides"):
        load_experiment(write_experiment(tmp_path / "e.yaml", out="x"))
    with pytest.raises(ConfigError, match="'layer1.overrides': 'patch_size' is not key=value"):
        load_experiment(write_experiment(tmp_path / "f.yaml", slides=["a"], layer1={"overrides": ["patch_size"]}))


@pytest.mark.parametrize(
    ("slurm", "message"),
    [({"report": {"max_parallel": 2}}, "config key 'slurm.report.max_parallel': only for the array stages"),
     ({"layer1": {"ranks": 2}}, "config key 'slurm.layer1.ranks': must be 1")],
)
def test_slurm_resources_are_checked_on_load_not_half_way_through_submit(tmp_path: Path, slurm: dict[str, object],
                                                                         message: str) -> None:
    """Regression: a bad report throttle failed inside `submit` after the first stages were queued."""
    with pytest.raises(ConfigError, match=message):
        load_experiment(write_experiment(tmp_path / "e.yaml", slides=["a"], slurm=slurm))
