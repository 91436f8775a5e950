"""The model sidecar contract: what Layer 2 writes is what Layer 3 reads, and a foreign or damaged one is refused
with one line naming the file and key."""

from __future__ import annotations

import pytest

from layer1_patches.colour import ColourStats
from layer1_patches.shared.errors import CamnetError
from layer2_training.sidecar import SIDECAR_VERSION, ModelSidecar, StainSidecar

MINIMAL = {"model_file": "export/model.keras", "patch_size": 224, "working_mpp": 0.5, "level": 0, "threshold": 0.5}


def test_round_trip() -> None:
    car = ModelSidecar(model_file="m.keras", patch_size=96, working_mpp=1.0, level=1, threshold=0.4,
                       stain=StainSidecar("reinhard", {"mean": [1.0, 2.0, 3.0]}, "ref.png"), steps_per_epoch=12)
    assert ModelSidecar.from_mapping(car.to_dict(), "x") == car
    assert car.to_dict()["sidecar_version"] == SIDECAR_VERSION


def test_a_sidecar_with_only_the_required_keys_loads_with_defaults() -> None:
    """Another trainer may write only what inference needs."""
    car = ModelSidecar.from_mapping(MINIMAL, "x")
    assert (car.backbone, car.stain.method, car.classes, car.colour) == ("unknown", "none", ["normal", "tumour"],
                                                                         None)


def test_training_colour_statistics_round_trip() -> None:
    colour = ColourStats([0.9, 1.6, 0.7], [0.3, 0.4, 0.2], pixels=295, patches=8)
    data = ModelSidecar(model_file="m.keras", patch_size=96, working_mpp=1.0, level=1, threshold=0.4,
                        colour=colour).to_dict()
    assert data["colour"] == {"od_mean": [0.9, 1.6, 0.7], "od_std": [0.3, 0.4, 0.2], "pixels": 295, "patches": 8}
    assert ModelSidecar.from_mapping(data, "x").colour == colour


@pytest.mark.parametrize(("change", "needle"), [
    ({"patch_size": None}, "key 'patch_size': expected an integer, got None"),
    ({"threshold": 2}, "key 'threshold': 2.0 is above the maximum 1"),
    ({"sidecar_version": 2}, "key 'sidecar_version': 2 is above the maximum 1"),
    ({"stain": {"method": "vahadane"}}, "key 'stain.method': 'vahadane' is not one of"),
    ({"model": "x"}, "key 'model': unknown key"),
    ({"colour": {"od_mean": [1.0, 1.0, 1.0], "od_std": [0.1, 0.1, 0.1], "pixels": -1, "patches": 1}},
     "key 'colour.pixels': -1 is below the minimum 0"),
    ({"colour": {"od_std": [0.1, 0.1, 0.1], "pixels": 1, "patches": 1}}, "key 'colour.od_mean': required"),
])
def test_bad_sidecars_are_one_line_naming_file_and_key(change: dict, needle: str) -> None:
    with pytest.raises(CamnetError) as err:
        ModelSidecar.from_mapping({**MINIMAL, **change}, "run dir r: r/model.json")
    assert str(err.value).startswith("run dir r: r/model.json: ") and needle in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_required_key_is_named() -> None:
    data = dict(MINIMAL)
    del data["working_mpp"]
    with pytest.raises(CamnetError, match="key 'working_mpp': required"):
        ModelSidecar.from_mapping(data, "m.json")
