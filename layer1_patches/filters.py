"""Patch filters: strategies that reject a read patch for a named reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from layer1_patches.config import FilterConfig


class PatchFilter(Protocol):
    @property
    def name(self) -> str: ...

    def rejects(self, patch: np.ndarray) -> bool: ...


@dataclass(frozen=True)
class WhiteFilter:
    """Rejects patches mostly of glass: too many pixels brighter than `level` in every channel."""

    level: int
    max_fraction: float
    name: str = "white"

    def rejects(self, patch: np.ndarray) -> bool:
        limit = self.max_fraction * patch.shape[0] * patch.shape[1]
        # A glass pixel has three bright bytes, so few bright bytes in the contiguous buffer settle most tissue
        # patches exactly, at a third of the cost of the per-pixel minimum.
        if np.count_nonzero(patch.reshape(-1) > self.level) <= 3 * limit:
            return False
        return bool(np.count_nonzero(channel_min(patch) > self.level) > limit)


@dataclass(frozen=True)
class BlackFilter:
    """Rejects patches of pen marks, scanner borders or out-of-focus debris: too many dark pixels."""

    level: int
    max_fraction: float
    name: str = "black"

    def rejects(self, patch: np.ndarray) -> bool:
        limit = self.max_fraction * patch.shape[0] * patch.shape[1]
        if np.count_nonzero(patch.reshape(-1) < self.level) <= 3 * limit:  # exact shortcut, as for white
            return False
        return bool(np.count_nonzero(channel_max(patch) < self.level) > limit)


def channel_min(patch: np.ndarray) -> np.ndarray:
    # Pairwise minimum of the three planes: ~15x faster than `patch.min(axis=2)`, whose reduction over
    # a length-3 axis dominated extraction time.
    return np.minimum(np.minimum(patch[..., 0], patch[..., 1]), patch[..., 2])


def channel_max(patch: np.ndarray) -> np.ndarray:
    return np.maximum(np.maximum(patch[..., 0], patch[..., 1]), patch[..., 2])


def filters_from_config(cfg: FilterConfig) -> list[PatchFilter]:
    found: list[PatchFilter] = []
    if cfg.white is not None:
        found.append(WhiteFilter(cfg.white.level, cfg.white.max_fraction))
    if cfg.black is not None:
        found.append(BlackFilter(cfg.black.level, cfg.black.max_fraction))
    return found


def first_reject(patch: np.ndarray, active: list[PatchFilter]) -> str | None:
    for f in active:
        if f.rejects(patch):
            return f.name
    return None
