"""Which Keras `tf.keras` is: CamNet's models are Keras 2 (TF 2.15's own, or tf_keras on later TensorFlow).

From TF 2.16, `tf.keras` is Keras 3 unless `TF_USE_LEGACY_KERAS=1` is set before TensorFlow loads, and then it is
the `tf_keras` package; on TF 2.15 the variable makes `tf.keras` fail to import unless tf_keras is installed.
So the packages that use TensorFlow set it on import exactly when tf_keras is installed (`prefer_tf_keras`), and
a model's sidecar records the TensorFlow and Keras that made it (`flavour`), since saved models do not cross
Keras versions.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from collections.abc import MutableMapping
from importlib.metadata import PackageNotFoundError, version

from layer1_patches.shared.errors import CamnetError


def prefer_tf_keras(environ: MutableMapping[str, str] | None = None) -> None:
    """`TF_USE_LEGACY_KERAS=1` when tf_keras is installed and TensorFlow is not loaded yet (a value already set
    is kept)."""
    env = os.environ if environ is None else environ
    if "tensorflow" not in sys.modules and importlib.util.find_spec("tf_keras") is not None:
        env.setdefault("TF_USE_LEGACY_KERAS", "1")


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def flavour() -> dict[str, str]:
    """{"tensorflow", "keras" ("keras 2.15.0", "tf_keras 2.21.0", "keras 3.15.1"), "python"} of this process; an
    error when `tf.keras` is Keras 3, which CamNet's training and explanations do not support."""
    import tensorflow as tf

    # by the package its Model class comes from: `tf.keras.__name__` becomes "tensorflow.keras" once anything
    # imports `tensorflow.keras.backend` (tf-keras-vis does), whichever Keras it is
    module = tf.keras.Model.__module__
    package = module.split(".")[0]
    keras = f"tf_keras {_version('tf-keras')}" if package == "tf_keras" else f"keras {_version('keras')}"
    # Keras 3 keeps Model in keras.src.models (Keras 2.x in keras.src.engine or keras.engine), whatever the
    # distribution is called (keras-nightly)
    if module.startswith("keras.src.models") or keras.startswith("keras 3"):
        raise CamnetError(f"tf.keras is Keras 3 ({keras}, TensorFlow {tf.__version__}); CamNet needs Keras 2: "
                          "install tf-keras of the same minor version as TensorFlow (pip install 'camnet[modern]') "
                          "and set TF_USE_LEGACY_KERAS=1 before TensorFlow loads")
    return {"tensorflow": tf.__version__, "keras": keras, "python": platform.python_version()}
