"""Backbone registry, weights file names and where the Keras cache is looked for."""

from __future__ import annotations

from pathlib import Path

import pytest

from layer1_patches.shared.errors import CamnetError
from layer2_training.weights import BACKBONES, build_backbone, cache_root, resolve_weights, spec


def test_unknown_backbone_names_the_known_ones() -> None:
    with pytest.raises(CamnetError, match="unknown backbone 'vgg16' \\(known: resnet50, resnet101, .*mobilenetv2\\)"):
        spec("vgg16")


@pytest.mark.parametrize(("size", "rows"), [(96, 96), (128, 128), (160, 160), (192, 192), (224, 224), (32, 224),
                                            (256, 224)])
def test_mobilenet_v2_weights_file_follows_the_sizes_keras_ships(size: int, rows: int) -> None:
    assert BACKBONES["mobilenetv2"].weights_file(size) == \
        f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"
    assert BACKBONES["resnet50"].weights_file(size) == "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"


def test_cache_root_configured_then_keras_home_then_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    assert cache_root("~/cache") == tmp_path / "home" / "cache"
    assert cache_root(None) == tmp_path / "kh"
    monkeypatch.delenv("KERAS_HOME")
    assert cache_root(None) == tmp_path / "home" / ".keras"


def test_resolve_weights_none_and_an_explicit_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_weights("none", "resnet50", 224, None) is None
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "w.h5").write_bytes(b"")
    assert resolve_weights("~/w.h5", "resnet50", 224, None) == tmp_path / "w.h5"


def test_build_backbone_refuses_inputs_below_its_minimum() -> None:
    with pytest.raises(CamnetError, match="inceptionv3 needs inputs of at least 75 px, got 64"):
        build_backbone("inceptionv3", 64)
