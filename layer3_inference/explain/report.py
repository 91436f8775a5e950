"""Score tables and raw maps on disk, each written atomically (`.<name>.partial`, then renamed)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from layer1_patches.shared.atomic import write_bytes_atomic

LIST_KEYS = ("tcav_repeats", "tcav_random", "rank_correlation")


def _clean(value: Any) -> Any:
    """JSON has no NaN: undefined scores become null."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def write_json(path: Path, data: Any) -> Path:
    return write_bytes_atomic(path, (json.dumps(_clean(data), indent=1, sort_keys=True) + "\n").encode())


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Scalar columns only (per-repeat lists live in the JSON); columns in first-seen order."""
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields and k not in LIST_KEYS]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None or (isinstance(v, float) and not math.isfinite(v)) else v)
                         for k, v in row.items() if k in fields})
    return write_bytes_atomic(path, buf.getvalue().encode())


def write_maps(path: Path, patch: np.ndarray, maps: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """One patch's raw maps (float32, patch resolution), its pixels and scalar metadata, as .npz."""
    buf = io.BytesIO()
    arrays = {"patch": patch, **{k: np.asarray(v, np.float32) for k, v in maps.items()},
              **{f"meta_{k}": np.asarray(v) for k, v in meta.items()}}
    np.savez_compressed(buf, **arrays)
    return write_bytes_atomic(path, buf.getvalue())
