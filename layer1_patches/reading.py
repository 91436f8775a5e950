"""Reading a stream of patches from a slide: cut from tiles decoded once, or through OpenSlide patch by patch.

Both sources give the same pixels (tests/layer1/test_reading.py compares whole stores): the tile source is the
fast path where it applies, OpenSlide everything else. `open_source` picks per slide; the store records the choice
as its `reader` attribute.

Why tiles: OpenSlide's `read_region` spends most of a patch's time on per-region work (tile lookup, locking,
compositing 1-4 tiles into premultiplied ARGB, which we convert back to RGB), not on decoding; a dense stream decodes
each tile once here, off the GIL, and cuts patches from the decoded tiles (issue 17 has the measurements).
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
from PIL import Image

from layer1_patches.config import Backend
from layer1_patches.filters import PatchFilter, first_reject
from layer1_patches.slide import Slide, WorkingResolution
from layer1_patches.tileplan import TilePlan, patch_tiles, plan_decodes
from layer1_patches.tiles import OPENSLIDE_PIECE, TileLayout, level_pixels, read_region, tile_reader

Patch = tuple[np.ndarray, str | None]  # RGB patch and the filter that rejects it (None: accepted)
T = TypeVar("T")

# Patches whose tiles stay decoded between two uses (tileplan.py): more than a dense row of a 100,000 px slide at
# 224 px, when the tiles that window holds fit the budget below.
TILE_WINDOW = 512
# Decoded tiles held by the plan. A dense window spans about two tile rows across `window` patches, so the window
# shrinks for large tiles or patches (then a tile may be decoded twice, never held beyond this).
TILE_BUDGET_BYTES = 192 * 1024 * 1024


class PatchSource(Protocol):
    @property
    def name(self) -> str:  # the store's `reader` attribute
        ...

    @property
    def patch_size(self) -> int: ...

    def patches(self, coords: np.ndarray, threads: int, ahead: int) -> Iterator[Patch]:
        """The patch at each level-0 (x, y) of `coords`, in order, with its filter verdict."""
        ...


@dataclass(frozen=True)
class PatchReader:
    """Reads, resizes and filters one patch through OpenSlide; safe to call from several threads."""

    slide: Slide
    res: WorkingResolution
    patch_size: int
    filters: list[PatchFilter]

    def __call__(self, coord: np.ndarray) -> Patch:
        n = self.res.read_size(self.patch_size)
        patch = self.slide.read_rgb(int(coord[0]), int(coord[1]), self.res.level, n, n)
        return finish_patch(patch, self.patch_size, self.filters)


def finish_patch(patch: np.ndarray, patch_size: int, filters: list[PatchFilter]) -> Patch:
    """Resize a patch read at its level to `patch_size` (when they differ) and filter it."""
    if len(patch) != patch_size:
        patch = np.asarray(Image.fromarray(patch).resize((patch_size, patch_size), Image.Resampling.BOX))
    return patch, first_reject(patch, filters)


def ordered_map(fn: Callable[[T], Any], items: Iterable[T], threads: int, ahead: int, chunk: int = 16,
                flatten: bool = False) -> Generator[Any, None, None]:
    """`map` over threads that keeps about `ahead` items in flight and yields in input order (`flatten`: `fn`
    returns lists, whose elements are yielded). `items` is consumed on this thread, as the results are.

    Items go to the threads `chunk` at a time: a future per patch cost as much interpreter time (under the
    GIL, so off the reading threads) as converting the patch.
    """
    if threads == 1:
        for item in items:
            yield from (fn(item) if flatten else (fn(item),))
        return

    def run(part: list[T]) -> list[Any]:
        done = [fn(item) for item in part]
        return [x for result in done for x in result] if flatten else done

    chunk = max(1, min(chunk, ahead // threads))  # keep the read-ahead (memory) near `ahead` items
    source = iter(items)
    with ThreadPoolExecutor(threads) as pool:
        pending: deque[Future[list[Any]]] = deque()
        in_flight = max(threads, ahead // chunk)
        try:
            while part := list(itertools.islice(source, chunk)):
                pending.append(pool.submit(run, part))
                if len(pending) >= in_flight:
                    yield from pending.popleft().result()
            while pending:
                yield from pending.popleft().result()
        finally:  # the consumer stopped early (quota reached) or failed: drop what is queued
            for fut in pending:
                fut.cancel()


@dataclass(frozen=True)
class OpenSlideSource:
    reader: PatchReader
    name: str = "openslide"

    @property
    def patch_size(self) -> int:
        return self.reader.patch_size

    def patches(self, coords: np.ndarray, threads: int, ahead: int) -> Iterator[Patch]:
        return ordered_map(self.reader, coords, threads, ahead)


# A cut job: (patch index, level x, level y, the tiles it covers; None: read through OpenSlide)
CutItem = tuple[int, int, int, "dict[int, np.ndarray] | None"]
CUT_CHUNK = 8  # patches per cut job: a future per patch cost about as much interpreter time as cutting it


@dataclass(frozen=True)
class TileSource:
    """Patches cut from the tiles of the working level's TIFF page, each tile decoded once per stream (in the order
    `tileplan` gives) on `threads` decoding threads; `threads` more cut, resize and filter `CUT_CHUNK` patches at a
    time, so this thread only follows the plan and the consumer only writes. Everything the threads run (libjpeg,
    copies, numpy comparisons) is mostly outside Python's lock.

    A patch whose level position is not a whole pixel (levels above 0 with a fractional downsample, where OpenSlide
    blends neighbouring pixels: `tiles.level_pixels`) is read through OpenSlide, so every pixel is OpenSlide's.
    """

    path: str
    layout: TileLayout
    fallback: PatchReader
    name: str = "tiles"

    @property
    def patch_size(self) -> int:
        return self.fallback.patch_size

    def patches(self, coords: np.ndarray, threads: int, ahead: int) -> Iterator[Patch]:
        res, lay = self.fallback.res, self.layout
        n = res.read_size(self.patch_size)
        xy, exact = level_pixels(coords, res.level_downsample)
        if n > OPENSLIDE_PIECE and not float(res.level_downsample).is_integer():
            exact[:] = False  # OpenSlide paints such a patch in pieces at other subpixel positions
        needs = patch_tiles(lay, xy, n)
        if not exact.all():
            needs = [tiles if ok else () for tiles, ok in zip(needs, exact.tolist(), strict=True)]
        plan = plan_decodes(needs, tile_window(n, lay.tile_width, lay.tile_height))
        # decoded tiles waiting for the cutters: about `ahead` patches' worth of pixels, whatever the tile size
        tiles_ahead = max(2 * threads, ahead * n * n // (lay.tile_width * lay.tile_height))
        fd = os.open(self.path, os.O_RDONLY)
        try:
            decode = tile_reader(lay, fd, self.path, res.level)
            decoded = ordered_map(lambda t: (t, decode(t)), plan.decodes, threads, tiles_ahead, chunk=4)
            jobs = _cut_jobs(plan, xy, exact, decoded)
            try:
                yield from ordered_map(lambda job: self._cut(job, coords), jobs, threads,
                                       max(1, ahead // CUT_CHUNK), chunk=1, flatten=True)
            finally:  # stopped early (a quota reached) or failed: the threads finish before the file closes
                jobs.close()
                decoded.close()
        finally:
            os.close(fd)

    def _cut(self, job: list[CutItem], coords: np.ndarray) -> list[Patch]:
        n = self.fallback.res.read_size(self.patch_size)
        out = []
        for i, x, y, tiles in job:
            if tiles is None:
                out.append(self.fallback(coords[i]))
            else:
                patch = read_region(self.layout, tiles.__getitem__, x, y, n, n)
                out.append(finish_patch(patch, self.patch_size, self.fallback.filters))
        return out


def tile_window(read_size: int, tile_width: int, tile_height: int) -> int:
    """The plan's window (patches): `TILE_WINDOW`, less where two tile rows across it would exceed the budget."""
    row_bytes = 2 * 3 * tile_height * max(read_size, tile_width)  # per patch along a dense row
    return max(1, min(TILE_WINDOW, TILE_BUDGET_BYTES // row_bytes))


def _cut_jobs(plan: TilePlan, xy: np.ndarray, exact: np.ndarray,
              decoded: Iterator[tuple[int, np.ndarray]]) -> Generator[list[CutItem], None, None]:
    """The patches in `CUT_CHUNK`s, each with the decoded tiles it covers, following the plan: decoded tiles are
    taken in plan order and dropped when the plan releases them (a job keeps its own references)."""
    held: dict[int, np.ndarray] = {}
    job: list[CutItem] = []
    for i, (x, y) in enumerate(xy.tolist()):
        if not exact[i]:
            job.append((i, x, y, None))
        else:
            for t in plan.needs[i]:
                if t not in held:
                    got, tile = next(decoded)
                    if got != t:  # the plan and its consumer disagree: a bug, never wrong pixels
                        raise RuntimeError(f"tile plan out of step: expected tile {t}, decoded {got}")
                    held[t] = tile
            job.append((i, x, y, {t: held[t] for t in plan.needs[i]}))
            for t in plan.release[i]:
                del held[t]
        if len(job) == CUT_CHUNK:
            yield job
            job = []
    if job:
        yield job


def open_source(slide: Slide, res: WorkingResolution, patch_size: int, filters: list[PatchFilter],
                backend: Backend = "auto") -> PatchSource:
    """The tile source where the slide's working level is a servable JPEG-tiled page, else OpenSlide."""
    reader = PatchReader(slide, res, patch_size, filters)
    layout = slide.tile_layout(res.level) if backend == "auto" else None
    if layout is None:
        return OpenSlideSource(reader)
    return TileSource(str(slide.path), layout, reader)
