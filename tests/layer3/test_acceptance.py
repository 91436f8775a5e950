"""Issue 5 acceptance: a model trained by Layer 2 on synthetic slides, heatmaps on held-out synthetic slides,
thresholded maps overlapping the annotated tumour with Dice >= 0.7.

The model is `trained_layer2` (tests/conftest.py), shared with test_explain_acceptance.py and cached in pytest's
cache dir (`.pytest_cache/d/camnet-trained-layer2-<version>`); delete it (or `pytest --cache-clear`) to retrain.
Training uses the real CLIs end to end: `layer1_patches synth/extract/index`, then `layer2_training train` with
configs/layer2/mobilenetv2_cpu.yaml.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.conftest import TRAINED_RECIPE, TrainedRun

from .conftest import heatmap_config, run_cli

SIZE = 2048  # held-out slides
PATCH = TRAINED_RECIPE["patch"]


@pytest.fixture(scope="session")
def trained_run(trained_layer2: TrainedRun) -> Path:
    return trained_layer2.run_dir


@pytest.fixture(scope="session")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from layer1_patches.synth import write_cohort

    return write_cohort(tmp_path_factory.mktemp("heldout"), 2, SIZE, seed=1234, tumour_fraction=0.3)


def test_trained_model_heatmaps_overlap_the_annotated_tumour(trained_run: Path, heldout: list[Path],
                                                            tmp_path: Path) -> None:
    sidecar = json.loads((trained_run / "model.json").read_text())
    assert sidecar["patch_size"] == PATCH and sidecar["working_mpp"] == pytest.approx(0.5)
    out = tmp_path / "heatmaps"
    proc = run_cli(["heatmap", "--config", str(heatmap_config(tmp_path / "c.yaml")), "--model", str(trained_run),
                    "--slides", *map(str, heldout), "--out", str(out)], timeout=900)
    assert proc.returncode == 0, proc.stderr
    ev = tmp_path / "eval"
    proc = run_cli(["evaluate", "--heatmaps", str(out), "--annotations", str(heldout[0].parent), "--out", str(ev)])
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((ev / "summary.json").read_text())
    headline = summary["splits"][summary["headline_split"]]
    assert headline["tumour_slides"] == 2
    assert headline["mean_dice_tumour_slides"] >= 0.7, (ev / "cohort.csv").read_text()
    for slide in heldout:
        with h5py.File(out / slide.stem / "probabilities.h5") as f:
            assert np.isnan(f["grid"][0, 0]) and np.isfinite(f["prob"][()]).all()
