"""Which patches to explain: top-k by tumour probability, a random sample per class, or listed ones.

Sources are Layer 1 patch stores (pixels, coords, labels) and Layer 3 heatmap outputs (a probability
grid with level-0 coords). A heatmap only ranks locations; pixels come from a store holding the same
coords, else from the slide the heatmap names. An empty selection is a user error, never an empty run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from layer1_patches.shared.errors import CamnetError
from layer1_patches.store import PatchStore
from layer3_inference.explain.config import SelectConfig

log = logging.getLogger(__name__)


@dataclass
class Selection:
    """Selected patches; `label` is -1 where unknown (heatmap patches read from a slide)."""

    rgb: np.ndarray  # (k, H, W, 3) uint8
    coords: np.ndarray  # (k, 2) int64 level-0 x, y
    label: np.ndarray  # (k,) int64
    source: list[str]  # store path (or slide path) per patch
    row: np.ndarray  # (k,) row in its store, -1 for slide reads
    prob: np.ndarray | None = None  # tumour probability when it was computed for the selection

    def __len__(self) -> int:
        return int(len(self.coords))

    def ids(self) -> list[str]:
        return [f"{Path(s).stem}_x{int(x)}_y{int(y)}" for s, (x, y) in zip(self.source, self.coords, strict=True)]


def open_stores(paths: list[Path]) -> list[PatchStore]:
    stores = [PatchStore(p) for p in paths]
    sizes = {s.patch_size for s in stores}
    if len(sizes) > 1:
        raise CamnetError(f"patch stores differ in patch size ({sorted(sizes)}); explain one size at a time")
    return stores


def _pairs(stores: list[PatchStore]) -> list[tuple[int, int]]:
    return [(s, i) for s, store in enumerate(stores) for i in range(len(store))]


def read_pairs(stores: list[PatchStore], pairs: list[tuple[int, int]], size: int) -> np.ndarray:
    """The patches of (store, row) pairs, in pair order: one read per store, which PatchStore.read turns into few
    hyperslab reads (not one HDF5 read per patch)."""
    which = np.array([s for s, _ in pairs], np.int64)
    rows = np.array([i for _, i in pairs], np.int64)
    rgb = np.empty((len(pairs), size, size, 3), np.uint8)
    for s in np.unique(which):
        at = np.flatnonzero(which == s)
        rgb[at] = stores[s].read(rows[at])
    return rgb


def _gather(stores: list[PatchStore], pairs: list[tuple[int, int]], prob: np.ndarray | None = None) -> Selection:
    if not pairs:
        raise CamnetError("patch selection is empty: no patch matches the selection "
                          "(check select.mode and its keys, or the stores' labels)")
    rgb = read_pairs(stores, pairs, stores[0].patch_size)  # one size: open_stores checks it
    return Selection(rgb=rgb, coords=np.array([stores[s].coords[i] for s, i in pairs], np.int64),
                     label=np.array([int(stores[s].labels[i]) for s, i in pairs], np.int64),
                     source=[str(stores[s].path) for s, _ in pairs], row=np.array([i for _, i in pairs], np.int64),
                     prob=prob)


def random_per_class(stores: list[PatchStore], per_class: int, seed: int) -> list[tuple[int, int]]:
    """Up to `per_class` seeded picks per label, labels in ascending order."""
    rng = np.random.default_rng(seed)
    pairs = _pairs(stores)
    labels = np.array([int(stores[s].labels[i]) for s, i in pairs])
    out: list[tuple[int, int]] = []
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        picks = rng.choice(members, size=min(per_class, len(members)), replace=False)
        out += [pairs[j] for j in sorted(picks)]
    return out


def by_coords(stores: list[PatchStore], coords: np.ndarray) -> list[tuple[int, int]]:
    """Rows whose level-0 top-left corner equals each of `coords` (first store that has it)."""
    out = []
    for x, y in np.asarray(coords, np.int64).reshape(-1, 2):
        hit = next(((s, int(np.flatnonzero((st.coords == (x, y)).all(1))[0])) for s, st in enumerate(stores)
                    if ((st.coords == (x, y)).all(1)).any()), None)
        if hit is None:
            raise CamnetError(f"select.coords: no patch at level-0 ({x}, {y}) in the given stores")
        out.append(hit)
    return out


def select_from_stores(stores: list[PatchStore], cfg: SelectConfig,
                       score: Callable[[list[tuple[int, int]]], np.ndarray] | None) -> Selection:
    """`score(pairs)` -> tumour probabilities; needed for top_k only."""
    if not stores:
        raise CamnetError("patch selection is empty: no patch store given (--store)")
    if cfg.mode == "random_per_class":
        return _gather(stores, random_per_class(stores, cfg.per_class, cfg.seed))
    if cfg.mode == "indices":
        n = len(stores[0])
        bad = [i for i in cfg.indices if i >= n]
        if bad:
            raise CamnetError(f"select.indices: {bad[0]} is out of range for {stores[0].path} ({n} patches)")
        return _gather(stores, [(0, i) for i in cfg.indices])
    if cfg.mode == "coords":
        return _gather(stores, by_coords(stores, np.array(cfg.coords, np.int64).reshape(-1, 2)))
    if score is None:
        raise CamnetError("select.mode top_k needs tumour probabilities: give --store with a model or --heatmap")
    pairs = _pairs(stores)
    if not pairs:
        raise CamnetError("patch selection is empty: the stores hold no patches")
    prob = score(pairs)
    top = np.argsort(-prob, kind="stable")[:cfg.k]
    return _gather(stores, [pairs[j] for j in top], prob[top])


@dataclass
class Heatmap:
    prob: np.ndarray  # (m,) tumour probability, finite only
    coords: np.ndarray  # (m, 2) level-0 x, y of each cell's patch
    attrs: dict[str, Any]


def read_heatmaps(path: Path) -> list[tuple[Path, Heatmap]]:
    """Finished heatmap outputs: `path` is one slide's output folder (`OUT/<stem>`) or the `OUT` folder.

    Read with the heatmap writer's own reader (`layer3_inference.outputs`), which refuses unfinished
    outputs; the slide path, level and footprint come from the attributes of its probabilities file.
    """
    from layer3_inference.outputs import PROBS, SUMMARY, read_probabilities

    path = Path(path)
    if not path.is_dir():
        raise CamnetError(f"heatmap {path}: no such folder (expected a heatmap output folder)")
    dirs = [path] if (path / SUMMARY).is_file() else sorted(
        d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".") and (d / SUMMARY).is_file())
    if not dirs:
        raise CamnetError(f"heatmap {path}: no finished heatmap output (no {SUMMARY} in it or its subfolders)")
    out = []
    for d in dirs:
        probs = read_probabilities(d)
        with h5py.File(d / PROBS, "r") as f:
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        prob = np.asarray(probs.prob, np.float64).reshape(-1)
        coords = np.asarray(probs.coords).reshape(-1, 2)
        keep = np.isfinite(prob) & np.isfinite(coords).all(axis=1)
        out.append((d, Heatmap(prob[keep], coords[keep].astype(np.int64), attrs)))
    return out


def select_from_heatmaps(heatmaps: list[tuple[Path, Heatmap]], k: int, stores: list[PatchStore],
                         read_slide: Callable[[Heatmap, np.ndarray], np.ndarray] | None) -> Selection:
    """Top-k cells over all heatmaps; pixels from a store with those coords, else from the slide."""
    probs = [hm.prob for _, hm in heatmaps]
    flat = np.concatenate(probs) if probs else np.zeros(0)
    if not len(flat):
        raise CamnetError("patch selection is empty: the heatmaps hold no tissue cells")
    heatmap_of = np.repeat(np.arange(len(probs)), [len(p) for p in probs])
    cell_of = np.concatenate([np.arange(len(p)) for p in probs])
    top = np.argsort(-flat, kind="stable")[:k]  # stable: ties keep heatmap, then cell order
    chosen = [(float(flat[t]), int(heatmap_of[t]), int(cell_of[t])) for t in top]
    coords = np.array([heatmaps[j][1].coords[i] for _, j, i in chosen], np.int64)
    prob = np.array([p for p, _, _ in chosen])
    if stores:
        # Grid coordinates repeat across slides: a cell's pixels must come from its own slide's store.
        by_slide: dict[Any, list[int]] = {}
        for s, st in enumerate(stores):
            by_slide.setdefault(st.attrs.get("slide_name"), []).append(s)
        pairs = []
        for cell, (_, j, _) in zip(coords, chosen, strict=True):
            name = heatmaps[j][1].attrs.get("slide_name")
            own = by_slide.get(name, [])
            if not own:
                raise CamnetError(f"heatmap {heatmaps[j][0]}: no given patch store (--store) is of slide {name}")
            (s, i), = by_coords([stores[s] for s in own], cell[None])
            pairs.append((own[s], i))
        sel = _gather(stores, pairs)
        sel.prob = prob
        return sel
    if read_slide is None:
        raise CamnetError("heatmap selection needs pixels: give the patch store (--store) the heatmap was made from")
    rgb = np.stack([read_slide(heatmaps[j][1], heatmaps[j][1].coords[i]) for _, j, i in chosen])
    sources = [str(heatmaps[j][1].attrs.get("slide_path", heatmaps[j][0])) for _, j, _ in chosen]
    return Selection(rgb=rgb, coords=coords, label=np.full(len(chosen), -1, np.int64), source=sources,
                     row=np.full(len(chosen), -1, np.int64), prob=prob)


def slide_reader(patch_size: int) -> Callable[[Heatmap, np.ndarray], np.ndarray]:
    """Reads a heatmap cell's patch with the pixels inference saw: Layer 1's `PatchReader` at the heatmap's
    working resolution (same level, same size, same resampling). Inference may have cut it from JPEG tiles
    (`layer1_patches.reading`); those are OpenSlide's pixels too, so one patch is read through OpenSlide here."""
    from layer1_patches.reading import PatchReader
    from layer1_patches.slide import Slide, WorkingResolution

    # One open slide per heatmap, not one per selected patch; OpenSlide closes it when the reader is dropped.
    readers: dict[str, PatchReader] = {}

    def read(hm: Heatmap, xy: np.ndarray) -> np.ndarray:
        a = hm.attrs
        if not a.get("slide_path") or a.get("downsample") is None:
            raise CamnetError(f"heatmap of slide {a.get('slide_name', '?')} lacks slide_path/downsample attributes: "
                              "give the patch store (--store)")
        key = f"{a['slide_path']}|{a.get('level', 0)}|{a['downsample']}"
        if key not in readers:
            slide = Slide(Path(str(a["slide_path"])))
            level = int(a.get("level", 0))
            res = WorkingResolution(level, slide.level_downsamples[level], float(a["downsample"]),
                                    float(a.get("working_mpp", 0.0)), 0.0)
            readers[key] = PatchReader(slide, res, patch_size, [])
        patch, _ = readers[key](xy)
        return patch

    return read


@dataclass(frozen=True)
class SplitChoice:
    """The stores (and, for heatmaps, the slide names) `explain` may select patches from: those of `split`
    (None: unknown, no index given; "all": every given store), with a warning when the split is unknown."""

    paths: list[Path]
    given: list[Path]  # every store considered (the index's when no --store): RCV's labelled patches
    split: str | None
    slides: set[str] | None = None  # None: any slide
    warning: Any = None  # layer2_training.health.HealthWarning


def _split_of(path: Path, index: Any) -> str | None:
    """The split of a store: the index entry with the same resolved path, else the same file name (a store
    copied elsewhere); None when the index does not list it."""
    by_path = {index.resolve(e).resolve(): e.split for e in index.entries}
    by_name = {Path(e.path).name: e.split for e in index.entries}
    return by_path.get(Path(path).resolve(), by_name.get(Path(path).name))


def split_stores(paths: list[Path], index_path: Path | None, split: str) -> SplitChoice:
    """Training patches explain what the model memorised, not what it learnt: by default (`select.split: test`)
    patches come only from the test split's stores of Layer 1's index (all the index's stores when no --store).
    Without an index the split is unknown: every store, and one `split_unknown` warning."""
    from layer1_patches.index import DatasetIndex
    from layer2_training.health import HealthWarning

    if split == "all":
        return SplitChoice(list(paths), list(paths), "all")
    if index_path is None:
        message = (f"patches selected without --index: their split is unknown (select.split {split!r} not applied); "
                   "they may come from training slides")
        log.warning(message)
        return SplitChoice(list(paths), list(paths), None, warning=HealthWarning("split_unknown", message))
    index = DatasetIndex.load(index_path)
    paths = list(paths) or [index.resolve(e) for e in index.entries]
    chosen = [p for p in paths if _split_of(p, index) == split]
    unlisted = [str(p) for p in paths if _split_of(p, index) is None]
    if unlisted:
        log.warning("stores not in index %s, left out of the selection: %s", index_path, ", ".join(unlisted))
    if not chosen:
        counts = ", ".join(f"{name} {sum(_split_of(p, index) == name for p in paths)}"
                           for name in sorted({e.split for e in index.entries}))
        raise CamnetError(f"select.split {split!r}: none of the {len(paths)} given stores is in that split of index "
                          f"{index_path} (given stores per split: {counts})")
    return SplitChoice(chosen, paths, split, {e.slide_name for e in index.split(split)})


def heatmaps_of_split(heatmaps: list[tuple[Path, Heatmap]], choice: SplitChoice, index_path: Path | None,
                      ) -> list[tuple[Path, Heatmap]]:
    """The heatmaps of slides in the chosen split; an error when none is."""
    if choice.slides is None:
        return heatmaps
    kept = [(p, hm) for p, hm in heatmaps if hm.attrs.get("slide_name") in choice.slides]
    if not kept:
        raise CamnetError(f"select.split {choice.split!r}: no heatmap is of a slide in that split of index "
                          f"{index_path}")
    return kept
