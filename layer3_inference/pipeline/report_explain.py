"""The report's interpretability section: the randomisation sanity check as it can honestly be read, the saliency
panels, and the concept vectors with their baselines.

A sanity check whose randomised model does not vary its outputs cannot tell anything about the maps, and an
older output without that measurement cannot prove it did: neither is ever shown as "passed".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from layer3_inference.pipeline.collect import ReportData, mapping
from layer3_inference.pipeline.report_html import esc, img, table

OLD = "unverified (older output)"
DEFAULT_MIN_LOGIT_STD = 1e-3  # explain's own default, for a sanity.json that does not record it
DEFAULT_ALPHA = 0.05  # rcv.alpha_level's default, for a summary without its config
RCV_COLS = ["layer", "concept", "r2_heldout", "r2_label_baseline", "tcav", "tcav_std", "tcav_random_mean",
            "tcav_random_std", "p_value", "p_adjusted", "significant", "status", "reason"]
RCV_LEGEND = ("status: <b>significant</b>: the concept's TCAV differs from random directions' after Bonferroni "
              "correction over concepts and layers; <b>not significant</b>; <b>undefined</b>: the gradients do not "
              "vary enough across patches to change sign, so most directions score TCAV 0 or 1 and it cannot be "
              "measured (see reason); <b>restates class</b>: the activations predict the "
              "concept no better than the class label alone (r2_label_baseline), so it is no evidence of its own.")


@dataclass(frozen=True)
class SanityView:
    status: str
    sentence: str
    random_logit_std: float | None
    methods: list[dict[str, Any]] = field(default_factory=list)
    depths: list[dict[str, Any]] = field(default_factory=list)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def sci(value: float | None) -> str:
    # a dead network's std is ~1e-12: four decimals would print it as 0.0000
    return "-" if value is None else f"{value:.3g}"


def overall_status(status: str, random_std: float | None, min_std: float) -> str:
    if random_std is None:
        return OLD
    return "inconclusive" if random_std < min_std else status


def sentence(status: str, random_std: float | None, min_std: float) -> str:
    if status == "inconclusive":
        return (f"inconclusive: the randomised model's outputs do not vary (std {sci(random_std)} of its logits "
                f"across patches, below {min_std:g}): the check cannot tell whether the maps depend on the weights; "
                "the model may be too small to explain")
    if status == "failed":
        return ("failed: the maps of at least one method barely change when the model's weights are randomised: "
                "they do not show what the model learnt")
    if status == "passed":
        return (f"passed: the maps change when the weights are randomised, and the randomised model's outputs "
                f"vary (std {sci(random_std)} of its logits across patches)")
    if status == OLD:
        return (f"{OLD}: this explain output does not record whether the randomised model's outputs vary "
                "(random_logit_std), so a low correlation cannot be told from a dead randomised model; rerun explain")
    return f"status {status}"


def shown(status: Any, overall: str) -> str:
    """A method's or depth's status as the report may show it: no pass under a check that could not fail."""
    text = str(status or "-")
    return overall if text == "passed" and overall in ("inconclusive", OLD) else text


def old_view(summary: dict[str, Any]) -> SanityView:
    rows = [{"method": m, "status": "flagged (older output)" if v.get("flagged") else OLD, "median": v.get("median")}
            for m, v in summary.items() if isinstance(v, dict)]
    return SanityView(OLD, sentence(OLD, None, DEFAULT_MIN_LOGIT_STD), None, rows)


def depth_rows(method: str, detail: dict[str, Any], overall: str, min_std: float) -> list[dict[str, Any]]:
    depths = {d.get("depth"): d for d in detail.get("depths") or [] if isinstance(d, dict)}
    m = mapping(mapping(detail.get("methods")).get(method))
    rows = []
    for row in m.get("by_depth") or []:
        if not isinstance(row, dict):
            continue
        info = depths.get(row.get("depth"), {})
        std = _number(info.get("random_logit_std"))
        status = shown(row.get("status"), overall)
        if status == "passed" and std is not None and std < min_std:
            status = "inconclusive"
        rows.append({"method": method, "depth": row.get("depth"), "randomised_from": info.get("randomised_from"),
                     "randomised_to": info.get("randomised_to"), "layers": info.get("layers"),
                     "random_logit_std": std, "median": row.get("median"), "mean": row.get("mean"), "status": status})
    return rows


def sanity_view(summary: Any, detail: dict[str, Any]) -> SanityView | None:
    """The sanity result from explain's summary (`sanity`) and `sanity.json` (`detail`, per depth), old or new."""
    summary = summary if isinstance(summary, dict) else {}
    new = "methods" in summary or "status" in summary or "methods" in detail
    if not new:
        return old_view(summary) if summary else None
    min_std = _number(detail.get("min_logit_std")) or DEFAULT_MIN_LOGIT_STD
    random_std = _number(detail.get("random_logit_std", summary.get("random_logit_std")))
    overall = overall_status(str(detail.get("status") or summary.get("status") or "-"), random_std, min_std)
    brief, full = mapping(summary.get("methods")), mapping(detail.get("methods"))
    rows, depths = [], []
    for method in dict.fromkeys([*brief, *full]):
        m = {**mapping(brief.get(method)), **mapping(full.get(method))}
        rows.append({"method": method, "status": shown(m.get("status"), overall), "median": m.get("median"),
                     "input_independent": m.get("input_independent"),
                     "cross_patch_correlation": m.get("cross_patch_correlation"), "threshold": m.get("threshold")})
        depths += depth_rows(method, detail, overall, min_std)
    return SanityView(overall, sentence(overall, random_std, min_std), random_std, rows, depths)


def sanity_block(view: SanityView) -> str:
    parts = ["<h3>Model-randomisation sanity check</h3>",
             f'<p id="sanity-status" class="sanity-{esc(view.status.split()[0])}">{esc(view.sentence)}</p>',
             f'<p id="sanity-random-logit-std">randomised model\'s logit std across patches: '
             f"{esc(sci(view.random_logit_std))}</p>"]
    independent = [r["method"] for r in view.methods if r.get("input_independent")]
    if independent:
        parts.append(f'<p id="sanity-input-independent">input-independent: {esc(", ".join(independent))}: their '
                     "maps are nearly the same for every patch, so they show the layer, not the patch</p>")
    columns = ["method", "status", "median", "input_independent", "cross_patch_correlation", "threshold"]
    parts.append(table("sanity", columns if view.status != OLD else columns[:3], view.methods))
    if view.depths:
        parts.append("<h4>Rank correlation of trained and randomised maps, by randomisation depth</h4>")
        parts.append(table("sanity-depths", ["method", "depth", "randomised_from", "randomised_to", "layers",
                                             "random_logit_std", "median", "mean", "status"], view.depths))
    return "".join(parts)


def rcv_test(rows: list[dict[str, Any]], config: dict[str, Any]) -> tuple[float, int]:
    """(alpha, number of tests): the level explain used and the p-values Bonferroni multiplied by (the defined
    ones, as `rcv.bonferroni` counts them)."""
    alpha = _number(mapping(mapping(config).get("rcv")).get("alpha_level")) or DEFAULT_ALPHA
    return alpha, sum(1 for r in rows if _number(r.get("p_value")) is not None)


def significance(row: dict[str, Any], alpha: float, tests: int) -> str:
    """The `significant` cell in words: the raw p against alpha / N, not a bare True or False."""
    p = _number(row.get("p_value"))
    if row.get("significant") is None or p is None or tests == 0:
        return "no test (undefined)"
    below = p < alpha / tests
    text = f"p {p:.2g} {'<' if below else '>='} {alpha:g}/{tests} = {alpha / tests:.2g}"
    if row.get("significant") is True:
        return f"yes: {text}"
    # a small p that is still "no": the concept failed the R^2 condition, which the status names
    why = row.get("reason") or row.get("status") or "see reason"
    return f"no: {text}, but {why}" if below else f"no: {text}"


def rcv_block(rows: list[dict[str, Any]], config: dict[str, Any]) -> str:
    alpha, tests = rcv_test(rows, config)
    test = (f'<p id="rcv-test">Each concept\'s TCAV scores (bootstrap refits) are compared with those of random '
            f"directions (refits on permuted concept values) by a two-sided test; with {tests} tests (layer and "
            f"concept pairs) the Bonferroni correction calls one significant when p &lt; {alpha:g}/{tests} = "
            f"{alpha / max(tests, 1):.2g} (p_adjusted = p &times; {tests} &lt; {alpha:g}), and only if the layer "
            "encodes the concept better than the class label does (a \"no\" can come from either).</p>")
    shown_rows = [{**r, "significant": significance(r, alpha, tests)} for r in rows]
    return (f"<h3>Regression concept vectors</h3><p>{RCV_LEGEND}</p>{test}"
            f"<div class='wide'>{table('rcv', RCV_COLS, shown_rows)}</div>")


def explain_section(d: ReportData) -> str:
    if d.explain_summary is None:
        return "<h2>Interpretability</h2><p><em>no explain outputs (disabled, failed or not run)</em></p>"
    parts = ["<h2>Interpretability</h2>"]
    view = sanity_view(d.explain_summary.get("sanity"), d.explain_sanity)
    if view is not None:
        parts.append(sanity_block(view))
    if d.panels:
        # one panel per row, the page's full width: side by side, a map of 64 px patches was too small to read
        parts.append("<h3>Grad-CAM / Grad-CAM++ / LIME panels</h3><div class='panels'>")
        parts += [f"<figure>{img(data, name)}<figcaption>{esc(name)}</figcaption></figure>"
                  for name, data in d.panels]
        parts.append("</div>")
    rcv = [r for r in d.explain_summary.get("rcv") or [] if isinstance(r, dict)]
    if rcv:
        parts.append(rcv_block(rcv, mapping(d.explain_summary.get("config"))))
    parts.append('<div class="grid">' + "".join(img(d.images.get(k), k, 480) for k in ("r2_by_layer", "tcav_vs_random")
                                                 if k in d.images) + "</div>")
    return "".join(parts)
