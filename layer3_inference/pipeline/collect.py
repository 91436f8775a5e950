"""Gather what the report shows from the stages' outputs; every piece is optional (a stage may not have run)."""

from __future__ import annotations

import csv
import io
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from layer1_patches.shared.atomic import read_json_object
from layer1_patches.shared.cohort import slide_label
from layer1_patches.shared.errors import CamnetError
from layer1_patches.shared.typedconfig import bounded, required, to_dict
from layer3_inference.pipeline import stages
from layer3_inference.pipeline.config import Experiment, resolved_yaml
from layer3_inference.pipeline.layout import Layout
from layer3_inference.pipeline.status import StageStatus, stage_status, stage_timings
from layer3_inference.summaries import EvaluationSummary, HeatmapSummary, load

log = logging.getLogger(__name__)
MAX_PANELS = 8


def contract(cls: type, path: Path) -> dict[str, Any]:
    """A published summary, validated by its contract (`layer3_inference.summaries`); {} when the stage has not
    written it, and {} with a warning in the log when it is damaged: the report shows what it can."""
    if not path.is_file():
        return {}
    try:
        return to_dict(load(cls, path))
    except CamnetError as err:
        log.warning("report: %s", err)
        return {}


@dataclass(frozen=True)
class EvaluationSummaryV1:
    """An evaluation summary of version 1 (before per-split figures), frozen as it was written: the report still
    shows such a run, labelled as pooling every slide, while `evaluate` itself now writes and reads version 2."""

    slides: int = required("slides evaluated", min=1)
    tumour_slides: int = required("slides with annotated tumour", min=0)
    slide_auc: float | None = required("slide-level ROC AUC of slide_score (null: one class only)", min=0, max=1)
    froc_score: float | None = required("Camelyon16 FROC score (null: no lesions)", min=0, max=1)
    froc_sensitivity: dict[str, float | None] = required("lesion sensitivity at each average FP per slide")
    mean_dice_tumour_slides: float | None = required("mean Dice of tumour slides (null: none)", min=0, max=1)
    mean_iou_tumour_slides: float | None = required("mean IoU of tumour slides (null: none)", min=0, max=1)
    mean_pixel_auc: float | None = required("mean per-slide pixel AUC (null: none computable)", min=0, max=1)
    score_method: str = required("slide score method")
    threshold: float | None = required("probability threshold for Dice and IoU (null: each heatmap's own)",
                                      min=0, max=1)
    plots: list[str] = bounded([], doc="plot files written beside it")
    summary_version: int = bounded(1, min=1, max=1, doc="version of this contract")


def evaluation_summary(path: Path) -> dict[str, Any]:
    """The evaluation summary by its version's contract: a version-1 file has no `splits` (the report says so)."""
    version = read_json_object(path).get("summary_version", 1)
    return contract(EvaluationSummaryV1 if version == 1 else EvaluationSummary, path)


@dataclass(frozen=True)
class SlideView:
    slide: str
    heatmap_png: bytes | None  # the heatmap stage's own picture: shown when `figure_png` cannot be drawn
    figure_png: bytes | None  # probabilities over tissue, annotation as a contour (`report_figures`)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    colour_shift: float | None = None
    tumour_share: float | None = None
    annotated: bool | None = None  # the manifest gave the slide an annotation file (None: unknown)
    contour: bool = False  # figure_png shows annotated tumour
    geojson: str | None = None  # the slide's GeoJSON relative to the report's folder, when it exists


@dataclass(frozen=True)
class ReportData:
    name: str
    out: str
    generated: str
    cohort: list[dict[str, Any]]
    splits: dict[str, dict[str, int]]
    history: list[dict[str, float]]
    metrics: dict[str, Any]
    evaluate_summary: dict[str, Any]
    evaluate_rows: list[dict[str, str]]
    explain_summary: dict[str, Any] | None
    images: dict[str, bytes]
    slides: list[SlideView]
    panels: list[tuple[str, bytes]]
    status: list[StageStatus]
    timings: dict[str, dict[str, Any]]
    configs: dict[str, str]
    versions: dict[str, str]
    notes: list[str] = field(default_factory=list)
    explain_sanity: dict[str, Any] = field(default_factory=dict)
    unreadable: list[str] = field(default_factory=list)  # summaries that exist but could not be read


def mapping(value: Any) -> dict[str, Any]:
    """`value` when a file held an object there, else {}: a report reads what other programs wrote."""
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class SourcedWarning:
    """A health warning with where it came from: `training`, `evaluation`, `heatmap:<slide>` or `explain`."""

    source: str
    code: str
    message: str
    split: str | None = None


def warning_list(value: Any, source: str) -> list[SourcedWarning]:
    """A `warnings` list as the stages write it ({"code", "message", "split"} objects); anything else in it is
    skipped, so a damaged file loses its warnings, not the report."""
    if not isinstance(value, list):
        return []
    return [SourcedWarning(source, str(w.get("code") or "warning"), str(w.get("message") or ""),
                           None if w.get("split") is None else str(w["split"]))
            for w in value if isinstance(w, dict)]


def sanity_warnings(sanity: Any) -> list[SourcedWarning]:
    """Warnings an explain summary's `sanity` implies (explain did not list them before it had a `warnings` list):
    a failed or inconclusive randomisation check, input-independent maps, and old-format flagged methods."""
    if not isinstance(sanity, dict):
        return []
    if "methods" not in sanity and "status" not in sanity:  # old format: {method: {"median", "flagged"}}
        return [SourcedWarning("explain", "sanity_failed", f"{m}: its maps barely change when the weights are "
                               "randomised (older output, without the randomised model's check)")
                for m, v in sanity.items() if isinstance(v, dict) and v.get("flagged")]
    out = []
    status = sanity.get("status")
    if status in ("failed", "inconclusive"):
        out.append(SourcedWarning("explain", f"sanity_{status}", f"model-randomisation sanity check {status}"))
    methods = mapping(sanity.get("methods"))
    out += [SourcedWarning("explain", "input_independent", f"{m}: maps are nearly the same for every patch")
            for m, v in methods.items() if isinstance(v, dict) and v.get("input_independent")]
    return out


def health_warnings(d: ReportData) -> list[SourcedWarning]:
    """Every warning of the run, in pipeline order: training, evaluation, each slide's heatmap, explain."""
    # a damaged summary would otherwise drop its warnings from the box without a word
    out = [SourcedWarning("report", "unreadable_summary", f"{path}: damaged or unreadable: its figures and warnings "
                          "are missing from this report") for path in d.unreadable]
    out += warning_list(d.metrics.get("warnings"), "training")
    out += warning_list(d.evaluate_summary.get("warnings"), "evaluation")
    for view in d.slides:
        out += warning_list(view.warnings, f"heatmap:{view.slide}")
    explain = d.explain_summary or {}
    listed = warning_list(explain.get("warnings"), "explain")
    # explain lists its own sanity warnings; an older or partial list still gets the ones its sanity result implies
    codes = {w.code for w in listed}
    return out + listed + [w for w in sanity_warnings(explain.get("sanity")) if w.code not in codes]


def _bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def read_history(path: Path) -> list[dict[str, float]]:
    try:
        rows = list(csv.DictReader(io.StringIO(path.read_text())))
    except OSError:
        return []
    out = []
    for row in rows:
        parsed = {}
        for k, v in row.items():
            try:
                parsed[k] = float(v)
            except (TypeError, ValueError):
                continue
        out.append(parsed)
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    try:
        return list(csv.DictReader(io.StringIO(path.read_text())))
    except OSError:
        return []


def store_masks(store: Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The store's tissue and annotated-tumour thumbnails (None where absent or the store is unfinished)."""
    from layer1_patches.store import PatchStore, is_complete

    if not is_complete(store):
        return None, None
    with PatchStore(store) as s:
        names = s.mask_names()
        return (s.mask("tissue") if "tissue" in names else None, s.mask("tumour") if "tumour" in names else None)


def read_png(path: Path) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGBA"))
    except (OSError, ValueError):
        return None


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from layer1_patches import __version__

    out = {"camnet": __version__, "python": platform.python_version()}
    for name in ("tensorflow-cpu", "tensorflow", "tf-keras", "horovod", "numpy", "h5py", "openslide-python",
                 "scikit-image", "scikit-learn", "tf-keras-vis", "lime"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def store_rejects(path: Path) -> int | None:
    """Patches Layer 1 rejected for this slide (all reasons), or None before its store exists."""
    from layer1_patches.shared.errors import CamnetError
    from layer1_patches.store import PatchStore

    try:
        with PatchStore(path) as store:
            return sum(int(v) for v in store.attrs.get("rejects", {}).values())
    except CamnetError:
        return None


def cohort_rows(exp: Experiment, index: dict[str, Any], evaluate_rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """One row per manifest slide: split and patch counts (index), slide score and Dice (evaluate)."""
    from layer3_inference.outputs import final_dir

    layout = Layout(exp.out)
    manifest = stages.load_manifest(exp)
    if manifest is None:
        return []
    by_name = {e["slide_name"]: e for e in index.get("entries", [])}
    by_eval = {r["slide"]: r for r in evaluate_rows}
    rows = []
    for entry in manifest.entries:
        stem = slide_label(Path(entry.slide))
        ix = by_name.get(stem, {})
        ev = by_eval.get(stem, {})
        hm = contract(HeatmapSummary, final_dir(layout.heatmaps, Path(entry.slide)) / "summary.json")
        rows.append({"slide": stem, "patient": ix.get("patient", ""), "split": ix.get("split", ""),
                     "annotated": "yes" if entry.annotation else "no", "tumour_patches": ix.get("n_tumour"),
                     "normal_patches": ix.get("n_normal"), "rejects": store_rejects(layout.patches / f"{stem}.h5"),
                     "heatmap_patches": hm.get("patches"),
                     "slide_score": hm.get("slide_score"), "tumour_area_mm2": hm.get("tumour_area_mm2"),
                     **annotation_metrics(bool(entry.annotation), ev)})
    return rows


NO_ANNOTATION = "no annotation"


def annotation_metrics(annotated: bool, ev: dict[str, str]) -> dict[str, Any]:
    """Pixel AUC and Dice of a slide, or "no annotation": evaluate scores an unannotated slide against an empty
    mask, whose Dice is 0 for any prediction and says nothing about the model."""
    if not annotated:
        return {"pixel_auc": NO_ANNOTATION, "dice": NO_ANNOTATION}
    return {"pixel_auc": ev.get("pixel_auc") or None, "dice": ev.get("dice") or None}


def evaluation_plots(folder: Path, summary: dict[str, Any]) -> dict[str, bytes]:
    """The evaluation's plots by file name (`evaluate/froc_test.png`), as its summary lists them."""
    splits = mapping(summary.get("splits"))
    names = [*(summary.get("plots") or []), *(p for s in splits.values() if isinstance(s, dict)
                                              for p in s.get("plots") or [])]
    # a name from a file is only a name: it cannot point outside the evaluation folder
    return {f"evaluate/{Path(str(n)).name}": data for n in names if (data := _bytes(folder / Path(str(n)).name))}


def colormap(exp: Experiment) -> str:
    heatmap = exp.layers.get("heatmap")
    return str(getattr(getattr(heatmap, "output", None), "colormap", "viridis"))


def slide_view(exp: Experiment, slide: Path, store: Path, annotated: bool) -> SlideView:
    import os

    from layer3_inference.outputs import final_dir
    from layer3_inference.pipeline.report_figures import slide_figure

    layout = Layout(exp.out)
    folder = final_dir(layout.heatmaps, slide)
    hm = contract(HeatmapSummary, folder / "summary.json")
    overlay = read_png(folder / "overlay.png")
    tissue, tumour = store_masks(store)
    contour = annotated and tumour is not None and bool(tumour.any())
    figure = None if overlay is None else slide_figure(overlay, tissue, tumour if contour else None, colormap(exp))
    geojson = folder / f"{slide_label(slide)}.geojson"
    # relative, so the link works wherever the experiment folder is copied or opened from
    link = os.path.relpath(geojson, layout.report.parent) if geojson.is_file() else None
    return SlideView(slide_label(slide), _bytes(folder / "heatmap.png"), figure, list(hm.get("warnings") or []),
                     hm.get("colour_shift"), hm.get("tumour_share"), annotated, contour, link)


def collect(exp: Experiment) -> ReportData:
    layout = Layout(exp.out)
    index = read_json_object(layout.index)
    evaluate_rows = read_csv(layout.evaluate / "cohort.csv")
    evaluate_summary = evaluation_summary(layout.evaluate / "summary.json")
    images = {name: data for name, path in (("roc", layout.run_dir / "roc.png"),
                                            ("froc", layout.evaluate / "froc.png"),
                                            ("slide_roc", layout.evaluate / "slide_roc.png"),
                                            ("r2_by_layer", layout.explain / "r2_by_layer.png"),
                                            ("tcav_vs_random", layout.explain / "tcav_vs_random.png"))
              if (data := _bytes(path)) is not None}
    images.update(evaluation_plots(layout.evaluate, evaluate_summary))
    manifest = stages.load_manifest(exp)
    views = []
    if manifest is not None:
        views = [slide_view(exp, Path(entry.slide), store, bool(entry.annotation))
                 for entry, store in zip(manifest.entries, stages.stores(exp, manifest), strict=True)]
    explain = read_json_object(layout.explain / "summary.json") or None
    panels = [(p.stem, p.read_bytes()) for p in sorted((layout.explain / "panels").glob("*.png"))[:MAX_PANELS]]
    configs = {"experiment": resolved_yaml(exp)}
    configs.update({k: yaml.safe_dump(to_dict(v), sort_keys=False) for k, v in exp.layers.items()})
    run_env = read_json_object(layout.run_dir / "environment.json")
    metrics = read_json_object(layout.run_dir / "metrics.json")
    vers = versions()
    if run_env.get("git_commit"):
        vers["git commit (training)"] = str(run_env["git_commit"])
    return ReportData(
        name=exp.cfg.name, out=str(exp.out), generated=time.strftime("%Y-%m-%d %H:%M:%S"),
        cohort=cohort_rows(exp, index, evaluate_rows), splits=index.get("summary", {}),
        history=read_history(layout.run_dir / "history.csv"), metrics=metrics,
        evaluate_summary=evaluate_summary, evaluate_rows=evaluate_rows,
        explain_summary=explain, images=images, slides=views, panels=panels, status=stage_status(exp),
        timings=stage_timings(exp), configs=configs, versions=vers,
        explain_sanity=read_json_object(layout.explain / "sanity.json") if explain else {},
        unreadable=unreadable([(layout.run_dir / "metrics.json", bool(metrics)),
                               (layout.evaluate / "summary.json", bool(evaluate_summary)),
                               (layout.explain / "summary.json", explain is not None)]))


def unreadable(read: list[tuple[Path, bool]]) -> list[str]:
    """The files of (path, read) pairs that exist but gave nothing."""
    return [str(path) for path, ok in read if not ok and path.is_file()]
