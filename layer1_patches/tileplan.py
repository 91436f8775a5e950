"""The order a slide's tiles are decoded in, so that patches cut in their own order decode each tile once.

Patches are cut in the order their stream gives (dense: row by row; random: a seeded order whose first accepted
patches fill a quota), so the order is fixed and the plan follows it. A tile used again within `window` patches
stays decoded in between; one used later is dropped and decoded again when it is needed. The tiles held at any
time are at most those of `window + 1` consecutive patches: memory is bounded by the window, whatever the order.
In a dense stream a tile is reused one patch row later, so a window longer than a row decodes every tile once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from layer1_patches.tiles import TileLayout


@dataclass(frozen=True)
class TilePlan:
    needs: list[tuple[int, ...]]  # per patch: the tiles it covers (row-major tile ids), decoded or held
    decodes: list[int]  # tile ids in the order they are decoded: the order patches first need them
    release: list[tuple[int, ...]]  # per patch: tiles to drop after cutting it (not needed within the window)


def patch_tiles(layout: TileLayout, xy: np.ndarray, size: int) -> list[tuple[int, ...]]:
    """The tiles each `size` px square at page pixel `xy[i]` covers, row-major; parts outside the page have none."""
    tw, th = layout.tile_width, layout.tile_height
    x0, y0 = np.maximum(xy[:, 0], 0), np.maximum(xy[:, 1], 0)
    x1, y1 = np.minimum(xy[:, 0] + size, layout.width), np.minimum(xy[:, 1] + size, layout.height)
    inside = (x0 < x1) & (y0 < y1)
    cols = np.stack([x0 // tw, (x1 - 1) // tw], 1).tolist()
    rows = np.stack([y0 // th, (y1 - 1) // th], 1).tolist()
    across = layout.tiles_across
    return [tuple(ty * across + tx for ty in range(r0, r1 + 1) for tx in range(c0, c1 + 1)) if ok else ()
            for (c0, c1), (r0, r1), ok in zip(cols, rows, inside.tolist(), strict=True)]


def plan_decodes(needs: Sequence[tuple[int, ...]], window: int) -> TilePlan:
    """Decode a tile when a patch needs it and it is not held; hold it while its next use is within `window`."""
    decodes: list[int] = []
    last: dict[int, int] = {}
    for i, tiles in enumerate(needs):
        for t in tiles:
            before = last.get(t)
            if before is None or i - before > window:
                decodes.append(t)
            last[t] = i
    release: list[tuple[int, ...]] = [()] * len(needs)
    following: dict[int, int] = {}
    for i in range(len(needs) - 1, -1, -1):
        drop = []
        for t in needs[i]:
            after = following.get(t)
            if after is None or after - i > window:
                drop.append(t)
            following[t] = i
        release[i] = tuple(drop)
    return TilePlan(list(needs), decodes, release)
