"""Where patches are taken: tilers are strategies that turn masks into ordered candidate streams.

A tiler returns one or more `CandidateStream`s. The extractor reads each stream in order and
stops it at its quota, so a stream fixes the result: same stream, same patches, whatever the
number of reader threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from layer1_patches.config import LabelConfig, RandomConfig
from layer1_patches.masks import Mask


@dataclass(frozen=True)
class SlideField:
    """What a tiler may look at: slide size, patch footprint, and the masks."""

    dimensions: tuple[int, int]
    footprint: int  # level-0 pixels per patch side
    downsample: float  # working -> level-0
    tissue: Mask
    tumour: Mask | None
    min_tissue: float
    labels: LabelConfig

    def grid(self, step_level0: float) -> np.ndarray:
        """Row-major top-left level-0 coordinates of whole patches every `step_level0` pixels."""
        w0, h0 = self.dimensions
        xs = np.arange(0, w0 - self.footprint + 1, step_level0).round().astype(np.int64)
        ys = np.arange(0, h0 - self.footprint + 1, step_level0).round().astype(np.int64)
        if len(xs) == 0 or len(ys) == 0:
            return np.zeros((0, 2), dtype=np.int64)
        gx, gy = np.meshgrid(xs, ys)
        return np.stack([gx.ravel(), gy.ravel()], axis=1)

    def tissue_fraction(self, coords: np.ndarray) -> np.ndarray:
        return self.tissue.fractions(coords, self.footprint)

    def tumour_fraction(self, coords: np.ndarray) -> np.ndarray:
        if self.tumour is None:
            return np.zeros(len(coords), dtype=np.float32)
        return self.tumour.fractions(coords, self.footprint)


@dataclass(frozen=True)
class CandidateStream:
    name: str
    coords: np.ndarray  # (M, 2) int64, in the order they are tried
    quota: int | None  # stop after this many accepted patches; None = all
    prefiltered: dict[str, int]  # rejects decided from the masks alone, by reason


class Tiler(Protocol):
    def plan(self, field: SlideField) -> list[CandidateStream]: ...


def label_patches(tumour_fraction: np.ndarray, cfg: LabelConfig) -> tuple[np.ndarray, np.ndarray]:
    """(labels, ambiguous): 1 at or above the tumour threshold, 0 at or below the normal maximum."""
    tumour = tumour_fraction >= cfg.tumour_threshold
    normal = tumour_fraction <= cfg.normal_max_tumour
    return tumour.astype(np.uint8), ~(tumour | normal)


@dataclass(frozen=True)
class DenseTiler:
    """Sliding window over tissue, row-major, stride in working pixels."""

    stride: int

    def plan(self, field: SlideField) -> list[CandidateStream]:
        coords = field.grid(self.stride * field.downsample)
        keep = field.tissue_fraction(coords) >= field.min_tissue
        rejects = {"low_tissue": int((~keep).sum())}
        coords = coords[keep]
        _, ambiguous = label_patches(field.tumour_fraction(coords), field.labels)
        if field.labels.drop_ambiguous:
            rejects["ambiguous_label"] = int(ambiguous.sum())
            coords = coords[~ambiguous]
        return [CandidateStream("dense", coords, None, rejects)]


@dataclass(frozen=True)
class RandomTiler:
    """Up to `per_class` patches per class at distinct random grid positions, in a seeded order.

    Attempts per class are bounded (`max_attempts_factor` x `per_class`), so a slide with too
    little of a class ends with what it reached instead of looping.
    """

    cfg: RandomConfig
    seed: int

    def plan(self, field: SlideField) -> list[CandidateStream]:
        coords = field.grid(self.cfg.grid_step * field.downsample)
        coords = coords[field.tissue_fraction(coords) >= field.min_tissue]
        tumour_fraction = field.tumour_fraction(coords)
        labels, ambiguous = label_patches(tumour_fraction, field.labels)
        rng = np.random.default_rng(self.seed)
        attempts = int(self.cfg.per_class * self.cfg.max_attempts_factor)
        streams = []
        for name, members in (("tumour", (labels == 1) & ~ambiguous), ("normal", (labels == 0) & ~ambiguous)):
            pool = coords[members]
            order = rng.permutation(len(pool))[:attempts]
            streams.append(CandidateStream(name, pool[order], self.cfg.per_class, {}))
        return streams


def shard(stream: CandidateStream, index: int, count: int) -> CandidateStream:
    """Contiguous block `index` of `count`: the blocks partition the stream and keep its order."""
    n = len(stream.coords)
    lo, hi = n * index // count, n * (index + 1) // count
    prefiltered = stream.prefiltered if index == 0 else {k: 0 for k in stream.prefiltered}
    return CandidateStream(stream.name, stream.coords[lo:hi], stream.quota, prefiltered)
