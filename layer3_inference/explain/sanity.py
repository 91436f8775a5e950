"""Model-randomisation sanity check (Adebayo et al. 2018): an explanation that barely changes when the
model's weights are re-initialised does not depend on what the model learnt, and is flagged.

Similarity is the Spearman rank correlation between the trained and the randomised model's map of each
patch; a method is flagged when its median correlation exceeds `sanity.max_rank_correlation`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.stats import spearmanr


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rho of two maps. A constant map has no ranking: two equal constant maps count as
    unchanged (1.0), exactly one constant map as unrelated (0.0)."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    const_a, const_b = np.ptp(a) == 0, np.ptp(b) == 0
    if const_a and const_b:
        return 1.0 if np.allclose(a, b) else 0.0
    if const_a or const_b:
        return 0.0
    return float(spearmanr(a, b).statistic)


def compare(trained: dict[str, np.ndarray], randomised: dict[str, np.ndarray], threshold: float,
            ) -> dict[str, dict[str, Any]]:
    """Per method: per-patch rho, median, mean, and `flagged` (maps do not change with the weights)."""
    out: dict[str, dict[str, Any]] = {}
    for method, maps in trained.items():
        rhos = [rank_correlation(a, b) for a, b in zip(maps, randomised[method], strict=True)]
        median = float(np.median(rhos)) if rhos else math.nan
        out[method] = {"rank_correlation": rhos, "median": median,
                       "mean": float(np.mean(rhos)) if rhos else math.nan,
                       "flagged": bool(rhos) and median > threshold, "threshold": threshold}
    return out
