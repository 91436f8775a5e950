"""Colour statistics of stained tissue in optical density (OD), to tell a model's training tissue from a slide's.

Beer-Lambert: OD = -ln((I + 1) / 256) per RGB channel (+1 keeps white finite), so stain amount adds linearly
and the statistics do not depend on how bright the background is. Only stained pixels count: a pixel whose OD
is at least `STAINED_OD` in every channel (Macenko et al. 2009 use the same cut, beta = 0.15). The training
statistics go into the model sidecar (`ModelSidecar.colour`); a heatmap compares each slide's tissue with them.

`ColourAccumulator` streams: patches are added batch by batch and the result does not depend on the batching
(sums in float64, `merge` for statistics computed on several ranks).
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


def stained_od(patches: np.ndarray) -> np.ndarray:
    """(pixels, 3) OD of the stained pixels of (n, h, w, 3) or (h, w, 3) RGB."""
    od = optical_density(patches).reshape(-1, 3)
    return od[np.all(od >= STAINED_OD, axis=1)]


class ColourAccumulator:
    def __init__(self) -> None:
        self.total = np.zeros(3)
        self.squares = np.zeros(3)
        self.pixels = 0
        self.patches = 0

    def add(self, patches: np.ndarray) -> None:
        od = stained_od(patches)
        self.total += od.sum(axis=0)
        self.squares += np.square(od).sum(axis=0)
        self.pixels += len(od)
        self.patches += 1 if np.asarray(patches).ndim == 3 else len(patches)

    def merge(self, other: ColourAccumulator) -> None:
        self.total += other.total
        self.squares += other.squares
        self.pixels += other.pixels
        self.patches += other.patches

    def stats(self) -> ColourStats | None:
        """None when no stained pixel was seen (all background)."""
        if self.pixels == 0:
            return None
        mean = self.total / self.pixels
        var = np.maximum(self.squares / self.pixels - np.square(mean), 0.0)
        return ColourStats([round(float(v), 6) for v in mean], [round(float(v), 6) for v in np.sqrt(var)],
                           self.pixels, self.patches)


def colour_shift(slide: ColourStats, training: ColourStats) -> float:
    """How far a slide's mean OD lies from the training tissue: the largest per-channel |difference| in units of
    the training standard deviation (a z-score of the slide mean; 0 for identical colour)."""
    diffs = [abs(s - t) / max(sd, 1e-6) for s, t, sd in zip(slide.od_mean, training.od_mean, training.od_std,
                                                           strict=True)]
    return float(max(diffs))
