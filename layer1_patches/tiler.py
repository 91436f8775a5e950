"""Where patches are taken: tilers are strategies that turn masks into ordered candidate streams.

A tiler returns one or more `CandidateStream`s. The extractor reads each stream in order and
stops it at its quota, so a stream fixes the result: same stream, same patches, whatever the
number of reader threads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from layer1_patches.config import LabelConfig, RandomConfig
from layer1_patches.masks import Mask


class AreaShare(Protocol):
    """A region that knows what share of level-0 squares it covers: a raster `Mask`, or the exact geometry of
    `fractions.TumourGeometry` that labels use."""

    def fractions(self, coords: np.ndarray, footprint: int) -> np.ndarray: ...


@dataclass(frozen=True)
class SlideField:
    """What a tiler may look at: slide size, patch footprint, and the masks."""

    dimensions: tuple[int, int]
    footprint: int  # level-0 pixels per patch side
    downsample: float  # working -> level-0
    tissue: Mask
    tumour: AreaShare | None
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
    tissue_fraction: np.ndarray  # (M,) float32
    tumour_fraction: np.ndarray  # (M,) float32
    quota: int | None  # stop after this many accepted patches; None = all
    prefiltered: dict[str, int]  # rejects decided from the masks alone, by reason

    def take(self, rows: np.ndarray | slice) -> CandidateStream:
        return CandidateStream(self.name, self.coords[rows], self.tissue_fraction[rows], self.tumour_fraction[rows],
                               self.quota, self.prefiltered)


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
        tissue = field.tissue_fraction(coords)
        keep = tissue >= field.min_tissue
        rejects = {"low_tissue": int((~keep).sum())}
        stream = CandidateStream("dense", coords[keep], tissue[keep], field.tumour_fraction(coords[keep]), None,
                                 rejects)
        if field.labels.drop_ambiguous:
            _, ambiguous = label_patches(stream.tumour_fraction, field.labels)
            rejects["ambiguous_label"] = int(ambiguous.sum())
            stream = stream.take(~ambiguous)
        return [stream]


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
        tissue = field.tissue_fraction(coords)
        keep = tissue >= field.min_tissue
        every = CandidateStream("", coords[keep], tissue[keep], field.tumour_fraction(coords[keep]),
                                self.cfg.per_class, {})
        labels, ambiguous = label_patches(every.tumour_fraction, field.labels)
        rng = np.random.default_rng(self.seed)
        attempts = int(self.cfg.per_class * self.cfg.max_attempts_factor)
        streams = []
        for name, members in (("tumour", (labels == 1) & ~ambiguous), ("normal", (labels == 0) & ~ambiguous)):
            pool = every.take(members)
            order = rng.permutation(len(pool.coords))[:attempts]
            streams.append(replace(pool.take(order), name=name))
        return streams


def shard(stream: CandidateStream, index: int, count: int) -> CandidateStream:
    """Contiguous block `index` of `count`: the blocks partition the stream and keep its order."""
    n = len(stream.coords)
    part = stream.take(slice(n * index // count, n * (index + 1) // count))
    # Mask-only rejects are counted once, on shard 0, so the merged counts equal an unsharded run's.
    return part if index == 0 else replace(part, prefiltered={k: 0 for k in stream.prefiltered})
