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
