"""HTML building blocks of the report: escaping, number formatting, tables that scripts can read back, embedded
images and inline SVG charts. Pure functions of their arguments; every text that came from a file is escaped."""

from __future__ import annotations

import base64
import html
import math
from typing import Any


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}"
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return value if number.is_integer() and "." not in value else f"{number:.4f}"
    return str(value)


def table(ident: str, columns: list[str], rows: list[dict[str, Any]], split: str | None = None) -> str:
    """A table with `id` and a `data-col` per cell; `split` adds `data-split`, so a number read back from the
    report always says which split it comes from."""
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f'<td data-col="{esc(c)}">{esc(fmt(r.get(c)))}</td>' for c in columns) + "</tr>"
                   for r in rows)
    attr = f' data-split="{esc(split)}"' if split is not None else ""
    return f'<table id="{esc(ident)}"{attr}><tr>{head}</tr>{body}</table>'


def img(data: bytes | None, alt: str, width: int | None = None) -> str:
    if data is None:
        return f"<p><em>{esc(alt)}: not available</em></p>"
    size = f' width="{width}"' if width else ""
    return f'<img alt="{esc(alt)}"{size} src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values covering [lo, hi] (1, 2 or 5 times a power of ten apart)."""
    span = hi - lo
    if span <= 0 or not math.isfinite(span):
        return [lo]
    raw = span / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


AXIS_FONT = 13  # px: no text of the report below ~12 px


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], width: int = 520, height: int = 300,
               y_label: str = "") -> str:
    """An inline SVG line chart with ticks and axis labels; the legend sits right of the plot, never on a line
    (no plotting library needed to read the report)."""
    points = [p for s in series.values() for p in s if math.isfinite(p[1])]
    if not points:
        return ""
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-6)
    yt = ticks(y0, y1)
    y0, y1 = min(y0, yt[0]), max(y1, yt[-1])
    left, right, top, bottom = 64, 110, 30, 50  # room for tick labels, the legend and the axis titles
    colours = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + ph - (y - y0) / (y1 - y0) * ph

    f = f'font-size="{AXIS_FONT}"'
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
             f'role="img" aria-label="{esc(title)}">',
             f'<text x="{left + pw / 2}" y="18" text-anchor="middle" font-size="15">{esc(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for x in [t for t in ticks(x0, x1, 6) if x0 <= t <= x1 and float(t).is_integer()] or [x0, x1]:
        parts.append(f'<line class="xtick" x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{top + ph}" y2="{top + ph + 5}" '
                     f'stroke="#666"/><text x="{px(x):.1f}" y="{top + ph + 19}" {f} text-anchor="middle">{x:g}</text>')
    for y in yt:
        parts.append(f'<line class="ytick" x1="{left - 5}" x2="{left + pw}" y1="{py(y):.1f}" y2="{py(y):.1f}" '
                     f'stroke="#e5e5e5"/><text x="{left - 8}" y="{py(y) + 4:.1f}" {f} text-anchor="end">{y:g}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 8}" {f} text-anchor="middle">epoch</text>')
    if y_label:
        parts.append(f'<text transform="translate(16 {top + ph / 2}) rotate(-90)" {f} text-anchor="middle">'
                     f"{esc(y_label)}</text>")
    for i, (name, pts) in enumerate(series.items()):
        good = [p for p in pts if math.isfinite(p[1])]
        colour = colours[i % len(colours)]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                     f'points="{" ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in good)}"/>')
        parts.append(f'<text class="legend" x="{left + pw + 10}" y="{top + 14 + 18 * i}" {f} fill="{colour}">'
                     f'{esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)
