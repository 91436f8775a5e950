"""The contracts between the layers, checked against an independent JSON Schema validator (`jsonschema`).

The schemas published in the README are generated from the dataclasses; here the files the real commands write
(a patch store's attributes, `index.json`, `model.json`, a heatmap `summary.json`, the evaluation `summary.json`)
must validate against those schemas, and data the schemas reject must be rejected by CamNet's own loader too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import h5py
import jsonschema
import pytest

from layer1_patches.index import IndexEntry
from layer1_patches.shared.errors import ConfigError
from layer1_patches.shared.typedconfig import from_mapping, json_schema
from layer1_patches.store import JSON_ATTRS, SlideMeta
from layer2_training.sidecar import ModelSidecar
from layer3_inference.pipeline.configdoc import CONTRACTS
from layer3_inference.summaries import EvaluationSummary, HeatmapSummary

from .conftest import REPO, TrainedRun, subprocess_env

CLASSES = [c for c, _, _ in CONTRACTS.values()]


def validate(cls: type, data: Any) -> None:
    jsonschema.Draft202012Validator(json_schema(cls)).validate(data)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_each_schema_is_a_valid_draft_2020_12_schema(cls: type) -> None:
    jsonschema.Draft202012Validator.check_schema(json_schema(cls, cls.__name__))


def test_the_five_contracts_are_published() -> None:
    assert set(CLASSES) == {SlideMeta, IndexEntry, ModelSidecar, HeatmapSummary, EvaluationSummary}


@pytest.fixture(scope="module")
def outputs(trained_layer2: TrainedRun, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A heatmap and an evaluation of one validation slide, with the shared trained model."""
    tmp = tmp_path_factory.mktemp("contracts")
    root = trained_layer2.run_dir.parent
    store = trained_layer2.val_stores[0]
    with h5py.File(store, "r") as f:
        slide = Path(f.attrs["slide_path"])
    heatmaps, evaluation = tmp / "heatmaps", tmp / "evaluate"
    for cmd in (["heatmap", "--config", "configs/layer3/heatmap.yaml", "--model", str(trained_layer2.run_dir),
                 "--slide", str(slide), "--out", str(heatmaps), "--set", "reader.threads=1"],
                ["evaluate", "--config", "configs/layer3/evaluate.yaml", "--heatmaps", str(heatmaps),
                 "--annotations", str(slide.parent), "--index", str(root / "index.json"), "--out", str(evaluation)]):
        proc = subprocess.run([sys.executable, "-m", "layer3_inference", *cmd], cwd=REPO, env=subprocess_env(),
                              capture_output=True, text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return {"store": store, "index": root / "index.json", "sidecar": trained_layer2.run_dir / "model.json",
            "heatmap": heatmaps / slide.stem / "summary.json", "evaluation": evaluation / "summary.json"}


def store_attrs(path: Path) -> dict[str, Any]:
    """The store's file attributes named by SlideMeta, as a reader of the HDF5 file sees them."""
    with h5py.File(path, "r") as f:
        attrs = {k: f.attrs[k] for k in SlideMeta.__dataclass_fields__ if k in f.attrs}
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if key in JSON_ATTRS:
            value = json.loads(value)
        out[key] = value.item() if hasattr(value, "item") else value
    return out


def test_written_files_validate_against_the_published_schemas(outputs: dict[str, Path]) -> None:
    validate(SlideMeta, store_attrs(outputs["store"]))
    index = json.loads(outputs["index"].read_text())
    assert index["entries"]
    for entry in index["entries"]:
        validate(IndexEntry, entry)
    for name, cls in (("sidecar", ModelSidecar), ("heatmap", HeatmapSummary), ("evaluation", EvaluationSummary)):
        data = json.loads(outputs[name].read_text())
        validate(cls, data)
        assert asdict(from_mapping(cls, data)) == data  # and CamNet reads back exactly what it wrote
    evaluation = json.loads(outputs["evaluation"].read_text())
    assert evaluation["headline_split"] == "val" and set(evaluation["splits"]) == {"val"}  # the slide's split


@pytest.mark.parametrize("change", [
    lambda d: d.pop("patch_size"),
    lambda d: d.update(working_mpp=0),
    lambda d: d.update(threshold=1.5),
    lambda d: d.update(level="0"),
    lambda d: d.update(sidecar_version=2),
    lambda d: d.update(extra_key=1),
    lambda d: d["stain"].update(method="vahadane"),
], ids=["required-key-missing", "exclusive-minimum", "maximum", "wrong-type", "other-version", "unknown-key",
        "not-in-enum"])
def test_schema_and_loader_reject_the_same_sidecars(outputs: dict[str, Path], change) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(outputs["sidecar"].read_text())
    change(data)
    with pytest.raises(jsonschema.ValidationError):
        validate(ModelSidecar, data)
    with pytest.raises(ConfigError):
        from_mapping(ModelSidecar, data)
