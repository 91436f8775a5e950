"""Concept measures per patch: nuclei morphology and Haralick texture over nuclei pixels.

Nuclei come from colour deconvolution (Ruifrok & Johnston, `skimage.color.rgb2hed`): the haematoxylin
optical density, thresholded by Otsu, with a watershed on the distance transform splitting touching
nuclei; or from supplied label masks. Texture is the grey-level co-occurrence matrix of the patch's
grey image restricted to pairs of nuclei pixels: stroma is given grey level 0 and level 0's row and
column are dropped, so stroma pixels never enter a pair.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from skimage.color import rgb2gray, rgb2hed
from skimage.feature import graycomatrix, graycoprops, peak_local_max
from skimage.filters import threshold_otsu
from skimage.measure import label, regionprops
from skimage.segmentation import watershed

from layer2_training.progress import ticking
from layer3_inference.explain.config import CONCEPTS, ConceptConfig

_GLCM_PROPS = {"glcm_contrast": "contrast", "glcm_asm": "ASM", "glcm_correlation": "correlation",
               "glcm_dissimilarity": "dissimilarity"}


def haematoxylin(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin optical density per pixel (higher = more stain)."""
    return np.asarray(rgb2hed(rgb)[..., 0], dtype=np.float64)


def segment_nuclei(rgb: np.ndarray, min_area: int, min_distance: int) -> np.ndarray:
    """Labelled nuclei (0 = background), touching nuclei split by a distance-transform watershed."""
    h = haematoxylin(rgb)
    if float(h.max() - h.min()) < 1e-6:  # a flat patch has no nuclei, and Otsu needs two levels
        return np.zeros(h.shape, np.int32)
    mask = h > threshold_otsu(h)
    mask = ndimage.binary_fill_holes(ndimage.binary_opening(mask))
    mask = _drop_small(label(mask), min_area) > 0
    if not mask.any():
        return np.zeros(h.shape, np.int32)
    dist = ndimage.distance_transform_edt(mask)
    blobs = label(mask)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=blobs, exclude_border=False)
    markers = np.zeros(h.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    # a blob whose plateau yields no peak still is a nucleus: seed it at its own maximum
    for region in regionprops(blobs):
        if not markers[tuple(region.coords.T)].any():
            r, c = region.coords[int(np.argmax(dist[tuple(region.coords.T)]))]
            markers[r, c] = markers.max() + 1
    return _drop_small(np.asarray(watershed(-dist, markers, mask=mask), np.int32), min_area)


def _drop_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    sizes = np.bincount(labels.ravel())
    small = np.flatnonzero(sizes < min_area)
    out = labels.copy()
    out[np.isin(out, small[small > 0])] = 0
    return out


def morphology(labels: np.ndarray) -> dict[str, float]:
    """Count, mean area (px), mean perimeter (px) and mean eccentricity of the labelled nuclei."""
    props = regionprops(labels)
    if not props:
        nan = math.nan
        return {"nuclei_count": 0.0, "nuclei_area": nan, "nuclei_perimeter": nan, "nuclei_eccentricity": nan}
    return {"nuclei_count": float(len(props)),
            "nuclei_area": float(np.mean([p.area for p in props])),
            "nuclei_perimeter": float(np.mean([p.perimeter for p in props])),
            "nuclei_eccentricity": float(np.mean([p.eccentricity for p in props]))}


def masked_glcm(grey: np.ndarray, mask: np.ndarray, levels: int, distances: list[int],
                angles_deg: list[float]) -> np.ndarray:
    """Co-occurrence counts (levels, levels, n_dist, n_angle) of pairs whose two pixels are in `mask`.

    `grey` is uint8 0-255, quantised to `levels` equal bins.
    """
    q = (grey.astype(np.int64) * levels) // 256 + 1
    q[~mask] = 0
    angles = [math.radians(a) for a in angles_deg]
    full = graycomatrix(q.astype(np.uint16), distances, angles, levels=levels + 1, symmetric=True, normed=False)
    return np.asarray(full[1:, 1:], dtype=np.float64)


def texture(glcm: np.ndarray) -> dict[str, float]:
    """Haralick contrast, ASM, correlation, dissimilarity, averaged over distances and angles."""
    totals = glcm.sum(axis=(0, 1))
    if not (totals > 0).any():
        return {key: math.nan for key in _GLCM_PROPS}
    used = glcm[:, :, totals > 0][:, :, :, None]  # offsets with no nuclei pair would give 0/0
    normed = used / used.sum(axis=(0, 1), keepdims=True)
    out = {}
    for key, prop in _GLCM_PROPS.items():
        values = graycoprops(normed, prop)
        # a single-grey-level nucleus set has no variance: correlation is undefined there, and graycoprops
        # reports 1; we report NaN rather than a perfect correlation
        if prop == "correlation" and np.count_nonzero(normed.sum(axis=(1, 2, 3))) < 2:
            out[key] = math.nan
        else:
            out[key] = float(np.mean(values))
    return out


def measure(rgb: np.ndarray, cfg: ConceptConfig, labels: np.ndarray | None = None) -> dict[str, float]:
    """All concept measures of one RGB uint8 patch; `labels` replaces segmentation when given."""
    if labels is None:
        labels = segment_nuclei(rgb, cfg.min_nucleus_area, cfg.min_distance)
    grey = np.clip(np.round(rgb2gray(rgb) * 255), 0, 255).astype(np.uint8)
    glcm = masked_glcm(grey, labels > 0, cfg.glcm_levels, cfg.glcm_distances, cfg.glcm_angles)
    return {**morphology(labels), **texture(glcm)}


def measure_all(patches: np.ndarray, cfg: ConceptConfig, masks: np.ndarray | None = None) -> np.ndarray:
    """(n, len(CONCEPTS)) float64, columns in `CONCEPTS` order; NaN where a measure is undefined."""
    rows = []
    for i, rgb in enumerate(ticking(list(patches), "rcv: concept measures", "patches")):
        values = measure(rgb, cfg, None if masks is None else masks[i])
        rows.append([values[name] for name in CONCEPTS])
    return np.asarray(rows, dtype=np.float64).reshape(len(patches), len(CONCEPTS))
