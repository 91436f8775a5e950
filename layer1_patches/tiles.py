"""Regions of a JPEG-tiled TIFF page cut from tiles decoded once each (issue 17, first step: not yet used by
`extract`).

OpenSlide decodes such pages itself with libjpeg (openslide-decode-tiff.c): the tile's bytes after the page's
shared JPEGTables, the JPEG colour space taken from the TIFF Photometric tag (RGB when 2, else YCbCr), libjpeg's
default IDCT (ISLOW) and fancy upsampling. imagecodecs' libjpeg-turbo with the same colour-space rule gives the same
bytes (tests/layer1/test_tiles.py compares every pixel with `Slide.read_rgb`). The tag, not the JFIF marker and not
tifffile's own decoder, decides: Aperio SVS tiles are RGB without a JFIF marker, and libjpeg's guess (YCbCr) is off
by up to 254 grey levels there.

Pages this path does not serve (`servable` is False) stay on OpenSlide: other compressions (JPEG 2000, LZW),
planar or non-8-bit pixels, strips instead of tiles.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

JPEG = 7  # TIFF Compression tag
PHOTOMETRIC_RGB = 2
WHITE = 255  # OpenSlide composites "no data" (outside the image, missing tiles) over white


@dataclass(frozen=True)
class TileLayout:
    """Where one TIFF page's tiles are and how to decode them; plain data, read once from tifffile."""

    width: int
    height: int
    tile_width: int
    tile_height: int
    offsets: tuple[int, ...]
    byte_counts: tuple[int, ...]
    tables: bytes | None
    photometric: int

    @property
    def tiles_across(self) -> int:
        return -(-self.width // self.tile_width)

    @property
    def colorspace(self) -> str:
        return "RGB" if self.photometric == PHOTOMETRIC_RGB else "YCBCR"


def servable(page: Any) -> bool:
    """Whether a tifffile page is JPEG tiles of 3 contiguous 8-bit samples: the pages OpenSlide decodes itself."""
    return bool(page.is_tiled and page.compression == JPEG and page.planarconfig == 1
                and page.samplesperpixel == 3 and page.bitspersample == 8)


def layout_of(page: Any) -> TileLayout:
    """The layout of a servable tifffile page (see `servable`)."""
    return TileLayout(int(page.imagewidth), int(page.imagelength), int(page.tilewidth), int(page.tilelength),
                      tuple(int(o) for o in page.dataoffsets), tuple(int(n) for n in page.databytecounts),
                      page.jpegtables, int(page.photometric))


def tile_reader(layout: TileLayout, fh: BinaryIO) -> Callable[[int], np.ndarray]:
    """Decodes tile `i` (row-major) to RGB uint8 of the full tile size; a tile without bytes is white."""
    import imagecodecs  # lazy: only tiled reads need it

    def decode(i: int) -> np.ndarray:
        if layout.byte_counts[i] == 0:
            return np.full((layout.tile_height, layout.tile_width, 3), WHITE, np.uint8)
        fh.seek(layout.offsets[i])
        data = fh.read(layout.byte_counts[i])
        tile = imagecodecs.jpeg8_decode(data, tables=layout.tables, colorspace=layout.colorspace,
                                        outcolorspace="RGB")
        return np.asarray(tile, dtype=np.uint8).reshape(layout.tile_height, layout.tile_width, 3)

    return decode


def read_region(layout: TileLayout, tile: Callable[[int], np.ndarray], x: int, y: int, width: int,
                height: int) -> np.ndarray:
    """RGB (height, width, 3) at page pixel (x, y), cut from the tiles it covers; outside the image is white."""
    out = np.full((height, width, 3), WHITE, np.uint8)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + width, layout.width), min(y + height, layout.height)
    if x0 >= x1 or y0 >= y1:
        return out
    tw, th = layout.tile_width, layout.tile_height
    for ty in range(y0 // th, (y1 - 1) // th + 1):
        for tx in range(x0 // tw, (x1 - 1) // tw + 1):
            pixels = tile(ty * layout.tiles_across + tx)
            # the part of this tile inside both the region and the image (edge tiles are padded beyond it)
            ax, ay = max(x0, tx * tw), max(y0, ty * th)
            bx, by = min(x1, (tx + 1) * tw), min(y1, (ty + 1) * th)
            out[ay - y:by - y, ax - x:bx - x] = pixels[ay - ty * th:by - ty * th, ax - tx * tw:bx - tx * tw]
    return out
