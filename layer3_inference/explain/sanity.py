"""The model-randomisation sanity check (Adebayo et al. 2018) and the input-independence check, as pure functions
of maps and logits; `randomise` makes the randomised models, `sanity_run` computes their maps.

Randomisation: an explanation that barely changes when the weights are re-initialised does not depend on what
the model learnt. Per method and cascade depth, the similarity is the median over patches of the Spearman rank
correlation between the trained and the randomised model's map. A depth is "inconclusive" when the randomised
model is dead (its logits barely vary across the patches: `random_logit_std` below `sanity.min_logit_std`; every
map of a dead network is constant or numerical noise) or when fewer than half of the patches have a ranking in
both maps (a constant map, e.g. a Grad-CAM ReLU'd to zero, has none). A method passes when its median at the
deepest conclusive depth is at or below `sanity.max_rank_correlation`, fails above it, and is inconclusive when
no depth is conclusive: a dead network or a constant map can no longer make a method pass.

Input independence: the mean pairwise Spearman correlation of the trained model's maps of different patches.
Spearman, as in the randomisation check, so both figures are on one scale, and because a few hot pixels
dominate Pearson's correlation of Grad-CAM maps; a method above `sanity.max_cross_patch_correlation` paints the
same picture on every patch (e.g. a 2 x 2 Grad-CAM layer upsampled to the patch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata, spearmanr

from layer2_training.health import HealthWarning
from layer3_inference.explain.config import SanityConfig

PASSED, FAILED, INCONCLUSIVE = "passed", "failed", "inconclusive"


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


def cross_patch_correlation(maps: np.ndarray) -> float | None:
    """Mean Spearman rho over all pairs of different patches' maps (`rank_correlation`'s constant-map rules);
    None for fewer than two patches. Pearson of average ranks is Spearman's rho, so one matrix product does it."""
    n = len(maps)
    if n < 2:
        return None
    flat = np.asarray(maps, np.float64).reshape(n, -1)
    ranks = rankdata(flat, axis=1)
    spread = ranks.std(axis=1)
    varies = spread > 0
    z = np.zeros_like(ranks)
    z[varies] = (ranks[varies] - ranks[varies].mean(axis=1, keepdims=True)) / spread[varies, None]
    rho = z @ z.T / flat.shape[1]
    constant = np.flatnonzero(~varies)  # a constant map: 1.0 with an equal constant map, else 0.0
    rho[constant, :] = rho[:, constant] = 0.0
    for i in constant:
        for j in constant:
            rho[i, j] = 1.0 if np.allclose(flat[i], flat[j]) else 0.0
    return float(rho[np.triu_indices(n, 1)].mean())


@dataclass(frozen=True)
class DepthMaps:
    """One cascade depth: its step (`randomise.Step.to_dict()`), the randomised logits' spread across the
    patches, and the randomised model's maps per method."""

    step: dict[str, Any]
    logit_std: float
    maps: dict[str, np.ndarray]


def depth_result(trained: np.ndarray, randomised: np.ndarray, logit_std: float, cfg: SanityConfig,
                 ) -> dict[str, Any]:
    """One method at one depth: per-patch rho (all patches), median and mean over the ranked patches, status.
    Maps are compared by magnitude (Adebayo et al.'s "absolute value" rank correlation): an inverted map still
    follows the input's structure, so it is as similar as an unchanged one, not evidence of a learnt model."""
    rhos = [rank_correlation(np.abs(a), np.abs(b)) for a, b in zip(trained, randomised, strict=True)]
    ranked = [r for r, a, b in zip(rhos, trained, randomised, strict=True) if np.ptp(a) > 0 and np.ptp(b) > 0]
    median = float(np.median(ranked)) if ranked else math.nan
    if logit_std < cfg.min_logit_std or not ranked or 2 * len(ranked) < len(rhos):
        status = INCONCLUSIVE
    else:
        status = FAILED if median > cfg.max_rank_correlation else PASSED
    return {"median": median, "mean": float(np.mean(ranked)) if ranked else math.nan, "status": status,
            "ranked_patches": len(ranked), "rank_correlation": rhos}


def method_result(trained: np.ndarray, depths: list[DepthMaps], method: str, cfg: SanityConfig,
                  ) -> dict[str, Any]:
    by_depth = [{"depth": d.step["depth"], **depth_result(trained, d.maps[method], d.logit_std, cfg)}
                for d in depths]
    # decided at full randomisation only, the depth whose logits' spread is the recorded `random_logit_std`: a
    # dead fully randomised network makes the check inconclusive even when a shallower depth was alive
    deciding = by_depth[-1] if by_depth else None
    status = deciding["status"] if deciding else INCONCLUSIVE
    cross = cross_patch_correlation(trained)
    return {"status": status,
            "decided_at_depth": deciding["depth"] if deciding and status != INCONCLUSIVE else None,
            "median": deciding["median"] if deciding else math.nan,
            "threshold": cfg.max_rank_correlation,
            "input_independent": cross is not None and cross > cfg.max_cross_patch_correlation,
            "cross_patch_correlation": cross,
            "by_depth": [{k: v for k, v in r.items() if k != "rank_correlation"} for r in by_depth],
            "rank_correlation": by_depth[-1]["rank_correlation"] if by_depth else []}


def overall(statuses: list[str]) -> str:
    """Failed if any method failed; else inconclusive if any method (or no method) was inconclusive."""
    if FAILED in statuses:
        return FAILED
    return PASSED if statuses and all(s == PASSED for s in statuses) else INCONCLUSIVE


def document(trained: dict[str, np.ndarray], depths: list[DepthMaps], trained_logit_std: float,
             cfg: SanityConfig) -> dict[str, Any]:
    """The content of `sanity.json`."""
    methods = {m: method_result(maps, depths, m, cfg) for m, maps in trained.items()}
    return {"random_logit_std": depths[-1].logit_std if depths else math.nan,
            "trained_logit_std": trained_logit_std, "min_logit_std": cfg.min_logit_std,
            "max_cross_patch_correlation": cfg.max_cross_patch_correlation,
            "status": overall([r["status"] for r in methods.values()]),
            "depths": [{**d.step, "random_logit_std": d.logit_std} for d in depths],
            "methods": methods}


def summary(doc: dict[str, Any]) -> dict[str, Any]:
    """The `sanity` key of explain's summary.json."""
    return {"status": doc["status"], "random_logit_std": doc["random_logit_std"],
            "methods": {m: {k: r[k] for k in ("status", "median", "input_independent")}
                        for m, r in doc["methods"].items()}}


def warnings(doc: dict[str, Any]) -> list[HealthWarning]:
    out = []
    for method, r in doc["methods"].items():
        if r["status"] == FAILED:
            out.append(HealthWarning("sanity_failed", f"{method} maps barely change when the weights are "
                                     f"randomised (median rank correlation {r['median']:.2f} > {r['threshold']}): "
                                     "they do not show what the model learnt"))
        elif r["status"] == INCONCLUSIVE:
            out.append(HealthWarning("sanity_inconclusive", f"{method}: randomisation check inconclusive (randomised "
                                     f"logits spread {doc['random_logit_std']:.2g}, minimum {doc['min_logit_std']}; "
                                     "or too few patches with non-constant maps): not evidence that the maps "
                                     "depend on the weights"))
        if r["input_independent"]:
            limit = doc["max_cross_patch_correlation"]
            out.append(HealthWarning("input_independent", f"{method} maps of different patches correlate "
                                     f"{r['cross_patch_correlation']:.2f} on average (> {limit}): the same "
                                     "picture on every patch, not an explanation of each"))
    return out
