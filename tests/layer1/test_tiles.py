"""`layer1_patches/tiles.py`: regions cut from tiles decoded once equal OpenSlide's `read_region`, pixel for pixel.

The truth is OpenSlide itself (through `Slide.read_rgb`, composited over white), on the bundled Aperio SVS and on
generic TIFFs with the JPEG variants a scanner or converter writes: YCbCr with 2x2 and 1x1 chroma subsampling,
true RGB JPEG; 256 and 240 px tiles (240 leaves partial edge tiles on this image).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import pytest
import tifffile

from layer1_patches.slide import Slide
from layer1_patches.tiles import layout_of, level_position, read_region, servable, tile_reader

from .conftest import CMU

# the real tissue of the bundled slide plus a band of saturated colour, where chroma upsampling shows
IMAGE = tifffile.imread(CMU)[:1000, :900].copy()
_yy, _xx = np.mgrid[0:200, 0:900]
IMAGE[:200] = np.stack([(_xx * 7) % 256, (_yy * 13) % 256, ((_xx ^ _yy) * 5) % 256], -1).astype(np.uint8)


def _regions(width: int, height: int, tile: int) -> list[tuple[int, int, int, int]]:
    """The whole page, one tile, a region straddling four tiles, the last (partial) tile, one across the edge."""
    ex, ey = (width - 1) // tile * tile, (height - 1) // tile * tile
    return [(0, 0, width, height), (tile, tile, tile, tile), (tile - 37, tile - 53, 100, 120),
            (ex, ey, width - ex, height - ey), (width - 150, height - 130, 150, 130)]


def _same_as_openslide(path: Path) -> None:
    with tifffile.TiffFile(path) as tif, Slide(path) as slide:
        page = tif.pages[0]
        assert servable(page)
        layout = layout_of(page)
        decode = tile_reader(layout, tif.filehandle.fileno())
        for x, y, w, h in _regions(layout.width, layout.height, layout.tile_width):
            ours = read_region(layout, decode, x, y, w, h)
            theirs = slide.read_rgb(x, y, 0, w, h)
            diff = np.abs(ours.astype(int) - theirs.astype(int))
            assert diff.max() == 0, f"{path.name} region {(x, y, w, h)}: max difference {diff.max()}"


def test_aperio_svs_tiles_equal_openslide_exactly() -> None:
    # Aperio stores RGB JPEG without a JFIF marker: decoded as libjpeg guesses (YCbCr) it is off by up to 254
    _same_as_openslide(CMU)


@pytest.mark.parametrize("tile", [256, 240])
@pytest.mark.parametrize(("name", "options"), [
    ("ycbcr22", {"subsampling": (2, 2)}),
    ("ycbcr11", {"subsampling": (1, 1)}),
    ("rgb", {"compressionargs": {"level": 90, "outcolorspace": "rgb"}}),  # Photometric RGB, no colour transform
])
def test_generic_tiff_jpeg_variants_equal_openslide_exactly(tmp_path: Path, name: str, options: dict[str, Any],
                                                            tile: int) -> None:
    path = tmp_path / f"{name}_{tile}.tif"
    tifffile.imwrite(path, IMAGE, tile=(tile, tile), photometric="rgb", compression="jpeg",
                     **{"compressionargs": {"level": 90}, **options})
    _same_as_openslide(path)


def test_the_colour_space_comes_from_the_photometric_tag_not_a_guess(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule that makes the pixels equal: decoding Aperio tiles as YCbCr (libjpeg's guess) is far off."""
    from layer1_patches import tiles

    monkeypatch.setattr(tiles.TileLayout, "colorspace", property(lambda _self: "YCBCR"))
    with tifffile.TiffFile(CMU) as tif, Slide(CMU) as slide:
        layout = layout_of(tif.pages[0])
        ours = read_region(layout, tile_reader(layout, tif.filehandle.fileno()), 0, 0, 240, 240)
        assert np.abs(ours.astype(int) - slide.read_rgb(0, 0, 0, 240, 240).astype(int)).max() > 100


def test_outside_the_image_and_missing_tiles_are_white() -> None:
    with tifffile.TiffFile(CMU) as tif:
        layout = layout_of(tif.pages[0])
        decode = tile_reader(layout, tif.filehandle.fileno())
        out = read_region(layout, decode, layout.width - 10, -5, 30, 20)
        assert (out[:5] == 255).all() and (out[:, 10:] == 255).all()  # above and right of the image
        np.testing.assert_array_equal(out[5:, :10], read_region(layout, decode, layout.width - 10, 0, 10, 15))
        assert (read_region(layout, decode, -100, -100, 50, 50) == 255).all()
    with open(CMU, "rb") as fh:
        missing = tile_reader(replace(layout, byte_counts=(0,) * len(layout.byte_counts)), fh.fileno())
        assert (missing(0) == 255).all()


def test_pages_openslide_reads_another_way_are_not_served(tmp_path: Path) -> None:
    lzw, planar = tmp_path / "lzw.tif", tmp_path / "planar.tif"
    tifffile.imwrite(lzw, IMAGE, tile=(256, 256), photometric="rgb", compression="lzw")
    tifffile.imwrite(planar, np.moveaxis(IMAGE, -1, 0), tile=(256, 256), photometric="rgb", planarconfig="separate",
                     compression="jpeg")
    strips = tmp_path / "strips.tif"
    tifffile.imwrite(strips, IMAGE, photometric="rgb", compression="jpeg")
    for path in (lzw, planar, strips):
        with tifffile.TiffFile(path) as tif:
            assert not servable(tif.pages[0]), path.name


# Levels above 0: OpenSlide reads level pixel x0 / downsample; a cut of the tiles equals it only near whole pixels
LEVEL0, LEVEL1, LEVEL2 = (2112, 1433), (500, 350), (125, 87)  # downsamples 4.1591 and 16.6836, whose level
# positions x0 / ds come within 1/256 px of whole pixels on both sides often enough to test either side
SIZE = 64
APERIO = "Aperio Image Library v12.0.0\r\n"


def _level_image(width: int, height: int) -> np.ndarray:
    """Noise: a blend of 1/128 of a neighbour shows only where neighbours differ by more than about 64 levels."""
    return np.random.default_rng(17).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _write_pyramid(path: Path, tile: int, aperio: bool) -> None:
    jpeg: dict[str, Any] = {"tile": (tile, tile), "photometric": "rgb", "compression": "jpeg",
                            "compressionargs": {"level": 90}, "metadata": None}
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.full((*LEVEL0[::-1], 3), 200, np.uint8), description=APERIO + "base" if aperio else None, **jpeg)
        if aperio:  # Aperio's second directory is a stripped thumbnail, not a level
            tif.write(np.full((40, 60, 3), 90, np.uint8), photometric="rgb", description=APERIO + "thumb",
                      metadata=None)
        for width, height in (LEVEL1, LEVEL2):
            if aperio:
                tif.write(_level_image(width, height), description=APERIO + "level", **jpeg)
            else:
                tif.write(_level_image(width, height), subfiletype=1, **jpeg)


def _page_of_level(tif: tifffile.TiffFile, size: tuple[int, int]) -> Any:
    """OpenSlide's level of this size: Aperio levels are tiled pages in file order (page 2 is level 1 after the
    thumbnail), generic TIFF levels the reduced-image pages sorted by width."""
    pages: list[Any] = list(tif.pages)
    (page,) = [p for p in pages if p.is_tiled and (p.imagewidth, p.imagelength) == size]
    return page


def _off(x0: int, downsample: float) -> float:
    """How far OpenSlide's level position x0 / downsample is from the nearest whole pixel, in 1/256 px."""
    return (x0 / downsample - round(x0 / downsample)) * 256


def _xs(downsample: float, width: int, low: float, high: float) -> list[int]:
    """The first and last level-0 x on each side of a whole pixel whose level position is low..high/256 px off it
    (the last regions usually cross the level's right edge)."""
    picked = []
    for side in (-1, 1):
        found = [x for x in range(int((width - 1) * downsample)) if low <= side * _off(x, downsample) <= high]
        picked += [found[0], found[-1]]
    return picked


def _diff(osr: openslide.OpenSlide, level: int, cut: np.ndarray, x0: int, y0: int) -> int:
    theirs = np.asarray(osr.read_region((x0, y0), level, (SIZE, SIZE)))
    inside = theirs[..., 3] == 255  # outside the slide OpenSlide is transparent, a cut white
    return int(np.abs(cut.astype(int) - theirs[..., :3].astype(int))[inside].max())


@pytest.mark.parametrize("tile", [240, 256])
@pytest.mark.parametrize("aperio", [False, True])
@pytest.mark.parametrize("level", [1, 2])
def test_level_reads_equal_a_tile_cut_at_the_rounded_position_only_within_a_256th_of_a_pixel(
        tmp_path: Path, tile: int, aperio: bool, level: int) -> None:
    path = tmp_path / ("slide.svs" if aperio else "slide.tif")
    _write_pyramid(path, tile, aperio)
    osr = openslide.OpenSlide(path)
    ds = osr.level_downsamples[level]
    fd = os.open(path, os.O_RDONLY)
    try:
        with tifffile.TiffFile(path) as tif:
            layout = layout_of(_page_of_level(tif, osr.level_dimensions[level]))
            decode = tile_reader(layout, fd)

            def diff(x0: int, y0: int) -> int:
                (px, _), (py, _) = level_position(x0, ds), level_position(y0, ds)
                return _diff(osr, level, read_region(layout, decode, px, py, SIZE, SIZE), x0, y0)

            for x0 in _xs(ds, layout.width, 0.05, 0.45):  # both axes flagged exact: equal, also across edges
                assert level_position(x0, ds) == (round(x0 / ds), True)
                assert diff(x0, 0) == 0, f"x0={x0} ({_off(x0, ds):+.3f}/256 px)"
            near = _xs(ds, layout.width, 0.55, 0.95)
            for x0 in near:  # one axis up to 1/256 px off is still equal, but flagged inexact: the y axis may add
                assert not level_position(x0, ds)[1] and diff(x0, 0) == 0, f"x0={x0} ({_off(x0, ds):+.3f}/256 px)"
            for x0 in _xs(ds, layout.width, 1.05, 3.0):  # beyond 1/256 px OpenSlide blends in the next pixel
                assert not level_position(x0, ds)[1] and diff(x0, 0) > 0, f"x0={x0} ({_off(x0, ds):+.3f}/256 px)"
            # both axes within 1/256 px but together beyond it: blended too, so each axis may only have half
            y0 = next(y for y in range(int((layout.height - SIZE) * ds)) if 0.6 <= abs(_off(y, ds)) <= 0.95)
            for x0 in near:
                assert diff(x0, y0) > 0, f"x0={x0} y0={y0} ({_off(x0, ds):+.3f}, {_off(y0, ds):+.3f}/256 px)"
    finally:
        os.close(fd)


def test_level_position_rounds_and_is_exact_within_a_512th_of_a_pixel() -> None:
    ds = 4.000471  # a common Aperio level-1 downsample
    assert level_position(0, ds) == (0, True)
    assert level_position(2, ds) == (0, False)  # 0.49994 px: OpenSlide blends two pixels half and half
    assert level_position(3, ds) == (1, False)
    assert level_position(4, ds) == (1, True)  # 0.99988 px: within 1/512 of pixel 1
    assert level_position(64, ds) == (16, True) and level_position(68, ds) == (17, False)  # 0.00188, 0.00200 px
    assert level_position(-9, ds) == (-2, True)  # left of the slide OpenSlide shifts by whole level pixels


def test_pages_whose_photometric_openslide_hands_to_libtiff_are_not_served(tmp_path: Path) -> None:
    """Regression (issue 17 review): OpenSlide decodes JPEG tiles itself only for Photometric RGB (2) or YCbCr (6)
    (openslide-decode-tiff.c) and hands other pages to libtiff; the tile path decoded them as YCbCr regardless."""
    path = tmp_path / "photometric.tif"
    tifffile.imwrite(path, IMAGE, tile=(256, 256), photometric="rgb", compression="jpeg", metadata=None)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert isinstance(page, tifffile.TiffPage) and servable(page)
        offset = page.tags["PhotometricInterpretation"].valueoffset
    for value in (1, 8):  # minisblack, CIELab
        with open(path, "r+b") as fh:
            fh.seek(offset)
            fh.write(value.to_bytes(2, "little"))
        with tifffile.TiffFile(path) as tif:
            assert not servable(tif.pages[0]), value


def test_a_scan_header_longer_than_the_tile_is_damage() -> None:
    """Issue 17 review: a header whose length runs past the tile's end (a corrupted length field) made numpy
    raise its own offset error inside the check; it is named as damage, like the other cases."""
    from layer1_patches.tiles import jpeg_damage

    tile = b"\xff\xd8" + b"\xff\xda" + (60000).to_bytes(2, "big") + bytes(10) + b"\xff\xd9"
    assert jpeg_damage(tile, len(tile)) == "its header runs past the end of the tile"
    whole = b"\xff\xd8" + b"\xff\xda" + (8).to_bytes(2, "big") + bytes(6) + b"\x12\xff\x00\x34" + b"\xff\xd9"
    assert jpeg_damage(whole, len(whole)) == ""  # the control: the same tile with its real length
