"""Quantities as people read them, one spelling for every layer: durations in logs, `pipeline status` and the
report (`3 min 20 s`)."""

from __future__ import annotations

import math
from typing import Any


def duration(seconds: Any) -> str:
    """`21 s`, `3 min 20 s`, `2 h 5 min`: a stage time as a person reads it ("-" when unknown)."""
    try:
        s = float(seconds)
    except (TypeError, ValueError):
        return "-"
    if not math.isfinite(s) or s < 0:
        return "-"
    if s < 10:
        return f"{s:.1f} s"
    whole = round(s)
    h, rest = divmod(whole, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h} h {m} min"
    return f"{m} min {sec} s" if m else f"{sec} s"
