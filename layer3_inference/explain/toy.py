"""A tiny tumour classifier in Layer 2's export layout, trained in seconds on synthetic-slide patches.

For tests, the bench and demos of `explain` on machines without a Layer 2 run: raw RGB in, Layer 2's
`BackbonePreprocess` layer, a nested functional backbone named "backbone", "pool", and a sigmoid Dense
"tumour"; written as `<run>/export/model.keras` with a `model.json` sidecar like Layer 2's trainer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tensorflow as tf

from layer1_patches.config import load_layer1_config
from layer1_patches.extract import ExtractRequest, extract_slide
from layer1_patches.store import PatchStore
from layer1_patches.synth import write_cohort
from layer2_training.model import BACKBONE_NAME, BackbonePreprocess
from layer2_training.sidecar import SIDECAR, ModelSidecar

REPO = Path(__file__).resolve().parents[2]


def synthetic_stores(root: Path, n_slides: int = 2, size: int = 3072, per_class: int = 120, patch: int = 64,
                     seed: int = 7) -> list[Path]:
    """Layer 1 synthetic slides (tumour nuclei larger, darker, denser) -> random per-class patch stores."""
    slides = write_cohort(root / "slides", n_slides, size, seed=seed, tumour_fraction=0.3)
    cfg = load_layer1_config(REPO / "configs" / "layer1" / "random.yaml",
                             [f"patch_size={patch}", f"sampling.random.per_class={per_class}",
                              "sampling.random.grid_step=16", "reader.threads=1"])
    out = []
    for slide in slides:
        req = ExtractRequest(slide, root / "stores", cfg, slide.with_suffix(".xml"))
        if not req.output.is_file():
            extract_slide(req)
        out.append(req.output)
    return out


def read_all(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for path in paths:
        with PatchStore(path) as store:
            xs.append(store.read(np.arange(len(store))))
            ys.append(store.labels.astype(np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def tiny_model(patch: int, width: int = 16) -> tf.keras.Model:
    inputs = tf.keras.Input((patch, patch, 3), name="rgb")
    x = BackbonePreprocess("tf", name="preprocess")(inputs)
    b_in = tf.keras.Input((patch, patch, 3))
    h = tf.keras.layers.Conv2D(width, 3, padding="same", activation="relu", name="conv1")(b_in)
    h = tf.keras.layers.MaxPooling2D(name="pool1")(h)
    h = tf.keras.layers.Conv2D(2 * width, 3, padding="same", activation="relu", name="conv2")(h)
    h = tf.keras.layers.MaxPooling2D(name="pool2")(h)
    h = tf.keras.layers.Conv2D(4 * width, 3, padding="same", name="conv3")(h)
    h = tf.keras.layers.Activation("relu", name="conv3_relu")(h)
    backbone = tf.keras.Model(b_in, h, name=BACKBONE_NAME)
    x = backbone(x)
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(x)
    out = tf.keras.layers.Dense(1, activation="sigmoid", name="tumour")(x)
    return tf.keras.Model(inputs, out, name="camnet_tiny")


def train_tiny(x: np.ndarray, y: np.ndarray, epochs: int = 6, seed: int = 0) -> tuple[tf.keras.Model, float]:
    """(model, training accuracy); flips and 90-degree turns keep it from learning positions."""
    tf.keras.utils.set_random_seed(seed)
    model = tiny_model(x.shape[1])
    model.compile(optimizer=tf.keras.optimizers.Adam(3e-3), loss="binary_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(seed)
    aug = np.concatenate([x, x[:, ::-1], np.rot90(x, 1, axes=(1, 2))])
    lab = np.concatenate([y, y, y]).astype(np.float32)
    order = rng.permutation(len(aug))
    hist = model.fit(aug[order].astype(np.float32), lab[order], batch_size=32, epochs=epochs, verbose=0)
    return model, float(hist.history["accuracy"][-1])


def export(model: tf.keras.Model, run_dir: Path, patch: int) -> Path:
    """`run_dir/export/model.keras` + `run_dir/model.json`, the layout Layer 2's trainer writes."""
    (run_dir / "export").mkdir(parents=True, exist_ok=True)
    model.save(str(run_dir / "export" / "model.keras"))
    sidecar = ModelSidecar(model_file="export/model.keras", patch_size=patch, working_mpp=0.5, level=0, threshold=0.5,
                           backbone="tiny", input_size=patch, output="sigmoid probability of class 1",
                           preprocessing="tf")
    (run_dir / SIDECAR).write_text(json.dumps(sidecar.to_dict(), indent=1))
    return run_dir
