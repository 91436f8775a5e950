from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from layer1_patches.index import DatasetIndex, IndexChecks, build_index, make_index, scan_stores
from layer1_patches.shared.errors import CamnetError
from layer1_patches.store import PatchWriter, SlideMeta
from tests.helpers import assert_one_error

from .conftest import run_cli


def _store(folder: Path, name: str, patient: str, centre: str, tumour: int, normal: int, size: int = 8,
           mpp: float = 0.5) -> Path:
    n = tumour + normal
    path = folder / f"{name}.h5"
    with PatchWriter(path, size, "none") as w:
        w.append(np.full((n, size, size, 3), 200, np.uint8), np.zeros((n, 2)), np.array([1] * tumour + [0] * normal),
                 np.zeros(n), np.ones(n))
        w.finish(SlideMeta(name, f"/s/{name}.tif", patient=patient, centre=centre, patch_size=size, working_mpp=mpp,
                           config_hash="h"), {}, {"config": {"filters": {"black": {"level": 30, "max_fraction": 0.5}}}},
                 {})
    return path


@pytest.fixture
def stores(tmp_path: Path) -> Path:
    folder = tmp_path / "patches"
    folder.mkdir()
    for i in range(10):
        for node in range(2):  # two slides per patient
            _store(folder, f"patient_{i:03d}_node_{node}", f"{i:03d}", str(i // 2), tumour=i % 3, normal=5)
    (folder / ".patient_099_node_0.h5.partial").write_text("")  # a writer's partial file is not a store
    (folder / ".patient_098_node_0.h5.host-12.partial").write_text("")
    (folder / ".patient_097_node_0.partial.h5").write_text("")  # nor is any dot-file, whatever its suffix
    return folder


def test_patient_split_keeps_each_patient_in_one_split(stores: Path) -> None:
    index = build_index([stores], stores / "index.json", "patient", {"train": 0.6, "val": 0.2, "test": 0.2}, seed=3)
    assert len(index.entries) == 20 and index.skipped == ()  # partial files are not stores
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


# Damaged stores (issue 13 item 5): `index` fails naming them, or with --skip-bad records them; never drops them.

def _zero_chunk(path: Path, name: str, row: int) -> None:
    """Zeros over the stored bytes of the chunk of dataset `name` holding `row`, in the file itself."""
    with h5py.File(path, "r") as f:
        ds = f[name]
        info = ds.id.get_chunk_info_by_coord((row // ds.chunks[0] * ds.chunks[0],) + (0,) * (ds.ndim - 1))
    with path.open("r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(bytes(info.size))


def _truncate(path: Path) -> None:
    with path.open("r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def _not_hdf5(path: Path) -> None:
    path.write_text("not hdf5")


def _external_patches(path: Path) -> None:
    other = path.with_name("elsewhere.other")
    _store(path.parent, "x", "1", "0", 1, 1).rename(other)
    with h5py.File(path, "r+") as f:
        del f["patches"]
        f["patches"] = h5py.ExternalLink(str(other), "/patches")


def _change(edit: Callable[[h5py.File], object]) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            edit(f)
    return make


def scan_and_index(inputs: list[Path], out: Path, checks: IndexChecks) -> DatasetIndex:
    return make_index(scan_stores(inputs, out.parent, checks), out, "patient")


BAD = {"damaged-labels": (lambda p: _zero_chunk(p, "labels", 0), "damaged data in 'labels' (checksum mismatch"),
       "truncated": (_truncate, "not a readable HDF5 file"),
       "not-hdf5": (_not_hdf5, "not a readable HDF5 file"),
       "unmarked": (_change(lambda f: f.attrs.__delitem__("complete")), "incomplete (no completion marker)"),
       "external-link": (_external_patches, "'patches' is an external link; refused"),
       "short-labels": (_change(lambda f: f["labels"].resize(3, axis=0)),
                        "'labels' has shape (3,), expected (6,) (n_patches 6); re-extract this slide"),
       "n_patches": (_change(lambda f: f.attrs.modify("n_patches", 7)),
                     "'patches' has shape (6, 8, 8, 3), expected (7, 8, 8, 3) (n_patches 7)"),
       "no-n_patches": (_change(lambda f: f.attrs.__delitem__("n_patches")), "no 'n_patches' attribute"),
       "patch_size": (_change(lambda f: f["patches"].attrs.modify("patch_size", 16)),
                      "'patches' has shape (6, 8, 8, 3), expected (6, 16, 16, 3) (n_patches 6)"),
       "dtype": (_change(lambda f: (f.__delitem__("tissue_fraction"),
                                    f.create_dataset("tissue_fraction", data=np.ones(6, np.int8)))),
                 "'tissue_fraction' has type int8, expected float")}


@pytest.mark.parametrize("damage", BAD, ids=list(BAD))
def test_bad_store_fails_the_index_naming_it(stores: Path, tmp_path: Path, damage: str) -> None:
    """Regression (issue 13.5): an unreadable, truncated or unmarked store was logged as 'not a finished patch
    store' and left out of the index; one with damaged labels, foreign data or mismatched lengths was listed."""
    make, message = BAD[damage]
    bad = stores / "patient_004_node_1.h5"  # 1 tumour + 5 normal patches
    make(bad)
    with pytest.raises(CamnetError) as err:
        build_index([stores], tmp_path / "i.json", "patient")
    assert str(err.value).startswith(f"patch store {bad}: {message}")
    assert not (tmp_path / "i.json").exists()


def test_skip_bad_records_bad_stores_in_the_index(stores: Path, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Regression (issue 13.5): with --skip-bad a bad store is left out but recorded (and logged), not dropped."""
    import json

    _truncate(stores / "patient_004_node_1.h5")
    _zero_chunk(stores / "patient_007_node_0.h5", "labels", 0)
    out = tmp_path / "i.json"
    index = scan_and_index([stores], out, IndexChecks(skip_bad=True))
    assert len(index.entries) == 18
    skipped = json.loads(out.read_text())["skipped"]
    assert [s["path"] for s in skipped] == [str(stores / f"patient_00{i}.h5") for i in ("4_node_1", "7_node_0")]
    assert skipped[0]["error"].startswith(f"patch store {stores / 'patient_004_node_1.h5'}: not a readable HDF5 file")
    assert skipped[1]["error"] == (f"patch store {stores / 'patient_007_node_0.h5'}: damaged data in 'labels' "
                                   "(checksum mismatch or undecodable chunk); re-extract this slide")
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"skipped (--skip-bad): {s['error']}" for s in skipped]
    loaded = DatasetIndex.load(out)
    assert loaded.entries == index.entries and loaded.skipped == index.skipped
    assert [(s.path, s.error) for s in loaded.skipped] == [(s["path"], s["error"]) for s in skipped]


def test_index_without_a_skipped_list_still_loads(stores: Path, tmp_path: Path) -> None:
    """Index files written before `skipped` existed load unchanged (and skip nothing)."""
    import json

    data = json.loads(build_index([stores], tmp_path / "i.json", "patient").save(tmp_path / "i.json").read_text())
    assert data.pop("skipped") == []
    (tmp_path / "old.json").write_text(json.dumps(data))
    old = DatasetIndex.load(tmp_path / "old.json")
    assert old.skipped == () and old.entries == DatasetIndex.load(tmp_path / "i.json").entries


def test_verify_reads_every_patch_chunk(stores: Path, tmp_path: Path) -> None:
    """The default check is structural (a cohort of terabytes is not reread on every index); --verify reads every
    patch chunk, so a damaged patch fails the index."""
    bad = stores / "patient_002_node_0.h5"
    _zero_chunk(bad, "patches", 6)
    assert len(build_index([stores], tmp_path / "i.json", "patient").entries) == 20
    with pytest.raises(CamnetError) as err:
        scan_and_index([stores], tmp_path / "v.json", IndexChecks(verify=True))
    assert str(err.value) == (f"patch store {bad}: damaged data in 'patches' (row 6 is all zeros, which this store's "
                              "black filter never keeps: a zeroed chunk); re-extract this slide")


def test_all_stores_bad_is_an_error(tmp_path: Path) -> None:
    _not_hdf5(tmp_path / "a.h5")
    with pytest.raises(CamnetError, match=r"no finished patch stores \(\*\.h5\) in .*; 1 skipped as bad"):
        scan_and_index([tmp_path], tmp_path / "i.json", IndexChecks(skip_bad=True))


def test_store_written_before_checksums_is_indexed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forward compatibility: finished stores of earlier versions (no checksums) are listed, and verify."""
    from layer1_patches import store as store_mod

    _store(tmp_path, "a", "1", "0", 2, 3)
    monkeypatch.setattr(store_mod, "CHECKSUMS", False)  # the writer as it was before checksums
    with h5py.File(_store(tmp_path, "b", "2", "0", 2, 3), "r") as f:
        assert not any(ds.fletcher32 for ds in f.values() if isinstance(ds, h5py.Dataset))
    index = scan_and_index([tmp_path], tmp_path / "i.json", IndexChecks(verify=True))
    assert sorted(e.slide_name for e in index.entries) == ["a", "b"]


# The command line: one error line naming the store, exit 2, no index written.

@pytest.mark.parametrize("damage", ["damaged-labels", "truncated", "external-link"])
def test_index_command_names_a_bad_store(stores: Path, tmp_path: Path, damage: str) -> None:
    """Regression (issue 13.5): `index` exited 0, dropping or listing the bad store."""
    make, message = BAD[damage]
    bad = stores / "patient_004_node_1.h5"
    make(bad)
    out = tmp_path / "i.json"
    proc = run_cli("index", "--inputs", str(stores), "--out", str(out))
    assert_one_error(proc, f"patch store {bad}: {message}")
    assert not out.exists()


def test_index_command_verify_and_skip_bad(stores: Path, tmp_path: Path) -> None:
    import json

    bad = stores / "patient_003_node_0.h5"
    _zero_chunk(bad, "patches", 0)
    out = tmp_path / "i.json"
    assert run_cli("index", "--inputs", str(stores), "--out", str(out)).returncode == 0  # structural: not seen
    proc = run_cli("index", "--inputs", str(stores), "--out", str(out), "--verify")
    assert_one_error(proc, f"patch store {bad}: damaged data in 'patches' (row 0 is all zeros")
    proc = run_cli("index", "--inputs", str(stores), "--out", str(out), "--verify", "--skip-bad")
    assert proc.returncode == 0, proc.stderr
    assert f"skipped (--skip-bad): patch store {bad}: damaged data in 'patches'" in proc.stderr
    data = json.loads(out.read_text())
    assert len(data["entries"]) == 19 and [s["path"] for s in data["skipped"]] == [str(bad)]
    assert json.loads(proc.stdout)["skipped"] == 1


def _one_class_val(folder: Path) -> tuple[Path, int]:
    """Four patients, tumour in two; the seed whose split puts both tumour patients into train."""
    from layer1_patches.index import patient_splits

    folder.mkdir()
    tumour = {"000", "001"}
    for i in range(4):
        p = f"{i:03d}"
        _store(folder, f"patient_{p}_node_0", p, "0", tumour=3 if p in tumour else 0, normal=5)
    seed = next(s for s in range(100)
                if {v for k, v in patient_splits(["000", "001", "002", "003"], {"train": .5, "val": .5}, s).items()
                    if k in tumour} == {"train"})
    return folder, seed


def test_split_without_tumour_is_a_warning_with_the_fix(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder, seed = _one_class_val(tmp_path / "p")
    index = build_index([folder], tmp_path / "i.json", "patient", {"train": 0.5, "val": 0.5}, seed=seed)
    assert index.splits()["val"]["tumour"] == 0  # written all the same, as before
    warned = [r.getMessage() for r in caplog.records if "split 'val'" in r.getMessage()]
    assert len(warned) == 1 and "only patients 002, 003, without tumour patches" in warned[0]
    assert "fewer splits (4 patients, 2 with tumour, for 2 splits)" in warned[0]
    assert "patients with tumour into it (patients with tumour: 000 in train, 001 in train)" in warned[0]
    suggested = int(warned[0].split("--seed ")[1].split()[0])
    again = build_index([folder], tmp_path / "j.json", "patient", {"train": 0.5, "val": 0.5}, seed=suggested)
    assert all(s["tumour"] and s["normal"] for s in again.splits().values())


def test_require_both_classes_makes_the_split_error_name_the_fix(tmp_path: Path) -> None:
    folder, seed = _one_class_val(tmp_path / "p")
    out = tmp_path / "i.json"
    proc = run_cli("index", "--inputs", str(folder), "--out", str(out), "--fractions", "train=0.5,val=0.5",
                   "--seed", str(seed), "--require-both-classes")
    assert_one_error(proc, "split 'val' has only patients 002, 003, without tumour patches", "--seed ", "not written")
    assert not out.exists()
