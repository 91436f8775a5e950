"""Patch selection from stores and heatmap outputs; empty or impossible selections are user errors."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from layer1_patches.shared.errors import CamnetError
from layer1_patches.store import PatchWriter, SlideMeta
from layer3_inference.explain import select
from layer3_inference.explain.config import SelectConfig

SIZE = 16


def write_store(path: Path, labels: list[int]) -> Path:
    n = len(labels)
    rng = np.random.default_rng(len(labels))
    with PatchWriter(path, SIZE, codec="none") as w:
        w.append(rng.integers(0, 256, (n, SIZE, SIZE, 3)).astype(np.uint8),
                 np.stack([np.arange(n) * SIZE, np.full(n, 100)], 1), np.array(labels, np.uint8),
                 np.array(labels, np.float32), np.ones(n, np.float32))
        meta = SlideMeta(slide_name=path.stem, slide_path=str(path), patch_size=SIZE)
        return w.finish(meta, {"patch_size": SIZE, "patch_level": 0, "downsample": 1.0}, {}, {})


@pytest.fixture()
def stores(tmp_path: Path) -> list:
    a = write_store(tmp_path / "a.h5", [1, 0, 1, 0, 1, 1])
    b = write_store(tmp_path / "b.h5", [0, 0, 1])
    out = select.open_stores([a, b])
    yield out
    for s in out:
        s.close()


def test_top_k_across_stores(stores: list) -> None:
    scores = np.linspace(0, 1, 9)  # the last row of the second store scores highest

    sel = select.select_from_stores(stores, SelectConfig(mode="top_k", k=2), lambda pairs: scores[:len(pairs)])
    assert len(sel) == 2
    assert sel.source[0].endswith("b.h5") and sel.row[0] == 2
    assert list(sel.prob) == [1.0, scores[-2]]


def test_random_per_class_is_seeded_and_balanced(stores: list) -> None:
    cfg = SelectConfig(mode="random_per_class", per_class=2, seed=4)
    a = select.select_from_stores(stores, cfg, None)
    b = select.select_from_stores(stores, cfg, None)
    assert sorted(a.label.tolist()) == [0, 0, 1, 1]
    assert a.ids() == b.ids()


def test_indices_and_coords(stores: list) -> None:
    sel = select.select_from_stores(stores, SelectConfig(mode="indices", indices=[3, 0]), None)
    assert sel.row.tolist() == [3, 0] and sel.rgb.shape == (2, SIZE, SIZE, 3)
    sel = select.select_from_stores(stores, SelectConfig(mode="coords", coords=[[32, 100]]), None)
    assert sel.coords.tolist() == [[32, 100]]
    with pytest.raises(CamnetError, match=r"no patch at level-0 \(7, 7\)"):
        select.select_from_stores(stores, SelectConfig(mode="coords", coords=[[7, 7]]), None)
    with pytest.raises(CamnetError, match="select.indices: 99 is out of range"):
        select.select_from_stores(stores, SelectConfig(mode="indices", indices=[99]), None)


def test_empty_selection_is_an_error(stores: list) -> None:
    with pytest.raises(CamnetError, match="patch selection is empty"):
        select.select_from_stores(stores, SelectConfig(mode="indices", indices=[]), None)
    with pytest.raises(CamnetError, match="patch selection is empty"):
        select.select_from_stores([], SelectConfig(), None)


def write_heatmap(out: Path, stem: str, coords: np.ndarray, prob: np.ndarray, finished: bool = True) -> Path:
    """The heatmap writer's layout (layer3_inference.outputs): OUT/<stem>/probabilities.h5 + summary.json."""
    d = out / stem
    d.mkdir(parents=True)
    with h5py.File(d / "probabilities.h5", "w") as f:
        f["coords"], f["prob"] = coords, prob.astype(np.float32)
        tissue = f.create_dataset("tissue", data=np.ones((4, 4), np.uint8))
        tissue.attrs.update({"ds_x": 32.0, "ds_y": 32.0})
        f.attrs.update({"slide_name": stem, "slide_path": "/nowhere.tif", "width": 128, "height": 128,
                        "mpp": 0.5, "level": 0, "footprint": SIZE, "threshold": 0.5})
    if finished:
        (d / "summary.json").write_text(json.dumps({"run_hash": "x", "files": ["probabilities.h5", "summary.json"]}))
    return d


def test_heatmap_top_k_reads_pixels_from_the_store(tmp_path: Path, stores: list) -> None:
    coords = np.array([[0, 100], [16, 100], [32, 100], [48, 100]])
    write_heatmap(tmp_path / "hm", "a", coords, np.array([0.1, 0.9, np.nan, 0.5]))
    write_heatmap(tmp_path / "hm", "c", coords, np.array([0.99, 0.1, 0.1, 0.1]), finished=False)
    heatmaps = select.read_heatmaps(tmp_path / "hm")
    assert [p.name for p, _ in heatmaps] == ["a"]  # unfinished outputs are never read
    sel = select.select_from_heatmaps(heatmaps, 2, stores, None)
    assert sel.coords.tolist() == [[16, 100], [48, 100]] and sel.prob.tolist() == pytest.approx([0.9, 0.5])
    np.testing.assert_array_equal(sel.rgb[0], stores[0].read([1])[0])


def test_heatmap_errors(tmp_path: Path) -> None:
    with pytest.raises(CamnetError, match="no finished heatmap output"):
        select.read_heatmaps(tmp_path)
    write_heatmap(tmp_path / "hm", "a", np.zeros((0, 2), np.int64), np.zeros(0))
    with pytest.raises(CamnetError, match="patch selection is empty"):
        select.select_from_heatmaps(select.read_heatmaps(tmp_path / "hm"), 3, [], None)


def test_heatmap_cell_takes_pixels_from_its_own_slide(tmp_path: Path, stores: list) -> None:
    """Regression: grid coordinates repeat across slides, and a cell of slide b was read from store a."""
    coords = np.array([[0, 100], [16, 100]])
    write_heatmap(tmp_path / "hm", "b", coords, np.array([0.2, 0.8]))
    sel = select.select_from_heatmaps(select.read_heatmaps(tmp_path / "hm"), 1, stores, None)
    assert sel.source[0].endswith("b.h5") and sel.row[0] == 1
    np.testing.assert_array_equal(sel.rgb[0], stores[1].read([1])[0])
    write_heatmap(tmp_path / "hm2", "zzz", coords, np.array([0.2, 0.8]))
    with pytest.raises(CamnetError, match="no given patch store .* is of slide zzz"):
        select.select_from_heatmaps(select.read_heatmaps(tmp_path / "hm2"), 1, stores, None)


def test_gather_reads_each_store_once_in_selection_order(stores: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: explain read its selection one patch (one HDF5 read) at a time."""
    want = {(s, i): stores[s].read([i])[0] for s, i in [(0, 0), (0, 4), (0, 2), (1, 2), (1, 0)]}
    calls: list[tuple[str, list[int]]] = []
    real = type(stores[0]).read

    def counted(self, indices):  # type: ignore[no-untyped-def]
        calls.append((self.path.name, list(np.asarray(indices))))
        return real(self, indices)

    monkeypatch.setattr(type(stores[0]), "read", counted)
    pairs = [(1, 2), (0, 4), (0, 0), (1, 0), (0, 2), (0, 4)]  # interleaved, with a repeat
    sel = select._gather(stores, pairs)
    assert sorted(name for name, _ in calls) == ["a.h5", "b.h5"]
    for k, pair in enumerate(pairs):
        assert np.array_equal(sel.rgb[k], want[pair])
    assert list(sel.row) == [i for _, i in pairs] and list(sel.label) == [int(stores[s].labels[i]) for s, i in pairs]


def write_index(path: Path, splits: dict[Path, str]) -> Path:
    """Layer 1's index.json with one entry per store and its split."""
    from layer1_patches.index import DatasetIndex, IndexEntry

    entries = tuple(IndexEntry(path=str(p), slide_name=p.stem, patient=p.stem, node="", centre="", split=split,
                               n_patches=1, n_tumour=1, n_normal=0, patch_size=SIZE, level=0, working_mpp=0.5,
                               config_hash="x") for p, split in splits.items())
    return DatasetIndex(path.parent, "patient", entries).save(path)


@pytest.fixture()
def train_test(tmp_path: Path) -> tuple[list[Path], Path]:
    paths = [write_store(tmp_path / f"{name}.h5", [1, 0, 1]) for name in ("train_a", "test_b", "train_c", "test_d")]
    index = write_index(tmp_path / "index.json", {p: p.stem.split("_")[0] for p in paths})
    return paths, index


def test_training_slides_are_not_selected_for_explanation(train_test: tuple[list[Path], Path]) -> None:
    """Regression: explain chose 5 of its 6 patches from training slides (it never read the split)."""
    paths, index = train_test
    choice = select.split_stores(paths, index, "test")
    assert [p.name for p in choice.paths] == ["test_b.h5", "test_d.h5"] and choice.given == paths
    assert choice.split == "test" and choice.warning is None and choice.slides == {"test_b", "test_d"}
    stores = select.open_stores(choice.paths)
    try:
        sel = select.select_from_stores(stores, SelectConfig(mode="random_per_class", per_class=3), None)
    finally:
        for s in stores:
            s.close()
    # labels 1, 0, 1 per store: 4 tumour and 2 normal patches in the test split, 3 + 2 picked
    assert len(sel) == 5 and {Path(s).name for s in sel.source} == {"test_b.h5", "test_d.h5"}
    assert [p.name for p in select.split_stores([], index, "train").paths] == ["train_a.h5", "train_c.h5"]


def test_split_all_and_no_index(train_test: tuple[list[Path], Path]) -> None:
    paths, index = train_test
    assert select.split_stores(paths, index, "all").paths == paths
    unknown = select.split_stores(paths, None, "test")
    assert unknown.paths == paths and unknown.split is None and unknown.slides is None
    assert unknown.warning.code == "split_unknown" and "--index" in unknown.warning.message


def test_split_without_a_given_store_is_one_clear_error(train_test: tuple[list[Path], Path]) -> None:
    paths, index = train_test
    with pytest.raises(CamnetError, match=rf"select.split 'test': none of the 2 given stores is in that split of "
                                          rf"index {index} \(given stores per split: test 0, train 2\)"):
        select.split_stores([paths[0], paths[2]], index, "test")
    with pytest.raises(CamnetError, match="select.split 'val': none of the 4 given stores"):
        select.split_stores(paths, index, "val")
    with pytest.raises(CamnetError, match=r"dataset index .*nope.json: no such file"):
        select.split_stores(paths, index.parent / "nope.json", "test")


def test_heatmaps_of_the_split_only(tmp_path: Path, train_test: tuple[list[Path], Path]) -> None:
    paths, index = train_test
    coords = np.array([[0, 100], [16, 100]])
    for stem in ("train_a", "test_b"):
        write_heatmap(tmp_path / "hm", stem, coords, np.array([0.2, 0.8]))
    heatmaps = select.read_heatmaps(tmp_path / "hm")
    kept = select.heatmaps_of_split(heatmaps, select.split_stores(paths, index, "test"), index)
    assert [p.name for p, _ in kept] == ["test_b"]
    assert len(select.heatmaps_of_split(heatmaps, select.split_stores(paths, None, "test"), None)) == 2
    only_train = select.split_stores(paths, index, "train")
    with pytest.raises(CamnetError, match="select.split 'train': no heatmap is of a slide in that split"):
        select.heatmaps_of_split([h for h in heatmaps if h[0].name == "test_b"], only_train, index)
