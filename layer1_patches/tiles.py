"""Regions of a JPEG-tiled TIFF page cut from tiles decoded once each (`reading.TileSource` plans the decodes).

OpenSlide decodes such pages itself with libjpeg (openslide-decode-tiff.c): the tile's bytes after the page's
shared JPEGTables, the JPEG colour space taken from the TIFF Photometric tag (RGB when 2, YCbCr when 6), libjpeg's
default IDCT (ISLOW) and fancy upsampling. imagecodecs' libjpeg-turbo with the same colour-space rule gives the same
bytes (tests/layer1/test_tiles.py compares every pixel with `Slide.read_rgb`). The tag, not the JFIF marker and not
tifffile's own decoder, decides: Aperio SVS tiles are RGB without a JFIF marker, and libjpeg's guess (YCbCr) is off
by up to 254 grey levels there.

Pages this path does not serve (`servable` is False) stay on OpenSlide: other compressions (JPEG 2000, LZW),
other Photometric values (OpenSlide hands those to libtiff), planar or non-8-bit pixels, strips instead of tiles.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from layer1_patches.shared.errors import CamnetError

# vendors whose pyramid levels OpenSlide reads as whole tiled TIFF pages, as `level_layout` assumes
TILED_VENDORS = ("aperio", "generic-tiff")
JPEG = 7  # TIFF Compression tag
# OpenSlide paints a region larger than this (level px) in pieces whose level-0 origin is truncated
# (openslide.c, openslide_read_region): at a fractional downsample each piece has its own subpixel position
OPENSLIDE_PIECE = 4096
# OpenSlide paints a level at the fractional position x0 / downsample (openslide-vendor-generic-tiff.c:135,
# openslide-vendor-aperio.c:236, openslide-grid.c:216-264) and cairo/pixman resample it bilinearly: a plain cut of
# the tiles equals its pixels only when |dx| + |dy| < 1/256 px (measured with OpenSlide 4.0.1), so each axis gets
# half of that.
SUBPIXEL_EXACT = 1 / 512
PHOTOMETRIC_RGB = 2
PHOTOMETRIC_YCBCR = 6  # the two colour spaces OpenSlide decodes with libjpeg itself (openslide-decode-tiff.c)
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
                and page.samplesperpixel == 3 and page.bitspersample == 8
                and page.photometric in (PHOTOMETRIC_RGB, PHOTOMETRIC_YCBCR))


def layout_of(page: Any) -> TileLayout:
    """The layout of a servable tifffile page (see `servable`)."""
    return TileLayout(int(page.imagewidth), int(page.imagelength), int(page.tilewidth), int(page.tilelength),
                      tuple(int(o) for o in page.dataoffsets), tuple(int(n) for n in page.databytecounts),
                      page.jpegtables, int(page.photometric))


def tile_reader(layout: TileLayout, fd: int, slide: str = "", level: int = 0) -> Callable[[int], np.ndarray]:
    """Decodes tile `i` (row-major) of the file open as `fd` to RGB uint8 of the full tile size; a tile without
    bytes is white, one that does not decode is a `CamnetError` naming `slide`, `level` and the tile. Safe from
    several threads: `os.pread` has no shared file position, and the decoder releases the GIL."""
    import imagecodecs  # lazy: only tiled reads need it

    def decode(i: int) -> np.ndarray:
        if layout.byte_counts[i] == 0:
            return np.full((layout.tile_height, layout.tile_width, 3), WHITE, np.uint8)
        try:
            data = os.pread(fd, layout.byte_counts[i], layout.offsets[i])
            damage = jpeg_damage(data, layout.byte_counts[i])
            if damage:
                raise ValueError(damage)
            tile = imagecodecs.jpeg8_decode(data, tables=layout.tables, colorspace=layout.colorspace,
                                            outcolorspace="RGB")
            return np.asarray(tile, dtype=np.uint8).reshape(layout.tile_height, layout.tile_width, 3)
        except Exception as err:  # noqa: BLE001 - imagecodecs' errors have no common base: all become one line
            raise CamnetError(f"slide {slide}: cannot decode the JPEG tile at column {i % layout.tiles_across}, "
                              f"row {i // layout.tiles_across} of level {level} ({err})") from None

    return decode


def jpeg_damage(data: bytes, expected: int) -> str:
    """Why a baseline JPEG tile is damaged ("" when it looks whole): cut short, or a marker inside its scan.

    OpenSlide makes every libjpeg warning an error (openslide-decode-jpeg.c), so it refuses such tiles, while
    imagecodecs decodes on and fills the rest of the tile with grey. These checks catch the warnings of truncated
    and overwritten data ("premature end", "found marker ... instead of RST", "extraneous bytes before marker");
    a flipped bit inside the entropy-coded data ("bad Huffman code") still decodes silently here.
    """
    if len(data) != expected:
        return f"{len(data)} of {expected} bytes in the file"
    if not data.endswith(b"\xff\xd9"):
        return "no end-of-image marker: cut short"
    pos = 2  # after SOI: walk the header segments to the scan (tables may hold any byte, the scan may not)
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xFF:  # a fill byte before the marker
            pos += 1
            continue
        if marker == 0xC2:  # progressive: several scans with tables between them; left to the decoder
            return ""
        pos += 2 + length
        if marker == 0xDA:
            break
    else:
        return "no scan found"
    if pos > len(data) - 2:
        return "its header runs past the end of the tile"
    # the scan without a copy; numpy's compare releases the GIL (bytes.count held it for 8 % of a decoding thread)
    scan = np.frombuffer(data, np.uint8, len(data) - 2 - pos, pos)
    after = scan[np.flatnonzero(scan[:-1] == 0xFF) + 1]
    if not after.any():  # only stuffed bytes (0xFF 0x00): the usual tile
        return ""
    after = after[(after != 0) & (after != 0xFF)]  # 0xFF fill bytes before a marker are allowed
    restarts = after.astype(np.int64) - 0xD0
    if ((restarts < 0) | (restarts > 7)).any():
        return "a marker inside the scan data: overwritten"
    if (restarts != np.arange(len(restarts)) % 8).any():
        return "restart markers out of sequence: overwritten"
    return ""


def openslide_pieces(x: int, y: int, width: int, height: int,
                     downsample: float) -> list[tuple[int, int, int, int, int, int]]:
    """How OpenSlide splits a region read at a level: (level-0 x, level-0 y, column and row offset in the region,
    width, height) per piece, the origin computed and truncated as openslide.c does."""
    d = OPENSLIDE_PIECE
    return [(int(x + col * d * downsample), int(y + row * d * downsample), col * d, row * d,
             min(width - col * d, d), min(height - row * d, d))
            for row in range(-(-height // d)) for col in range(-(-width // d))]


def read_region(layout: TileLayout, tile: Callable[[int], np.ndarray], x: int, y: int, width: int,
                height: int) -> np.ndarray:
    """RGB (height, width, 3) at page pixel (x, y), cut from the tiles it covers; outside the image is white."""
    return cut_into(layout, tile, x, y, np.empty((height, width, 3), np.uint8))


def cut_into(layout: TileLayout, tile: Callable[[int], np.ndarray], x: int, y: int, out: np.ndarray) -> np.ndarray:
    """`read_region` into `out` (height, width, 3), which it returns."""
    height, width = out.shape[:2]
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + width, layout.width), min(y + height, layout.height)
    if (x0, y0, x1, y1) != (x, y, x + width, y + height):
        out[...] = WHITE
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


def level_pixels(coords: np.ndarray, downsample: float) -> tuple[np.ndarray, np.ndarray]:
    """The level pixel (x, y) where OpenSlide's `read_region` starts for each level-0 (x, y), and whether a cut
    of the level's tiles there equals OpenSlide's pixels (False: OpenSlide blends neighbouring pixels).

    Level 0, and levels whose downsample is a whole number on a grid of its multiples, are exact everywhere.
    """
    c = np.asarray(coords, dtype=np.int64)
    position = c / downsample  # the same double division OpenSlide does
    pixel = np.floor(position + 0.5)
    exact = np.abs(position - pixel) < SUBPIXEL_EXACT
    left = c < 0  # openslide.c:482-493: shifts the output by the whole level pixels outside and paints from 0
    pixel = np.where(left, -np.trunc(-c / downsample), pixel)
    return pixel.astype(np.int64), (exact | left).all(axis=1)


def level_position(x0: int, downsample: float) -> tuple[int, bool]:
    """`level_pixels` of one coordinate: (level pixel, exact)."""
    pixel, exact = level_pixels(np.array([[x0, 0]]), downsample)
    return int(pixel[0, 0]), bool(exact[0])


def level_layout(path: str, size: tuple[int, int], whole_above: bool = False) -> TileLayout | None:
    """The layout of the one top-level page of `path` that is `size` (width, height) and servable; None when there
    is none, or several (which OpenSlide level is which would be a guess), or tifffile cannot read the file.

    OpenSlide's Aperio and generic-TIFF readers take each pyramid level from one tiled top-level page (SVS
    thumbnail, label and macro pages are stripped or smaller), so the page of a level is the page of its size.
    `whole_above`: also None when a tiled page at least as large misses tiles; OpenSlide's Aperio reader draws a
    missing tile above level 0 from the level below, and marks the tiles above it missing too (aperio.c:79-120).
    """
    import tifffile  # lazy: only tiled reads need it

    try:
        with tifffile.TiffFile(path) as tif:
            pages = [p for p in tif.pages if isinstance(p, tifffile.TiffPage)]
            found = [p for p in pages if (int(p.imagewidth), int(p.imagelength)) == tuple(size)]
            if len(found) != 1 or not servable(found[0]):
                return None
            if whole_above and any(0 in p.databytecounts for p in pages
                                   if p.is_tiled and p.imagewidth >= size[0]):
                return None
            return layout_of(found[0])
    except (OSError, ValueError, tifffile.TiffFileError):
        return None
