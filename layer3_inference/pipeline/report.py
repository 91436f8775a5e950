"""The experiment report: one static HTML file, images embedded, readable offline and shareable by e-mail.

`render` is a pure function of `ReportData`; tables carry `id` and `data-col` attributes so scripts (and the
tests) can read the numbers back. `write_report` is the thin edge: collect, render, write atomically.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from layer1_patches.shared.atomic import write_text_atomic
from layer3_inference.pipeline.collect import ReportData
from layer3_inference.pipeline.config import Experiment
from layer3_inference.pipeline.layout import Layout

STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.grid{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0}figcaption{font-size:90%}img{max-width:100%}pre{background:#f7f7f7;padding:.5em;overflow:auto}
.failed{color:#b00}.finished{color:#070}"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}"
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return value if number.is_integer() and "." not in value else f"{number:.4f}"
    return str(value)


def table(ident: str, columns: list[str], rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f'<td data-col="{esc(c)}">{esc(fmt(r.get(c)))}</td>' for c in columns) + "</tr>"
                   for r in rows)
    return f'<table id="{esc(ident)}"><tr>{head}</tr>{body}</table>'


def img(data: bytes | None, alt: str, width: int | None = None) -> str:
    if data is None:
        return f"<p><em>{esc(alt)}: not available</em></p>"
    size = f' width="{width}"' if width else ""
    return f'<img alt="{esc(alt)}"{size} src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], width: int = 420, height: int = 240) -> str:
    """An inline SVG line chart (no plotting library needed to read the report)."""
    points = [p for s in series.values() for p in s if math.isfinite(p[1])]
    if not points:
        return ""
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-6)
    pad, colours = 40, ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")

    def xy(x: float, y: float) -> str:
        px = pad + (x - x0) / (x1 - x0) * (width - 2 * pad)
        py = height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad)
        return f"{px:.1f},{py:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
             f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{esc(title)}</text>',
             f'<rect x="{pad}" y="{pad}" width="{width - 2 * pad}" height="{height - 2 * pad}" fill="none" '
             'stroke="#999"/>',
             f'<text x="{pad}" y="{height - pad + 14}" font-size="10">{x0:g}</text>',
             f'<text x="{width - pad}" y="{height - pad + 14}" font-size="10" text-anchor="end">epoch {x1:g}</text>',
             f'<text x="{pad - 4}" y="{height - pad}" font-size="10" text-anchor="end">{y0:.3g}</text>',
             f'<text x="{pad - 4}" y="{pad + 8}" font-size="10" text-anchor="end">{y1:.3g}</text>']
    for i, (name, pts) in enumerate(series.items()):
        good = [p for p in pts if math.isfinite(p[1])]
        colour = colours[i % len(colours)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                     f'points="{" ".join(xy(x, y) for x, y in good)}"/>')
        parts.append(f'<text x="{width - pad + 2}" y="{pad + 12 * (i + 1)}" font-size="10" fill="{colour}">'
                     f'{esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def curves(history: list[dict[str, float]]) -> str:
    if not history:
        return "<p><em>no training history (history.csv)</em></p>"
    out = []
    for title, keys in (("loss", ("loss", "val_loss")), ("AUC", ("auc", "val_auc"))):
        series = {k: [(r.get("epoch", i + 1.0), r[k]) for i, r in enumerate(history) if k in r] for k in keys}
        out.append(line_chart(title, {k: v for k, v in series.items() if v}))
    return f'<div class="grid">{"".join(out)}</div>'


def metrics_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("n", "n_tumour", "auc", "accuracy", "sensitivity", "specificity", "threshold")
    return [{"split": name, **{k: m.get(k) for k in keys}} for name, m in metrics.items() if isinstance(m, dict)]


def timing_rows(d: ReportData) -> list[dict[str, Any]]:
    by_stage = {s.stage: s for s in d.status}
    rows = []
    for stage, st in by_stage.items():
        t = d.timings.get(stage, {})
        rows.append({"stage": stage, "job": st.job or "-", "state": st.state, "seconds": t.get("seconds"),
                     "detail": st.detail})
    return rows


def explain_section(d: ReportData) -> str:
    if d.explain_summary is None:
        return "<h2>Interpretability</h2><p><em>no explain outputs (disabled, failed or not run)</em></p>"
    parts = ["<h2>Interpretability</h2>"]
    sanity = d.explain_summary.get("sanity") or {}
    if sanity:
        parts.append("<h3>Model-randomisation sanity check</h3>")
        parts.append(table("sanity", ["method", "median", "flagged"],
                           [{"method": k, **v} for k, v in sanity.items()]))
    if d.panels:
        parts.append("<h3>Grad-CAM / Grad-CAM++ / LIME panels</h3><div class='grid'>")
        parts += [f"<figure>{img(data, name, 560)}<figcaption>{esc(name)}</figcaption></figure>"
                  for name, data in d.panels]
        parts.append("</div>")
    rcv = [r for r in d.explain_summary.get("rcv") or [] if isinstance(r, dict)]
    if rcv:
        parts.append("<h3>Regression concept vectors</h3>")
        parts.append(table("rcv", ["layer", "concept", "r2_heldout", "tcav", "p_value", "significant"], rcv))
    parts.append('<div class="grid">' + "".join(img(d.images.get(k), k, 480) for k in ("r2_by_layer", "tcav_vs_random")
                                                 if k in d.images) + "</div>")
    return "".join(parts)


def render(d: ReportData) -> str:
    ev = d.evaluate_summary
    froc = [{"fp_per_slide": k, "sensitivity": v} for k, v in (ev.get("froc_sensitivity") or {}).items()]
    summary_keys = ("slides", "tumour_slides", "slide_auc", "froc_score", "mean_dice_tumour_slides",
                    "mean_iou_tumour_slides", "mean_pixel_auc")
    eval_cols = ["slide", "label", "slide_score", "pixel_auc", "dice", "iou", "patches", "lesions", "lesions_found",
                 "false_positives"]
    split_rows = [{"split": k, **v} for k, v in d.splits.items()]
    total = {"split": "all", **{c: sum(int(v.get(c, 0)) for v in d.splits.values())
                                for c in ("slides", "patients", "tumour", "normal")}}
    slides = "".join(
        f"<h3>{esc(v.slide)}</h3><div class='grid'><figure>{img(v.heatmap_png, 'heatmap', 520)}"
        f"<figcaption>tumour probability</figcaption></figure><figure>{img(v.mask_png, 'annotation', 260)}"
        "<figcaption>tissue (grey) and annotated tumour (red)</figcaption></figure></div>" for v in d.slides)
    cfgs = "".join(f"<h3>{esc(k)}</h3><pre>{esc(v)}</pre>" for k, v in d.configs.items())
    body = [
        f"<h1>CamNet experiment {esc(d.name)}</h1><p>outputs: <code>{esc(d.out)}</code>; report written "
        f"{esc(d.generated)}</p>",
        "<h2>Stages</h2>", table("stages", ["stage", "job", "state", "seconds", "detail"], timing_rows(d)),
        f"<h2>Cohort</h2><p id='slide-count'>{len(d.cohort)} slides</p>",
        table("cohort", ["slide", "patient", "split", "annotated", "tumour_patches", "normal_patches",
                         "heatmap_patches", "slide_score", "tumour_area_mm2", "pixel_auc", "dice"], d.cohort),
        "<h2>Patches per class and split</h2>",
        table("splits", ["split", "slides", "patients", "tumour", "normal"], [*split_rows, total]),
        "<h2>Training</h2>", curves(d.history),
        table("metrics", ["split", "n", "n_tumour", "auc", "accuracy", "sensitivity", "specificity", "threshold"],
              metrics_rows(d.metrics)),
        img(d.images.get("roc"), "patch-level ROC (Layer 2)", 420),
        "<h2>Whole-slide evaluation</h2>",
        table("evaluate-summary", ["metric", "value"], [{"metric": k, "value": ev.get(k)} for k in summary_keys
                                                        if k in ev]),
        table("evaluate", eval_cols, d.evaluate_rows),
        "<h3>FROC</h3>", table("froc", ["fp_per_slide", "sensitivity"], froc),
        f"<div class='grid'>{img(d.images.get('froc'), 'FROC', 420)}{img(d.images.get('slide_roc'), 'slide ROC', 360)}"
        "</div>",
        "<h2>Heatmaps and annotations</h2>", slides,
        explain_section(d),
        "<h2>Versions</h2>", table("versions", ["package", "version"],
                                   [{"package": k, "version": v} for k, v in d.versions.items()]),
        "<h2>Resolved configs</h2>", cfgs,
    ]
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>CamNet {esc(d.name)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")


def console_summary(d: ReportData) -> str:
    """The cohort and stage times as plain text, for the end of `make demo` and of a local run."""
    lines = [f"{'slide':28} {'split':6} {'tumour':>7} {'normal':>7} {'rejects':>8} {'score':>6} {'dice':>6}"]
    for r in d.cohort:
        lines.append(f"{r['slide'][:28]:28} {r['split'] or '-':6} {fmt(r['tumour_patches']):>7} "
                     f"{fmt(r['normal_patches']):>7} {fmt(r['rejects']):>8} {fmt(r['slide_score']):>6} "
                     f"{fmt(r['dice']):>6}")
    times = ", ".join(f"{row['stage']} {float(row['seconds']):.0f} s" for row in timing_rows(d) if row["seconds"])
    lines.append(f"{len(d.cohort)} slides; stage times: {times}")
    return "\n".join(lines)


def write_report(exp: Experiment) -> Path:
    from layer3_inference.pipeline.collect import collect

    path = Layout(exp.out).report
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, render(collect(exp)))
