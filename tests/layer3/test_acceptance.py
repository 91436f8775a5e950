"""Issue 5 acceptance: a model trained by Layer 2 on synthetic slides, heatmaps on held-out synthetic slides,
thresholded maps overlapping the annotated tumour with Dice >= 0.7.

The trained run is cached in pytest's cache dir (`.pytest_cache/d/camnet-layer3-trained-v1`), keyed by the
recipe below; delete it (or `pytest --cache-clear`) to retrain. Training uses the real CLIs end to end:
`layer1_patches synth/extract/index`, then `layer2_training train` with configs/layer2/mobilenetv2_cpu.yaml.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from .conftest import REPO, cli_env, heatmap_config, run_cli

RECIPE = "v1"
N_TRAIN, SIZE, PATCH = 6, 2048, 32


def _run(module: str, args: list[str], timeout: float = 3000) -> None:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=cli_env(), capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{module} {' '.join(args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="session")
def trained_run(request: pytest.FixtureRequest) -> Path:
    root = Path(request.config.cache.mkdir(f"camnet-layer3-trained-{RECIPE}"))
    run_dir = root / "run"
    if (run_dir / "model.json").is_file():
        return run_dir
    slides, stores = root / "slides", root / "stores"
    _run("layer1_patches", ["synth", "--out", str(slides), "--n-slides", str(N_TRAIN), "--size", str(SIZE),
                            "--seed", "21", "--tumour-fraction", "0.3"])
    _run("layer1_patches", ["extract", "--config", str(REPO / "configs/layer1/random.yaml"), "--slides", str(slides),
                            "--annotations", str(slides), "--out", str(stores), "--set", f"patch_size={PATCH}",
                            "--set", "resolution.mpp=0.5", "--set", "sampling.random.per_class=200",
                            "--set", "sampling.random.grid_step=16"])
    _run("layer1_patches", ["index", "--inputs", str(stores), "--out", str(root / "index.json"),
                            "--fractions", "train=0.67,val=0.33"])
    _run("layer2_training", ["train", "--config", str(REPO / "configs/layer2/mobilenetv2_cpu.yaml"),
                             "--set", f"data.index={root / 'index.json'}", "--set", f"output.run_dir={run_dir}",
                             "--set", "data.splits.test=null", "--set", "output.tensorboard=false",
                             "--set", "epochs=8"])
    return run_dir


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
    assert summary["tumour_slides"] == 2
    assert summary["mean_dice_tumour_slides"] >= 0.7, (ev / "cohort.csv").read_text()
    for slide in heldout:
        with h5py.File(out / slide.stem / "probabilities.h5") as f:
            assert np.isnan(f["grid"][0, 0]) and np.isfinite(f["prob"][()]).all()
