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
        return bool((patch.min(axis=2) > self.level).mean() > self.max_fraction)


@dataclass(frozen=True)
class BlackFilter:
    """Rejects patches of pen marks, scanner borders or out-of-focus debris: too many dark pixels."""

    level: int
    max_fraction: float
    name: str = "black"

    def rejects(self, patch: np.ndarray) -> bool:
        return bool((patch.max(axis=2) < self.level).mean() > self.max_fraction)


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
