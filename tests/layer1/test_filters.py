from __future__ import annotations

import numpy as np
import pytest

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


@pytest.mark.parametrize("seed", range(4))
def test_byte_count_shortcut_never_changes_a_decision(seed: int) -> None:
    """The filters first count bright/dark bytes (a bound); the decisions must equal the per-pixel rule."""
    rng = np.random.default_rng(seed)
    white, black = WhiteFilter(200, 0.5), BlackFilter(30, 0.5)
    outcomes: set[tuple[bool, bool]] = set()
    for _ in range(200):
        # Mixtures of glass, dark and tissue-like pixels around the thresholds, plus one-bright-channel pixels
        # that fool the byte count but are not glass.
        kinds = rng.choice(4, size=(32, 32), p=rng.dirichlet(np.ones(4)))
        patch = rng.integers(40, 190, size=(32, 32, 3), dtype=np.uint8)
        patch[kinds == 0] = rng.integers(201, 256, size=(int((kinds == 0).sum()), 3), dtype=np.uint8)
        patch[kinds == 1] = rng.integers(0, 30, size=(int((kinds == 1).sum()), 3), dtype=np.uint8)
        patch[kinds == 2, 0] = 250
        patch[kinds == 3, 1] = 5
        per_pixel_white = np.count_nonzero(patch.min(axis=2) > 200) > 0.5 * 32 * 32
        per_pixel_black = np.count_nonzero(patch.max(axis=2) < 30) > 0.5 * 32 * 32
        assert white.rejects(patch) == per_pixel_white
        assert black.rejects(patch) == per_pixel_black
        outcomes.add((per_pixel_white, per_pixel_black))
    assert {(True, False), (False, True), (False, False)} <= outcomes


@pytest.mark.parametrize("seed", range(4))
def test_one_pass_over_both_filters_never_changes_a_decision(seed: int) -> None:
    """`first_reject` settles most patches for both filters with one count of the bytes outside both quiet
    ranges (uint8 wraparound); its verdicts must equal each filter's own, in order, on patches near the bounds."""
    rng = np.random.default_rng(100 + seed)
    active = [WhiteFilter(200, 0.3), BlackFilter(30, 0.2)]
    outcomes: set[str | None] = set()
    for _ in range(300):
        kinds = rng.choice(4, size=(32, 32), p=rng.dirichlet(np.ones(4) / 2))
        patch = rng.integers(30, 201, size=(32, 32, 3), dtype=np.uint8)  # quiet for both: 30..200
        patch[kinds == 0] = rng.integers(201, 256, size=(int((kinds == 0).sum()), 3), dtype=np.uint8)
        patch[kinds == 1] = rng.integers(0, 30, size=(int((kinds == 1).sum()), 3), dtype=np.uint8)
        patch[kinds == 2, 0] = rng.choice([0, 29, 201, 255])  # loud bytes in pixels that are neither glass nor ink
        expected = next((f.name for f in active if f.rejects(patch)), None)
        assert first_reject(patch, active) == expected
        outcomes.add(expected)
    assert outcomes == {"white", "black", None}


def test_one_pass_limit_is_the_rules_limit_to_the_last_byte() -> None:
    """Issue 17 review: the one-pass bound was computed as (3 x fraction) x pixels, the rule's as 3 x (fraction x
    h x w); rounded apart, a 320 px patch with exactly 48,128 glass pixels was rejected by the white filter alone
    and accepted by `first_reject`. Both now share one limit."""
    white, black = WhiteFilter(200, 0.47), BlackFilter(30, 0.5)
    patch = np.full((320, 320, 3), (200, 100, 160), np.uint8)
    patch.reshape(-1, 3)[:48_128] = 250
    assert white.rejects(patch)
    assert first_reject(patch, [white, black]) == "white"
