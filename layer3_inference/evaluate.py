"""Heatmaps against annotations: pixel AUC, Dice/IoU, slide scores and AUC, Camelyon16 FROC, cohort table.

Maps are compared with the tumour mask at the annotation's raster (Layer 1's `tumour_mask`). Where the model
made no prediction (background, too little tissue) the map counts as "not tumour": background can never
score as tumour, and a missed tumour outside the predicted area still costs Dice.

FROC follows the Camelyon16 evaluation: tumour regions within `dilation_um` of each other form one lesion;
lesions whose major axis is shorter than `itc_um` are isolated tumour cells, for which a detection is
neither a hit nor a false positive; a lesion counts at its best detection; sensitivity is averaged at
`fp_rates` false positives per slide.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import measure

from layer1_patches.annotations import check_inside, load_annotations, tumour_mask
from layer1_patches.shared.atomic import atomic_path, write_text_atomic
from layer1_patches.shared.cohort import find_annotation
from layer1_patches.shared.errors import CamnetError
from layer3_inference.config import EvaluateConfig, FrocConfig
from layer3_inference.grid import Raster, map_shape, render_map, resample_mask
from layer3_inference.outputs import Probabilities, finished_hash, read_probabilities, slide_score
from layer3_inference.summaries import EvaluationSummary, to_json


@dataclass
class SlideEval:
    slide: str
    label: int  # 1: the annotation has tumour
    annotation: str
    patches: int
    slide_score: float
    pixel_auc: float | None
    dice: float | None
    iou: float | None
    lesions: int
    itc: int
    detections: int
    lesions_found: int
    false_positives: int
    fp_probs: list[float] = field(default_factory=list, repr=False)
    tp_probs: list[float] = field(default_factory=list, repr=False)  # best detection per lesion, 0 if none


def pixel_metrics(prob_map: np.ndarray, truth: np.ndarray, region: np.ndarray, threshold: float,
                  ) -> tuple[float | None, float | None, float | None]:
    """(AUC over `region`, Dice, IoU) with NaN ("no prediction") counted as probability 0."""
    from sklearn.metrics import roc_auc_score

    scores = np.nan_to_num(prob_map, nan=0.0)
    pred = scores >= threshold
    inter, union = float(np.sum(pred & truth)), float(np.sum(pred | truth))
    total = float(pred.sum() + truth.sum())
    dice = 2 * inter / total if total else None
    iou = inter / union if union else None
    y = truth[region]
    auc = float(roc_auc_score(y, scores[region])) if 0 < y.sum() < y.size else None
    return auc, dice, iou


def lesions(truth: np.ndarray, um_per_px: tuple[float, float], cfg: FrocConfig) -> tuple[np.ndarray, set[int]]:
    """Labelled lesions (Camelyon16 evaluation mask) and the labels that are isolated tumour cells."""
    if not truth.any():
        return np.zeros(truth.shape, np.int32), set()
    distance = ndimage.distance_transform_edt(~truth, sampling=(um_per_px[1], um_per_px[0]))
    merged = ndimage.binary_fill_holes(distance < cfg.dilation_um / 2)
    labels = measure.label(merged, connectivity=2)
    scale = math.sqrt(um_per_px[0] * um_per_px[1])
    itc = {int(r.label) for r in measure.regionprops(labels) if r.axis_major_length * scale < cfg.itc_um}
    return labels.astype(np.int32), itc


def detections(prob_map: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """(row, col, confidence) per connected region above `threshold`, at the region's maximum."""
    values = np.nan_to_num(prob_map, nan=0.0)
    labels, n = ndimage.label(values >= threshold, structure=np.ones((3, 3)))
    if n == 0:
        return []
    peaks = ndimage.maximum_position(values, labels, range(1, n + 1))
    return [(int(r), int(c), float(values[r, c])) for r, c in peaks]


def froc_slide(dets: list[tuple[int, int, float]], labels: np.ndarray, itc: set[int],
               ) -> tuple[list[float], list[float]]:
    """(false-positive confidences, best confidence per non-ITC lesion)."""
    best = dict.fromkeys((k for k in range(1, int(labels.max()) + 1) if k not in itc), 0.0)
    fps = []
    for r, c, p in dets:
        k = int(labels[r, c])
        if k == 0:
            fps.append(p)
        elif k in best:
            best[k] = max(best[k], p)
    return fps, list(best.values())


def froc(slides: list[SlideEval], fp_rates: list[float]) -> tuple[np.ndarray, np.ndarray, list[float], float]:
    """(FPs per slide, sensitivity) along the curve, sensitivity at `fp_rates`, and their mean."""
    fp = np.asarray([p for s in slides for p in s.fp_probs], dtype=np.float64)
    tp = np.asarray([p for s in slides for p in s.tp_probs], dtype=np.float64)
    if len(tp) == 0 or not slides:
        return np.zeros(0), np.zeros(0), [math.nan] * len(fp_rates), math.nan
    thresholds = np.unique(np.concatenate([fp, tp, [np.inf]]))
    thresholds = thresholds[thresholds > 0]  # an undetected lesion (confidence 0) is never found
    fps = np.array([(fp >= t).sum() for t in thresholds], dtype=np.float64) / len(slides)
    sens = np.array([(tp >= t).sum() for t in thresholds], dtype=np.float64) / len(tp)
    # thresholds ascend, so FPs descend: reverse for interpolation at fixed FP rates
    at = [float(np.interp(r, fps[::-1], sens[::-1])) for r in fp_rates]
    return fps, sens, at, float(np.mean(at))


def evaluate_slide(p: Probabilities, annotation: Path | None, cfg: EvaluateConfig) -> SlideEval:
    threshold = cfg.threshold if cfg.threshold is not None else p.threshold
    if annotation is not None:
        polygons = load_annotations(annotation)
        check_inside(polygons, annotation, p.dimensions)
        truth_mask = tumour_mask(polygons, cfg.annotation, p.dimensions)
        truth = truth_mask.array
        raster = Raster((truth.shape[0], truth.shape[1]), truth_mask.ds_x, truth_mask.ds_y)
    else:
        raster = map_shape(p.dimensions, cfg.annotation.downsample)
        truth = np.zeros(raster.shape, dtype=bool)
    shape, ds_x, ds_y = raster
    tissue = resample_mask(p.tissue, raster)
    prob_map = render_map(p.coords, p.prob, p.footprint, raster, tissue)
    auc, dice, iou = pixel_metrics(prob_map, truth, tissue | truth, threshold)
    if p.mpp <= 0:
        raise CamnetError(f"slide {p.slide_name}: no mpp recorded; FROC needs micrometres")
    labels, itc = lesions(truth, (ds_x * p.mpp, ds_y * p.mpp), cfg.froc)
    dets = detections(prob_map, cfg.froc.detection_threshold)
    fps, tps = froc_slide(dets, labels, itc)
    return SlideEval(p.slide_name, int(truth.any()), str(annotation or ""), len(p.prob),
                     slide_score(p.prob, cfg.score), auc, dice, iou, len(tps), len(itc), len(dets),
                     sum(t > 0 for t in tps), len(fps), fps, tps)


def finished_outputs(heatmaps: Path) -> list[Path]:
    if not heatmaps.is_dir():
        raise CamnetError(f"heatmap folder {heatmaps}: no such folder")
    found = [d for d in sorted(heatmaps.iterdir()) if not d.name.startswith(".") and finished_hash(d) is not None]
    if not found:
        raise CamnetError(f"heatmap folder {heatmaps}: no finished slide outputs (<stem>/summary.json)")
    return found


def slide_auc(results: list[SlideEval]) -> float | None:
    from sklearn.metrics import roc_auc_score

    y = [r.label for r in results]
    if len(set(y)) < 2:
        return None
    return float(roc_auc_score(y, [r.slide_score for r in results]))


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


COLUMNS = ("slide", "label", "slide_score", "pixel_auc", "dice", "iou", "patches", "lesions", "itc", "detections",
           "lesions_found", "false_positives", "annotation")


def cohort_csv(results: list[SlideEval]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in results:
        writer.writerow({k: ("" if v is None else round(v, 6) if isinstance(v, float) else v)
                         for k, v in asdict(r).items()})
    return buf.getvalue()


def plot(results: list[SlideEval], curve: tuple[np.ndarray, np.ndarray], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from sklearn.metrics import roc_curve

    written = []
    fps, sens = curve
    if len(fps):
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.step(fps[::-1], sens[::-1], where="post")
        ax.set(xscale="symlog", xlabel="average false positives per slide", ylabel="lesion sensitivity",
               title="FROC", ylim=(0, 1.02))
        with atomic_path(out / "froc.png") as tmp:
            fig.savefig(tmp, bbox_inches="tight")
        plt.close(fig)
        written.append("froc.png")
    if len({r.label for r in results}) == 2:
        fpr, tpr, _ = roc_curve([r.label for r in results], [r.slide_score for r in results])
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.plot(fpr, tpr)
        ax.plot([0, 1], [0, 1], ls=":", c="grey")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="slide-level ROC")
        with atomic_path(out / "slide_roc.png") as tmp:
            fig.savefig(tmp, bbox_inches="tight")
        plt.close(fig)
        written.append("slide_roc.png")
    return written


def evaluate_cohort(heatmaps: Path, annotations: Path, out: Path, cfg: EvaluateConfig) -> EvaluationSummary:
    if not annotations.is_dir():
        raise CamnetError(f"annotation folder {annotations}: no such folder")
    results = []
    for final in finished_outputs(heatmaps):
        p = read_probabilities(final)
        annotation = find_annotation(Path(p.slide_name), annotations)
        if annotation is None and cfg.missing_annotation == "skip":
            continue
        results.append(evaluate_slide(p, annotation, cfg))
    if not results:
        raise CamnetError(f"no slide in {heatmaps} has an annotation in {annotations} (missing_annotation: skip)")
    fps, sens, at, score = froc(results, cfg.froc.fp_rates)
    tumour = [r for r in results if r.label == 1]
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "cohort.csv", cohort_csv(results))
        summary = EvaluationSummary(
            slides=len(results), tumour_slides=len(tumour), slide_auc=slide_auc(results),
            froc_score=None if math.isnan(score) else score,
            froc_sensitivity={str(r): (None if math.isnan(s) else s)
                              for r, s in zip(cfg.froc.fp_rates, at, strict=True)},
            mean_dice_tumour_slides=_mean([r.dice for r in tumour]),
            mean_iou_tumour_slides=_mean([r.iou for r in tumour]),
            mean_pixel_auc=_mean([r.pixel_auc for r in results]),
            score_method=cfg.score.method, threshold=cfg.threshold, plots=plot(results, (fps, sens), out))
        write_text_atomic(out / "summary.json", to_json(summary))
    except OSError as err:
        raise CamnetError(f"evaluation output {out}: cannot write ({err.strerror or err})") from None
    return summary
