"""Writes tests/data/models/tf_keras_2.21/: a tiny functional Keras model saved by tf_keras 2.21 (TensorFlow 2.21),
with the model.json sidecar Layer 2 would write. TF 2.15's Keras cannot load it (tests/layer3/test_model.py).

    .venv-modern/bin/python tests/data/models/make_tf_keras_model.py
"""

import json
import os
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402

from layer1_patches.shared.kerasflavour import flavour  # noqa: E402

out = Path(__file__).resolve().parent / "tf_keras_2.21"
(out / "export").mkdir(parents=True, exist_ok=True)
tf.keras.utils.set_random_seed(0)
x = tf.keras.Input((32, 32, 3), name="rgb")
y = tf.keras.layers.Dense(1, activation="sigmoid", name="tumour")(tf.keras.layers.GlobalAveragePooling2D()(x))
tf.keras.Model(x, y).save(str(out / "export" / "model.keras"))
sidecar = {"model_file": "export/model.keras", "patch_size": 32, "working_mpp": 0.5, "level": 0, "threshold": 0.5,
           "framework": flavour()}
(out / "model.json").write_text(json.dumps(sidecar, indent=1) + "\n")
