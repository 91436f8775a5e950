"""Reading a stream of patches from a slide: cut from tiles decoded once, or through OpenSlide patch by patch.

Both sources give the same pixels (tests/layer1/test_reading.py compares whole stores): the tile source is the
fast path where it applies, OpenSlide everything else. `open_source` picks per slide; the store records the choice
as its `reader` attribute.

Why tiles: OpenSlide's `read_region` spends most of a patch's time on per-region work (tile lookup, locking,
compositing 1-4 tiles into premultiplied ARGB, which we convert back to RGB), not on decoding; a dense stream decodes
each tile once here, off the GIL, and cuts patches from the decoded tiles (issue 17 has the measurements).
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
from PIL import Image

from layer1_patches.filters import PatchFilter, first_reject
from layer1_patches.slide import Slide, WorkingResolution
from layer1_patches.tileplan import patch_tiles, plan_decodes
from layer1_patches.tiles import OPENSLIDE_PIECE, TileLayout, cut_into, level_pixels, tile_reader

Patch = tuple[np.ndarray, str | None]  # RGB patch and the filter that rejects it (None: accepted)
R = TypeVar("R")

# Patches whose tiles stay decoded between two uses (tileplan.py): more than a dense row of a 100,000 px slide at
# 224 px, when the tiles that window holds fit the budget below.
TILE_WINDOW = 512
# Decoded tiles held by the plan. A dense window spans about two tile rows across `window` patches, so the window
# shrinks for large tiles or patches (then a tile may be decoded twice, never held beyond this).
TILE_BUDGET_BYTES = 192 * 1024 * 1024
# CPython's switch interval while reading threads feed a consumer: a thread whose C call (a decode, a read) has
# returned waits for the GIL until its holder releases it, or this long. The consumer cuts, filters and writes in
# stretches that hold the GIL; at the default 5 ms the readers idled on 2 cores. 0.5 ms: 5.6 % less wall time and
# 4 % less CPU for `extract`, 10 interleaved rounds (issue 17; 0.1-1 ms were within noise of each other).
SWITCH_INTERVAL = 0.0005


@dataclass
class _Streams:
    running: int = 0
    before: float = 0.0  # the interval before the first running stream lowered it


_switch, _streams = threading.Lock(), _Streams()


@contextmanager
def lowered_switch_interval() -> Iterator[None]:
    """SWITCH_INTERVAL while at least one stream runs; the last to end puts back what was there before the first
    began (streams may overlap, on several threads)."""
    with _switch:
        if _streams.running == 0:
            _streams.before = sys.getswitchinterval()
            sys.setswitchinterval(min(_streams.before, SWITCH_INTERVAL))
        _streams.running += 1
    try:
        yield
    finally:
        with _switch:
            _streams.running -= 1
            if _streams.running == 0:
                sys.setswitchinterval(_streams.before)


class PatchSource(Protocol):
    @property
    def name(self) -> str:  # the store's `reader` attribute
        ...

    @property
    def patch_size(self) -> int: ...

    def patches(self, coords: np.ndarray, threads: int, ahead: int,
                slot: Callable[[], np.ndarray] | None = None) -> Iterator[Patch]:
        """The patch at each level-0 (x, y) of `coords`, in order, with its filter verdict.

        `slot`: where the consumer keeps the next patch; each patch yielded is then that array (`in_slots`), cut
        there by a source that cuts on the consumer's thread (a copy saved), else copied there.
        """
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


def in_slots(patches: Iterator[Patch], slot: Callable[[], np.ndarray]) -> Generator[Patch, None, None]:
    """`patches`, each in the array `slot()` gives when it is yielded: copied there unless cut there already.
    (Closing this generator releases `patches`, which closes the source's as before.)"""
    for patch, reason in patches:
        row = slot()
        if not np.may_share_memory(patch, row):
            row[...] = patch
        yield row, reason


def ordered_map(fn: Callable[[Any], R], items: Sequence[Any] | np.ndarray, threads: int, ahead: int,
                chunk: int = 16) -> Generator[R, None, None]:
    """`map` over threads that keeps about `ahead` items in flight and yields in input order.

    Items go to the threads `chunk` at a time: a future per patch cost as much interpreter time (under the
    GIL, so off the reading threads) as converting the patch.
    """
    if threads == 1:
        yield from (fn(item) for item in items)
        return

    def run(part: Sequence[Any] | np.ndarray) -> list[R]:
        return [fn(item) for item in part]

    chunk = max(1, min(chunk, ahead // threads))  # keep the read-ahead (memory) near `ahead` items
    with lowered_switch_interval(), ThreadPoolExecutor(threads) as pool:
        pending: deque[Future[list[R]]] = deque()
        in_flight = max(threads, ahead // chunk)
        try:
            for start in range(0, len(items), chunk):
                pending.append(pool.submit(run, items[start:start + chunk]))
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

    def patches(self, coords: np.ndarray, threads: int, ahead: int,
                slot: Callable[[], np.ndarray] | None = None) -> Iterator[Patch]:
        read = ordered_map(self.reader, coords, threads, ahead)  # ahead on other threads: copied into the slots
        return read if slot is None else in_slots(read, slot)


@dataclass(frozen=True)
class TileSource:
    """Patches cut from the tiles of the working level's TIFF page, each tile decoded once per stream on the
    reading threads (in the order `tileplan` gives), while this thread cuts, resizes and filters. (Cutting on
    more threads was measured slower: 4 threads on 2 cores, and patches allocated on one thread, freed on another.)

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

    def patches(self, coords: np.ndarray, threads: int, ahead: int,
                slot: Callable[[], np.ndarray] | None = None) -> Iterator[Patch]:
        if slot is None:
            return self._cut(coords, threads, ahead, None)
        # cut straight into the slots; resized patches and OpenSlide's are new arrays, copied there
        same_size = self.fallback.res.read_size(self.patch_size) == self.patch_size
        return in_slots(self._cut(coords, threads, ahead, slot if same_size else None), slot)

    def _cut(self, coords: np.ndarray, threads: int, ahead: int,
             into: Callable[[], np.ndarray] | None) -> Generator[Patch, None, None]:
        res, lay, filters = self.fallback.res, self.layout, self.fallback.filters
        n = res.read_size(self.patch_size)
        xy, exact = level_pixels(coords, res.level_downsample)
        if n > OPENSLIDE_PIECE and not float(res.level_downsample).is_integer():
            exact[:] = False  # OpenSlide paints such a patch in pieces at other subpixel positions
        needs = patch_tiles(lay, xy, n)
        if not exact.all():
            needs = [tiles if ok else () for tiles, ok in zip(needs, exact.tolist(), strict=True)]
        plan = plan_decodes(needs, tile_window(n, lay.tile_width, lay.tile_height))
        # decoded tiles waiting to be cut: about `ahead` patches' worth of pixels, whatever the tile size
        tiles_ahead = max(2 * threads, ahead * n * n // (lay.tile_width * lay.tile_height))
        fd = os.open(self.path, os.O_RDONLY)
        try:
            decode = tile_reader(lay, fd, self.path, res.level)
            decoded = ordered_map(lambda t: (t, decode(t)), plan.decodes, threads, tiles_ahead, chunk=4)
            try:
                held: dict[int, np.ndarray] = {}
                for i, (x, y) in enumerate(xy.tolist()):
                    if not exact[i]:
                        yield self.fallback(coords[i])
                        continue
                    for t in plan.needs[i]:
                        if t not in held:
                            got, tile = next(decoded)
                            if got != t:  # the plan and its consumer disagree: a bug, never wrong pixels
                                raise RuntimeError(f"tile plan out of step: expected tile {t}, decoded {got}")
                            held[t] = tile
                    patch = cut_into(lay, held.__getitem__, x, y, into() if into else np.empty((n, n, 3), np.uint8))
                    for t in plan.release[i]:
                        del held[t]
                    yield finish_patch(patch, self.patch_size, filters)
            finally:  # stopped early (a quota reached) or failed: the threads finish before the file closes
                decoded.close()
        finally:
            os.close(fd)


def tile_window(read_size: int, tile_width: int, tile_height: int) -> int:
    """The plan's window (patches): `TILE_WINDOW`, less where two tile rows across it would exceed the budget."""
    row_bytes = 2 * 3 * tile_height * max(read_size, tile_width)  # per patch along a dense row
    return max(1, min(TILE_WINDOW, TILE_BUDGET_BYTES // row_bytes))


def open_source(slide: Slide, res: WorkingResolution, patch_size: int, filters: list[PatchFilter]) -> PatchSource:
    """The tile source where the slide's working level is a servable JPEG-tiled page, else OpenSlide (always, for
    a slide opened with `tiles=False`: `reader.backend: openslide`)."""
    reader = PatchReader(slide, res, patch_size, filters)
    layout = slide.tile_layout(res.level)
    if layout is None:
        return OpenSlideSource(reader)
    return TileSource(str(slide.path), layout, reader)
