"""Concept measures against hand-computed values on drawn nuclei and known grey-level patterns."""

from __future__ import annotations

import math

import numpy as np
import pytest

from layer3_inference.explain import concepts
from layer3_inference.explain.config import CONCEPTS, ConceptConfig

STROMA, NUCLEUS = (235, 180, 210), (70, 30, 120)


def draw(size: int, discs: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Pink image with purple discs (cy, cx, r); also the true label image."""
    yy, xx = np.mgrid[:size, :size]
    img = np.empty((size, size, 3), np.uint8)
    img[:] = STROMA
    labels = np.zeros((size, size), np.int32)
    for k, (cy, cx, r) in enumerate(discs, start=1):
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img[inside] = NUCLEUS
        labels[inside] = k
    return img, labels


def disc_pixels(r: int) -> int:
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return int(((yy ** 2 + xx ** 2) <= r * r).sum())


def test_separate_discs_count_area_perimeter_eccentricity() -> None:
    r = 7
    img, _ = draw(96, [(20, 20, r), (20, 65, r), (62, 25, r), (70, 72, r)])
    m = concepts.measure(img, ConceptConfig())
    assert m["nuclei_count"] == 4
    assert m["nuclei_area"] == disc_pixels(r)  # 149 px, vs pi r^2 = 153.9
    assert m["nuclei_perimeter"] == pytest.approx(2 * math.pi * r, rel=0.05)
    assert m["nuclei_eccentricity"] == pytest.approx(0.0, abs=0.05)


def test_watershed_splits_touching_nuclei() -> None:
    img, _ = draw(80, [(40, 25, 9), (40, 42, 9)])  # centres 17 px apart: the discs overlap
    labels = concepts.segment_nuclei(img, min_area=12, min_distance=4)
    assert labels.max() == 2
    assert concepts.measure(img, ConceptConfig())["nuclei_count"] == 2


def test_ellipse_eccentricity() -> None:
    yy, xx = np.mgrid[:64, :64]
    labels = (((yy - 32) / 6.0) ** 2 + ((xx - 32) / 12.0) ** 2 <= 1).astype(np.int32)
    ecc = concepts.morphology(labels)["nuclei_eccentricity"]
    assert ecc == pytest.approx(math.sqrt(1 - (6 / 12) ** 2), abs=0.03)


def test_no_nuclei_gives_zero_count_and_undefined_means() -> None:
    img = np.full((32, 32, 3), STROMA, np.uint8)
    m = concepts.measure(img, ConceptConfig())
    assert m["nuclei_count"] == 0
    assert all(math.isnan(m[k]) for k in ("nuclei_area", "nuclei_perimeter", "glcm_contrast"))


def test_glcm_known_stripes() -> None:
    # vertical stripes of grey 200 and 50: every horizontal neighbour pair differs by q(200) - q(50)
    grey = np.zeros((20, 20), np.uint8)
    grey[:, ::2], grey[:, 1::2] = 200, 50
    glcm = concepts.masked_glcm(grey, np.ones_like(grey, bool), levels=32, distances=[1], angles_deg=[0.0])
    t = concepts.texture(glcm)
    step = 200 * 32 // 256 - 50 * 32 // 256  # 25 - 6 = 19 levels
    assert t["glcm_contrast"] == pytest.approx(step ** 2)
    assert t["glcm_dissimilarity"] == pytest.approx(step)
    assert t["glcm_asm"] == pytest.approx(0.5)  # two symmetric cells of probability 1/2
    assert t["glcm_correlation"] == pytest.approx(-1.0)


def test_glcm_ignores_pixels_outside_the_mask() -> None:
    grey = np.zeros((20, 20), np.uint8)
    grey[:, ::2], grey[:, 1::2] = 200, 50
    mask = np.zeros_like(grey, bool)
    mask[5:15, 5:15] = True
    noisy = np.random.default_rng(0).integers(0, 256, grey.shape).astype(np.uint8)
    noisy[mask] = grey[mask]  # the background changes, the nuclei do not
    a = concepts.texture(concepts.masked_glcm(grey, mask, 32, [1], [0.0]))
    b = concepts.texture(concepts.masked_glcm(noisy, mask, 32, [1], [0.0]))
    assert a == pytest.approx(b)
    assert a["glcm_contrast"] == pytest.approx(19 ** 2)


def test_supplied_masks_replace_segmentation() -> None:
    img, truth = draw(64, [(20, 20, 6), (44, 44, 6)])
    merged = (truth > 0).astype(np.int32)  # one label for both discs
    values = concepts.measure_all(img[None], ConceptConfig(), merged[None])
    assert values.shape == (1, len(CONCEPTS))
    assert values[0, CONCEPTS.index("nuclei_count")] == 1
    assert values[0, CONCEPTS.index("nuclei_area")] == 2 * disc_pixels(6)
