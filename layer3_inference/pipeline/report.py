"""The experiment report: one static HTML file, images embedded, readable offline and shareable by e-mail.

`render` is a pure function of `ReportData`; tables carry `id` and `data-col` attributes so scripts (and the
tests) can read the numbers back. `write_report` is the thin edge: collect, render, write atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layer1_patches.shared.atomic import write_text_atomic
from layer1_patches.shared.units import duration
from layer3_inference.pipeline.collect import ReportData, SourcedWarning, health_warnings
from layer3_inference.pipeline.config import Experiment
from layer3_inference.pipeline.layout import Layout
from layer3_inference.pipeline.report_explain import explain_section
from layer3_inference.pipeline.report_html import esc, fmt, img, line_chart, table
from layer3_inference.pipeline.report_sections import (
    evaluation_section,
    health_box,
    selected_epoch,
    training_warnings,
)
from layer3_inference.pipeline.report_slides import QUPATH, slide_block

STYLE = """body{font-family:sans-serif;font-size:16px;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.grid{display:flex;flex-wrap:wrap;gap:1em}
figure{margin:0}figcaption{font-size:15px;max-width:640px}img{max-width:100%;height:auto}
pre{background:#f7f7f7;padding:.5em;overflow:auto;font-size:14px}summary{cursor:pointer;font-weight:bold}
.panels figure{margin:1em 0}.panels img{width:100%}.wide{overflow-x:auto}
.failed{color:#b00}.finished{color:#070}.health{border:2px solid #b00;background:#fdecea;padding:.2em 1em;margin:1em 0}
.health h2{color:#b00;margin:.4em 0}.health-ok{color:#070}.warnings{color:#b00}
.sanity-inconclusive,.sanity-failed,.sanity-unverified{color:#b00;font-weight:bold}
.split{border-left:4px solid #ddd;padding-left:1em;margin:1em 0}"""


def curves(history: list[dict[str, float]]) -> str:
    if not history:
        return "<p><em>no training history (history.csv)</em></p>"
    out = []
    for title, keys in (("loss", ("loss", "val_loss")), ("AUC", ("auc", "val_auc"))):
        series = {k: [(r.get("epoch", i + 1.0), r[k]) for i, r in enumerate(history) if k in r] for k in keys}
        out.append(line_chart(title, {k: v for k, v in series.items() if v}, y_label=title))
    return f'<div class="grid">{"".join(out)}</div>'


def metrics_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    keys = ("n", "n_tumour", "auc", "accuracy", "sensitivity", "specificity", "threshold")
    return [{"split": name, **{k: m.get(k) for k in keys}} for name, m in metrics.items()
            if isinstance(m, dict) and name != "selected" and any(k in m for k in keys)]


def timing_rows(d: ReportData) -> list[dict[str, Any]]:
    """One row per stage; `time` reads `3 min 20 s`, `seconds` keeps the number for the console summary."""
    by_stage = {s.stage: s for s in d.status}
    rows = []
    for stage, st in by_stage.items():
        t = d.timings.get(stage, {})
        state, detail = st.state, st.detail
        if stage == "report":
            # the report stage is writing this very page: whatever its job says, it is done once anyone reads it
            state, detail = "finished", f"this report, written {d.generated}"
        rows.append({"stage": stage, "job": st.job or "-", "state": state, "seconds": t.get("seconds"),
                     "time": duration(t.get("seconds")), "detail": detail})
    return rows


def configs_block(configs: dict[str, str]) -> str:
    """Each resolved config folded away (a page of YAML each): the heading says what is inside."""
    return "".join(f'<details class="config" id="config-{esc(k)}"><summary>{esc(k)}</summary><pre>{esc(v)}</pre>'
                   "</details>" for k, v in configs.items())


def render(d: ReportData) -> str:
    warnings = health_warnings(d)
    split_rows = [{"split": k, **v} for k, v in d.splits.items()]
    total = {"split": "all", **{c: sum(int(v.get(c, 0)) for v in d.splits.values())
                                for c in ("slides", "patients", "tumour", "normal")}}
    body = [
        f"<h1>CamNet experiment {esc(d.name)}</h1><p>outputs: <code>{esc(d.out)}</code>; report written "
        f"{esc(d.generated)}</p>",
        health_box(warnings),
        "<h2>Stages</h2>", table("stages", ["stage", "job", "state", "time", "detail"], timing_rows(d)),
        f"<h2>Cohort</h2><p id='slide-count'>{len(d.cohort)} slides</p>",
        table("cohort", ["slide", "patient", "split", "annotated", "tumour_patches", "normal_patches",
                         "heatmap_patches", "slide_score", "tumour_area_mm2", "pixel_auc", "dice"], d.cohort),
        "<h2>Patches per class and split</h2>",
        table("splits", ["split", "slides", "patients", "tumour", "normal"], [*split_rows, total]),
        '<section id="training"><h2>Training</h2>', curves(d.history), selected_epoch(d.metrics),
        table("metrics", ["split", "n", "n_tumour", "auc", "accuracy", "sensitivity", "specificity", "threshold"],
              metrics_rows(d.metrics)),
        training_warnings(warnings),
        img(d.images.get("roc"), "patch-level ROC (Layer 2)", 420), "</section>",
        evaluation_section(d),
        "<h2>Heatmaps and annotations</h2>", QUPATH, "".join(slide_block(v) for v in d.slides),
        f'<section id="interpretability">{explain_section(d)}</section>',
        "<h2>Versions</h2>", table("versions", ["package", "version"],
                                   [{"package": k, "version": v} for k, v in d.versions.items()]),
        f'<section id="configs"><h2>Resolved configs</h2>{configs_block(d.configs)}</section>',
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
    times = ", ".join(f"{row['stage']} {row['time']}" for row in timing_rows(d) if row["seconds"])
    lines.append(f"{len(d.cohort)} slides; stage times: {times}")
    return "\n".join([*lines, *warning_lines(health_warnings(d))])


def warning_lines(warnings: list[SourcedWarning]) -> list[str]:
    """The health box as text: a count, then one line per warning (source, split, code, message)."""
    lines = [f"health warnings: {len(warnings) or 'none'}"]
    lines += [f"  warning: {w.source}{f' [{w.split}]' if w.split else ''}: {w.code}: {w.message}" for w in warnings]
    return lines


def write_report(exp: Experiment) -> Path:
    from layer3_inference.pipeline.collect import collect

    path = Layout(exp.out).report
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, render(collect(exp)))
