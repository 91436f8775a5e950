"""Classification metrics at a threshold, and the ROC plot; pure numpy plus one matplotlib edge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from layer1_patches.shared.atomic import atomic_path


def has_auc(y: np.ndarray, p: np.ndarray) -> bool:
    """An AUC exists with both classes and finite probabilities (scikit-learn refuses NaN)."""
    return bool(0 < np.sum(y) < len(y)) and bool(np.all(np.isfinite(p)))


def binary_metrics(y_true: np.ndarray, y_prob: np.ndarray, threshold: float) -> dict[str, Any]:
    """Counts and rates at `threshold` (at or above: tumour); `auc` is None where it does not exist (one class,
    or a probability that is NaN), which JSON writes as null rather than the non-standard NaN."""
    y = np.asarray(y_true).astype(int).ravel()
    p = np.asarray(y_prob, dtype=np.float64).ravel()
    pred = (p >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    auc = float(roc_auc_score(y, p)) if has_auc(y, p) else None
    return {
        "n": int(len(y)), "n_tumour": int(y.sum()), "threshold": threshold, "auc": auc,
        "accuracy": (tp + tn) / max(len(y), 1),
        "sensitivity": tp / max(tp + fn, 1), "specificity": tn / max(tn + fp, 1),
        # rows: true normal, true tumour; columns: predicted normal, predicted tumour
        "confusion": [[tn, fp], [fn, tp]],
    }


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (y, p) in curves.items():
        if not has_auc(np.asarray(y), np.asarray(p)):
            continue
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    if ax.get_legend_handles_labels()[0]:  # no curve (one class only): matplotlib warns about an empty legend
        ax.legend(loc="lower right")
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return out
