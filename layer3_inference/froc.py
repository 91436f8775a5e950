"""Camelyon16 lesion-level FROC: lesions from the annotation, candidate detections from the probability map,
and the curve over every threshold.

Lesions follow the challenge's `Evaluation_FROC.py`: tumour pixels grown by half of `dilation_um` (regions closer
than 75 um merge), holes filled (`binary_fill_holes`: a detection in a hole of a lesion is inside it), labelled
with 8-connectivity; a lesion whose major axis is shorter than `itc_um` (275 um) is an isolated tumour cell (ITC).

Detections are (row, col, confidence) points as the challenge expects, not regions above a cut: every local
maximum (plateaus included) of the map smoothed by a Gaussian of `smoothing_um`, at or above `min_confidence`,
kept strongest first unless within `nms_radius_um` of one already kept. The confidence is the smoothed value
(rounded to 6 decimals, so a flat region is one plateau, not float noise): the same value decides the
suppression, so a dropped point never outranks the one that dropped it.

Scoring, per slide: a detection on a lesion hits it (the lesion counts once, at its best detection; other
detections on it are neither hits nor false positives), one on an ITC is ignored, one elsewhere is a false
positive (on a tumour-free slide every detection is). The curve takes every detection confidence > 0 as a
threshold: FPs per slide (averaged over all slides of the set) against the share of non-ITC lesions hit; the
score is the mean sensitivity, linearly interpolated as the challenge does, at `fp_rates` (1/4 .. 8).
The challenge's script skips its lowest confidence as a threshold; here a lesion missed has confidence 0 and
no threshold is 0, which is the same whenever a lesion is missed, and right when none is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import measure
from skimage.morphology import local_maxima

from layer1_patches.shared.atomic import atomic_path
from layer3_inference.config import FrocConfig

Detection = tuple[int, int, float]  # (row, col) in map pixels, confidence


def lesions(truth: np.ndarray, um_per_px: tuple[float, float], cfg: FrocConfig) -> tuple[np.ndarray, set[int]]:
    """Labelled lesions (Camelyon16 evaluation mask) and the labels that are isolated tumour cells.

    `um_per_px` is (across, down): map pixels need not be square in micrometres.
    """
    if not truth.any():
        return np.zeros(truth.shape, np.int32), set()
    distance = ndimage.distance_transform_edt(~truth, sampling=(um_per_px[1], um_per_px[0]))
    merged = ndimage.binary_fill_holes(distance < cfg.dilation_um / 2)
    labels = measure.label(merged, connectivity=2)
    scale = math.sqrt(um_per_px[0] * um_per_px[1])
    itc = {int(r.label) for r in measure.regionprops(labels) if r.axis_major_length * scale < cfg.itc_um}
    return labels.astype(np.int32), itc


def smooth(prob_map: np.ndarray, um_per_px: tuple[float, float], sigma_um: float) -> np.ndarray:
    """Gaussian smoothing over predicted pixels only (NaN = no prediction, 0 afterwards): the tissue edge is not
    darkened by the background around it."""
    known = np.isfinite(prob_map)
    values = np.where(known, prob_map, 0.0).astype(np.float64)
    if sigma_um <= 0:
        return values
    sigma = (sigma_um / um_per_px[1], sigma_um / um_per_px[0])
    weight = ndimage.gaussian_filter(known.astype(np.float64), sigma, mode="constant")
    total = ndimage.gaussian_filter(values, sigma, mode="constant")
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(known & (weight > 0), total / np.where(weight > 0, weight, 1.0), 0.0)
    return np.asarray(out)


def _peak_points(values: np.ndarray, floor: float, um_per_px: tuple[float, float]) -> list[Detection]:
    """One point per local-maximum plateau at or above `floor`: its pixel nearest the plateau's centroid."""
    peaks = local_maxima(values, connectivity=2, allow_borders=True) & (values >= floor)
    labels, _ = ndimage.label(peaks, structure=np.ones((3, 3)))
    points = []
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        rows, cols = np.nonzero(labels[box] == k)
        rows, cols = rows + box[0].start, cols + box[1].start
        d = ((rows - rows.mean()) * um_per_px[1]) ** 2 + ((cols - cols.mean()) * um_per_px[0]) ** 2
        i = int(np.argmin(d))
        points.append((int(rows[i]), int(cols[i]), float(values[rows[i], cols[i]])))
    return points


def suppress(points: list[Detection], um_per_px: tuple[float, float], radius_um: float) -> list[Detection]:
    """Strongest first; a point within `radius_um` of one kept is dropped (ties: top-left first)."""
    kept: list[Detection] = []
    where = np.zeros((0, 2), np.float64)
    for r, c, p in sorted(points, key=lambda d: (-d[2], d[0], d[1])):
        near = ((where[:, 0] - r * um_per_px[1]) ** 2 + (where[:, 1] - c * um_per_px[0]) ** 2) <= radius_um ** 2
        if not near.any():
            kept.append((r, c, p))
            where = np.vstack([where, [r * um_per_px[1], c * um_per_px[0]]])
    return kept


def candidate_detections(prob_map: np.ndarray, um_per_px: tuple[float, float], cfg: FrocConfig) -> list[Detection]:
    """The (row, col, confidence) points a Camelyon16 submission lists for one slide, strongest first."""
    values = np.round(smooth(prob_map, um_per_px, cfg.smoothing_um), 6)
    return suppress(_peak_points(values, cfg.min_confidence, um_per_px), um_per_px, cfg.nms_radius_um)


def froc_slide(dets: list[Detection], labels: np.ndarray, itc: set[int]) -> tuple[list[float], list[float]]:
    """(false-positive confidences, best confidence per non-ITC lesion, 0 when missed)."""
    best = dict.fromkeys((k for k in range(1, int(labels.max()) + 1) if k not in itc), 0.0)
    fps = []
    for r, c, p in dets:
        k = int(labels[r, c])
        if k == 0:
            fps.append(p)
        elif k in best:
            best[k] = max(best[k], p)
    return fps, list(best.values())


@dataclass(frozen=True)
class FrocCurve:
    fps: np.ndarray  # average false positives per slide, one per threshold (thresholds ascending)
    sensitivity: np.ndarray
    at: list[float | None]  # sensitivity at each fp_rate (None: no lesion to find)
    score: float | None
    lesions: int  # non-ITC lesions
    found: int  # lesions hit at the lowest threshold

    @property
    def empty(self) -> bool:
        """No lesion to find, or none ever found: the curve says nothing about detection."""
        return self.lesions == 0 or self.found == 0


def froc_curve(fp_probs: list[list[float]], tp_probs: list[list[float]], fp_rates: list[float]) -> FrocCurve:
    """The curve of a set of slides (one list of FP and of lesion confidences per slide) and its score."""
    fp = np.asarray([p for s in fp_probs for p in s], dtype=np.float64)
    tp = np.asarray([p for s in tp_probs for p in s], dtype=np.float64)
    if len(tp) == 0 or not fp_probs:
        return FrocCurve(np.zeros(0), np.zeros(0), [None] * len(fp_rates), None, 0, 0)
    thresholds = np.unique(np.concatenate([fp, tp, [np.inf]]))
    thresholds = thresholds[thresholds > 0]  # a missed lesion (confidence 0) is never found
    fps = np.array([(fp >= t).sum() for t in thresholds], dtype=np.float64) / len(fp_probs)
    sens = np.array([(tp >= t).sum() for t in thresholds], dtype=np.float64) / len(tp)
    # thresholds ascend, so FPs descend: reverse for interpolation at fixed FP rates (as the challenge's script)
    at = [float(np.interp(r, fps[::-1], sens[::-1])) for r in fp_rates]
    return FrocCurve(fps, sens, list(at), float(np.mean(at)), len(tp), int((tp > 0).sum()))


def empty_reason(curve: FrocCurve) -> str:
    if curve.lesions == 0:
        return "no annotated lesions (isolated tumour cells do not count)"
    return f"no lesion detected at any threshold ({curve.lesions} annotated)"


def plot_froc(curve: FrocCurve, title: str, path: Path) -> None:
    """The curve, or for an empty one the reason in words: axes without a curve would read as a result."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    if curve.empty:
        ax.text(0.5, 0.5, f"{title}\n{empty_reason(curve)}", ha="center", va="center", wrap=True,
                transform=ax.transAxes)
        ax.set_axis_off()
    else:
        ax.step(curve.fps[::-1], curve.sensitivity[::-1], where="post")
        ax.set(xscale="symlog", xlabel="average false positives per slide", ylabel="lesion sensitivity",
               title=f"{title}: score {curve.score:.3f}", ylim=(0, 1.02))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, bbox_inches="tight")
    plt.close(fig)
