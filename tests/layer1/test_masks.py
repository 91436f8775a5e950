from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from layer1_patches.config import TissueConfig
from layer1_patches.masks import ExternalMasker, Mask, OtsuMasker, otsu_tissue
from layer1_patches.shared.errors import CamnetError
from layer1_patches.slide import Slide

from .conftest import CMU


def test_cmu_mask_covers_tissue_not_background() -> None:
    with Slide(CMU) as slide:
        mask = OtsuMasker(TissueConfig())(slide)
        rgb, _, _ = slide.read_downsampled(32)
    assert mask.array.shape == rgb.shape[:2]
    glass = rgb.min(axis=2) > 225  # bright in every channel: bare glass
    stained = (rgb.max(axis=2).astype(int) - rgb.min(axis=2)) > 60  # strongly coloured: stained tissue
    assert mask.array[glass].mean() < 0.05
    assert mask.array[stained].mean() > 0.95
    assert 0.2 < mask.array.mean() < 0.6  # the slide is roughly a third tissue


def test_blank_image_has_no_tissue() -> None:
    assert not otsu_tissue(np.full((64, 64, 3), 240, np.uint8), TissueConfig()).any()


def test_small_regions_are_dropped() -> None:
    rgb = np.full((100, 100, 3), 240, np.uint8)
    rgb[10:40, 10:40] = (180, 60, 150)  # 900 px blob
    rgb[70:72, 70:72] = (180, 60, 150)  # 4 px speck
    mask = otsu_tissue(rgb, TissueConfig(closing_radius=0, min_region_px=16))
    assert mask[20, 20] and not mask[71, 71]


def test_area_fractions_equal_brute_force() -> None:
    rng = np.random.default_rng(0)
    array = rng.random((40, 50)) > 0.5
    mask = Mask(array, 8.0, 8.0)
    coords = rng.integers(0, 200, size=(200, 2))
    full = np.kron(array, np.ones((8, 8), dtype=bool))  # the mask at level 0
    expected = [full[y:y + 100, x:x + 100].mean() for x, y in coords]
    np.testing.assert_allclose(mask.fractions(coords, 100), expected, atol=1e-5)


def test_one_tumour_pixel_does_not_make_a_tumour_patch() -> None:
    """Regression: the reference design's overlap check passed on a single pixel."""
    array = np.zeros((64, 64), dtype=bool)
    array[10, 10] = True
    fraction = Mask(array, 4.0, 4.0).fractions(np.array([[0, 0]]), 224)
    assert fraction[0] == pytest.approx(16 / 224**2)


def test_external_mask(tmp_path: Path) -> None:
    image = np.zeros((93, 69), np.uint8)
    image[40:60, 20:40] = 255
    Image.fromarray(image).save(tmp_path / "CMU-1-Small-Region.png")
    with Slide(CMU) as slide:
        mask = ExternalMasker(tmp_path)(slide)
    assert mask.array.sum() == 400
    assert mask.ds_x == pytest.approx(2220 / 69)


def test_missing_external_mask_names_the_file(tmp_path: Path) -> None:
    with Slide(CMU) as slide, pytest.raises(CamnetError, match=f"{tmp_path}/CMU-1-Small-Region"):
        ExternalMasker(tmp_path)(slide)


def test_closing_keeps_tissue_touching_the_slide_edge() -> None:
    """Regression: closing eroded from the image border and dropped tissue on the slide's edge."""
    rgb = np.full((60, 60, 3), 240, np.uint8)
    rgb[40:, :] = (180, 60, 150)  # tissue running off the bottom edge
    mask = otsu_tissue(rgb, TissueConfig(closing_radius=3))
    assert mask[40:].all() and not mask[:38].any()


def test_saturation_equals_skimage_hsv() -> None:
    from skimage import color

    from layer1_patches.masks import hsv_saturation

    rgb = np.random.default_rng(0).integers(0, 256, size=(50, 60, 3), dtype=np.uint8)
    rgb[0, 0] = 0  # black: saturation 0, not a division by zero
    np.testing.assert_allclose(hsv_saturation(rgb), color.rgb2hsv(rgb)[..., 1], atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_mask_steps_match_scikit_image(seed: int) -> None:
    """Otsu, disk and small-region removal are written out (a fifth of a second of imports per SLURM task);
    they must give scikit-image's results."""
    from skimage import filters, morphology

    from layer1_patches.masks import disk, otsu_threshold, remove_small_regions

    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.normal(0.1, 0.03, 5000), rng.normal(0.5 + 0.1 * seed, 0.1, 3000)])
    values = values.astype(np.float32).reshape(80, 100)
    assert otsu_threshold(values) == pytest.approx(filters.threshold_otsu(values), abs=1e-9)
    for radius in (1, 2, 5):
        assert np.array_equal(disk(radius), morphology.disk(radius).astype(bool))
    mask = rng.random((120, 90)) > 0.55
    for size in (1, 3, 10):
        assert np.array_equal(remove_small_regions(mask, size), morphology.remove_small_objects(mask, max_size=size))


def test_otsu_on_the_real_slide_matches_scikit_image() -> None:
    from skimage import filters

    from layer1_patches.masks import hsv_saturation, otsu_threshold

    with Slide(CMU) as slide:
        rgb, _, _ = slide.read_downsampled(8)
    saturation = hsv_saturation(rgb)
    assert otsu_threshold(saturation) == pytest.approx(filters.threshold_otsu(saturation), abs=1e-9)


def test_otsu_picks_scikit_images_bin_on_many_histograms() -> None:
    """Regression: float64 bin counts chose a neighbouring bin in about 1 of 300 histograms."""
    from skimage import filters

    from layer1_patches.masks import otsu_threshold

    for seed in range(300):
        rng = np.random.default_rng(seed)
        values = np.concatenate([rng.normal(0.1, 0.03, rng.integers(100, 5000)),
                                 rng.normal(rng.uniform(0.3, 0.8), 0.1, rng.integers(100, 5000))]).astype(np.float32)
        assert otsu_threshold(values) == filters.threshold_otsu(values), seed


@pytest.mark.parametrize("strip", [256, 2, 3], ids=["one-strip", "strips-of-2", "strips-of-3"])
@pytest.mark.parametrize("shape", [(64, 80), (5, 7), (1, 9), (9, 1), (1, 1), (2, 2)])
@pytest.mark.parametrize("kind", ["float32", "ties", "uint8"])
def test_median3x3_equals_scipys_median_filter(shape: tuple[int, int], kind: str, strip: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """scipy is the truth: the column-sorting 3 x 3 median gives `ndimage.median_filter(size=3)`'s values and
    dtype, at the edges too (scipy's default mode, reflect), on continuous values, many ties and uint8, whole and
    in strips of rows (the seams between strips)."""
    from scipy import ndimage

    from layer1_patches import masks
    from layer1_patches.masks import median3x3

    monkeypatch.setattr(masks, "MEDIAN_STRIP_ROWS", strip)

    rng = np.random.default_rng(sum(shape))
    image = rng.random(shape, dtype=np.float32)
    if kind == "ties":
        image = np.round(image * 3) / 3
    elif kind == "uint8":
        image = (image * 255).astype(np.uint8)
    expected = ndimage.median_filter(image, size=3)
    got = median3x3(image)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
