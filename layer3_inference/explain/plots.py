"""Figures: one panel per patch (patch, Grad-CAM, Grad-CAM++, LIME), R^2 per layer per concept, and
concept TCAV against the random-direction baseline. Matplotlib's Agg backend: no display needed."""

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


def panel(path: Path, patch: np.ndarray, maps: dict[str, np.ndarray], title: str, dpi: int) -> Path:
    """Patch, then each map over a faded copy of the patch (CAMs 0..max, LIME symmetric around 0)."""
    names = [n for n in ("gradcam", "gradcam_pp", "lime") if n in maps]
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(3 * (1 + len(names)), 3.2))
    axes = np.atleast_1d(axes)
    axes[0].imshow(patch)
    axes[0].set_title("patch")
    labels = {"gradcam": "Grad-CAM", "gradcam_pp": "Grad-CAM++", "lime": "LIME (tumour weight)"}
    for ax, name in zip(axes[1:], names, strict=True):
        m = np.nan_to_num(maps[name])
        ax.imshow(patch, alpha=0.5)
        if name == "lime":
            lim = float(np.abs(m).max()) or 1.0
            im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=0.6)
        else:
            im = ax.imshow(m, cmap="jet", vmin=0, vmax=float(m.max()) or 1.0, alpha=0.5)
        fig.colorbar(im, ax=ax, fraction=0.046)
        ax.set_title(labels[name])
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path, dpi)


def r2_by_layer(path: Path, rows: list[dict[str, Any]], dpi: int) -> Path:
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    concepts = list(dict.fromkeys(r["concept"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(layers) + 3), 4))
    for concept in concepts:
        by = {r["layer"]: r.get("r2_heldout", np.nan) for r in rows if r["concept"] == concept}
        ax.plot(range(len(layers)), [by.get(layer, np.nan) for layer in layers], marker="o", label=concept)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(layers)), layers, rotation=30, ha="right")
    ax.set_ylabel("held-out R^2 (nested CV)")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path, dpi)


def tcav_vs_random(path: Path, rows: list[dict[str, Any]], dpi: int) -> Path:
    """Per layer: random-direction TCAVs (box) and the concept's bootstrap TCAVs (points), per concept."""
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    concepts = list(dict.fromkeys(r["concept"] for r in rows))
    fig, axes = plt.subplots(len(layers), 1, figsize=(max(6, 0.9 * len(concepts) + 2), 2.6 * len(layers)),
                             squeeze=False)
    for ax, layer in zip(axes[:, 0], layers, strict=True):
        sub = {r["concept"]: r for r in rows if r["layer"] == layer}
        for i, concept in enumerate(concepts):
            r = sub.get(concept, {})
            if "random_tcav" not in r:
                continue
            ax.boxplot([r["random_tcav"]], positions=[i], widths=0.5, showfliers=False)
            boot = np.asarray(r["tcav_boot"])
            ax.scatter(np.full(len(boot), i + 0.25), boot, s=8, color="tab:red", alpha=0.6)
            mark = "*" if r.get("significant") else ""
            ax.text(i, 1.05, f"p={r['p_value']:.2g}{mark}", ha="center", fontsize=6)
        ax.set_xticks(range(len(concepts)), concepts, rotation=30, ha="right", fontsize=7)
        ax.set_ylim(-0.05, 1.15)
        ax.set_ylabel("TCAV")
        ax.set_title(f"{layer}: concept (red, bootstrap) vs random directions (box)", fontsize=8)
    fig.tight_layout()
    return _save(fig, path, dpi)
