"""Heatmaps against annotations, per split: pixel AUC, Dice/IoU, slide scores and AUC, Camelyon16 FROC, cohort
table and the model health warnings.

Maps are compared with the tumour mask at the annotation's raster (Layer 1's `tumour_mask`). Where the model
made no prediction (background, too little tissue) the map counts as "not tumour": background can never
score as tumour, and a missed tumour outside the predicted area still costs Dice.

Every figure is computed per split, the split of each slide coming from Layer 1's index: slides the model was
trained on score well whatever the model is worth, so they are never pooled with the others, and the headline
is the test split. Without an index every slide is in split `unknown`, with a warning that the figures pool all.
Lesions, detections and the FROC curve are in `froc.py`.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from layer1_patches.annotations import check_inside, load_annotations, tumour_mask
from layer1_patches.index import DatasetIndex
from layer1_patches.shared.atomic import atomic_path, write_text_atomic
from layer1_patches.shared.cohort import find_annotation
from layer1_patches.shared.errors import CamnetError
from layer2_training.health import HealthWarning, classifier_warnings
from layer3_inference.config import EvaluateConfig
from layer3_inference.froc import (
    FrocCurve,
    candidate_detections,
    empty_reason,
    froc_curve,
    froc_slide,
    lesions,
    plot_froc,
)
from layer3_inference.grid import Raster, map_shape, render_map, resample_mask
from layer3_inference.outputs import Probabilities, finished_hash, read_probabilities, slide_score
from layer3_inference.summaries import EvaluationSummary, SplitEvaluation, to_json

UNKNOWN = "unknown"  # no index given
UNASSIGNED = "unassigned"  # the index does not list the slide
NAMES_SHOWN = 10  # slide names listed in one warning


@dataclass
class SlideEval:
    slide: str
    split: str
    label: int  # 1: the annotation has tumour
    annotation: str
    patches: int
    slide_score: float
    threshold: float  # for Dice and IoU: the config's or the heatmap's
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


def evaluate_slide(p: Probabilities, annotation: Path | None, cfg: EvaluateConfig, split: str) -> SlideEval:
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
    um_per_px = (ds_x * p.mpp, ds_y * p.mpp)
    labels, itc = lesions(truth, um_per_px, cfg.froc)
    dets = candidate_detections(prob_map, um_per_px, cfg.froc)
    fps, tps = froc_slide(dets, labels, itc)
    return SlideEval(p.slide_name, split, int(truth.any()), str(annotation or ""), len(p.prob),
                     slide_score(p.prob, cfg.score), threshold, auc, dice, iou, len(tps), len(itc), len(dets),
                     sum(t > 0 for t in tps), len(fps), fps, tps)


def finished_outputs(heatmaps: Path, only: list[str] | None = None) -> list[Path]:
    """The finished slide outputs in `heatmaps`; with `only`, those of these slide stems alone (a pipeline's cohort:
    a slide dropped from it keeps its folder, which must not enter the figures)."""
    if not heatmaps.is_dir():
        raise CamnetError(f"heatmap folder {heatmaps}: no such folder")
    found = [d for d in sorted(heatmaps.iterdir()) if not d.name.startswith(".") and finished_hash(d) is not None
             and (only is None or d.name in only)]
    if not found:
        which = f" of slides {', '.join(only)}" if only is not None else ""
        raise CamnetError(f"heatmap folder {heatmaps}: no finished slide outputs{which} (<stem>/summary.json)")
    return found


# --- splits -----------------------------------------------------------------------------------------------


def read_splits(index: Path) -> dict[str, str]:
    """Slide name -> split, from Layer 1's index."""
    out: dict[str, str] = {}
    for e in DatasetIndex.load(index).entries:
        if out.setdefault(e.slide_name, e.split) != e.split:
            raise CamnetError(f"dataset index {index}: slide {e.slide_name} is in two splits, "
                              f"{out[e.slide_name]} and {e.split}")
    return out


def split_rank(name: str, trained: str = "train") -> tuple[int, str]:
    """Order of splits in tables: test, val, the others by name, and the training split (`trained`) last."""
    return (3 if name == trained else {"test": 0, "val": 1}.get(name, 2), name)


def headline_split(names: set[str], trained: str = "train") -> str:
    """The split to quote: the first in table order, so the training split only when it is the only one."""
    return min(names, key=lambda n: split_rank(n, trained))


def split_of(slide: str, splits: dict[str, str] | None) -> str:
    if splits is None:
        return UNKNOWN
    return splits.get(slide, UNASSIGNED)


def assignment_warnings(results: list[SlideEval], index: Path | None) -> list[HealthWarning]:
    if index is None:
        return [HealthWarning("no_split", f"no --index given: all {len(results)} slides are in split '{UNKNOWN}', so "
                              "every figure pools them (training slides included, if any); pass Layer 1's "
                              "index.json with --index for figures per split", UNKNOWN)]
    missing = sorted(r.slide for r in results if r.split == UNASSIGNED)
    if not missing:
        return []
    names = ", ".join(missing[:NAMES_SHOWN]) + (f" and {len(missing) - NAMES_SHOWN} more"
                                                 if len(missing) > NAMES_SHOWN else "")
    return [HealthWarning("unassigned_slides", f"{len(missing)} slide(s) not in the index {index}: {names}; "
                          f"evaluated apart in split '{UNASSIGNED}'", UNASSIGNED)]


# --- figures of one split ---------------------------------------------------------------------------------


def slide_auc(results: list[SlideEval]) -> float | None:
    from sklearn.metrics import roc_auc_score

    y = [r.label for r in results]
    if len(set(y)) < 2:
        return None
    return float(roc_auc_score(y, [r.slide_score for r in results]))


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def split_threshold(results: list[SlideEval]) -> float:
    """The threshold the split's slides were called at: heatmaps of one model share it; if not, the most common."""
    counts = Counter(r.threshold for r in results)
    return min(counts, key=lambda t: (-counts[t], t))


def split_warnings(name: str, results: list[SlideEval], curve: FrocCurve) -> list[HealthWarning]:
    """Slide-level classifier checks, and an empty FROC curve."""
    warnings = classifier_warnings(name, np.array([r.label for r in results]),
                                   np.array([r.slide_score for r in results]), split_threshold(results), what="slides")
    if curve.empty:
        warnings.append(HealthWarning("froc_empty", f"{name}: FROC has no curve: {empty_reason(curve)}", name))
    return warnings


def plot_slide_roc(results: list[SlideEval], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve([r.label for r in results], [r.slide_score for r in results])
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr)
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, bbox_inches="tight")
    plt.close(fig)


def file_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def evaluate_split(name: str, results: list[SlideEval], cfg: EvaluateConfig, out: Path,
                   ) -> tuple[SplitEvaluation, list[HealthWarning]]:
    """One split's figures, warnings and plots (written into `out`)."""
    curve = froc_curve([r.fp_probs for r in results], [r.tp_probs for r in results], cfg.froc.fp_rates)
    trained = name == cfg.trained_split
    title = f"{name} ({len(results)} slides{', trained on' if trained else ''})"
    plots = [f"froc_{file_part(name)}.png"]
    plot_froc(curve, f"FROC {title}", out / plots[0])
    auc = slide_auc(results)
    if auc is not None:
        plots.append(f"slide_roc_{file_part(name)}.png")
        plot_slide_roc(results, f"slide ROC {title}", out / plots[1])
    tumour = [r for r in results if r.label == 1]
    figures = SplitEvaluation(
        slides=len(results), tumour_slides=len(tumour), trained_on=trained, lesions=curve.lesions, slide_auc=auc,
        froc_score=curve.score,
        froc_sensitivity={f"{r:g}": s for r, s in zip(cfg.froc.fp_rates, curve.at, strict=True)},
        mean_dice_tumour_slides=_mean([r.dice for r in tumour]), mean_iou_tumour_slides=_mean([r.iou for r in tumour]),
        mean_pixel_auc=_mean([r.pixel_auc for r in results]), plots=plots)
    return figures, split_warnings(name, results, curve)


# --- cohort -----------------------------------------------------------------------------------------------

COLUMNS = ("slide", "split", "label", "slide_score", "pixel_auc", "dice", "iou", "patches", "lesions", "itc",
           "detections", "lesions_found", "false_positives", "annotation")


def cohort_csv(results: list[SlideEval], trained: str = "train") -> str:
    """One row per slide, grouped by split (test, val, others, train), then by slide."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in sorted(results, key=lambda r: (split_rank(r.split, trained), r.slide)):
        writer.writerow({k: ("" if v is None else round(v, 6) if isinstance(v, float) else v)
                         for k, v in asdict(r).items()})
    return buf.getvalue()


def evaluate_slides(heatmaps: Path, annotations: Path, cfg: EvaluateConfig,
                    splits: dict[str, str] | None, only: list[str] | None = None) -> list[SlideEval]:
    if not annotations.is_dir():
        raise CamnetError(f"annotation folder {annotations}: no such folder")
    results = []
    for final in finished_outputs(heatmaps, only):
        p = read_probabilities(final)
        annotation = find_annotation(Path(p.slide_name), annotations)
        if annotation is None and cfg.missing_annotation == "skip":
            continue
        results.append(evaluate_slide(p, annotation, cfg, split_of(p.slide_name, splits)))
    if not results:
        raise CamnetError(f"no slide in {heatmaps} has an annotation in {annotations} (missing_annotation: skip)")
    return results


def summarise(results: list[SlideEval], cfg: EvaluateConfig, out: Path, index: Path | None) -> EvaluationSummary:
    """Figures per split of evaluated slides; writes cohort.csv, the plots and summary.json (last) into `out`."""
    names = sorted({r.split for r in results}, key=lambda n: split_rank(n, cfg.trained_split))
    warnings = assignment_warnings(results, index)
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "cohort.csv", cohort_csv(results, cfg.trained_split))
        per_split = {}
        for name in names:
            per_split[name], found = evaluate_split(name, [r for r in results if r.split == name], cfg, out)
            warnings += found
        summary = EvaluationSummary(
            headline_split=headline_split(set(names), cfg.trained_split), slides=len(results),
            score_method=cfg.score.method, threshold=cfg.threshold, froc_config=cfg.froc, splits=per_split,
            warnings=warnings, plots=[f for s in per_split.values() for f in s.plots])
        write_text_atomic(out / "summary.json", to_json(summary))
    except OSError as err:
        raise CamnetError(f"evaluation output {out}: cannot write ({err.strerror or err})") from None
    return summary


def evaluate_cohort(heatmaps: Path, annotations: Path, out: Path, cfg: EvaluateConfig,
                    index: Path | None = None, only: list[str] | None = None) -> EvaluationSummary:
    """Evaluate every finished heatmap (`only`: of these slide stems), per split (`index`: Layer 1's index.json;
    None: one split, `unknown`)."""
    splits = read_splits(index) if index is not None else None
    return summarise(evaluate_slides(heatmaps, annotations, cfg, splits, only), cfg, out, index)
