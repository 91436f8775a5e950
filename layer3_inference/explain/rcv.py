"""Regression Concept Vectors (Graziani et al. 2018), with held-out R^2 and a random-direction baseline.

Per layer: activations are global-average pooled to (n, c). A concept is regressed on them with a ridge
whose penalty RidgeCV picks (efficient leave-one-out) *inside* each outer fold, so the reported R^2 is
computed on out-of-fold predictions only (nested CV), never in-sample. Activations are centred and
divided by one global scale per layer (not per feature): the penalty grid then means the same at every
layer while directions stay those of the raw activation space; per-feature standardisation would let
near-constant features dominate the direction once mapped back.

The RCV is the ridge coefficient vector, normalised. Sensitivity S of a patch is the directional
derivative of the tumour logit along the unit RCV, sign kept. It is computed with the gradient w.r.t.
the *spatial* activation map summed over positions: adding the direction v at every position moves
the pooled activation by exactly v, so d logit / d eps = sum_{h,w} grad[h, w] . v. (For a 2-D layer
the gradient is taken directly.)

TCAV = share of tumour patches with S > 0. Br = max(R^2, 0) * mean(S) / std(S): a concept the layer does
not encode (held-out R^2 <= 0) gets Br 0. Baseline: `n_random` seeded random unit directions give a TCAV
distribution; `n_repeats` bootstrap refits of the RCV (resampled patches, penalty fixed at the one chosen on
all patches) give the concept's; the two are compared with a two-sided Welch t-test (as in TCAV, Kim et
al. 2018) or Mann-Whitney U, plus the empirical share of random directions with a TCAV at least the
concept's. `significant` needs p < alpha_level *and* a concept TCAV above the random mean.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf
from scipy import stats
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold
from sklearn.pipeline import make_pipeline

from layer1_patches.shared.errors import CamnetError
from layer3_inference.explain.config import RcvConfig


@dataclass
class LayerData:
    pooled: np.ndarray  # (n, c) global-average-pooled activations
    grad: np.ndarray  # (n, c) d logit / d(uniform shift of the activation map)


def activations(taps: tf.keras.Model, layers: list[str], patches: np.ndarray, batch: int,
                ) -> tuple[dict[str, LayerData], np.ndarray]:
    """Pooled activations and logit gradients per layer, and the logits, for uint8 RGB `patches`."""
    pooled: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    grads: dict[str, list[np.ndarray]] = {name: [] for name in layers}
    logits = []
    for start in range(0, len(patches), batch):
        x = tf.constant(patches[start:start + batch], tf.float32)
        with tf.GradientTape() as tape:
            outs = taps(x, training=False)
            acts, logit = outs[:-1], outs[-1]
            total = tf.reduce_sum(logit)  # patches are independent: d total / d act_i = d logit_i / d act_i
        gs = tape.gradient(total, acts)
        for name, act, g in zip(layers, acts, gs, strict=True):
            if g is None:
                raise CamnetError(f"layer {name!r} does not feed the tumour output: no gradient")
            axes = tuple(range(1, act.shape.rank - 1))
            pooled[name].append(np.asarray(tf.reduce_mean(act, axis=axes) if axes else act, np.float64))
            grads[name].append(np.asarray(tf.reduce_sum(g, axis=axes) if axes else g, np.float64))
        logits.append(np.asarray(logit, np.float64).reshape(-1))
    if not logits:  # a rank with no patches (fewer batches than ranks) still takes part in the gather
        width = {name: int(out.shape[-1]) for name, out in zip(layers, taps.outputs[:-1], strict=True)}
        return {name: LayerData(np.zeros((0, width[name])), np.zeros((0, width[name]))) for name in layers}, \
            np.zeros(0)
    data = {name: LayerData(np.concatenate(pooled[name]), np.concatenate(grads[name])) for name in layers}
    return data, np.concatenate(logits)


class IsotropicScaler(BaseEstimator, TransformerMixin):
    """Centre, then divide every feature by the same scale (root mean feature variance)."""

    def fit(self, x: np.ndarray, y: Any = None) -> IsotropicScaler:  # noqa: ARG002 - scikit-learn's fit(X, y)
        self.mean_ = x.mean(axis=0)
        scale = float(np.sqrt(np.mean(x.var(axis=0))))
        self.scale_ = scale if scale > 0 else 1.0
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.asarray((x - self.mean_) / self.scale_)


def _ridge(alphas: list[float]) -> Any:
    return make_pipeline(IsotropicScaler(), RidgeCV(alphas=alphas))


def heldout_r2(x: np.ndarray, y: np.ndarray, cfg: RcvConfig) -> tuple[float, list[float]]:
    """(R^2 of the pooled out-of-fold predictions, per-fold R^2), alpha chosen inside each fold."""
    folds = min(cfg.folds, len(y))
    pred = np.empty_like(y)
    per_fold = []
    for train, test in KFold(folds, shuffle=True, random_state=cfg.seed).split(x):
        model = _ridge(cfg.alphas).fit(x[train], y[train])
        pred[test] = model.predict(x[test])
        per_fold.append(float(r2_score(y[test], pred[test])) if len(test) > 1 else math.nan)
    return float(r2_score(y, pred)), per_fold


def direction(x: np.ndarray, y: np.ndarray, alphas: list[float]) -> tuple[np.ndarray, float]:
    """(unit RCV in raw activation space, chosen alpha); a zero vector when the fit is flat."""
    ridge = _ridge(alphas).fit(x, y)[-1]
    w = np.asarray(ridge.coef_, np.float64)
    norm = float(np.linalg.norm(w))
    return (w / norm if norm > 0 else w), float(ridge.alpha_)


def tcav(grad: np.ndarray, unit: np.ndarray) -> float:
    return float(np.mean(grad @ unit > 0)) if len(grad) else math.nan


def random_units(c: int, n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, c))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def significance(concept: np.ndarray, random: np.ndarray, test: str) -> float:
    """Two-sided p-value of concept-TCAV repeats against random-direction TCAVs."""
    if np.ptp(np.concatenate([concept, random])) == 0:
        return 1.0  # identical samples: no evidence of a difference (scipy would return NaN)
    with warnings.catch_warnings():
        # TCAVs are shares, often all 0 or 1 within one sample: scipy warns about the (exact) zero variance
        warnings.simplefilter("ignore", RuntimeWarning)
        if test == "ttest":
            return float(stats.ttest_ind(concept, random, equal_var=False).pvalue)
        return float(stats.mannwhitneyu(concept, random, alternative="two-sided").pvalue)


def ratio(mean: float, std: float) -> float:
    """mean / std, NaN when S does not vary: right before a linear head on pooled features the
    gradient, hence S, is the same for every patch and Br is undefined rather than huge."""
    if not np.isfinite(std) or std <= 1e-9 * max(abs(mean), 1e-12):
        return math.nan
    return mean / std


def score_concept(data: LayerData, y: np.ndarray, label: np.ndarray, cfg: RcvConfig, seed: int,
                  random_seed: int) -> dict[str, Any]:
    """All RCV scores of one concept at one layer. Rows with an undefined concept value are dropped."""
    ok = np.isfinite(y)
    x, y, label, grad = data.pooled[ok], y[ok], label[ok], data.grad[ok]
    tumour = label == 1
    row: dict[str, Any] = {"n": int(len(y)), "n_tumour": int(tumour.sum())}
    if len(y) < max(cfg.folds, 4) or np.ptp(y) == 0 or not tumour.any():
        return {**row, "skipped": "too few patches, a constant concept or no tumour patch"}
    r2, per_fold = heldout_r2(x, y, cfg)
    unit, alpha = direction(x, y, cfg.alphas)
    s = grad[tumour] @ unit
    std = float(np.std(s, ddof=1)) if len(s) > 1 else math.nan
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(cfg.n_repeats):
        pick = rng.integers(0, len(y), len(y))
        if np.ptp(y[pick]) == 0 or not tumour[pick].any():
            continue
        u, _ = direction(x[pick], y[pick], [alpha])
        boot.append(tcav(grad[pick][tumour[pick]], u))
    rand = np.array([tcav(grad[tumour], u) for u in random_units(x.shape[1], cfg.n_random, random_seed)])
    boot_arr = np.array(boot)
    value = tcav(grad[tumour], unit)
    p = significance(boot_arr, rand, cfg.test) if len(boot_arr) >= 2 else math.nan
    return {**row, "r2_heldout": r2, "r2_fold_mean": float(np.nanmean(per_fold)),
            "r2_fold_std": float(np.nanstd(per_fold)), "alpha": alpha,
            "sensitivity_mean": float(np.mean(s)), "sensitivity_std": std,
            "tcav": value, "tcav_boot_mean": float(np.mean(boot_arr)) if len(boot_arr) else math.nan,
            "tcav_boot_std": float(np.std(boot_arr)) if len(boot_arr) else math.nan,
            "random_tcav_mean": float(np.mean(rand)), "random_tcav_std": float(np.std(rand)),
            "p_value": p, "p_empirical": float((1 + np.sum(rand >= value)) / (1 + len(rand))),
            "significant": bool(np.isfinite(p) and p < cfg.alpha_level and np.mean(boot_arr) > np.mean(rand)),
            "br": max(r2, 0.0) * ratio(float(np.mean(s)), std),
            "tcav_boot": boot_arr.tolist(), "random_tcav": rand.tolist()}


def score_all(data: dict[str, LayerData], concepts: np.ndarray, names: list[str], label: np.ndarray,
              cfg: RcvConfig) -> list[dict[str, Any]]:
    """One row per (layer, concept); `concepts` columns follow `names`."""
    rows = []
    for li, (layer, d) in enumerate(data.items()):
        for ci, name in enumerate(names):
            scores = score_concept(d, concepts[:, ci], label, cfg, cfg.seed + 1000 * li + ci, cfg.seed + li)
            rows.append({"layer": layer, "concept": name, **scores})
    return rows
