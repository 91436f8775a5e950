"""Slide access through OpenSlide, and the choice of working resolution.

Vocabulary used everywhere: `level` (pyramid index), `downsample` (relative to level 0),
`mpp` (micrometres per pixel), `magnification` (objective power). Coordinates are level-0 (x, y).
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
from openslide import lowlevel
from PIL import Image

from layer1_patches.config import ResolutionConfig
from layer1_patches.mpp import GENERIC_TIFF, MppTable, tiff_facts
from layer1_patches.shared.cohort import output_stem
from layer1_patches.shared.errors import CamnetError
from layer1_patches.tiles import (
    TILED_VENDORS,
    TileLayout,
    level_layout,
    level_pixels,
    openslide_pieces,
    read_region,
    tile_reader,
)

# Objective power of a slide at a given level-0 mpp when the slide does not say: 10 um / mpp
# is the usual microscope convention (0.25 um/px = 40x, 0.5 um/px = 20x).
POWER_TIMES_MPP = 10.0

# OpenSlide's C read into a caller-owned buffer. openslide-python's `read_region` wraps the same call, then
# un-premultiplies into a PIL RGBA image, which we would convert again: ~0.25 ms of a ~1.2 ms patch, most of it
# holding the GIL. Private in openslide-python, so every use falls back to the public API when it is missing;
# tests/layer1/test_slide.py checks both paths give the same pixels and that the fast one is active.
# The buffer is read as bytes B, G, R, A: true of 0xAARRGGBB words on little-endian machines only.
_READ_INTO = getattr(lowlevel, "_read_region", None) if sys.byteorder == "little" else None
_UINT32_P = ctypes.POINTER(ctypes.c_uint32)
OPAQUE = np.uint32(0xFF000000)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkingResolution:
    """Where patches come from: read at `level`, resized by `level_downsample / downsample`."""

    level: int
    level_downsample: float
    downsample: float  # working pixels -> level-0 pixels
    mpp: float
    magnification: float

    def footprint(self, patch_size: int) -> int:
        """Level-0 pixels covered by one patch side."""
        return int(round(patch_size * self.downsample))

    def read_size(self, patch_size: int) -> int:
        """Pixels to read at `level` for one patch side."""
        return max(1, int(round(patch_size * self.downsample / self.level_downsample)))


class Slide:
    """An open whole-slide image. Every OpenSlide failure becomes a `CamnetError` naming the file."""

    def __init__(self, path: Path, assume_mpp: float | None = None, mpp_table: MppTable | None = None,
                 tiles: bool = True) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise CamnetError(f"slide {self.path}: is a directory, not a slide file (a folder of slides goes to "
                              "--slides)")
        if not self.path.is_file():
            raise CamnetError(f"slide {self.path}: no such file")
        try:
            self._osr = openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError) as err:
            raise CamnetError(f"slide {self.path}: cannot open ({err or 'unsupported format'})") from None
        props = self._osr.properties
        self.name = output_stem(self.path)
        self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR, "") or ""
        self.dimensions: tuple[int, int] = self._osr.dimensions
        self.level_count: int = self._osr.level_count
        self.level_downsamples: tuple[float, ...] = tuple(self._osr.level_downsamples)
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(self._osr.level_dimensions)
        self.mpp, self.mpp_source = self._level0_mpp(assume_mpp, mpp_table)
        self.mpp_from_metadata = self.mpp_source in ("metadata", "ome-xml")
        power = props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        self.objective_power: float | None = float(power) if power else None
        self._handle = getattr(self._osr, "_osr", None)
        # tiles: levels stored as JPEG tiles are read from the tiles (`tile_layout`), with OpenSlide's pixels
        self._tiles = tiles and self.vendor in TILED_VENDORS
        self._layouts: dict[int, TileLayout | None] = {}

    def _level0_mpp(self, assume_mpp: float | None, table: MppTable | None) -> tuple[float | None, str]:
        """The mpp and where it came from, in the order `layer1_patches.mpp` documents."""
        listed = table.lookup(self.path) if table is not None else None
        value = self._osr.properties.get(openslide.PROPERTY_NAME_MPP_X)
        found: tuple[float | None, str] = (float(value), "metadata") if value else (None, "")
        if self.vendor == GENERIC_TIFF and (found[0] is None or self.level_count == 1):
            facts = tiff_facts(self.path)
            if facts is not None and facts.pyramid_levels > self.level_count:
                log.warning("slide %s: its %d-level pyramid is in SubIFDs, which OpenSlide does not read: only level "
                            "0 is used, so the tissue mask reads the full-resolution image (slow, same patches); "
                            "convert it with the pyramid as pages (e.g. bfconvert -pyramid-scale 2 -noflat)",
                            self.path, facts.pyramid_levels)
            if found[0] is None and facts is not None and facts.ome_mpp is not None:
                found = (facts.ome_mpp, "ome-xml")
        if listed is not None:
            if found[0] is not None and abs(listed / found[0] - 1.0) > 0.01:
                log.warning("slide %s: mpp_table %s says %g um/px, its %s says %g; using the table", self.path,
                            table.path if table else "", listed, found[1], found[0])
            return listed, "mpp_table"
        if found[0] is not None:
            return found
        return (assume_mpp, "assume_mpp") if assume_mpp is not None else (None, "none")

    def close(self) -> None:
        self._osr.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_rgb(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3); transparent areas (outside the scanned region) are white."""
        try:
            if _READ_INTO is None or self._handle is None:
                return _pil_rgba_to_rgb(self._osr.read_region((x, y), level, (width, height)))
            argb = np.empty(width * height, dtype=np.uint32)
            _READ_INTO(self._handle, argb.ctypes.data_as(_UINT32_P), x, y, level, width, height)
        except openslide.OpenSlideError as err:
            raise CamnetError(f"slide {self.path}: cannot read region at x={x} y={y} level {level} ({err})") \
                from None
        return argb_to_rgb(argb, width, height)

    def tile_layout(self, level: int) -> TileLayout | None:
        """The JPEG-tiled TIFF page of `level` when its pixels can be cut from the tiles (`layer1_patches.tiles`),
        else None: read through OpenSlide."""
        if not self._tiles:
            return None
        if level not in self._layouts:
            self._layouts[level] = level_layout(str(self.path), self.level_dimensions[level],
                                                whole_above=self.vendor == "aperio" and level > 0)
        return self._layouts[level]

    def read_level(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """`read_rgb`'s pixels, cut from the level's tiles decoded once each where that gives the same: a strip
        of a level costs a fraction of OpenSlide's CPU there (the tissue mask's read).

        OpenSlide paints a large region in 4096 px pieces, each at its own (possibly fractional) position: a piece
        whose position is not a whole level pixel is read through OpenSlide (`tiles.level_pixels`).
        """
        layout = self.tile_layout(level)
        if layout is None:
            return self.read_rgb(x, y, level, width, height)
        out = np.empty((height, width, 3), np.uint8)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            decode = tile_reader(layout, fd, str(self.path), level)
            for px, py, ox, oy, w, h in openslide_pieces(x, y, width, height, self.level_downsamples[level]):
                pixel, exact = level_pixels(np.array([[px, py]]), self.level_downsamples[level])
                out[oy:oy + h, ox:ox + w] = (read_region(layout, decode, int(pixel[0, 0]), int(pixel[0, 1]), w, h)
                                             if exact[0] else self.read_rgb(px, py, level, w, h))
        finally:
            os.close(fd)
        return out

    def read_downsampled(self, downsample: float) -> tuple[np.ndarray, float, float]:
        """The whole slide at about `downsample`, read from the best level in strips.

        Returns the RGB image and the exact level-0 pixels per output pixel in x and y.
        """
        w0, h0 = self.dimensions
        out_w, out_h = max(1, round(w0 / downsample)), max(1, round(h0 / downsample))
        level = self._osr.get_best_level_for_downsample(downsample)
        lds = self.level_downsamples[level]
        lw, lh = self.level_dimensions[level]
        fy = lh / out_h  # level rows per output row
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        rows = max(1, int(4096 / max(fy, 1.0)))  # bounded memory: ~4096 level rows per strip
        for r0 in range(0, out_h, rows):
            r1 = min(out_h, r0 + rows)
            y0 = math.floor(r0 * fy)
            y1 = min(lh, math.ceil(r1 * fy))
            strip = self.read_level(0, int(round(y0 * lds)), level, lw, max(1, y1 - y0))
            image = Image.fromarray(strip)
            box = (0.0, r0 * fy - y0, float(lw), r1 * fy - y0)
            out[r0:r1] = np.asarray(image.resize((out_w, r1 - r0), Image.Resampling.BOX, box=box))
        return out, w0 / out_w, h0 / out_h


def argb_to_rgb(argb: np.ndarray, width: int, height: int) -> np.ndarray:
    """OpenSlide's native premultiplied 0xAARRGGBB pixels composited over white, as RGB uint8."""
    if not (argb < OPAQUE).any():
        # Little-endian 0xAARRGGBB is the byte sequence B, G, R, A: PIL's C unpacker reorders it in one pass.
        image = Image.frombuffer("RGB", (width, height), argb, "raw", "BGRX", 0, 1)
        return np.frombuffer(image.tobytes(), dtype=np.uint8).reshape(height, width, 3)
    bgra = argb.view(np.uint8).reshape(height, width, 4)
    return rgba_to_rgb(np.ascontiguousarray(bgra[..., [2, 1, 0, 3]]))


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite premultiplied RGBA over white (alpha 0 = no data = background)."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    # Premultiplied: colour + (255 - alpha) gives the colour over a white background.
    out = rgb.astype(np.uint16) + (255 - alpha[..., None]).astype(np.uint16)
    return np.minimum(out, 255).astype(np.uint8)


def _pil_rgba_to_rgb(image: Image.Image) -> np.ndarray:
    """Fallback for an openslide-python without the buffer API: its images are un-premultiplied RGBA."""
    if image.getchannel("A").getextrema()[0] == 255:
        return np.asarray(image.convert("RGB"))
    white = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, image).convert("RGB"))


def resolve_resolution(slide: Slide, cfg: ResolutionConfig) -> WorkingResolution:
    """Pick the level to read and the resize factor for the configured level/magnification/mpp."""
    if slide.mpp is None:
        raise CamnetError(f"slide {slide.path}: no mpp in its metadata (nor in an OME-XML or mpp table); set "
                          "resolution.mpp_table or resolution.assume_mpp in the config")
    mpp0 = slide.mpp
    if cfg.level is not None:
        if cfg.level >= slide.level_count:
            raise CamnetError(f"slide {slide.path}: resolution.level {cfg.level} does not exist "
                              f"(slide has {slide.level_count} levels)")
        ds = slide.level_downsamples[cfg.level]
        return WorkingResolution(cfg.level, ds, ds, mpp0 * ds, _power(slide, mpp0) / ds)
    if cfg.mpp is not None:
        target = cfg.mpp / mpp0
        asked = f"resolution.mpp {cfg.mpp}"
    else:
        assert cfg.magnification is not None  # validated: exactly one of the three is set
        target = _power(slide, mpp0) / cfg.magnification
        asked = f"resolution.magnification {cfg.magnification}"
    # A level within tolerance is read as is: no resampling for a rounding difference.
    for level, ds in enumerate(slide.level_downsamples):
        if abs(ds / target - 1.0) <= cfg.mpp_tolerance:
            return WorkingResolution(level, ds, ds, mpp0 * ds, _power(slide, mpp0) / ds)
    if target < 1.0:
        raise CamnetError(f"slide {slide.path}: {asked} is finer than level 0 ({mpp0:g} um/px); "
                          "refusing to upsample")
    finer = [lv for lv, ds in enumerate(slide.level_downsamples) if ds <= target]
    level = max(finer, key=lambda lv: slide.level_downsamples[lv])
    return WorkingResolution(level, slide.level_downsamples[level], target, mpp0 * target,
                             _power(slide, mpp0) / target)


def _power(slide: Slide, mpp0: float) -> float:
    return slide.objective_power if slide.objective_power else POWER_TIMES_MPP / mpp0
