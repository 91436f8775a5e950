"""Colour statistics of stained tissue in optical density (OD), to tell a model's training tissue from a slide's.

Beer-Lambert: OD = -ln((I + 1) / 256) per RGB channel (+1 keeps white finite), so stain amount adds linearly
and the statistics do not depend on how bright the background is. Only stained pixels count: a pixel whose OD
is at least `STAINED_OD` in every channel (Macenko et al. 2009 use the same cut, beta = 0.15). The training
statistics go into the model sidecar (`ModelSidecar.colour`); a heatmap compares each slide's tissue with them.

`ColourAccumulator` streams: patches are added batch by batch. It keeps, per channel, the count of every 8-bit
value among stained pixels, so the statistics are exact, identical whatever the batching or the order of `merge`
(statistics computed on several ranks), and cheap: OD is a 256-entry table, no logarithm per pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from layer1_patches.shared.typedconfig import required

STAINED_OD = 0.15


@dataclass(frozen=True)
class ColourStats:
    """Per-channel optical-density statistics (R, G, B) over stained pixels."""

    od_mean: list[float] = required("mean optical density of stained pixels, per channel R, G, B")
    od_std: list[float] = required("standard deviation of that optical density, per channel R, G, B")
    pixels: int = required("stained pixels counted", min=0)
    patches: int = required("patches the pixels came from", min=0)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """OD of uint8 (or 0-255 float) RGB, same shape, float64."""
    return -np.log((np.asarray(rgb, dtype=np.float64) + 1.0) / 256.0)


OD_TABLE = optical_density(np.arange(256))
# OD falls as the value rises, so "OD >= STAINED_OD" is "value <= STAINED_MAX"; taken from the table, not re-derived
STAINED_MAX = int(np.flatnonzero(OD_TABLE >= STAINED_OD).max())


def stained_od(patches: np.ndarray) -> np.ndarray:
    """(pixels, 3) OD of the stained pixels of (n, h, w, 3) or (h, w, 3) RGB."""
    od = optical_density(patches).reshape(-1, 3)
    return od[np.all(od >= STAINED_OD, axis=1)]


def as_uint8(patches: np.ndarray) -> np.ndarray:
    """Patches as the slide stores them (8 bits per channel); 0-255 floats are rounded."""
    arr = np.asarray(patches)
    return arr if arr.dtype == np.uint8 else np.clip(np.rint(arr), 0, 255).astype(np.uint8)


class ColourAccumulator:
    def __init__(self) -> None:
        self.counts = np.zeros((3, 256), dtype=np.int64)  # [channel, value]: stained pixels with that value
        self.patches = 0

    @property
    def pixels(self) -> int:
        return int(self.counts[0].sum())

    def add(self, patches: np.ndarray) -> None:
        """Add (n, h, w, 3) or one (h, w, 3) RGB patch(es)."""
        rgb = as_uint8(patches)
        flat = rgb.reshape(-1, 3)
        # three compares of columns: 2.5x faster than np.all(..., axis=1) over 256-px batches
        stained = flat[(flat[:, 0] <= STAINED_MAX) & (flat[:, 1] <= STAINED_MAX) & (flat[:, 2] <= STAINED_MAX)]
        for c in range(3):
            self.counts[c] += np.bincount(stained[:, c], minlength=256)
        self.patches += 1 if rgb.ndim == 3 else len(rgb)

    def merge(self, other: ColourAccumulator) -> None:
        self.counts += other.counts
        self.patches += other.patches

    def stats(self) -> ColourStats | None:
        """None when no stained pixel was seen (all background)."""
        pixels = self.pixels
        if pixels == 0:
            return None
        weights = self.counts / pixels
        mean = weights @ OD_TABLE
        # two passes over the 256 values: no cancellation of a large sum of squares against a large mean
        var = np.sum(weights * np.square(OD_TABLE[None, :] - mean[:, None]), axis=1)
        return ColourStats([round(float(v), 6) for v in mean], [round(float(v), 6) for v in np.sqrt(var)],
                           pixels, self.patches)


def merged_stats(accumulators: list[ColourAccumulator]) -> ColourStats | None:
    """The statistics of several accumulators (ranks) as one: exact, since counts add in any order."""
    total = ColourAccumulator()
    for acc in accumulators:
        total.merge(acc)
    return total.stats()


def colour_shift(slide: ColourStats, training: ColourStats) -> float:
    """How far a slide's mean OD lies from the training tissue: the largest per-channel |difference| in units of
    the training standard deviation (a z-score of the slide mean; 0 for identical colour)."""
    diffs = [abs(s - t) / max(sd, 1e-6) for s, t, sd in zip(slide.od_mean, training.od_mean, training.od_std,
                                                           strict=True)]
    return float(max(diffs))
