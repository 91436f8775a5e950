"""Ranks for `explain`, from the heatmap code's `init_ranks` (Horovod, else mpi4py, else one process).

Ranks take patches round-robin; rank 0 keeps everyone's results (via allgather) and writes all outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    ranks: Any = field(default=None, repr=False)  # layer3_inference.infer.Ranks when size > 1

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def share(self, n: int) -> np.ndarray:
        """This rank's items of 0..n-1 (round-robin keeps the shares balanced for sorted inputs)."""
        return np.arange(self.rank, n, self.size)

    def allgather(self, value: T) -> list[T]:
        return [value] if self.ranks is None else list(self.ranks.allgather(value))

    def gather(self, value: T) -> list[T] | None:
        """All ranks' values on rank 0 (in rank order), None elsewhere."""
        parts = self.allgather(value)
        return parts if self.is_chief else None

    def barrier(self) -> None:
        self.allgather(None)


def init() -> World:
    from layer3_inference.infer import init_ranks

    ranks = init_ranks()
    return World(ranks.rank, ranks.size, ranks if ranks.size > 1 else None)


def merge_shares(parts: list[list[T]], n: int, size: int) -> list[T]:
    """Undo `World.share`: parts[r] holds items r, r + size, ...; back into 0..n-1 order."""
    out: list[Any] = [None] * n
    for rank, part in enumerate(parts):
        for j, item in enumerate(part):
            out[rank + j * size] = item
    return out
