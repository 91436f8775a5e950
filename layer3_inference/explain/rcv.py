"""Regression Concept Vectors (Graziani et al. 2018) and the TCAV significance test (Kim et al. 2018, 3.5).

Per layer: activations are global-average pooled to (n, c). A concept is regressed on them with a ridge
whose penalty RidgeCV picks (efficient leave-one-out) *inside* each outer fold, so the reported R^2 is
computed on out-of-fold predictions only (nested CV), never in-sample. Activations are centred and
divided by one global scale per layer (not per feature): the penalty grid then means the same at every
layer while directions stay those of the raw activation space; per-feature standardisation would let
near-constant features dominate the direction once mapped back. The same folds regress the concept on the
class label alone: a concept whose held-out R^2 does not beat that baseline by `min_r2_gain` only restates
the class.

The RCV is the ridge coefficient vector, normalised. Sensitivity S of a patch is the directional
derivative of the tumour logit along the unit RCV, sign kept. It is computed with the gradient w.r.t.
the *spatial* activation map summed over positions: adding the direction v at every position moves
the pooled activation by exactly v, so d logit / d eps = sum_{h,w} grad[h, w] . v. (For a 2-D layer
the gradient is taken directly.) TCAV = share of tumour patches with S > 0; Br = max(R^2, 0) * mean(S) / std(S).

Significance, as TCAV's test: `n_repeats` RCVs refitted on bootstrap resamples of the patches give the
concept's TCAV scores; `n_random` RCVs fitted the same way on *permuted* concept values give the random
ones. Permuted-concept fits rather than isotropic random unit vectors: they go through the same scaling,
penalty and resampling, so they lean towards the same high-variance activation subspace as any fitted
direction (TCAV's random-vs-random CAVs), and only the concept-activation link is broken. The two samples
(n = fits, never patches) are compared two-sided, then Bonferroni-corrected over all (layer, concept) pairs
tested. Where the logit gradient is (almost) the same for every tumour patch, every direction's TCAV is 0
or 1, a property of the direction rather than a share of patches: the test is then `undefined` (detected on
the gradients themselves, and on the random fits: too many of them score exactly 0 or 1). Every fit is
scored on all tumour patches (TCAV's fixed class examples), so only the direction varies between fits.
`significant` needs a defined test, an adjusted p below `alpha_level` (either side: a concept that lowers the
logit counts, with a TCAV below the random mean) and a held-out R^2 above the label baseline by `min_r2_gain`.
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
from layer2_training.progress import Ticker
from layer3_inference.explain.config import RcvConfig

SUMMARY_KEYS = ("layer", "concept", "r2_heldout", "r2_label_baseline", "tcav", "tcav_std", "tcav_random_mean",
                "tcav_random_std", "p_value", "p_adjusted", "significant", "status", "reason")


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
    ticker = Ticker("rcv: activations", len(patches), "patches")
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
        ticker.tick(start + len(x))
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


def _folds(n: int, cfg: RcvConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """The outer folds; one function so the concept's and the label baseline's R^2 use the same ones."""
    return list(KFold(min(cfg.folds, n), shuffle=True, random_state=cfg.seed).split(np.zeros((n, 1))))


def heldout_r2(x: np.ndarray, y: np.ndarray, cfg: RcvConfig) -> tuple[float, list[float]]:
    """(R^2 of the pooled out-of-fold predictions, per-fold R^2), alpha chosen inside each fold."""
    pred = np.empty_like(y)
    per_fold = []
    for train, test in _folds(len(y), cfg):
        model = _ridge(cfg.alphas).fit(x[train], y[train])
        pred[test] = model.predict(x[test])
        per_fold.append(float(r2_score(y[test], pred[test])) if len(test) > 1 else math.nan)
    return float(r2_score(y, pred)), per_fold


def label_baseline_r2(label: np.ndarray, y: np.ndarray, cfg: RcvConfig) -> float:
    """Held-out R^2 of the concept predicted from the class label alone, on the folds of `heldout_r2`.

    A least-squares line on a 0/1 feature predicts each class's training mean (the training mean of all
    patches for a class absent from the training fold).
    """
    pred = np.empty_like(y)
    for train, test in _folds(len(y), cfg):
        overall = float(np.mean(y[train]))
        for c in (0, 1):
            of_c = train[label[train] == c]
            pred[test[label[test] == c]] = float(np.mean(y[of_c])) if len(of_c) else overall
    return float(r2_score(y, pred))


def direction(x: np.ndarray, y: np.ndarray, alphas: list[float]) -> tuple[np.ndarray, float]:
    """(unit RCV in raw activation space, chosen alpha); a zero vector when the fit is flat."""
    ridge = _ridge(alphas).fit(x, y)[-1]
    w = np.asarray(ridge.coef_, np.float64)
    norm = float(np.linalg.norm(w))
    return (w / norm if norm > 0 else w), float(ridge.alpha_)


def ridge_direction(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Unit direction of `direction` for one fixed penalty, in closed form (the refits run thousands of times).

    Ridge on isotropically scaled, centred data: w = (X'X + aI)^-1 X'y = X'(XX' + aI)^-1 y, whichever system is
    smaller; one global scale does not turn the direction, so it is also the raw-space direction.
    """
    xs = x - x.mean(axis=0)
    scale = float(np.sqrt(np.mean(xs.var(axis=0))))
    xs = xs / (scale if scale > 0 else 1.0)
    yc = y - y.mean()
    n, c = xs.shape
    if n < c:
        w = xs.T @ np.linalg.solve(xs @ xs.T + alpha * np.eye(n), yc)
    else:
        w = np.linalg.solve(xs.T @ xs + alpha * np.eye(c), xs.T @ yc)
    norm = float(np.linalg.norm(w))
    return np.asarray(w / norm if norm > 0 else w, np.float64)


def tcav(grad: np.ndarray, unit: np.ndarray) -> float:
    return float(np.mean(grad @ unit > 0)) if len(grad) else math.nan


def gradient_variation(grad: np.ndarray) -> float:
    """RMS deviation of the per-patch gradients from their mean, over their RMS norm (0: all the same).

    0 to 1, scale-free; 0 too when every gradient is zero or there is a single patch.
    """
    if len(grad) < 2:
        return 0.0
    norm = float(np.sqrt(np.mean(np.sum(grad ** 2, axis=1))))
    if norm == 0:
        return 0.0
    return float(np.sqrt(np.mean(np.sum((grad - grad.mean(axis=0)) ** 2, axis=1)))) / norm


@dataclass(frozen=True)
class Fit:
    """What the repeated fits of one concept at one layer share."""

    x: np.ndarray  # (n, c) pooled activations of the patches with a defined concept value
    y: np.ndarray  # (n,) the concept
    grad: np.ndarray  # (n_tumour, c) the tumour patches' gradients: every fit is scored on all of them
    alpha: float  # the penalty chosen on all patches


def refit_scores(fit: Fit, n: int, rng: np.random.Generator, permute: bool) -> np.ndarray:
    """TCAV of `n` RCVs refitted on bootstrap resamples; `permute`: on shuffled concept values (random fits)."""
    out = []
    for _ in range(n):
        pick = rng.integers(0, len(fit.y), len(fit.y))
        y = rng.permutation(fit.y[pick]) if permute else fit.y[pick]
        if np.ptp(y) == 0:  # a resample with one concept value has no direction
            continue
        out.append(tcav(fit.grad, ridge_direction(fit.x[pick], y, fit.alpha)))
    return np.asarray(out, np.float64)


def compare(concept: np.ndarray, random: np.ndarray, test: str) -> float:
    """Two-sided p-value of the concept's TCAV scores against the random fits' (n = fits on each side).

    NaN (undefined) with fewer than two scores on a side, or when neither side varies: a t statistic is then
    0/0 or x/0, and a rank test of two constant samples says nothing about directions.
    """
    if min(len(concept), len(random)) < 2 or (np.ptp(concept) == 0 and np.ptp(random) == 0):
        return math.nan
    with warnings.catch_warnings():
        # TCAVs are shares, often all 1.0 on one side: scipy calls that exact zero variance a precision loss
        warnings.simplefilter("ignore", RuntimeWarning)
        if test == "ttest":
            return float(stats.ttest_ind(concept, random, equal_var=False).pvalue)
        return float(stats.mannwhitneyu(concept, random, alternative="two-sided").pvalue)


def bonferroni(p: list[float]) -> list[float]:
    """min(1, m p) with m the number of defined p-values (the tests actually made); NaN stays NaN."""
    m = sum(1 for v in p if math.isfinite(v))
    return [min(1.0, v * m) if math.isfinite(v) else math.nan for v in p]


def ratio(mean: float, std: float) -> float:
    """mean / std, NaN when S does not vary: right before a linear head on pooled features the
    gradient, hence S, is the same for every patch and Br is undefined rather than huge."""
    if not np.isfinite(std) or std <= 1e-9 * max(abs(mean), 1e-12):
        return math.nan
    return mean / std


def _std(v: np.ndarray) -> float:
    return float(np.std(v, ddof=1)) if len(v) > 1 else math.nan


def _mean(v: np.ndarray) -> float:
    return float(np.mean(v)) if len(v) else math.nan


def saturated_share(scores: np.ndarray) -> float:
    """Share of TCAV scores that are exactly 0 or 1: fits along which every tumour patch's derivative has one sign."""
    return float(np.mean((scores == 0) | (scores == 1))) if len(scores) else math.nan


def undefined_reason(row: dict[str, Any], cfg: RcvConfig) -> str | None:
    """Why no TCAV test can be made at this layer, or None.

    A gradient shared by every tumour patch (exactly, or with a per-patch part too small to change a sign) turns
    TCAV from a share of patches into the sign of one number per direction: random fits then score 0 or 1, the
    refits of any stable direction all score the same, and a test of means calls every concept significant.
    """
    if row["gradient_variation"] < cfg.min_gradient_variation:
        return (f"the logit gradient is (almost) the same for every tumour patch (variation "
                f"{row['gradient_variation']:.2g} < {cfg.min_gradient_variation:g}): every direction's TCAV is 0 or 1")
    saturated = row.get("tcav_random_saturated", math.nan)
    if saturated > cfg.max_saturated:
        return (f"for {saturated:.0%} of the random fits all tumour patches move the logit the same way (TCAV 0 or "
                f"1; gradient variation {row['gradient_variation']:.2g}): TCAV is not a share of patches here")
    if not math.isfinite(row["p_value"]):
        return "fewer than two fits on a side, or the TCAV scores of the concept's and the random fits do not vary"
    return None


def score_concept(data: LayerData, y: np.ndarray, label: np.ndarray, cfg: RcvConfig, seed: int) -> dict[str, Any]:
    """R^2, label baseline, TCAV and the two-sided test of one concept at one layer (not yet corrected or
    judged: `score_all` does that over all pairs). Rows with an undefined concept value are dropped."""
    ok = np.isfinite(y)
    x, y, label, grad = data.pooled[ok], y[ok], label[ok], data.grad[ok]
    tumour = label == 1
    row: dict[str, Any] = {"n": int(len(y)), "n_tumour": int(tumour.sum()), "r2_heldout": None, "p_value": math.nan,
                           "tcav_repeats": [], "tcav_random": []}
    if len(y) < max(cfg.folds, 4) or np.ptp(y) == 0 or not tumour.any():
        return {**row, "undefined": "too few patches, a constant concept or no tumour patch"}
    r2, per_fold = heldout_r2(x, y, cfg)
    unit, alpha = direction(x, y, cfg.alphas)
    g = grad[tumour]
    s = g @ unit
    row.update({"r2_heldout": r2, "r2_label_baseline": label_baseline_r2(label, y, cfg),
                "r2_fold_mean": float(np.nanmean(per_fold)), "r2_fold_std": float(np.nanstd(per_fold)),
                "alpha": alpha, "sensitivity_mean": float(np.mean(s)), "sensitivity_std": _std(s),
                "br": max(r2, 0.0) * ratio(float(np.mean(s)), _std(s)), "tcav": tcav(g, unit),
                "gradient_variation": gradient_variation(g), "test": cfg.test})
    if row["gradient_variation"] >= cfg.min_gradient_variation:  # else every TCAV is 0 or 1: no refits
        fit = Fit(x, y, g, alpha)
        concept_rng, random_rng = (np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(2))
        mine = refit_scores(fit, cfg.n_repeats, concept_rng, permute=False)
        rand = refit_scores(fit, cfg.n_random, random_rng, permute=True)
        row.update({"tcav_repeats_mean": _mean(mine), "tcav_std": _std(mine), "tcav_random_mean": _mean(rand),
                    "tcav_random_std": _std(rand), "tcav_random_saturated": saturated_share(rand),
                    "p_value": compare(mine, rand, cfg.test), "tcav_repeats": mine.tolist(),
                    "tcav_random": rand.tolist()})
    why = undefined_reason(row, cfg)
    return {**row, "undefined": why, "p_value": math.nan if why else row["p_value"]}


def judge(row: dict[str, Any], p_adjusted: float, cfg: RcvConfig) -> dict[str, Any]:
    """`p_adjusted`, `significant` (True / False / None) and `status` with its `reason`.

    Undefined first (no test was possible), then R^2: a concept the activations do not predict better than
    the class label does is no evidence of its own, whatever its p-value.
    """
    r2, base = row["r2_heldout"], row.get("r2_label_baseline", math.nan)  # absent: a skipped row
    restates = r2 is not None and base >= cfg.min_r2_gain and r2 < base + cfg.min_r2_gain
    restating = (f"held-out R^2 {r2:.3f} does not exceed the class label's {base:.3f} by {cfg.min_r2_gain:g}"
                 if restates else "")
    if row["undefined"]:
        why = f"{row['undefined']}; also: {restating}" if restates else row["undefined"]
        return {"p_adjusted": math.nan, "significant": None, "status": "undefined", "reason": why}
    out = {"p_adjusted": p_adjusted, "significant": False}
    if restates:
        return {**out, "status": "restates class", "reason": restating}
    if r2 < max(base, 0.0) + cfg.min_r2_gain:
        return {**out, "status": "not significant", "reason": f"the layer does not encode the concept (held-out "
                f"R^2 {r2:.3f} < max(0, label baseline {base:.3f}) + {cfg.min_r2_gain:g})"}
    if p_adjusted < cfg.alpha_level:
        return {**out, "significant": True, "status": "significant", "reason": None}
    return {**out, "status": "not significant", "reason": f"Bonferroni-adjusted p {p_adjusted:.2g} >= "
            f"{cfg.alpha_level:g}"}


def score_all(data: dict[str, LayerData], concepts: np.ndarray, names: list[str], label: np.ndarray,
              cfg: RcvConfig) -> list[dict[str, Any]]:
    """One judged row per (layer, concept); `concepts` columns follow `names`."""
    rows = []
    for li, (layer, d) in enumerate(data.items()):
        ticker = Ticker(f"rcv: layer {layer} ({li + 1}/{len(data)}) concept", len(names))
        for ci, name in enumerate(names):
            # one seed per pair, from the config seed, the layer and the concept (not from the other pairs)
            seed = int(np.random.SeedSequence([cfg.seed, li, ci]).generate_state(1)[0])
            rows.append({"layer": layer, "concept": name, **score_concept(d, concepts[:, ci], label, cfg, seed)})
            ticker.tick(ci + 1)
    adjusted = bonferroni([r["p_value"] for r in rows])
    m = sum(1 for r in rows if math.isfinite(r["p_value"]))
    # `undefined` (the reason, or None) becomes the status and its reason
    return [{**{k: v for k, v in r.items() if k != "undefined"}, "n_tests": m, **judge(r, p, cfg)}
            for r, p in zip(rows, adjusted, strict=True)]


def summary_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of explain's summary.json `rcv` list: the keys the report and the CLI read."""
    return [{k: _none_if_nan(r.get(k)) for k in SUMMARY_KEYS} for r in rows]


def _none_if_nan(value: Any) -> Any:
    """The summary returned in memory reads as its JSON does: an undefined number is None, not NaN."""
    return None if isinstance(value, float) and not math.isfinite(value) else value
