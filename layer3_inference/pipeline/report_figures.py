"""The report's pictures of a slide: the tumour probability with the annotation drawn as a contour over it.

Drawing only (matplotlib, arrays in, PNG bytes out): `collect` reads the arrays, `report_slides` places the picture.
"""

from __future__ import annotations

import io

import numpy as np

FONT = 13  # points at 100 dpi: ~18 px in the page, never below ~12 px once the figure is scaled to the column
CONTOUR = "#ff1f1f"  # red: a colour no perceptually uniform map (viridis, cividis, magma) contains

def resize_nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """`mask` scaled to `shape` by nearest neighbour: the store's masks and the overlay differ in size."""
    rows = np.minimum((np.arange(shape[0]) * mask.shape[0] / shape[0]).astype(int), mask.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * mask.shape[1] / shape[1]).astype(int), mask.shape[1] - 1)
    return np.asarray(mask[np.ix_(rows, cols)])


def slide_figure(overlay: np.ndarray, tissue: np.ndarray | None, tumour: np.ndarray | None, colormap: str) -> bytes:
    """The probabilities (`overlay`, RGBA as the heatmap stage wrote it) over light-grey tissue, the annotated
    tumour as a contour on top, the colour bar and the legend outside the image so they hide no tissue."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.lines import Line2D

    h, w = overlay.shape[:2]
    base = np.full((h, w, 3), 255, np.uint8)
    if tissue is not None:
        base[resize_nearest(tissue > 0, (h, w))] = (215, 215, 215)
    fig, ax = plt.subplots(figsize=(7.5 * w / max(h, w) + 1.6, 7.5 * h / max(h, w) + 0.8), dpi=100)
    ax.imshow(base)
    ax.imshow(overlay)
    ax.set_axis_off()
    handles = [Line2D([], [], color="#d7d7d7", lw=8, label="tissue")]
    if tumour is not None and tumour.any():
        ax.contour(resize_nearest(tumour > 0, (h, w)).astype(float), levels=[0.5], colors=CONTOUR, linewidths=2)
        handles.append(Line2D([], [], color=CONTOUR, lw=2, label="annotated tumour"))
    bar = fig.colorbar(matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0, 1), colormap), ax=ax,
                       fraction=0.04, pad=0.02)
    bar.set_label("tumour probability", fontsize=FONT)
    bar.ax.tick_params(labelsize=FONT)
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=len(handles), frameon=False,
              fontsize=FONT)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
