"""`layer1_patches/tiles.py`: regions cut from tiles decoded once equal OpenSlide's `read_region`, pixel for pixel.

The truth is OpenSlide itself (through `Slide.read_rgb`, composited over white), on the bundled Aperio SVS and on
generic TIFFs with the JPEG variants a scanner or converter writes: YCbCr with 2x2 and 1x1 chroma subsampling,
true RGB JPEG; 256 and 240 px tiles (240 leaves partial edge tiles on this image).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from layer1_patches.slide import Slide
from layer1_patches.tiles import layout_of, read_region, servable, tile_reader

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
        decode = tile_reader(layout, tif.filehandle)
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
        ours = read_region(layout, tile_reader(layout, tif.filehandle), 0, 0, 240, 240)
        assert np.abs(ours.astype(int) - slide.read_rgb(0, 0, 0, 240, 240).astype(int)).max() > 100


def test_outside_the_image_and_missing_tiles_are_white() -> None:
    with tifffile.TiffFile(CMU) as tif:
        layout = layout_of(tif.pages[0])
        decode = tile_reader(layout, tif.filehandle)
        out = read_region(layout, decode, layout.width - 10, -5, 30, 20)
        assert (out[:5] == 255).all() and (out[:, 10:] == 255).all()  # above and right of the image
        np.testing.assert_array_equal(out[5:, :10], read_region(layout, decode, layout.width - 10, 0, 10, 15))
        assert (read_region(layout, decode, -100, -100, 50, 50) == 255).all()
    with open(CMU, "rb") as fh:
        missing = tile_reader(replace(layout, byte_counts=(0,) * len(layout.byte_counts)), fh)
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
