from __future__ import annotations

import numpy as np

from layer1_patches.config import FilterConfig
from layer1_patches.filters import BlackFilter, WhiteFilter, filters_from_config, first_reject


def _patch(share_white: float, colour: tuple[int, int, int] = (250, 250, 250)) -> np.ndarray:
    patch = np.full((100, 100, 3), (200, 100, 160), np.uint8)
    patch[: int(share_white * 100)] = colour
    return patch


def test_white_filter_uses_the_share_of_bright_pixels() -> None:
    f = WhiteFilter(level=200, max_fraction=0.8)
    assert not f.rejects(_patch(0.79))
    assert f.rejects(_patch(0.81))
    assert not f.rejects(_patch(1.0, (250, 250, 150)))  # one dark channel: not glass


def test_black_filter() -> None:
    f = BlackFilter(level=30, max_fraction=0.5)
    assert f.rejects(_patch(0.6, (5, 5, 5)))
    assert not f.rejects(_patch(0.4, (5, 5, 5)))


def test_config_can_disable_filters() -> None:
    assert [f.name for f in filters_from_config(FilterConfig())] == ["white", "black"]
    assert filters_from_config(FilterConfig(white=None, black=None)) == []
    assert first_reject(_patch(0.9), filters_from_config(FilterConfig())) == "white"
