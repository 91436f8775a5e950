"""Optical-density colour statistics: known answers from Beer-Lambert, OD = -ln((I + 1) / 256), worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from layer1_patches.colour import (
    ColourAccumulator,
    ColourStats,
    colour_shift,
    merged_stats,
    optical_density,
    stained_od,
)

LN2 = math.log(2)


def test_optical_density_of_known_values() -> None:
    # 255 -> -ln(256/256) = 0 (white); 127 -> -ln(128/256) = ln 2; 63 -> ln 4; 0 -> ln 256
    od = optical_density(np.array([255, 127, 63, 0], dtype=np.uint8))
    assert np.allclose(od, [0.0, LN2, 2 * LN2, 8 * LN2], rtol=0, atol=1e-12)


def test_a_pixel_is_stained_only_with_od_015_in_every_channel() -> None:
    # 219 -> -ln(220/256) = 0.1515 (stained); 220 -> -ln(221/256) = 0.1470 (not)
    pixels = np.array([[[219, 219, 219], [220, 220, 220], [219, 219, 220], [0, 0, 0]]], dtype=np.uint8)
    acc = ColourAccumulator()
    acc.add(pixels)
    stats = acc.stats()
    assert stats is not None and stats.pixels == 2 and stats.patches == 1  # (219, 219, 219) and (0, 0, 0)
    assert len(stained_od(pixels)) == 2


def test_statistics_of_known_pixels() -> None:
    # R: half 127 (ln 2), half 63 (ln 4): mean 1.5 ln 2, std 0.5 ln 2. G: all 127: mean ln 2, std 0.
    # B: 0 and 127: OD 8 ln 2 and ln 2: mean 4.5 ln 2, std 3.5 ln 2. Background pixels (255) are not counted.
    patch = np.zeros((2, 3, 3), dtype=np.uint8)
    patch[0, :2] = [127, 127, 0]
    patch[1, :2] = [63, 127, 127]
    patch[:, 2] = 255
    acc = ColourAccumulator()
    acc.add(patch)
    stats = acc.stats()
    assert stats is not None and stats.pixels == 4 and stats.patches == 1
    assert np.allclose(stats.od_mean, [1.5 * LN2, LN2, 4.5 * LN2], atol=1e-6)
    assert np.allclose(stats.od_std, [0.5 * LN2, 0.0, 3.5 * LN2], atol=1e-6)


def test_background_alone_has_no_statistics() -> None:
    acc = ColourAccumulator()
    acc.add(np.full((2, 8, 8, 3), 240, dtype=np.uint8))
    assert acc.stats() is None and acc.patches == 2


def test_statistics_do_not_depend_on_batching() -> None:
    rng = np.random.default_rng(7)
    patches = rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    whole = ColourAccumulator()
    whole.add(patches)
    batched = ColourAccumulator()
    for part in (patches[:3], patches[3:4], patches[4:]):
        batched.add(part)
    single = ColourAccumulator()
    for patch in patches:
        single.add(patch)  # one (h, w, 3) patch at a time
    assert whole.stats() == batched.stats() == single.stats()
    stats = whole.stats()
    od = stained_od(patches)  # the definition, straight: mean and population std of every stained pixel's OD
    assert stats is not None and stats.patches == 10 and stats.pixels == len(od)
    assert np.allclose(stats.od_mean, od.mean(axis=0), atol=1e-6)
    assert np.allclose(stats.od_std, od.std(axis=0), atol=1e-6)


def test_merged_ranks_equal_one_accumulator_in_any_order() -> None:
    rng = np.random.default_rng(8)
    a, b = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8), rng.integers(100, 230, (6, 8, 8, 3), dtype=np.uint8)
    one = ColourAccumulator()
    one.add(np.concatenate([a, b]))
    rank0, rank1 = ColourAccumulator(), ColourAccumulator()
    rank0.add(a)
    rank1.add(b)
    forward, backward = ColourAccumulator(), ColourAccumulator()
    for acc in (rank0, rank1):
        forward.merge(acc)
    for acc in (rank1, rank0):
        backward.merge(acc)
    assert forward.stats() == backward.stats() == one.stats() == merged_stats([rank1, rank0])
    assert forward.stats().patches == 10  # type: ignore[union-attr]


def test_float_patches_count_as_the_8_bit_values_they_round_to() -> None:
    as_float, as_uint8 = ColourAccumulator(), ColourAccumulator()
    as_float.add(np.full((1, 2, 2, 3), 126.6))
    as_uint8.add(np.full((1, 2, 2, 3), 127, dtype=np.uint8))
    assert as_float.stats() == as_uint8.stats()


def test_colour_shift_is_the_largest_channel_z_score() -> None:
    training = ColourStats([0.5, 1.0, 0.4], [0.25, 0.5, 0.1], pixels=10, patches=1)
    # R: |1.0 - 0.5| / 0.25 = 2; G: |0.5 - 1.0| / 0.5 = 1; B: |0.45 - 0.4| / 0.1 = 0.5 -> 2
    slide = ColourStats([1.0, 0.5, 0.45], [0.1, 0.1, 0.1], pixels=10, patches=1)
    assert colour_shift(slide, training) == pytest.approx(2.0)
    assert colour_shift(training, training) == 0.0
