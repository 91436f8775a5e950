"""`layer1_patches/tileplan.py`: which tiles a patch covers, and a decode order that holds few tiles at a time."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from layer1_patches.tileplan import TilePlan, patch_tiles, plan_decodes
from layer1_patches.tiles import TileLayout

# 10 x 7 px in 4 x 3 px tiles: 3 tiles across, 3 down, the last column and row partial (ids row-major 0..8)
#   0 1 2
#   3 4 5
#   6 7 8
TINY = TileLayout(width=10, height=7, tile_width=4, tile_height=3, offsets=(0,) * 9, byte_counts=(1,) * 9,
                  tables=None, photometric=2)


@pytest.mark.parametrize(("x", "y", "tiles"), [
    (0, 0, (0,)),  # inside one tile, down to its bottom edge (3 x 3 px of a 4 x 3 px tile)
    (1, 0, (0,)),  # up to its right edge
    (2, 0, (0, 1)),  # one px into the next tile
    (3, 2, (0, 1, 3, 4)),  # across a tile corner
    (4, 3, (4,)),  # exactly one tile's top-left
    (7, 0, (1, 2)),
    (8, 5, (5, 8)),  # the partial last column: past the page's right edge there are no tiles
    (9, 6, (8,)),  # the page's last pixel
    (-2, -2, (0,)),  # above-left of the page: only the part inside counts
    (-1, 5, (3, 6)),
    (10, 0, ()),  # right of the page
    (0, 7, ()),  # below it
    (-3, 0, ()),  # left of it
    (2, -3, ()),  # above it
])
def test_patch_tiles_of_a_3px_square(x: int, y: int, tiles: tuple[int, ...]) -> None:
    assert patch_tiles(TINY, np.array([[x, y]]), 3) == [tiles]


def test_patch_tiles_of_several_squares_keep_their_order() -> None:
    xy = np.array([[0, 0], [-20, 0], [5, 1], [0, 0]])
    assert patch_tiles(TINY, xy, 5) == [(0, 1, 3, 4), (), (1, 2, 4, 5), (0, 1, 3, 4)]
    assert patch_tiles(TINY, xy[:1], 12) == [tuple(range(9))]  # larger than the page: every tile


def _dense(across: int, down: int, tile: int, size: int) -> list[tuple[int, ...]]:
    """The tiles of a dense row-major patch grid (stride = size) over a page of across x down tiles."""
    layout = TileLayout(across * tile, down * tile, tile, tile, (0,) * (across * down), (1,) * (across * down),
                        None, 2)
    xy = np.array([[x, y] for y in range(0, down * tile, size) for x in range(0, across * tile, size)])
    return patch_tiles(layout, xy, size)


def test_a_dense_stream_decodes_each_tile_once_when_the_window_covers_a_row() -> None:
    needs = _dense(across=5, down=4, tile=10, size=7)  # 8 patches a row; patch rows share tile rows
    row = 8
    plan = plan_decodes(needs, row)
    assert plan.decodes == list(range(20))  # each tile once, in the order patches first need them
    assert plan.needs == needs
    # a window shorter than a row: a tile shared by two patch rows is dropped and decoded again
    again = plan_decodes(needs, row - 2)
    assert len(again.decodes) > 20 and set(again.decodes) == set(range(20))


def test_a_tile_used_again_beyond_the_window_is_decoded_again() -> None:
    needs = [(0, 1), (1,), (2,), (0,), (1, 2)]
    plan = plan_decodes(needs, 2)
    # tile 1: used at 0, 1 (held between) and 4 (3 patches later: decoded again); tile 2: 2 and 4 (held);
    # tile 0: 0 and 3 (decoded again)
    assert plan.decodes == [0, 1, 2, 0, 1]
    assert plan.release == [(0,), (1,), (), (0,), (1, 2)]
    wide = plan_decodes(needs, 3)
    assert wide.decodes == [0, 1, 2] and wide.release == [(), (), (), (0,), (1, 2)]


def test_empty_needs_decode_nothing() -> None:
    plan = plan_decodes([(), (3,), (), (3,)], 1)
    assert plan.decodes == [3, 3] and plan.release == [(), (3,), (), (3,)]
    assert plan_decodes([], 4) == TilePlan([], [], [])


def _consume(plan: TilePlan, window: int) -> int:
    """Cut the patches as `reading.TileSource` does: take the next decoded tile whenever a needed one is not held.
    Checks each needed tile is held when needed, and that the tiles held are always among those of the last
    window + 1 patches. Returns the most tiles held at once."""
    decodes = iter(plan.decodes)
    held: set[int] = set()
    most = 0
    for i, tiles in enumerate(plan.needs):
        for t in tiles:
            if t not in held:
                assert next(decodes) == t, f"patch {i}: tile {t} is not the next decode"
                held.add(t)
        recent = set().union(*plan.needs[max(0, i - window):i + 1])
        assert held <= recent, f"patch {i}: holds {sorted(held - recent)} beyond the window"
        most = max(most, len(held))
        for t in plan.release[i]:
            held.remove(t)
    assert next(decodes, None) is None and held == set()  # every decode used, every tile released
    return most


def _random_needs(rng: np.random.Generator, n: int, tiles: int) -> Sequence[tuple[int, ...]]:
    return [tuple(sorted(set(rng.integers(0, tiles, rng.integers(0, 5)).tolist()))) for _ in range(n)]


@pytest.mark.parametrize("window", [1, 2, 5, 16, 100])
def test_the_consumer_of_a_plan_holds_every_tile_it_needs_and_no_more_than_the_window(window: int) -> None:
    rng = np.random.default_rng(window)
    for needs in (_random_needs(rng, 300, 40), _dense(9, 7, 16, 12), _dense(9, 7, 16, 12)[::-1]):
        _consume(plan_decodes(needs, window), window)
    # a dense stream with a window of a row holds about two tile rows, whatever the slide's height
    assert _consume(plan_decodes(_dense(9, 30, 16, 12), 12), 12) <= 3 * 9
