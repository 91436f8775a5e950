"""Which Keras tf.keras is, told from the module TensorFlow routes it to (fakes here; the real ones are in both
test environments: TF 2.15's keras in .venv, tf_keras in .venv-modern)."""

from __future__ import annotations

import sys
import types

import pytest

from layer1_patches.shared import kerasflavour
from layer1_patches.shared.errors import CamnetError


def fake_tensorflow(monkeypatch: pytest.MonkeyPatch, model_module: str) -> None:
    tf = types.ModuleType("tensorflow")
    tf.__version__ = "2.21.0"  # type: ignore[attr-defined]
    # the name of tf.keras itself is no evidence: "tensorflow.keras" after `import tensorflow.keras.backend`
    model = type("Model", (), {"__module__": model_module})
    tf.keras = types.SimpleNamespace(__name__="tensorflow.keras", Model=model)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorflow", tf)
    monkeypatch.setattr(kerasflavour, "_version", lambda dist: {"keras": "3.15.1", "tf-keras": "2.21.0"}[dist])


def test_tf_keras_is_named_with_its_version(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tensorflow(monkeypatch, "tf_keras.src.engine.training")
    assert kerasflavour.flavour()["keras"] == "tf_keras 2.21.0"
    assert kerasflavour.flavour()["tensorflow"] == "2.21.0"


def test_keras_3_is_one_error_naming_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: TensorFlow loaded before CamNet set TF_USE_LEGACY_KERAS gave Keras 3, and training failed deep in
    Keras with "`keras.optimizers.legacy` is not supported in Keras 3"."""
    fake_tensorflow(monkeypatch, "keras.src.models.model")
    with pytest.raises(CamnetError, match=r"^tf.keras is Keras 3 \(keras 3.15.1, TensorFlow 2.21.0\); CamNet needs "
                                          r"Keras 2: .*TF_USE_LEGACY_KERAS=1 before TensorFlow loads$"):
        kerasflavour.flavour()


def test_the_variable_is_set_only_before_tensorflow_loads_and_only_with_tf_keras(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kerasflavour.importlib.util, "find_spec", lambda name: object() if name == "tf_keras" else None)
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    env: dict[str, str] = {}
    kerasflavour.prefer_tf_keras(env)
    assert env == {"TF_USE_LEGACY_KERAS": "1"}
    env = {"TF_USE_LEGACY_KERAS": "0"}  # the user's choice stands
    kerasflavour.prefer_tf_keras(env)
    assert env == {"TF_USE_LEGACY_KERAS": "0"}
    monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))
    env = {}
    kerasflavour.prefer_tf_keras(env)  # too late to matter: flavour() says so instead
    assert env == {}
    monkeypatch.delitem(sys.modules, "tensorflow")
    monkeypatch.setattr(kerasflavour.importlib.util, "find_spec", lambda _name: None)
    kerasflavour.prefer_tf_keras(env)  # TF 2.15 without tf_keras: the variable would break tf.keras
    assert env == {}


def test_keras_2_of_tf_2_15_is_not_keras_3(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_tensorflow(monkeypatch, "keras.src.engine.training")
    monkeypatch.setattr(kerasflavour, "_version", lambda dist: {"keras": "2.15.0"}[dist])
    assert kerasflavour.flavour()["keras"] == "keras 2.15.0"
