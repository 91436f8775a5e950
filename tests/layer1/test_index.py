from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from layer1_patches.index import DatasetIndex, build_index
from layer1_patches.shared.errors import CamnetError
from layer1_patches.store import PatchWriter, SlideMeta


def _store(folder: Path, name: str, patient: str, centre: str, tumour: int, normal: int, size: int = 8,
           mpp: float = 0.5) -> Path:
    n = tumour + normal
    path = folder / f"{name}.h5"
    with PatchWriter(path, size, "none") as w:
        w.append(np.zeros((n, size, size, 3), np.uint8), np.zeros((n, 2)), np.array([1] * tumour + [0] * normal),
                 np.zeros(n), np.ones(n))
        w.finish(SlideMeta(name, f"/s/{name}.tif", patient=patient, centre=centre, patch_size=size, working_mpp=mpp,
                           config_hash="h"), {}, {}, {})
    return path


@pytest.fixture
def stores(tmp_path: Path) -> Path:
    folder = tmp_path / "patches"
    folder.mkdir()
    for i in range(10):
        for node in range(2):  # two slides per patient
            _store(folder, f"patient_{i:03d}_node_{node}", f"{i:03d}", str(i // 2), tumour=i % 3, normal=5)
    (folder / ".patient_099_node_0.h5.partial").write_text("")
    (folder / "broken.h5").write_text("not hdf5")
    return folder


def test_patient_split_keeps_each_patient_in_one_split(stores: Path) -> None:
    index = build_index([stores], stores / "index.json", "patient", {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    assert len(index.entries) == 20  # the broken file is left out
    split_of: dict[str, set[str]] = {}
    for e in index.entries:
        split_of.setdefault(e.patient, set()).add(e.split)
    assert all(len(s) == 1 for s in split_of.values())
    assert {k: v["patients"] for k, v in index.splits().items()} == {"train": 6, "val": 2, "test": 2}
    loaded = DatasetIndex.load(stores / "index.json")
    assert loaded.entries == index.entries
    assert loaded.resolve(loaded.entries[0]).is_file()


def test_patient_split_depends_on_seed_only(stores: Path) -> None:
    a = build_index([stores], stores / "a.json", "patient", seed=1)
    b = build_index([stores], stores / "b.json", "patient", seed=1)
    c = build_index([stores], stores / "c.json", "patient", seed=2)
    assert [e.split for e in a.entries] == [e.split for e in b.entries]
    assert [e.split for e in a.entries] != [e.split for e in c.entries]


def test_centre_split(stores: Path) -> None:
    index = build_index([stores], stores / "i.json", "centre",
                        centres={"train": ["0", "1", "2"], "val": ["3"], "test": ["4"]})
    assert {e.centre for e in index.split("val")} == {"3"}
    assert index.splits()["train"]["slides"] == 12


def test_unmapped_centre_is_an_error(stores: Path) -> None:
    with pytest.raises(CamnetError, match="centre '4' is in no split"):
        build_index([stores], stores / "i.json", "centre", centres={"train": ["0", "1", "2"], "val": ["3"]})


def test_no_stores_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CamnetError, match="no finished patch stores"):
        build_index([tmp_path], tmp_path / "i.json", "patient")


def test_mixed_patch_sizes_are_refused(tmp_path: Path) -> None:
    _store(tmp_path, "a", "1", "0", 1, 1, size=8)
    _store(tmp_path, "b", "2", "0", 1, 1, size=16)
    with pytest.raises(CamnetError, match="differ in patch size"):
        build_index([tmp_path], tmp_path / "i.json", "patient")


def test_scanner_rounding_of_mpp_is_one_resolution(tmp_path: Path) -> None:
    """Regression: 0.499 (Aperio) and 0.5 um/px slides could not share an index."""
    _store(tmp_path, "a", "1", "0", 1, 1, mpp=0.499)
    _store(tmp_path, "b", "2", "0", 1, 1, mpp=0.5)
    assert len(build_index([tmp_path], tmp_path / "i.json", "patient").entries) == 2
    _store(tmp_path, "c", "3", "0", 1, 1, mpp=0.25)
    with pytest.raises(CamnetError, match="differ in resolution: c at 0.25 um/px, b at 0.5 um/px"):
        build_index([tmp_path], tmp_path / "i.json", "patient")


@pytest.mark.parametrize(("text", "message"), [("{", "malformed"), ('{"index_version": 9}', "version 9"),
                                               ('{"index_version": 1, "entries": []}', "lists no patch stores")])
def test_bad_index_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "i.json"
    path.write_text(text)
    with pytest.raises(CamnetError, match=message):
        DatasetIndex.load(path)
    with pytest.raises(CamnetError, match="no such file"):
        DatasetIndex.load(tmp_path / "none.json")


def test_a_bad_entry_is_named_with_its_key(stores: Path, tmp_path: Path) -> None:
    """Index entries are a contract (IndexEntry): a hand-edited or foreign index fails naming entry and key,
    instead of `malformed (__init__() got an unexpected keyword ...)`."""
    import json

    good = json.loads(build_index([stores], tmp_path / "i.json", "patient").save(tmp_path / "i.json").read_text())
    good["entries"][1]["n_tumour"] = -3
    (tmp_path / "bad.json").write_text(json.dumps(good))
    with pytest.raises(CamnetError) as err:
        DatasetIndex.load(tmp_path / "bad.json")
    assert str(err.value) == (f"dataset index {tmp_path / 'bad.json'}: entries[1]: key 'n_tumour': -3 is below the "
                              "minimum 0")
