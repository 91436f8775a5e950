from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from layer1_patches.config import ResolutionConfig
from layer1_patches.shared.errors import CamnetError
from layer1_patches.slide import Slide, resolve_resolution, rgba_to_rgb

from .conftest import CMU, DATA


def test_cmu_metadata() -> None:
    with Slide(CMU) as slide:
        assert slide.dimensions == (2220, 2967)
        assert slide.mpp == pytest.approx(0.499)
        assert slide.objective_power == 20
        assert slide.vendor == "aperio"


def test_level_mpp_and_magnification_choose_level_and_resize() -> None:
    with Slide(CMU) as slide:
        at_level = resolve_resolution(slide, ResolutionConfig(level=0))
        assert (at_level.level, at_level.downsample) == (0, 1.0)
        near = resolve_resolution(slide, ResolutionConfig(mpp=0.5))  # within tolerance of 0.499
        assert (near.level, near.downsample) == (0, 1.0)
        half = resolve_resolution(slide, ResolutionConfig(magnification=10))
        assert half.level == 0 and half.downsample == pytest.approx(2.0)
        assert half.read_size(224) == 448 and half.footprint(224) == 448
        assert half.mpp == pytest.approx(0.998)
        coarse = resolve_resolution(slide, ResolutionConfig(mpp=2.0))
        assert coarse.downsample == pytest.approx(2.0 / 0.499)


def test_upsampling_is_refused() -> None:
    with Slide(CMU) as slide, pytest.raises(CamnetError, match="finer than level 0"):
        resolve_resolution(slide, ResolutionConfig(magnification=40))


def test_missing_level_is_an_error() -> None:
    with Slide(CMU) as slide, pytest.raises(CamnetError, match="resolution.level 3 does not exist"):
        resolve_resolution(slide, ResolutionConfig(level=3))


def test_pyramid_level_is_read_directly() -> None:
    with Slide(DATA / "boxes.tiff") as slide:
        assert slide.level_count == 4
        res = resolve_resolution(slide, ResolutionConfig(level=1))
        assert res.level == 1 and res.level_downsample == res.downsample == 2.0


def _tiff_without_resolution(path: Path) -> Path:
    tifffile.imwrite(path, np.full((256, 256, 3), 200, np.uint8), tile=(128, 128), photometric="rgb",
                     compression="jpeg")
    return path


def test_slide_without_mpp_needs_assume_mpp(tmp_path: Path) -> None:
    path = _tiff_without_resolution(tmp_path / "nompp.tif")
    with Slide(path) as slide:
        assert slide.mpp is None
        with pytest.raises(CamnetError, match="no mpp in its metadata .*resolution.mpp_table or resolution.assume_mpp"):
            resolve_resolution(slide, ResolutionConfig(level=0))
    with Slide(path, assume_mpp=0.25) as slide:
        assert resolve_resolution(slide, ResolutionConfig(mpp=0.5)).downsample == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("name", "message"),
    [("nope.svs", "no such file"), ("unopenable.tiff", "cannot open (Unsupported TIFF compression")],
)
def test_bad_slides_name_the_file(name: str, message: str) -> None:
    with pytest.raises(CamnetError) as err:
        Slide(DATA / name)
    assert str(DATA / name) in str(err.value) and message in str(err.value)


def test_unreadable_tiles_name_the_region() -> None:
    with Slide(DATA / "unreadable.svs") as slide, pytest.raises(CamnetError, match="cannot read region at x=0 y=0"):
        slide.read_rgb(0, 0, 0, 16, 16)


def test_transparent_pixels_become_white_not_black() -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    rgb = rgba_to_rgb(rgba)
    assert rgb[0, 0].tolist() == [10, 20, 30]
    assert rgb[1, 1].tolist() == [255, 255, 255]


def test_read_is_rgb_not_bgr(tmp_path: Path) -> None:
    """Regression: the reference design mixed BGR and RGB; a red slide must read back red."""
    path = tmp_path / "red.tif"
    image = np.zeros((256, 256, 3), np.uint8)
    image[..., 0] = 220
    tifffile.imwrite(path, image, tile=(128, 128), photometric="rgb", resolution=(20000, 20000),
                     resolutionunit="CENTIMETER")
    with Slide(path) as slide:
        patch = slide.read_rgb(0, 0, 0, 64, 64)
    assert patch[..., 0].min() > 200 and patch[..., 2].max() < 20


def _public_rgb(slide: Slide, x: int, y: int, level: int, size: int) -> np.ndarray:
    """openslide-python's public API (un-premultiplied RGBA) composited over white in float: the reference."""
    import openslide

    with openslide.OpenSlide(str(slide.path)) as osr:
        rgba = np.asarray(osr.read_region((x, y), level, (size, size))).astype(np.float64)
    alpha = rgba[..., 3:] / 255.0
    return np.round(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)


@pytest.mark.parametrize(("x", "y"), [(0, 0), (1000, 1200), (2100, 2900), (-50, 0)])
def test_buffer_read_equals_openslide_public_read(x: int, y: int) -> None:
    """The fast read (OpenSlide's C call into our buffer) gives the public API's pixels, edges included."""
    with Slide(CMU) as slide:
        fast = slide.read_rgb(x, y, 0, 224, 224)
        expected = _public_rgb(slide, x, y, 0, 224)
    if (x, y) == (2100, 2900):  # past the slide's corner: no data, so white
        assert fast[-1, -1].tolist() == [255, 255, 255]
    assert fast.shape == (224, 224, 3) and fast.dtype == np.uint8 and fast.flags.c_contiguous
    # Un-premultiplying then compositing rounds twice: at most 1 grey level apart where partly transparent.
    assert np.abs(fast.astype(int) - expected.astype(int)).max() <= 1


def test_buffer_read_path_is_active_with_the_pinned_openslide_python() -> None:
    """The fast path uses a private openslide-python function; a release that drops it must be noticed."""
    from layer1_patches import slide as slide_module

    with Slide(CMU) as slide:
        assert slide_module._READ_INTO is not None and slide._handle is not None


def test_public_read_fallback_gives_the_same_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    from layer1_patches import slide as slide_module

    with Slide(CMU) as slide:
        fast = [slide.read_rgb(x, y, 0, 128, 128) for x, y in ((0, 0), (2150, 2900))]
        monkeypatch.setattr(slide_module, "_READ_INTO", None)
        slow = [slide.read_rgb(x, y, 0, 128, 128) for x, y in ((0, 0), (2150, 2900))]
    for a, b in zip(fast, slow, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


@pytest.mark.parametrize("size", [2000, 2047])  # 2047: levels of 1023 and 511 px, fractional downsamples
def test_the_mask_read_from_tiles_equals_openslides(tmp_path: Path, size: int) -> None:
    """`read_downsampled` (the tissue mask's image) cut from JPEG tiles equals OpenSlide's read of the same level,
    also where a fractional downsample sends strips back to OpenSlide."""
    from layer1_patches.synth import SynthSpec, write_synthetic_slide

    tif = tmp_path / "s.tif"
    write_synthetic_slide(tif, tmp_path / "s.xml", SynthSpec(size=size, seed=3, tumour_fraction=0.2, tile=240))
    with Slide(tif) as tiled, Slide(tif, tiles=False) as plain:
        assert tiled.tile_layout(1) is not None and plain.tile_layout(1) is None
        for downsample in (2.0, 4.0, 7.0):
            ours, theirs = tiled.read_downsampled(downsample), plain.read_downsampled(downsample)
            np.testing.assert_array_equal(ours[0], theirs[0])
            assert ours[1:] == theirs[1:]
        for level in range(tiled.level_count):
            lw, lh = tiled.level_dimensions[level]
            np.testing.assert_array_equal(tiled.read_level(0, 0, level, lw, lh), plain.read_rgb(0, 0, level, lw, lh))
        lw = tiled.level_dimensions[1][0]
        for y in (1, 3, 1001):  # level positions between two pixels: OpenSlide blends them, so it reads them
            np.testing.assert_array_equal(tiled.read_level(5, y, 1, lw - 8, 64), plain.read_rgb(5, y, 1, lw - 8, 64))


def test_a_level_wider_than_openslides_4096_px_pieces_reads_as_openslide(tmp_path: Path) -> None:
    """Regression (issue 17 review): OpenSlide paints a region in 4096 px pieces, each at a truncated level-0
    origin, so past column 4096 of a level with a fractional downsample it blends pixels: the tile cut of the whole
    strip differed there (up to 14 grey levels on noise), and so did the tissue mask of such slides."""
    path = tmp_path / "wide.tif"
    jpeg: dict[str, Any] = {"tile": (256, 256), "photometric": "rgb", "compression": "jpeg",
                            "compressionargs": {"level": 90}, "metadata": None}
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.full((600, 17000, 3), 200, np.uint8), **jpeg)
        tif.write(np.random.default_rng(1).integers(0, 256, (148, 4201, 3), dtype=np.uint8), subfiletype=1, **jpeg)
    with Slide(path, assume_mpp=0.5) as tiled, Slide(path, assume_mpp=0.5, tiles=False) as plain:
        assert tiled.tile_layout(1) is not None and not float(tiled.level_downsamples[1]).is_integer()
        np.testing.assert_array_equal(tiled.read_level(0, 0, 1, 4201, 148), plain.read_rgb(0, 0, 1, 4201, 148))
        np.testing.assert_array_equal(tiled.read_downsampled(8.0)[0], plain.read_downsampled(8.0)[0])
