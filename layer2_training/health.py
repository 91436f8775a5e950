"""Model health: warnings about figures that look good but mean little, for metrics.json, the evaluation summary
and the report's red box.

A warning is data (`code`, `message`, `split`), so every consumer can list, count or filter them; the message is
one sentence a researcher can act on. The rules are pure functions of labels and probabilities.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MIN_PER_CLASS = 50  # below this, an AUC of exactly 0.5 or 1.0 says little about the model
HIGH_AUC = 0.8


@dataclass(frozen=True)
class HealthWarning:
    code: str
    message: str
    split: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def singular(what: str) -> str:
    """The unit counted, for one of them: patches -> patch, slides -> slide."""
    return what[:-2] if what.endswith(("ches", "shes", "sses")) else what.removesuffix("s")


def classifier_warnings(split: str, y_true: np.ndarray, y_prob: np.ndarray, threshold: float,
                        what: str = "patches") -> list[HealthWarning]:
    """Warnings about one split's binary predictions (`what`: the unit counted, plural: patches or slides).

    Probabilities at or above `threshold` are called tumour, as in `layer2_training.metrics.binary_metrics`."""
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(y_prob, dtype=np.float64).ravel()
    if len(y) != len(p):
        raise ValueError(f"{split}: {len(y)} labels but {len(p)} probabilities")
    if len(y) == 0:
        return [HealthWarning("empty_split", f"{split}: no {what} to evaluate", split)]
    bad = int(np.count_nonzero(~np.isfinite(p)))
    if bad:
        # every figure below would be computed on garbage (and scikit-learn refuses NaN)
        return [HealthWarning("non_finite_probabilities", f"{split}: {bad} of {len(p)} {what} have no finite "
                              "probability (NaN or infinite): the model's output is broken; no figure of this "
                              "split can be trusted", split)]
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    out = _class_warnings(split, n_pos, n_neg, what) + _crossing_warnings(split, p, (n_pos, n_neg), threshold, what)
    return out + (_ranking_warnings(split, y, p, threshold, what) if n_pos and n_neg else [])


def _class_warnings(split: str, n_pos: int, n_neg: int, what: str) -> list[HealthWarning]:
    if n_pos and n_neg:
        return []
    only, lost = ("tumour", "specificity") if n_neg == 0 else ("normal", "sensitivity")
    return [HealthWarning("one_class", f"{split}: all {n_pos + n_neg} {what} are {only}; AUC and {lost} cannot "
                          "be measured", split)]


def _crossing_warnings(split: str, p: np.ndarray, counts: tuple[int, int], threshold: float,
                       what: str) -> list[HealthWarning]:
    """A model that calls every unit one class; said only when the split has units of the other class (calling
    an all-normal split all normal is right)."""
    n_pos, n_neg = counts
    if p.max() < threshold and n_pos:
        return [HealthWarning("never_crosses_threshold", f"{split}: no {singular(what)} reaches the threshold "
                              f"{threshold:g} (highest probability {p.max():.3f}); the model calls nothing tumour",
                              split)]
    if p.min() >= threshold and n_neg:
        return [HealthWarning("never_crosses_threshold", f"{split}: every {singular(what)} is at or above the "
                              f"threshold {threshold:g} (lowest probability {p.min():.3f}); the model calls "
                              "everything tumour", split)]
    return []


def _ranking_warnings(split: str, y: np.ndarray, p: np.ndarray, threshold: float, what: str) -> list[HealthWarning]:
    """Both classes present: a good ranking with a threshold that does not suit it, and an extreme AUC from few."""
    from sklearn.metrics import roc_auc_score

    out = []
    auc = float(roc_auc_score(y, p))
    pred = p >= threshold
    sens, spec = float(pred[y == 1].mean()), float((~pred[y == 0]).mean())
    if auc >= HIGH_AUC and min(sens, spec) < 0.5:
        out.append(HealthWarning(
            "threshold_miscalibrated", f"{split}: AUC {auc:.3f} but sensitivity {sens:.3f}, specificity {spec:.3f} "
            f"at threshold {threshold:g}: the model ranks well but the threshold does not suit it", split))
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if auc in (0.5, 1.0) and min(n_pos, n_neg) < MIN_PER_CLASS:
        out.append(HealthWarning(
            "auc_small_sample", f"{split}: AUC exactly {auc:g} from {n_pos} tumour and {n_neg} normal {what} "
            f"(fewer than {MIN_PER_CLASS} in a class): too few to tell a perfect model from luck, or chance from a "
            "broken one", split))
    return out
