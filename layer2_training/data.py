"""Index -> splits -> per-rank epoch plans -> tf.data batches read from the HDF5 stores.

An epoch plan is a pure function of (seed, epoch, rank, size): blocks of `read_block` contiguous rows are
shuffled, samples are mixed within windows of blocks (so reads stay mostly contiguous), the order is cut
into one contiguous share per rank (disjoint, together covering the split) and each share into the same
number of batches on every rank (Horovod's allreduce needs equal step counts). Being pure, a resumed run
sees the same batches it would have seen without the interruption.

Reading follows the plan's structure rather than batch by batch: consecutive batches that start in the
same window are one read group, whose rows (a few blocks of contiguous rows) are read as contiguous runs,
several groups in parallel, then cut into the planned batches and augmented in tf.data.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from layer1_patches.index import DatasetIndex
from layer1_patches.shared.errors import CamnetError, os_reason
from layer1_patches.store import PatchStore
from layer2_training.config import DataConfig

if TYPE_CHECKING:
    import tensorflow as tf


@dataclass(frozen=True)
class SplitData:
    """The samples of one split, sorted by (store, row) so neighbours are neighbours on disk."""

    name: str
    paths: tuple[Path, ...]
    store: np.ndarray  # int32 position in `paths`, per sample
    row: np.ndarray  # int64 row in that store
    label: np.ndarray  # uint8, 1 tumour
    sample_id: np.ndarray  # int64, unique within the index: store offset + row
    patch_size: int

    def __len__(self) -> int:
        return int(self.label.shape[0])

    @property
    def n_tumour(self) -> int:
        return int(self.label.sum())


def load_index(path: Path) -> DatasetIndex:
    return DatasetIndex.load(path)


def index_patch_size(index: DatasetIndex) -> int:
    sizes = sorted({e.patch_size for e in index.entries})
    if len(sizes) != 1:
        raise CamnetError(f"dataset index {index.root}: stores differ in patch size {sizes}")
    return sizes[0]


def _balance(idx: np.ndarray, labels: np.ndarray, mode: str, rng: np.random.Generator) -> np.ndarray:
    pos, neg = idx[labels[idx] == 1], idx[labels[idx] == 0]
    small, big = (pos, neg) if len(pos) < len(neg) else (neg, pos)
    if mode == "oversample":
        extra = rng.choice(small, size=len(big) - len(small), replace=True)
        return np.sort(np.concatenate([idx, extra]), kind="stable")
    if mode == "undersample":
        keep = rng.choice(big, size=len(small), replace=False)
        return np.sort(np.concatenate([small, keep]), kind="stable")
    return idx


def load_split(index: DatasetIndex, name: str, cfg: DataConfig, seed: int, balance: bool,
               both_classes: bool = True) -> SplitData:
    """One split's samples; a split without samples is a user error, and so is one with a single class where
    `both_classes` (training needs both; a one-class validation or test split is a health warning instead)."""
    offsets = np.cumsum([0] + [e.n_patches for e in index.entries])
    known = sorted({e.split for e in index.entries})
    members = [(i, e) for i, e in enumerate(index.entries) if e.split == name]
    if not members:
        raise CamnetError(f"dataset index {index.root}: split '{name}' has no slides (splits: {known})")
    rng = np.random.default_rng([seed, 7])
    paths, stores, rows, labels, ids = [], [], [], [], []
    for k, (i, entry) in enumerate(members):
        path = index.resolve(entry)
        with PatchStore(path) as store:
            lab = np.asarray(store.labels, dtype=np.uint8)
        if len(lab) != entry.n_patches:
            # Sample ids are offsets from the index's counts: a store re-extracted after indexing would overlap.
            raise CamnetError(f"patch store {path} holds {len(lab)} patches but the dataset index lists "
                              f"{entry.n_patches}: rebuild the index (python -m layer1_patches index)")
        r = np.arange(len(lab), dtype=np.int64)
        if cfg.max_per_slide is not None and len(r) > cfg.max_per_slide:
            r = np.sort(rng.choice(r, size=cfg.max_per_slide, replace=False))
        paths.append(path)
        stores.append(np.full(len(r), k, dtype=np.int32))
        rows.append(r)
        labels.append(lab[r])
        ids.append(offsets[i] + r)
    label = np.concatenate(labels)
    n_pos = int(label.sum())
    if len(label) == 0:
        raise CamnetError(f"dataset index {index.root}: split '{name}' has no patches")
    if both_classes and n_pos in (0, len(label)):
        only = "tumour" if n_pos else "normal"
        raise CamnetError(f"dataset index {index.root}: split '{name}' has only {only} patches "
                          f"({len(label)}); training and AUC need both classes")
    keep = np.arange(len(label))
    if balance and cfg.balance != "none":
        keep = _balance(keep, label, cfg.balance, rng)
    return SplitData(name, tuple(paths), np.concatenate(stores)[keep], np.concatenate(rows)[keep],
                     label[keep], np.concatenate(ids)[keep], index_patch_size(index))


def steps_per_epoch(n: int, size: int, batch: int) -> int:
    """Batches per rank: every rank takes this many, each non-empty (at most batch + 1 samples)."""
    per_rank = n // size
    if per_rank == 0:
        raise CamnetError(f"{n} samples cannot feed {size} ranks")
    return math.ceil(per_rank / batch)


def epoch_order(n: int, seed: int, epoch: int, block: int, window: int, shuffle: bool) -> np.ndarray:
    """Positions 0..n-1 in this epoch's order: block-shuffled, mixed within windows of blocks."""
    if not shuffle:
        return np.arange(n)
    rng = np.random.default_rng([seed, epoch])
    starts = np.arange(0, n, block)
    order = np.concatenate([np.arange(s, min(s + block, n)) for s in rng.permutation(starts)])
    span = block * window
    for s in range(0, n, span):
        order[s:s + span] = rng.permutation(order[s:s + span])
    return order


def rank_batches(order: np.ndarray, rank: int, size: int, batch: int) -> list[np.ndarray]:
    share = np.array_split(order, size)[rank]
    return np.array_split(share, steps_per_epoch(len(order), size, batch))


def share_offset(n: int, rank: int, size: int) -> int:
    """Where `rank`'s share starts in the epoch order (the cut `rank_batches` makes)."""
    return rank * (n // size) + min(rank, n % size)


def row_runs(keys: np.ndarray, max_gap: int) -> list[tuple[int, int]]:
    """[start, stop) index ranges of sorted unique `keys` whose neighbours differ by at most max_gap + 1.

    Keys are store * 2**40 + row, so a run never spans two stores; reading a run's covering rows in one
    call costs less than one call per row when gaps are this small.
    """
    if len(keys) == 0:
        return []
    cuts = np.flatnonzero(np.diff(keys) > max_gap + 1) + 1
    bounds = np.concatenate([[0], cuts, [len(keys)]])
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def covering_keys(keys: np.ndarray, max_gap: int) -> np.ndarray:
    """Sorted unique `keys` with the keys inside their `row_runs` gaps added: the rows read to get `keys`.

    Rows in a small gap are read and dropped rather than splitting the read; `PatchStore.read` then makes
    one HDF5 call per contiguous stretch of these rows, that is one per run.
    """
    runs = np.array(row_runs(keys, max_gap), dtype=np.int64).reshape(-1, 2)
    starts, lengths = keys[runs[:, 0]], keys[runs[:, 1] - 1] - keys[runs[:, 0]] + 1
    offsets = np.cumsum(lengths) - lengths  # where each run starts in the result
    return np.repeat(starts - offsets, lengths) + np.arange(int(lengths.sum()), dtype=np.int64)


class BatchReader:
    """Reads planned batches from the split's stores in groups of consecutive batches.

    A group is the run of batches that start in the same shuffle window (`read_block * shuffle_window`
    positions of the epoch order); its samples come from a few blocks of contiguous rows, so reading the
    group's rows as contiguous runs (one HDF5 call each, LZ4 decompressing whole chunks) costs a handful of
    calls instead of one scattered selection per batch (h5py's scattered selections are ~50x slower per
    row). The shuffle buffer is the group: memory per group in flight ~ read_block * shuffle_window patches.
    """

    SPAN_KEY = 1 << 40  # store * SPAN_KEY + row: one sortable key per (store, row)
    MAX_GAP = 4  # rows read and dropped rather than starting another HDF5 call

    def __init__(self, split: SplitData, batch: int, cfg: DataConfig, shard: tuple[int, int],
                 shuffle_seed: int | None, record_dir: Path | None = None) -> None:
        """Batches of `batch` for rank `shard[0]` of `shard[1]`; block-shuffled by `shuffle_seed`, or in split
        order when it is None."""
        self.split, self.batch, self.cfg, self.record_dir = split, batch, cfg, record_dir
        self.rank, self.size = shard
        self.seed, self.shuffle = shuffle_seed or 0, shuffle_seed is not None
        self.steps = steps_per_epoch(len(split), self.size, batch)
        self.span = cfg.read_block * cfg.shuffle_window
        self._stores: dict[int, PatchStore] = {}
        self._lock = threading.Lock()  # store handles are created by whichever read thread needs them

    @lru_cache(maxsize=4)  # noqa: B019 - a reader lives as long as its run
    def plan(self, epoch: int) -> list[np.ndarray]:
        order = epoch_order(len(self.split), self.seed, epoch, self.cfg.read_block, self.cfg.shuffle_window,
                            self.shuffle)
        return rank_batches(order, self.rank, self.size, self.batch)

    def batch_sizes(self) -> np.ndarray:
        """Sizes of this rank's batches: the same every epoch (only their content changes)."""
        n = len(self.split)
        share = n // self.size + (1 if self.rank < n % self.size else 0)
        return np.array([len(b) for b in np.array_split(np.arange(share), self.steps)], dtype=np.int64)

    def groups(self, first: int, end: int) -> list[tuple[int, int]]:
        """(first step, number of batches) of the read groups covering steps first..end-1 of any epoch."""
        sizes = self.batch_sizes()
        starts = share_offset(len(self.split), self.rank, self.size) + np.concatenate([[0], np.cumsum(sizes)])
        window = starts[:-1] // self.span
        out: list[tuple[int, int]] = []
        for step in range(first, min(end, len(sizes))):
            if out and window[step] == window[out[-1][0]]:
                out[-1] = (out[-1][0], out[-1][1] + 1)
            else:
                out.append((step, 1))
        return out

    def _store(self, k: int) -> PatchStore:
        with self._lock:
            if k not in self._stores:
                self._stores[k] = PatchStore(self.split.paths[k])
            return self._stores[k]

    def read_positions(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Images, labels and sample ids at split positions `pos` (any order, repeats allowed).

        Each store is asked once for its covering rows; `PatchStore.read` reads them as contiguous runs.
        """
        s = self.split
        pos = np.asarray(pos, dtype=np.int64)
        wanted = s.store[pos].astype(np.int64) * self.SPAN_KEY + s.row[pos]
        cover = covering_keys(np.unique(wanted), self.MAX_GAP)
        parts = np.split(cover, np.flatnonzero(np.diff(cover // self.SPAN_KEY)) + 1)  # one per store
        blocks = [self._store(int(p[0] // self.SPAN_KEY)).read(p % self.SPAN_KEY) for p in parts if len(p)]
        size = s.patch_size
        # a single store's block is used as read; several are joined (the empty array covers empty `pos`)
        images = blocks[0] if len(blocks) == 1 else np.concatenate([np.empty((0, size, size, 3), np.uint8), *blocks])
        return images[np.searchsorted(cover, wanted)], s.label[pos].astype(np.float32), s.sample_id[pos]

    def read_group(self, epoch: int, first: int, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Batches first..first+count-1 of an epoch concatenated, and the batch bounds (count + 1)."""
        batches = self.plan(int(epoch))[int(first):int(first) + int(count)]
        images, labels, ids = self.read_positions(np.concatenate(batches))
        if self.record_dir is not None:
            self.record_dir.mkdir(parents=True, exist_ok=True)
            name = self.record_dir / f"{self.split.name}_rank{self.rank}_epoch{int(epoch)}.txt"
            try:
                with self._lock, name.open("a") as f:
                    f.write("".join(f"{i}\n" for i in ids))
            except OSError as err:
                raise CamnetError(f"output {name}: cannot write ({os_reason(err)})") from None
        bounds = np.concatenate([[0], np.cumsum([len(b) for b in batches])]).astype(np.int64)
        return images, labels, bounds

    def read(self, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One planned batch: images, labels, sample ids."""
        return self.read_positions(self.plan(int(epoch))[int(step)])

    def close(self) -> None:
        with self._lock:
            for store in self._stores.values():
                store.close()
            self._stores.clear()


def make_dataset(reader: BatchReader, start: tuple[int, int], epochs: int, steps: int,
                 transform: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None, cfg: DataConfig) -> tf.data.Dataset:
    """(images float32 0-255, labels) for epochs start[0]..epochs-1, `steps` batches each, from start[1].

    `cfg.read_threads` read groups are read in parallel (h5py serialises HDF5 calls, but reading overlaps with
    splitting, augmenting and training, which run in TensorFlow's threads); each group is cut into its
    planned batches, which are cast and augmented as whole-batch TF ops in parallel (AUTOTUNE), then
    prefetched. Parallel stages keep their order (deterministic), so batches arrive as planned.
    """
    import tensorflow as tf

    whole = reader.groups(0, steps)
    table = [(e, first, count) for e in range(start[0], epochs)
             for first, count in (reader.groups(start[1], steps) if e == start[0] else whole)]
    size = reader.split.patch_size

    def read(row: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return reader.read_group(int(row[0]), int(row[1]), int(row[2]))

    def load(row: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        x, y, bounds = tf.numpy_function(read, [row], [tf.uint8, tf.float32, tf.int64], stateful=False)
        x.set_shape((None, size, size, 3))
        y.set_shape((None,))
        bounds.set_shape((None,))
        return x, y, bounds, row

    def split(x: tf.Tensor, y: tf.Tensor, bounds: tf.Tensor, row: tf.Tensor) -> tf.data.Dataset:
        def take(i: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            a, b = bounds[i], bounds[i + 1]
            return x[a:b], y[a:b], tf.stack([row[0], row[1] + i])

        return tf.data.Dataset.range(row[2]).map(take)

    def finish(x: tf.Tensor, y: tf.Tensor, es: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        xf = tf.cast(x, tf.float32) if transform is None else transform(x, es)  # uint8 in: cheaper flips
        return xf, tf.expand_dims(y, -1)

    ds = tf.data.Dataset.from_tensor_slices(np.asarray(table, dtype=np.int64).reshape(-1, 3))
    ds = ds.map(load, num_parallel_calls=cfg.read_threads, deterministic=True)
    ds = ds.flat_map(split)
    ds = ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(cfg.prefetch)


def data_error(err: Exception) -> CamnetError | None:
    """The `CamnetError` raised in a reader thread (a damaged store, a full disk), which TensorFlow hands back as
    an `UnknownError` carrying its text: the one error line it was, instead of a TensorFlow traceback."""
    found = re.search(r"CamnetError: (.+)", str(err))
    return CamnetError(found.group(1).strip()) if found else None
