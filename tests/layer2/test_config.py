"""Bad input: one `error: ...` line, exit 2, before training starts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from layer1_patches.shared.errors import CamnetError, ConfigError
from layer1_patches.shared.typedconfig import from_mapping
from layer2_training.config import Layer2Config
from tests.layer2.conftest import base_config, run_cli, write_config, write_store


def load(cfg: dict) -> Layer2Config:
    return from_mapping(Layer2Config, cfg)


def prepare(cfg: dict):
    from layer2_training.train import prepare as _prepare

    return _prepare(load(cfg))


@pytest.mark.parametrize(("override", "needle"), [
    ("model.backbone=vgg99", "model.backbone"),
    ("model.bogus=1", "model.bogus"),
    ("batch_size=0", "batch_size"),
    ("schedule.kind=linear", "schedule.kind"),
    ("distributed.engine=mpi", "distributed.engine"),
    ("distributed.port=80", "distributed.port"),
])
def test_cli_config_errors_are_one_line(tmp_path: Path, tiny_index: Path, override: str, needle: str) -> None:
    cfg = write_config(tmp_path / "c.yaml", base_config(tiny_index, tmp_path / "run"))
    proc = run_cli(["train", "--config", str(cfg), "--set", override], timeout=60)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()


def test_missing_index(tmp_path: Path) -> None:
    with pytest.raises(CamnetError, match="no such file"):
        prepare(base_config(tmp_path / "nope.json", tmp_path / "run"))


def test_empty_index(tmp_path: Path) -> None:
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"index_version": 1, "split_by": "patient", "entries": []}))
    with pytest.raises(CamnetError, match="lists no patch stores"):
        prepare(base_config(index, tmp_path / "run"))


def test_index_not_configured(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.index"):
        load(base_config("", tmp_path / "run"))


def test_split_without_samples(tmp_path: Path, tiny_index: Path) -> None:
    with pytest.raises(CamnetError, match="split 'holdout' has no slides"):
        prepare(base_config(tiny_index, tmp_path / "run", **{"data.splits": {"val": "holdout"}}))


def test_training_split_with_one_class_is_refused(tmp_path: Path) -> None:
    """Training needs both classes; a one-class validation split is a health warning instead (test_train)."""
    from layer1_patches.index import build_index

    stores = tmp_path / "stores"
    stores.mkdir()
    write_store(stores / "patient_000_node_0.h5", "000", 4, 4, 32, 0)
    write_store(stores / "patient_001_node_0.h5", "001", 0, 6, 32, 1)
    index = tmp_path / "index.json"
    build_index([stores], index, "centre", centres={"train": ["0"]})
    entries = json.loads(index.read_text())
    entries["entries"][0]["split"] = "val"  # patient 000 (mixed) validates; normal-only patient 001 trains
    entries["entries"][1]["split"] = "train"
    index.write_text(json.dumps(entries))
    with pytest.raises(CamnetError, match="split 'train' has only normal patches"):
        prepare(base_config(index, tmp_path / "run", **{"data.splits": {"test": None}}))


def test_patch_size_mismatch_needs_resize(tmp_path: Path, tiny_index: Path) -> None:
    with pytest.raises(CamnetError, match="model.input_size.*differs from the stores' patch size 32"):
        prepare(base_config(tiny_index, tmp_path / "run", **{"model.input_size": 48}))
    p = prepare(base_config(tiny_index, tmp_path / "run", **{"model.input_size": 48, "model.resize": True}))
    assert (p.patch_size, p.input_size) == (32, 48)


def test_input_below_backbone_minimum(tmp_path: Path, tiny_index: Path) -> None:
    with pytest.raises(CamnetError, match="inceptionv3 needs inputs of at least 75"):
        prepare(base_config(tiny_index, tmp_path / "run", **{"model.backbone": "inceptionv3"}))


def test_missing_weights_file(tmp_path: Path, tiny_index: Path) -> None:
    with pytest.raises(CamnetError, match="weights file .*missing.h5 does not exist"):
        prepare(base_config(tiny_index, tmp_path / "run", **{"model.weights": str(tmp_path / "missing.h5")}))


def test_missing_imagenet_weights_names_file_and_command(tmp_path: Path, tiny_index: Path) -> None:
    cfg = base_config(tiny_index, tmp_path / "run", **{"model.weights": "imagenet",
                                                       "model.weights_cache": str(tmp_path / "cache")})
    with pytest.raises(CamnetError) as err:
        prepare(cfg)
    message = str(err.value)
    cache = tmp_path / "cache"
    expected = cache / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
    assert str(expected) in message
    command = f"python -m layer2_training fetch-weights --backbone mobilenetv2 --cache {cache}"
    assert command in message


def test_stain_needs_reference(tmp_path: Path, tiny_index: Path) -> None:
    with pytest.raises(ConfigError, match="stain.reference"):
        load(base_config(tiny_index, tmp_path / "run", **{"stain.method": "reinhard"}))


def test_run_dir_of_another_config_is_refused(tmp_path: Path, tiny_index: Path) -> None:
    from layer2_training import rundir

    cfg = load(base_config(tiny_index, tmp_path / "run"))
    assert rundir.prepare(tmp_path / "run", cfg) is False
    rundir.write_start(tmp_path / "run", cfg, 1, {})
    assert rundir.prepare(tmp_path / "run", cfg) is True
    other = dataclasses.replace(cfg, seed=99)
    with pytest.raises(CamnetError, match="different config"):
        rundir.prepare(tmp_path / "run", other)


def test_shipped_configs_load() -> None:
    from layer2_training.config import load_layer2_config

    configs = sorted(Path(__file__).resolve().parents[2].glob("configs/layer2/*.yaml"))
    names = {c.stem for c in configs}
    assert {"resnet50", "resnet101", "inceptionv3", "densenet121", "inceptionresnetv2"} <= names
    for path in configs:
        load_layer2_config(path, ["data.index=x.json"])


def test_corrupt_run_dir_config_is_one_error_naming_it(tmp_path: Path) -> None:
    from layer2_training import rundir

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("config_hash: [\n")
    with pytest.raises(ConfigError, match=f"config file {tmp_path / 'run' / 'config.yaml'}: line"):
        rundir.prepare(tmp_path / "run", load(base_config(tmp_path / "i.json", tmp_path / "run")))


def test_store_changed_after_indexing_is_refused(tmp_path: Path) -> None:
    """Regression: sample ids came from the index's counts, so a re-extracted store made ids overlap silently."""
    from layer1_patches.index import DatasetIndex
    from layer2_training import data
    from layer2_training.config import DataConfig
    from tests.layer2.conftest import make_cohort

    index_path = make_cohort(tmp_path, n_patients=4, per_class=3)
    index = DatasetIndex.load(index_path)
    entry = index.split("train")[0]
    write_store(index.resolve(entry), entry.patient, 2, 2, 32, seed=9)  # 4 patches instead of 6
    with pytest.raises(CamnetError, match=f"{index.resolve(entry)} holds 4 patches but the dataset index lists 6"):
        data.load_split(index, "train", DataConfig(index=str(index_path)), 0, balance=False)
