"""Epoch plans: disjoint per-rank shares covering the split, equal step counts, correct patches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from layer1_patches.shared.errors import CamnetError
from layer1_patches.store import PatchStore
from layer2_training import data
from layer2_training.config import DataConfig

PIPE = DataConfig(index="unused", prefetch=2, read_threads=2)  # the input pipeline's parallelism


@pytest.mark.parametrize("n", [7, 64, 97, 100])
@pytest.mark.parametrize("size", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [1, 4, 16])
def test_rank_batches_disjoint_cover_equal_steps(n: int, size: int, batch: int) -> None:
    if n < size:
        return
    order = data.epoch_order(n, seed=3, epoch=2, block=8, window=2, shuffle=True)
    assert sorted(order) == list(range(n))
    per_rank = [data.rank_batches(order, r, size, batch) for r in range(size)]
    assert len({len(b) for b in per_rank}) == 1  # every rank takes the same number of steps
    seen = [np.concatenate(b) for b in per_rank]
    assert all(len(b) > 0 for batches in per_rank for b in batches)
    assert all(len(b) <= batch + 1 for batches in per_rank for b in batches)
    union = np.concatenate(seen)
    assert len(union) == n and set(union.tolist()) == set(range(n))


def test_epoch_order_changes_with_epoch_and_keeps_blocks_local() -> None:
    a = data.epoch_order(256, 0, 0, 16, 2, True)
    b = data.epoch_order(256, 0, 1, 16, 2, True)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, data.epoch_order(256, 0, 0, 16, 2, True))
    # a window of 2 blocks holds samples of at most 2 distinct blocks
    for s in range(0, 256, 32):
        assert len(set((a[s:s + 32] // 16).tolist())) <= 2


def test_reader_returns_the_planned_patches(tiny_index: Path) -> None:
    index = data.load_index(tiny_index)
    split = data.load_split(index, "train", DataConfig(index=str(tiny_index)), seed=0, balance=False)
    cfg = DataConfig(index=str(tiny_index), read_block=4)
    reader = data.BatchReader(split, 8, cfg, (1, 2), 0)
    pos = reader.plan(0)[1]
    images, labels, ids = reader.read(0, 1)
    for j, p in enumerate(pos):
        with PatchStore(split.paths[split.store[p]]) as store:
            np.testing.assert_array_equal(images[j], store.read([split.row[p]])[0])
            assert labels[j] == store.labels[split.row[p]]
    np.testing.assert_array_equal(ids, split.sample_id[pos])
    reader.close()


def test_balance_oversample(tiny_index: Path) -> None:
    index = data.load_index(tiny_index)
    cfg = DataConfig(index=str(tiny_index), balance="undersample", max_per_slide=7)
    split = data.load_split(index, "train", cfg, seed=0, balance=True)
    assert split.n_tumour * 2 == len(split)


def test_dataset_yields_float_batches(tiny_index: Path) -> None:
    index = data.load_index(tiny_index)
    split = data.load_split(index, "val", DataConfig(index=str(tiny_index)), seed=0, balance=False)
    reader = data.BatchReader(split, 16, DataConfig(index=str(tiny_index)), (0, 1), None)
    ds = data.make_dataset(reader, (0, 0), 1, reader.steps, None, PIPE)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    assert xs[0].dtype == np.float32 and xs[0].shape[1:] == (32, 32, 3)
    np.testing.assert_array_equal(np.concatenate(ys).ravel(), split.label)


@pytest.mark.parametrize(("rank", "size", "batch", "first"), [(0, 1, 8, 0), (1, 2, 8, 0), (2, 3, 5, 1),
                                                              (0, 2, 40, 0)])
def test_read_groups_cover_the_steps_in_order(tiny_index: Path, rank: int, size: int, batch: int,
                                              first: int) -> None:
    index = data.load_index(tiny_index)
    cfg = DataConfig(index=str(tiny_index), read_block=4, shuffle_window=3)
    split = data.load_split(index, "train", cfg, seed=0, balance=False)
    reader = data.BatchReader(split, batch, cfg, (rank, size), 5)
    assert [len(b) for b in reader.plan(1)] == reader.batch_sizes().tolist()
    groups = reader.groups(first, reader.steps)
    assert [s for g0, k in groups for s in range(g0, g0 + k)] == list(range(first, reader.steps))
    assert len(groups) < reader.steps or batch * 2 > reader.span  # batches share reads
    for g0, k in groups:
        images, labels, bounds = reader.read_group(1, g0, k)
        for j in range(k):
            x, y, _ = reader.read(1, g0 + j)
            np.testing.assert_array_equal(images[bounds[j]:bounds[j + 1]], x)
            np.testing.assert_array_equal(labels[bounds[j]:bounds[j + 1]], y)
    reader.close()


def test_row_runs_merge_small_gaps() -> None:
    key = data.BatchReader.SPAN_KEY
    keys = np.array([0, 1, 2, 5, 20, 21, key + 3, key + 4])
    assert data.row_runs(keys, max_gap=2) == [(0, 4), (4, 6), (6, 8)]
    assert data.row_runs(keys, max_gap=0) == [(0, 3), (3, 4), (4, 6), (6, 8)]


def test_dataset_batches_follow_the_plan_from_a_mid_epoch_start(tiny_index: Path) -> None:
    from layer2_training.augment import make_transform
    from layer2_training.config import AugmentConfig

    index = data.load_index(tiny_index)
    cfg = DataConfig(index=str(tiny_index), read_block=4, shuffle_window=2)
    split = data.load_split(index, "train", cfg, seed=0, balance=False)
    reader = data.BatchReader(split, 6, cfg, (0, 1), 0)
    transform = make_transform(AugmentConfig(brightness=0.1), 0, 0)
    steps = reader.steps
    full = [(x.numpy(), y.numpy()) for x, y in data.make_dataset(reader, (0, 0), 2, steps, transform, PIPE)]
    resumed = [(x.numpy(), y.numpy()) for x, y in data.make_dataset(reader, (0, 3), 2, steps, transform, PIPE)]
    assert len(full) == 2 * steps and len(resumed) == 2 * steps - 3
    for (xa, ya), (xb, yb) in zip(full[3:], resumed, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    for step, (x, y) in enumerate(full[:steps]):
        planned, labels, _ = reader.read(0, step)
        np.testing.assert_array_equal(y.ravel(), labels)
        assert x.shape == planned.shape
    reader.close()


def test_covering_keys_fill_the_small_gaps_of_each_run() -> None:
    key = data.BatchReader.SPAN_KEY
    keys = np.array([0, 1, 2, 5, 20, 21, key + 3, key + 4])
    np.testing.assert_array_equal(data.covering_keys(keys, max_gap=2), [0, 1, 2, 3, 4, 5, 20, 21, key + 3, key + 4])
    np.testing.assert_array_equal(data.covering_keys(keys, max_gap=0), keys)
    assert len(data.covering_keys(np.array([], np.int64), max_gap=2)) == 0


def split_with_gaps_and_repeats(index_path: Path) -> tuple[data.SplitData, DataConfig]:
    """Subsampled rows (gaps of varied size within each store) and oversampled ones (repeated rows)."""
    cfg = DataConfig(index=str(index_path), read_block=4, shuffle_window=3, max_per_slide=8, balance="oversample")
    split = data.load_split(data.load_index(index_path), "train", cfg, seed=0, balance=True)
    assert len(np.unique(split.sample_id)) < len(split) and len(set(split.store.tolist())) > 1
    gaps = np.diff(split.row)[np.diff(split.store) == 0]
    assert np.any((gaps > 1) & (gaps <= 1 + data.BatchReader.MAX_GAP)) and np.any(gaps > 1 + data.BatchReader.MAX_GAP)
    return split, cfg


def test_reader_batches_hold_exactly_the_planned_patches(tiny_index: Path) -> None:
    """Pins every batch of an epoch, read by groups (as training does) and alone, against the stores."""
    split, cfg = split_with_gaps_and_repeats(tiny_index)
    stores = [PatchStore(p) for p in split.paths]
    reader = data.BatchReader(split, 7, cfg, (0, 1), 3)

    def expected(pos: np.ndarray) -> np.ndarray:
        return np.stack([stores[split.store[p]].read([split.row[p]])[0] for p in pos])

    try:
        plan = reader.plan(0)
        for g0, k in reader.groups(0, reader.steps):
            images, labels, bounds = reader.read_group(0, g0, k)
            for j in range(k):
                pos = plan[g0 + j]
                np.testing.assert_array_equal(images[bounds[j]:bounds[j + 1]], expected(pos))
                np.testing.assert_array_equal(labels[bounds[j]:bounds[j + 1]], split.label[pos])
                np.testing.assert_array_equal(reader.read(0, g0 + j)[0], expected(pos))
        pos = np.random.default_rng(0).integers(0, len(split), 50)  # any order, repeats, all stores
        images, labels, ids = reader.read_positions(pos)
        np.testing.assert_array_equal(images, expected(pos))
        np.testing.assert_array_equal(ids, split.sample_id[pos])
        assert reader.read_positions(np.array([], np.int64))[0].shape == (0, 32, 32, 3)
    finally:
        reader.close()
        for store in stores:
            store.close()


def test_reader_makes_one_hdf5_read_per_run(tiny_index: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows in small gaps are read along, so a read costs one hyperslab call per run, not per stretch."""
    import h5py

    split, cfg = split_with_gaps_and_repeats(tiny_index)
    reader = data.BatchReader(split, 7, cfg, (0, 1), 3)
    calls: list[tuple] = []
    read_direct = h5py.Dataset.read_direct

    def counting(ds: h5py.Dataset, *args: Any, **kwargs: Any) -> None:
        calls.append(args)
        read_direct(ds, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "read_direct", counting)
    try:
        for pos in (np.arange(len(split)), np.concatenate(reader.plan(0)[:5])):
            calls.clear()
            reader.read_positions(pos)
            keys = np.unique(split.store[pos].astype(np.int64) * reader.SPAN_KEY + split.row[pos])
            assert len(calls) == len(data.row_runs(keys, reader.MAX_GAP))
    finally:
        reader.close()


def one_class_val_index(root: Path) -> Path:
    """Patient 000 (4 tumour, 4 normal) trains; patient 001 (6 normal patches, no tumour) validates."""
    import json

    from layer1_patches.index import build_index
    from tests.layer2.conftest import write_store

    stores = root / "stores"
    stores.mkdir(parents=True)
    write_store(stores / "patient_000_node_0.h5", "000", 4, 4, 32, 0)
    write_store(stores / "patient_001_node_0.h5", "001", 0, 6, 32, 1)
    index = root / "index.json"
    build_index([stores], index, "centre", centres={"train": ["0"]})
    doc = json.loads(index.read_text())
    doc["entries"][[e["patient"] for e in doc["entries"]].index("001")]["split"] = "val"
    index.write_text(json.dumps(doc))
    return index


def test_a_one_class_validation_split_loads_and_a_one_class_training_split_does_not(tmp_path: Path) -> None:
    # training needs both classes; a normal-only validation split is a health warning at the end, not an error
    index = data.load_index(one_class_val_index(tmp_path))
    val = data.load_split(index, "val", PIPE, 0, balance=False, both_classes=False)
    assert (len(val), val.n_tumour) == (6, 0)
    with pytest.raises(CamnetError, match=r"split 'val' has only normal patches \(6\); training and AUC need both"):
        data.load_split(index, "val", PIPE, 0, balance=True)
    assert data.load_split(index, "train", PIPE, 0, balance=True).n_tumour == 4
