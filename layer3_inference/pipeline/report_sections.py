"""The report's sections that say how far its numbers can be trusted: the model-health box, the evaluation per
split (test first, training slides apart), and the heatmaps with their warnings.

Pure functions of `ReportData`; the interpretability section is in `report_explain`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layer3_inference.pipeline.collect import NO_ANNOTATION, ReportData, SourcedWarning
from layer3_inference.pipeline.report_html import esc, fmt, img, table

SPLIT_MEANING = {
    "test": "held-out test slides: the headline",
    "val": "validation slides: they chose the training epoch, so their figures are slightly optimistic",
    "train": "slides that trained the model: not an estimate of performance",
    "unassigned": "slides missing from Layer 1's index: their split is unknown",
    "unknown": "split unknown: these figures pool every slide, whatever trained the model",
}
SUMMARY_KEYS = ("slides", "tumour_slides", "lesions", "slide_auc", "froc_score", "mean_dice_tumour_slides",
                "mean_iou_tumour_slides", "mean_pixel_auc")
EVAL_COLS = ["slide", "label", "slide_score", "pixel_auc", "dice", "iou", "patches", "lesions", "itc", "detections",
             "lesions_found", "false_positives"]


def warning_items(warnings: list[SourcedWarning]) -> str:
    return "".join(f'<li data-source="{esc(w.source)}" data-code="{esc(w.code)}" data-split="{esc(w.split or "")}">'
                   f"<b>{esc(w.code)}</b> ({esc(w.source)}{', ' + esc(w.split) if w.split else ''}): "
                   f"{esc(w.message)}</li>" for w in warnings)


def health_box(warnings: list[SourcedWarning]) -> str:
    """The top of the report: every warning of every stage, or one green line when there is none."""
    if not warnings:
        return '<p id="health" class="health-ok">no health warnings</p>'
    return (f'<div id="health" class="health"><h2>Model health: {len(warnings)} warning'
            f'{"s" if len(warnings) != 1 else ""}</h2><p>The figures below may look better than the model is; '
            f"each line names the stage (and split) it comes from.</p><ul>{warning_items(warnings)}</ul></div>")


def selected_epoch(metrics: dict[str, Any]) -> str:
    sel = metrics.get("selected")
    if not isinstance(sel, dict):
        return ""
    tie = sel.get("tie_break")
    why = f"best {sel.get('monitor')} {fmt(sel.get('value'))}" + (f", tie broken by {tie}" if tie else "")
    return f'<p id="selected">model kept: epoch {esc(fmt(sel.get("epoch")))} ({esc(why)})</p>'


def training_warnings(warnings: list[SourcedWarning]) -> str:
    own = [w for w in warnings if w.source == "training"]
    return f'<ul id="training-warnings" class="warnings">{warning_items(own)}</ul>' if own else ""


def split_order(splits: dict[str, Any], headline: str) -> list[str]:
    """Headline first, then test, val and any other held-out split; slides that trained the model last."""
    trained = {name for name, s in splits.items() if isinstance(s, dict) and s.get("trained_on")} | {"train"}

    def key(name: str) -> tuple[int, str]:
        rank = 0 if name == headline else 4 if name in trained else {"test": 1, "val": 2}.get(name, 3)
        return rank, name
    return sorted(splits, key=key)


def split_meaning(name: str, split: dict[str, Any], headline: str) -> str:
    text = SPLIT_MEANING.get(name, f"slides of the {name} split")
    if split.get("trained_on") and name != "train":
        text += "; these slides trained the model: not an estimate of performance"
    if name == headline and name != "test":
        text += "; the headline, for want of a test split"
    return text


def froc_block(name: str, split: dict[str, Any]) -> str:
    """A split's FROC sensitivities, or a sentence when there is no curve (never an empty table)."""
    sens = split.get("froc_sensitivity") or {}
    if split.get("froc_score") is None or all(v is None for v in sens.values()):
        # lesions exclude isolated tumour cells: a tumour slide with ITCs only has no lesion to detect
        lesions = split.get("lesions", split.get("tumour_slides"))
        why = "no annotated lesions" if not lesions else "no lesion detected at any threshold"
        return f'<p id="froc-{esc(name)}-empty" class="empty">no FROC curve for the {esc(name)} split: {why}</p>'
    return table(f"froc-{name}", ["fp_per_slide", "sensitivity"],
                 [{"fp_per_slide": k, "sensitivity": v} for k, v in sens.items()], split=name)


def shown_row(row: dict[str, Any]) -> dict[str, Any]:
    """An evaluate row as shown: a slide evaluate found no annotation for (its `annotation` column is empty) has
    no overlap figures, not a Dice of 0 against an empty mask."""
    if "annotation" in row and not row["annotation"]:
        return {**row, **{k: NO_ANNOTATION for k in ("pixel_auc", "dice", "iou")}}
    return row


def split_section(d: ReportData, name: str, split: dict[str, Any], headline: str) -> str:
    rows = [shown_row(r) for r in d.evaluate_rows if (r.get("split") or "unknown") == name]
    figures = [{"metric": k, "value": split.get(k)} for k in SUMMARY_KEYS if k in split]
    plots = "".join(img(d.images.get(f"evaluate/{Path(str(p)).name}"), f"{p} ({name} split)", 420)
                    for p in split.get("plots") or [])
    return (f'<section class="split" data-split="{esc(name)}"><h3 id="split-{esc(name)}">Split {esc(name)}: '
            f"{esc(split_meaning(name, split, headline))}</h3>"
            f'{table(f"evaluate-summary-{name}", ["metric", "value"], figures, split=name)}'
            f"<h4>FROC ({esc(name)} split)</h4>{froc_block(name, split)}<div class='grid'>{plots}</div>"
            f"<h4>Slides of the {esc(name)} split</h4>"
            f'{table(f"evaluate-{name}", ["split", *EVAL_COLS], rows, split=name)}</section>')


def headline_line(splits: dict[str, Any], headline: str) -> str:
    h = splits.get(headline)
    if not isinstance(h, dict):
        return f'<p id="evaluate-headline">no {esc(headline)} split was evaluated: there is no headline figure</p>'
    return (f'<p id="evaluate-headline">Headline ({esc(headline)} split, {esc(fmt(h.get("slides")))} slides): '
            f'slide AUC {esc(fmt(h.get("slide_auc")))}, FROC score {esc(fmt(h.get("froc_score")))}, mean Dice of '
            f'tumour slides {esc(fmt(h.get("mean_dice_tumour_slides")))}</p>')


def pooled_section(d: ReportData) -> str:
    """A version-1 summary: one set of figures over every slide, labelled as such."""
    ev = d.evaluate_summary
    froc = [{"fp_per_slide": k, "sensitivity": v} for k, v in (ev.get("froc_sensitivity") or {}).items()]
    return ('<section class="split" data-split="unknown"><p id="split-unknown-note"><b>Split unknown</b>: this '
            "evaluation predates per-split figures, so they pool every slide, the ones that trained the model "
            "included (rerun evaluate with --index)</p>"
            + table("evaluate-summary", ["metric", "value"],
                    [{"metric": k, "value": ev.get(k)} for k in SUMMARY_KEYS if k in ev], split="unknown")
            + table("evaluate", EVAL_COLS, [shown_row(r) for r in d.evaluate_rows], split="unknown")
            + "<h3>FROC (all slides)</h3>" + table("froc", ["fp_per_slide", "sensitivity"], froc, split="unknown")
            + f"<div class='grid'>{img(d.images.get('froc'), 'FROC', 420)}"
              f"{img(d.images.get('slide_roc'), 'slide ROC', 360)}</div></section>")


def evaluation_section(d: ReportData) -> str:
    ev = d.evaluate_summary
    head = "<h2>Whole-slide evaluation</h2>"
    if not ev:
        return head + "<p><em>no evaluation outputs</em></p>"
    splits = {k: v for k, v in (ev.get("splits") or {}).items() if isinstance(v, dict)} \
        if isinstance(ev.get("splits"), dict) else None
    if splits is None:
        return head + pooled_section(d)
    for row in d.evaluate_rows:  # a slide of a split without figures still gets its table
        splits.setdefault(row.get("split") or "unknown", {})
    headline = str(ev.get("headline_split") or "test")
    return head + headline_line(splits, headline) + "".join(
        split_section(d, name, splits[name], headline) for name in split_order(splits, headline))
