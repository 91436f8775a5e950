"""Figures: one panel per patch (patch, Grad-CAM, Grad-CAM++, LIME), R^2 per layer per concept beside its
class-label baseline, and concept TCAV against random fits. Matplotlib's Agg backend: no display needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from layer1_patches.shared.atomic import atomic_path


def _save(fig: Any, path: Path, dpi: int) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def shared_scales(maps: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """One colour scale per method over all the selected patches: CAMs 0..largest value, LIME -a..a with a the
    largest |weight|. Scaled patch by patch, a weak map looked as strong as a strong one and no two panels
    could be compared."""
    out: dict[str, float] = {}
    for row in maps:
        for name, m in row.items():
            values = np.abs(np.nan_to_num(m)) if name == "lime" else np.nan_to_num(m)
            out[name] = max(out.get(name, 0.0), float(values.max()) if values.size else 0.0)
    return {name: value or 1.0 for name, value in out.items()}


def panel(path: Path, patch: np.ndarray, maps: dict[str, np.ndarray], title: str, dpi: int,
          scales: dict[str, float] | None = None) -> Path:
    """Patch, then each map over a faded copy of the patch, on `scales` (see `shared_scales`; this patch's own
    maxima when None). Fonts of 12 pt and more: the report shows the panel at full width."""
    names = [n for n in ("gradcam", "gradcam_pp", "lime") if n in maps]
    scales = scales or shared_scales([maps])
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(3.6 * (1 + len(names)), 3.8))
    axes = np.atleast_1d(axes)
    axes[0].imshow(patch)
    axes[0].set_title("patch", fontsize=12)
    labels = {"gradcam": "Grad-CAM", "gradcam_pp": "Grad-CAM++", "lime": "LIME (tumour weight)"}
    for ax, name in zip(axes[1:], names, strict=True):
        m = np.nan_to_num(maps[name])
        ax.imshow(patch, alpha=0.5)
        if name == "lime":
            im = ax.imshow(m, cmap="RdBu_r", vmin=-scales[name], vmax=scales[name], alpha=0.6)
        else:
            im = ax.imshow(m, cmap="viridis", vmin=0, vmax=scales[name], alpha=0.6)
        bar = fig.colorbar(im, ax=ax, fraction=0.046)
        bar.ax.tick_params(labelsize=12)
        ax.set_title(labels[name], fontsize=12)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"{title}  (one colour scale per method across all patches)", fontsize=12)
    return _save(fig, path, dpi)


def r2_by_layer(path: Path, rows: list[dict[str, Any]], dpi: int) -> Path:
    """Held-out R^2 per concept (solid) and, in the same colour, its class-label baseline (dashed): a concept
    whose solid line does not rise above its dashed one only restates the class."""
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    concepts = list(dict.fromkeys(r["concept"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(layers) + 3), 4))
    for concept in concepts:
        mine = {r["layer"]: r for r in rows if r["concept"] == concept}
        r2 = [_num(mine.get(layer, {}).get("r2_heldout")) for layer in layers]
        base = [_num(mine.get(layer, {}).get("r2_label_baseline")) for layer in layers]
        (line,) = ax.plot(range(len(layers)), r2, marker="o", label=concept)
        if not all(np.isnan(base)):
            ax.plot(range(len(layers)), base, ls="--", lw=1, color=line.get_color(), label=f"_{concept} label")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(layers)), layers, rotation=30, ha="right")
    ax.set_ylabel("held-out R^2 (nested CV); dashed: class label alone")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path, dpi)


def _num(value: Any) -> float:
    return float(value) if value is not None else float("nan")


def _verdict(row: dict[str, Any]) -> str:
    """The text above a concept's column: its status, with the adjusted p where a test was made."""
    status = row.get("status", "undefined")
    if row.get("p_adjusted") is None or not np.isfinite(row["p_adjusted"]):
        return str(status)
    mark = "*" if row.get("significant") else ""
    short = {"significant": "", "not significant": "", "restates class": "restates class\n"}.get(status, f"{status}\n")
    return f"{short}p_adj={row['p_adjusted']:.2g}{mark}"


def tcav_vs_random(path: Path, rows: list[dict[str, Any]], dpi: int) -> Path:
    """Per layer and concept: TCAV of the random (permuted-concept) fits (box) and of the concept's refits
    (points), its status and Bonferroni-adjusted p above; an undefined test shows its status only."""
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    concepts = list(dict.fromkeys(r["concept"] for r in rows))
    fig, axes = plt.subplots(len(layers), 1, figsize=(max(6, 0.9 * len(concepts) + 2), 2.6 * len(layers)),
                             squeeze=False)
    for ax, layer in zip(axes[:, 0], layers, strict=True):
        sub = {r["concept"]: r for r in rows if r["layer"] == layer}
        for i, concept in enumerate(concepts):
            if concept not in sub:
                continue
            r = sub[concept]
            if r.get("tcav_random"):
                ax.boxplot([r["tcav_random"]], positions=[i], widths=0.5, showfliers=False)
            mine = np.asarray(r.get("tcav_repeats") or [])
            ax.scatter(np.full(len(mine), i + 0.25), mine, s=8, color="tab:red", alpha=0.6)
            ax.text(i, 1.05, _verdict(r), ha="center", fontsize=6,
                    color="grey" if r.get("status") == "undefined" else "black")
        ax.set_xticks(range(len(concepts)), concepts, rotation=30, ha="right", fontsize=7)
        ax.set_xlim(-0.6, len(concepts) - 0.4)  # the same columns on every axis, with data or not
        ax.set_ylim(-0.05, 1.2)
        ax.set_ylabel("TCAV")
        ax.set_title(f"{layer}: concept refits (red) vs permuted-concept fits (box)", fontsize=8)
    fig.tight_layout()
    return _save(fig, path, dpi)
