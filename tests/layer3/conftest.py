"""Layer 3 fixtures: a tiny exported model in a Layer 2-style run dir, synthetic slides, a CLI runner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.helpers import cli_env

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
PATCH = 32
# Mean grey level between synthetic normal tissue (~178) and tumour (~147): darker means tumour.
DARKNESS_CUT = 162.0
DARKNESS_GAIN = 0.3


def darkness_probability(patches: np.ndarray) -> np.ndarray:
    """What `tiny_run`'s model computes, in numpy (up to float32 rounding)."""
    mean = patches.astype(np.float64).mean(axis=(1, 2, 3))
    return 1.0 / (1.0 + np.exp(DARKNESS_GAIN * (mean - DARKNESS_CUT)))


def write_run_dir(run_dir: Path, patch_size: int = PATCH, working_mpp: float = 0.5, level: int = 0,
                  **sidecar: Any) -> Path:
    """A finished Layer 2 run dir (export/model.keras + model.json, Layer 2's sidecar keys) whose model is
    sigmoid(-gain * (mean RGB - cut)): a deterministic function of darkness, so heatmaps are meaningful."""
    import tensorflow as tf

    inputs = tf.keras.Input((patch_size, patch_size, 3), name="rgb")
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(inputs)
    out = tf.keras.layers.Dense(1, activation="sigmoid", name="tumour")(x)
    model = tf.keras.Model(inputs, out)
    model.get_layer("tumour").set_weights([np.full((3, 1), -DARKNESS_GAIN / 3, np.float32),
                                           np.array([DARKNESS_GAIN * DARKNESS_CUT], np.float32)])
    (run_dir / "export").mkdir(parents=True, exist_ok=True)
    model.save(str(run_dir / "export" / "model.keras"))
    data = {"sidecar_version": 1, "model_file": "export/model.keras", "backbone": "tiny-darkness",
            "patch_size": patch_size, "input_size": patch_size, "resized_in_model": False,
            "working_mpp": working_mpp, "level": level, "threshold": 0.5, "preprocessing": "none",
            "stain": {"method": "none"}, "config_hash": "test", **sidecar}
    (run_dir / "model.json").write_text(json.dumps(data, indent=1))
    return run_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run_dir(tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="session")
def synth_slides(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two 2048-px synthetic slides (0.5 um/px) with ASAP annotations next to them."""
    from layer1_patches.synth import write_cohort

    return write_cohort(tmp_path_factory.mktemp("l3_synth"), 2, 2048, seed=3, tumour_fraction=0.3)


def heatmap_config(path: Path, **overrides: Any) -> Path:
    """A small heatmap config; `overrides` are dotted keys, e.g. `**{"reader.threads": 1}`."""
    cfg: dict[str, Any] = {"reader": {"threads": 2, "batch_size": 16, "prefetch": 2},
                           "output": {"thumbnail_size": 256, "map_downsample": 16}}
    for key, value in overrides.items():
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "layer3_inference", *args], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


# --- explain (issue 6): a tiny trained model in Layer 2's export layout; the Layer 2-trained one is
# `trained_layer2` (tests/conftest.py), shared with the heatmap acceptance test ---


@pytest.fixture(scope="session")
def explain_toy(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Synthetic-slide patch stores (64 px) and a tiny CNN trained on them for a few seconds, exported
    like Layer 2 (nested "backbone", "pool", sigmoid "tumour"); `x`, `y` are all patches and labels."""
    from types import SimpleNamespace

    from layer3_inference.explain import toy

    root = tmp_path_factory.mktemp("explain_toy")
    stores = toy.synthetic_stores(root, n_slides=2, size=3072, per_class=100)
    x, y = toy.read_all(stores)
    model, accuracy = toy.train_tiny(x, y, epochs=6)
    run_dir = toy.export(model, root / "run", x.shape[1])
    return SimpleNamespace(stores=stores, run_dir=run_dir, x=x, y=y, accuracy=accuracy)


# --- domain warnings (issue 14, item 5): a model whose model.json records the colour of synthetic training tissue ---

COLOUR_MPP = 2.0  # coarse, so the TCGA slide and the synthetic ones are a few hundred 32-px patches


def grid_colour(slide_path: Path, mpp: float, assume_mpp: float | None = None) -> Any:
    """ColourStats of the 32-px tissue patches at `mpp` a heatmap grid holds: the training tissue as Layer 2
    would record it from its patch stores."""
    from layer1_patches.colour import ColourAccumulator
    from layer1_patches.config import ResolutionConfig, TissueConfig
    from layer1_patches.masks import masker_from_config
    from layer1_patches.reading import PatchReader
    from layer1_patches.slide import Slide, resolve_resolution
    from layer3_inference.config import GridConfig
    from layer3_inference.grid import plan_grid

    acc = ColourAccumulator()
    with Slide(slide_path, assume_mpp) as slide:
        res = resolve_resolution(slide, ResolutionConfig(mpp=mpp, assume_mpp=assume_mpp))
        grid = plan_grid(slide.dimensions, res, PATCH, masker_from_config(TissueConfig())(slide), GridConfig(),
                         str(slide_path))
        reader = PatchReader(slide, res, PATCH, [])
        acc.add(np.stack([reader(c)[0] for c in grid.coords]))
    return acc.stats()


@pytest.fixture(scope="session")
def synthetic_colour_run(tmp_path_factory: pytest.TempPathFactory, synth_slides: list[Path]) -> Path:
    """`tiny_run`'s model at COLOUR_MPP, its model.json `colour` from the first synthetic slide's tissue."""
    from layer1_patches.shared.typedconfig import to_dict

    colour = to_dict(grid_colour(synth_slides[0], COLOUR_MPP))
    return write_run_dir(tmp_path_factory.mktemp("colour_run"), working_mpp=COLOUR_MPP, colour=colour)
