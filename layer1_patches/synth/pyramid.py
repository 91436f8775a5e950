"""The streamed pyramidal JPEG TIFF of a synthetic slide: level 0 rendered tile row by tile row, reduced levels
built by a cascade of 2x2 box downsamples and parked on disk until their page is written.

Memory stays a few tile rows at any slide size; the pixels come from `pixels.render_tile`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import imagecodecs
import numpy as np
import tifffile

from layer1_patches.synth.pixels import Layout, render_tile

MIN_TOP_LEVEL = 1024


def level_sizes(size: int) -> list[int]:
    """Halve until the top level is at most MIN_TOP_LEVEL px, with at least two levels."""
    sizes = [size]
    while sizes[-1] > MIN_TOP_LEVEL or len(sizes) < 2:
        sizes.append(sizes[-1] // 2)
    return sizes


def _encode(tile: np.ndarray, size: int, quality: int) -> bytes:
    if tile.shape[0] != size or tile.shape[1] != size:
        # edge padding compresses better than zeros; readers crop it away
        tile = np.pad(tile, ((0, size - tile.shape[0]), (0, size - tile.shape[1]), (0, 0)), mode="edge")
    # the same call tifffile makes for compression="jpeg", so its YCbCr tags describe these bytes
    return bytes(imagecodecs.jpeg_encode(np.ascontiguousarray(tile), level=quality, subsampling=(2, 2),
                                         colorspace="RGB", outcolorspace="YCBCR"))


def _halve(strip: np.ndarray, width: int) -> np.ndarray:
    rows = strip.shape[0] // 2
    a = strip[:2 * rows, :2 * width].astype(np.uint16)
    return ((a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2] + 2) >> 2).astype(np.uint8)


class _Spool:
    """Encoded tiles of one reduced level, parked on disk until its TIFF page is written."""

    def __init__(self, directory: Path) -> None:
        # closed by write_pyramid's finally; unlinked from the start, so never left behind
        self.file: BinaryIO = tempfile.TemporaryFile(dir=directory, prefix=".synth-spool-")  # noqa: SIM115
        self.lengths: list[int] = []

    def add(self, data: bytes) -> None:
        self.file.write(data)
        self.lengths.append(len(data))

    def tiles(self) -> Iterator[bytes]:
        self.file.seek(0)
        for length in self.lengths:
            yield self.file.read(length)


class _Pyramid:
    """Cascade of 2x2 box downsamples fed one level-0 tile row at a time; memory is a few tile rows."""

    def __init__(self, sizes: list[int], tile: int, quality: int, spools: list[_Spool]) -> None:
        self.sizes, self.tile, self.quality, self.spools = sizes, tile, quality, spools
        # level 0 arrives as whole tile rows and never needs a buffer
        self.buffers = [np.empty((tile if level else 0, s, 3), np.uint8) for level, s in enumerate(sizes)]
        self.filled = [0] * len(sizes)

    def push(self, level: int, rows: np.ndarray) -> None:
        while rows.shape[0]:
            take = min(rows.shape[0], self.tile - self.filled[level])
            self.buffers[level][self.filled[level]:self.filled[level] + take] = rows[:take]
            self.filled[level] += take
            rows = rows[take:]
            if self.filled[level] == self.tile:
                self._emit(level)

    def _emit(self, level: int) -> None:
        strip = self.buffers[level][:self.filled[level]]
        for x in range(0, self.sizes[level], self.tile):
            self.spools[level - 1].add(_encode(strip[:, x:x + self.tile], self.tile, self.quality))
        self.descend(level, strip)
        self.filled[level] = 0

    def descend(self, level: int, strip: np.ndarray) -> None:
        """Feed the 2x2 downsample of a finished `level` strip to the next level."""
        if level + 1 < len(self.sizes):
            self.push(level + 1, _halve(strip, self.sizes[level + 1]))

    def flush(self) -> None:
        for level in range(1, len(self.sizes)):
            if self.filled[level]:
                self._emit(level)


def write_pyramid(path: Path, lay: Layout, mpp: float, quality: int, description: str) -> int:
    """Write the JPEG pyramidal TIFF to `path`, streaming level 0; returns the number of levels."""
    sizes, t = level_sizes(lay.size), lay.tile
    spools = [_Spool(path.parent) for _ in sizes[1:]]
    pyramid = _Pyramid(sizes, t, quality, spools)

    def level0() -> Iterator[bytes]:
        strip = np.empty((t, lay.size, 3), np.uint8)
        for y0 in range(0, lay.size, t):
            encoded = []
            for x0 in range(0, lay.size, t):
                tile = render_tile(lay, x0, y0)
                strip[:, x0:x0 + t] = tile[:, :lay.size - x0]
                encoded.append(_encode(tile, t, quality))
            # before yielding: tifffile stops pulling after the last tile, so later code would never run
            pyramid.descend(0, strip[:min(t, lay.size - y0)])
            yield from encoded

    try:
        # classic TIFF offsets are 32-bit; BigTIFF only where the JPEG data could approach that
        with tifffile.TiffWriter(path, bigtiff=lay.size * lay.size * 3 > 2**31) as tw:
            for level, size in enumerate(sizes):
                per_cm = 1e4 / (mpp * 2**level)
                tw.write(level0() if level == 0 else spools[level - 1].tiles(),
                         shape=(size, size, 3), dtype=np.uint8, tile=(t, t), photometric="rgb",
                         compression="jpeg", compressionargs={"level": quality},
                         resolution=(per_cm, per_cm), resolutionunit="CENTIMETER",
                         subfiletype=1 if level else 0, description=description if level == 0 else None,
                         software=False, datetime=False, metadata=None, maxworkers=1)
                if level == 0:
                    pyramid.flush()
    finally:
        for spool in spools:
            spool.file.close()
    return len(sizes)
