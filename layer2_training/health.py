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


def classifier_warnings(split: str, y_true: np.ndarray, y_prob: np.ndarray, threshold: float,
                        what: str = "patches") -> list[HealthWarning]:
    """Warnings about one split's binary predictions (`what`: the unit counted, patches or slides)."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(y_prob, dtype=np.float64).ravel()
    out: list[HealthWarning] = []
    if len(y) == 0:
        return [HealthWarning("empty_split", f"{split}: no {what} to evaluate", split)]
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        only = "tumour" if n_neg == 0 else "normal"
        out.append(HealthWarning("one_class", f"{split}: all {len(y)} {what} are {only}; AUC, sensitivity or "
                                 "specificity cannot be measured", split))
    if p.max() < threshold:
        out.append(HealthWarning("never_crosses_threshold", f"{split}: no {what} reaches the threshold {threshold:g} "
                                 f"(highest probability {p.max():.3f}); the model calls nothing tumour", split))
    elif p.min() >= threshold:
        out.append(HealthWarning("never_crosses_threshold", f"{split}: every {what[:-1]} is at or above the threshold "
                                 f"{threshold:g} (lowest probability {p.min():.3f}); the model calls everything tumour",
                                 split))
    if n_pos and n_neg:
        auc = float(roc_auc_score(y, p))
        pred = p >= threshold
        sens, spec = float(pred[y == 1].mean()), float((~pred[y == 0]).mean())
        if auc >= HIGH_AUC and min(sens, spec) < 0.5:
            out.append(HealthWarning(
                "threshold_miscalibrated", f"{split}: AUC {auc:.3f} but sensitivity {sens:.3f}, specificity {spec:.3f} "
                f"at threshold {threshold:g}: the model ranks well but the threshold does not suit it", split))
        if auc in (0.5, 1.0) and min(n_pos, n_neg) < MIN_PER_CLASS:
            out.append(HealthWarning(
                "auc_small_sample", f"{split}: AUC exactly {auc:g} from {n_pos} tumour and {n_neg} normal {what} "
                f"(fewer than {MIN_PER_CLASS} per class): too few to tell a perfect model from chance", split))
    return out
