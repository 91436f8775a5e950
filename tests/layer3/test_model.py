"""Run directories: incomplete or foreign ones are refused naming the file or key; resolution must match."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from layer1_patches.colour import ColourStats
from layer1_patches.shared.errors import CamnetError
from layer1_patches.slide import Slide
from layer3_inference.config import MatchConfig
from layer3_inference.model import load_model, read_spec, working_resolution

from .conftest import DATA, write_run_dir


def test_read_spec_of_a_finished_run(tiny_run: Path) -> None:
    spec = read_spec(tiny_run)
    assert (spec.patch_size, spec.working_mpp, spec.level, spec.threshold) == (32, 0.5, 0, 0.5)
    assert spec.model_file == tiny_run / "export" / "model.keras"


def test_training_colour_of_the_sidecar_is_read_but_is_not_the_models_identity(tiny_run: Path,
                                                                              tmp_path: Path) -> None:
    # the colour came later than many finished heatmaps: adding it to model.json must not change the model's
    # identity (and with it every run hash), and a model.json without it reads as null, not as an error
    run = _copy(tiny_run, tmp_path / "run")
    data = json.loads((run / "model.json").read_text())
    colour = {"od_mean": [0.45, 0.87, 0.41], "od_std": [0.33, 0.38, 0.13], "pixels": 900, "patches": 9}
    plain = read_spec(run)
    (run / "model.json").write_text(json.dumps({**data, "colour": colour}))
    coloured = read_spec(run)
    assert plain.colour is None
    assert coloured.colour == ColourStats(**colour)  # type: ignore[arg-type]
    assert coloured.identity() == plain.identity()
    (run / "model.json").write_text(json.dumps({**data, "colour": {**colour, "pixels": -1}}))
    with pytest.raises(CamnetError, match=r"model.json.*'colour.pixels'"):
        read_spec(run)


def _copy(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


@pytest.mark.parametrize(
    ("damage", "needles"),
    [
        (lambda d: shutil.rmtree(d), ["no such directory"]),
        (lambda d: (d / "model.json").unlink(), ["no model.json", "training not finished"]),
        (lambda d: (d / "export" / "model.keras").unlink(), ["model.keras", "'model_file'", "missing"]),
        (lambda d: (d / "model.json").write_text("{"), ["model.json", "not valid JSON"]),
        (lambda d: (d / "model.json").write_text(json.dumps({"model_file": "export/model.keras"})),
         ["model.json", "'patch_size'"]),
        (lambda d: (d / "model.json").write_text(json.dumps({
            **json.loads((d / "model.json").read_text()), "working_mpp": -1})), ["'working_mpp'", "-1"]),
    ],
    ids=["missing", "no-sidecar", "no-model", "bad-json", "missing-key", "bad-value"],
)
def test_incomplete_run_dirs_are_refused(tiny_run: Path, tmp_path: Path, damage, needles: list[str]) -> None:  # type: ignore[no-untyped-def]
    run = _copy(tiny_run, tmp_path / "run")
    damage(run)
    with pytest.raises(CamnetError) as err:
        read_spec(run)
    for needle in needles:
        assert needle in str(err.value)


def test_model_whose_input_is_not_the_sidecar_patch_size(tiny_run: Path, tmp_path: Path) -> None:
    run = _copy(tiny_run, tmp_path / "run")
    sidecar = json.loads((run / "model.json").read_text())
    (run / "model.json").write_text(json.dumps({**sidecar, "patch_size": 64}))
    with pytest.raises(CamnetError, match="input shape .* does not match patch_size 64"):
        load_model(read_spec(run))


def test_truncated_model_file_is_one_error(tiny_run: Path, tmp_path: Path) -> None:
    run = _copy(tiny_run, tmp_path / "run")
    (run / "export" / "model.keras").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CamnetError, match="model .*model.keras: cannot load"):
        load_model(read_spec(run))


def test_slide_without_the_model_resolution(tmp_path: Path, synth_slides: list[Path]) -> None:
    fine = read_spec(write_run_dir(tmp_path / "fine", working_mpp=0.25))
    with Slide(synth_slides[0]) as slide, pytest.raises(CamnetError) as err:
        working_resolution(slide, fine, MatchConfig())
    assert "refusing to upsample" in str(err.value) and "working_mpp 0.25" in str(err.value)
    deep = read_spec(write_run_dir(tmp_path / "deep", level=7))
    with Slide(synth_slides[0]) as slide, pytest.raises(CamnetError, match="level 7 does not exist"):
        working_resolution(slide, deep, MatchConfig(by="level"))


def test_slide_smaller_than_one_patch(tmp_path: Path) -> None:
    big = read_spec(write_run_dir(tmp_path / "big", patch_size=4096, working_mpp=0.499))
    with Slide(DATA / "CMU-1-Small-Region.svs") as slide, pytest.raises(CamnetError, match="smaller than one"):
        working_resolution(slide, big, MatchConfig())


def test_resolution_is_found_by_mpp(synth_slides: list[Path], tmp_path: Path) -> None:
    coarse = read_spec(write_run_dir(tmp_path / "coarse", working_mpp=1.0))
    with Slide(synth_slides[0]) as slide:
        res = working_resolution(slide, coarse, MatchConfig())
    assert (res.level, res.downsample, res.footprint(32)) == (1, 2.0, 64)


TF_KERAS_RUN = Path(__file__).resolve().parents[1] / "data" / "models" / "tf_keras_2.21"


def test_a_model_another_keras_saved_is_refused_naming_both_environments(tmp_path: Path) -> None:
    """Regression: a model trained on TF 2.21 + tf_keras failed to load under TF 2.15 with Keras' whole model
    config as its "first line" (tens of kilobytes) and no word of the cause. Where it loads (tf_keras), it must
    load."""
    from layer1_patches.shared.kerasflavour import flavour

    run = tmp_path / "run"
    shutil.copytree(TF_KERAS_RUN, run)
    spec = read_spec(run)
    assert spec.framework is not None and spec.framework.keras == "tf_keras 2.21.0"
    if flavour()["keras"].startswith("tf_keras"):
        assert load_model(spec).input_shape == (None, 32, 32, 3)
        return
    with pytest.raises(CamnetError) as err:
        load_model(spec)
    message = str(err.value)
    assert message.startswith(f"model {run / 'export' / 'model.keras'}: saved by TensorFlow 2.21.0 with tf_keras "
                              f"2.21.0 (Python 3.11.7; model.json `framework`), which this environment (TensorFlow "
                              f"{flavour()['tensorflow']} with {flavour()['keras']}) cannot load: run Layer 3 in an "
                              "environment with tf_keras 2.21 (README"), message
    assert len(message) < 800 and "\n" not in message, message


def test_a_model_without_framework_record_keeps_keras_own_reason(tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(TF_KERAS_RUN, run)
    sidecar = json.loads((run / "model.json").read_text())
    del sidecar["framework"]
    (run / "model.json").write_text(json.dumps(sidecar))
    from layer1_patches.shared.kerasflavour import flavour

    if flavour()["keras"].startswith("tf_keras"):  # it loads: nothing to report
        assert load_model(read_spec(run)).input_shape == (None, 32, 32, 3)
        return
    with pytest.raises(CamnetError, match=r"^model .*model.keras: cannot load \(.{1,200}(\.\.\.)?\)$"):
        load_model(read_spec(run))
