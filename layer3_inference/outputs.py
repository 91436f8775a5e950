"""Per-slide outputs: rank 0, holding `OUT/.<stem>.lock`, writes `OUT/.<stem>.<host>-<pid>.partial/` and renames it
to `OUT/<stem>/` when complete.

A slide is finished exactly when `OUT/<stem>/summary.json` exists (written last, before the rename) and so does
every file its `files` lists; readers refuse anything else. Files: `probabilities.h5` (grid, coordinates, map,
tissue mask), `grid.npy`, `heatmap.png` (thumbnail + colour bar), `overlay.png` (RGBA, transparent where there is
no prediction), `<stem>.geojson` (QuPath) and `summary.json`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image

from layer1_patches import __version__
from layer1_patches.colour import ColourStats
from layer1_patches.masks import Mask
from layer1_patches.shared import signals
from layer1_patches.shared.atomic import remove_inside
from layer1_patches.shared.cohort import output_stem
from layer1_patches.shared.errors import CamnetError, os_reason
from layer1_patches.shared.locks import writer_partial
from layer1_patches.slide import Slide, WorkingResolution
from layer3_inference import domain
from layer3_inference.config import HeatmapConfig, ScoreConfig
from layer3_inference.geojson import feature_collection, tile_features, tumour_regions
from layer3_inference.grid import Raster, TissueGrid, map_shape, render_map, resample_mask
from layer3_inference.model import ModelSpec
from layer3_inference.summaries import HeatmapSummary, to_json

SUMMARY = "summary.json"
PROBS = "probabilities.h5"


LEGACY_FILES = (PROBS, "heatmap.png", "overlay.png")  # summaries before `files` was added listed none


def final_dir(out_dir: Path, slide: Path) -> Path:
    return Path(out_dir) / output_stem(slide)


def finished_summary(final: Path) -> dict[str, Any] | None:
    """The summary of a finished slide output: it exists and every file it lists does; else None."""
    try:
        data = json.loads((final / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    files = data.get("files") or LEGACY_FILES
    if not isinstance(files, list | tuple) or not all(isinstance(f, str) and (final / f).is_file() for f in files):
        return None
    return data


def finished_hash(final: Path) -> str | None:
    """The run hash of a finished slide output, None when there is none (partial, missing or incomplete)."""
    data = finished_summary(final)
    return None if data is None else str(data.get("run_hash", ""))


def slide_score(probs: np.ndarray, cfg: ScoreConfig) -> float:
    if len(probs) == 0:
        return 0.0
    if cfg.method == "max":
        return float(np.max(probs))
    return float(np.percentile(probs, cfg.percentile))


@dataclass(frozen=True)
class SlideInfo:
    name: str
    path: str
    dimensions: tuple[int, int]
    mpp: float
    res: WorkingResolution
    tissue: Mask
    thumbnail: np.ndarray
    thumb_ds: tuple[float, float]

    @classmethod
    def of(cls, slide: Slide, res: WorkingResolution, tissue: Mask, thumb_size: int) -> SlideInfo:
        thumb, ds_x, ds_y = slide.read_downsampled(max(slide.dimensions) / thumb_size)
        return cls(slide.name, str(slide.path.resolve()), slide.dimensions, float(slide.mpp or 0.0), res, tissue,
                   thumb, (ds_x, ds_y))


def write_probabilities(path: Path, o: SlideOutput, prob_map: np.ndarray, raster: Raster) -> None:
    # Built in memory (a few MB), then written as plain bytes: HDF5 writing straight to a full disk cannot close
    # the file, and h5py then crashes freeing it (see `discard_h5`); a failed plain write is an ordinary OSError.
    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        _fill_probabilities(f, o, prob_map, (raster.ds_x, raster.ds_y))
    path.write_bytes(image.getbuffer())


def _fill_probabilities(f: h5py.File, o: SlideOutput, prob_map: np.ndarray, map_ds: tuple[float, float]) -> None:
    info, grid, probs = o.info, o.grid, o.probs
    f.create_dataset("coords", data=grid.coords, compression="gzip")
    f.create_dataset("prob", data=probs.astype(np.float32), compression="gzip")
    f.create_dataset("index", data=grid.index, compression="gzip")
    f.create_dataset("tissue_fraction", data=grid.tissue_fraction, compression="gzip")
    f.create_dataset("grid", data=grid.to_grid(probs), compression="gzip")
    pm = f.create_dataset("map", data=prob_map, compression="gzip")
    pm.attrs.update({"ds_x": map_ds[0], "ds_y": map_ds[1]})
    tissue = f.create_dataset("tissue", data=info.tissue.array, compression="gzip")
    tissue.attrs.update({"ds_x": info.tissue.ds_x, "ds_y": info.tissue.ds_y})
    f.attrs.update({
        "slide_name": info.name, "slide_path": info.path, "width": info.dimensions[0],
        "height": info.dimensions[1], "mpp": info.mpp, "level": info.res.level,
        "downsample": info.res.downsample, "working_mpp": info.res.mpp, "footprint": grid.footprint,
        "step": grid.step, "threshold": o.threshold, "coords": "level-0 (x, y) top-left; NaN = no prediction",
        "package_version": __version__})


@dataclass(frozen=True)
class Probabilities:
    """A finished slide's predictions, as evaluation reads them."""

    slide_name: str
    dimensions: tuple[int, int]
    mpp: float
    coords: np.ndarray
    prob: np.ndarray
    footprint: int
    threshold: float
    tissue: Mask


def read_probabilities(final: Path) -> Probabilities:
    if finished_hash(final) is None:
        raise CamnetError(f"heatmap output {final}: not finished (no {SUMMARY})")
    path = final / PROBS
    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            tissue = f["tissue"]
            return Probabilities(str(a["slide_name"]), (int(a["width"]), int(a["height"])), float(a["mpp"]),
                                 f["coords"][()], f["prob"][()], int(a["footprint"]), float(a["threshold"]),
                                 Mask(tissue[()], float(tissue.attrs["ds_x"]), float(tissue.attrs["ds_y"])))
    except (OSError, KeyError) as err:
        raise CamnetError(f"heatmap output {path}: unreadable ({err})") from None


def overlay_rgba(prob_map: np.ndarray, colormap: str, alpha: float) -> np.ndarray:
    """Colour-mapped probabilities; fully transparent where there is no prediction."""
    import matplotlib

    finite = np.isfinite(prob_map)
    rgba = matplotlib.colormaps[colormap](np.where(finite, prob_map, 0.0))
    rgba[..., 3] = np.where(finite, alpha, 0.0)
    return np.asarray(np.round(rgba * 255), dtype=np.uint8)


def write_heatmap_png(path: Path, thumbnail: np.ndarray, overlay: np.ndarray, colormap: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    a = overlay[..., 3:4].astype(np.float32) / 255
    blended = (thumbnail.astype(np.float32) * (1 - a) + overlay[..., :3].astype(np.float32) * a).astype(np.uint8)
    h, w = blended.shape[:2]
    fig, ax = plt.subplots(figsize=(8 * w / max(h, w) + 1.5, 8 * h / max(h, w)), dpi=max(100, max(h, w) // 8))
    ax.imshow(blended)
    ax.set_axis_off()
    ax.set_title(title, fontsize=13)  # the report shows this picture ~640 px wide: 9 pt came out at ~8 px
    mappable = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0, 1), colormap)
    bar = fig.colorbar(mappable, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label("tumour probability", fontsize=13)
    bar.ax.tick_params(labelsize=12)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)


@dataclass(frozen=True)
class SlideOutput:
    """Everything one slide's outputs are made of: the slide, its grid and probabilities, and how they came."""

    info: SlideInfo
    grid: TissueGrid
    probs: np.ndarray
    cfg: HeatmapConfig
    spec: ModelSpec
    threshold: float
    digest: str  # run hash: config + model
    times: dict[str, float]
    n_ranks: int
    start: float  # perf_counter() when the slide began
    colour: ColourStats | None = None  # the predicted patches' stained pixels, all ranks


def write_slide(final: Path, o: SlideOutput) -> HeatmapSummary:
    """Write every output of one slide, then rename the folder into place; returns the summary."""
    info, grid, probs, cfg, threshold, times = o.info, o.grid, o.probs, o.cfg, o.threshold, o.times
    tmp = writer_partial(final)  # this writer's own: the caller holds `final`'s lock
    root = final.parent
    try:
        remove_inside(tmp, root)
        tmp.mkdir(parents=True)
        out = cfg.output
        raster = map_shape(info.dimensions, out.map_downsample)
        ds_x, ds_y = raster.ds_x, raster.ds_y
        prob_map = render_map(grid.coords, probs, grid.footprint, raster, resample_mask(info.tissue, raster),
                              out.smooth_sigma)
        write_probabilities(tmp / PROBS, o, prob_map, raster)
        if out.npy:
            np.save(tmp / "grid.npy", grid.to_grid(probs))
        th, tw = info.thumbnail.shape[:2]
        t_ds = info.thumb_ds
        thumb = Raster((th, tw), t_ds[0], t_ds[1])
        thumb_map = render_map(grid.coords, probs, grid.footprint, thumb, resample_mask(info.tissue, thumb),
                               out.smooth_sigma * ds_x / t_ds[0])
        overlay = overlay_rgba(thumb_map, out.colormap, out.alpha)
        Image.fromarray(overlay, "RGBA").save(tmp / "overlay.png")
        write_heatmap_png(tmp / "heatmap.png", info.thumbnail, overlay, out.colormap,
                          f"{info.name}: tumour probability ({len(grid)} patches)")
        um2_per_px = ds_x * ds_y * info.mpp ** 2
        regions = tumour_regions(prob_map, threshold, (ds_x, ds_y), info.dimensions,
                                 out.min_region_um2 / um2_per_px if um2_per_px else 0.0)
        tiles = tile_features(grid, probs, threshold) if out.geojson_tiles else []
        geojson = feature_collection(info.name, regions + tiles)
        (tmp / f"{info.name}.geojson").write_text(json.dumps(geojson, separators=(",", ":")))
        tissue_px = float(info.tissue.array.sum())
        check = domain.check_slide(o.colour, o.spec.colour, probs, threshold, cfg.warnings)
        summary = HeatmapSummary(
            slide=info.name, slide_path=info.path, run_hash=o.digest, model=o.spec.identity(),
            patches=len(grid), grid_shape=list(grid.shape), footprint=grid.footprint, step=grid.step,
            level=info.res.level, downsample=info.res.downsample, working_mpp=info.res.mpp,
            mpp=info.mpp, dimensions=list(info.dimensions),
            tissue_area_mm2=tissue_px * info.tissue.ds_x * info.tissue.ds_y * info.mpp ** 2 / 1e6,
            tumour_area_mm2=float(np.sum(prob_map >= threshold)) * um2_per_px / 1e6,
            threshold=threshold, slide_score=slide_score(probs, cfg.score), score_method=cfg.score.method,
            max_probability=float(probs.max()), mean_probability=float(probs.mean()),
            tumour_regions=len(regions), ranks=o.n_ranks, batch_size=cfg.reader.batch_size,
            reader_threads=cfg.reader.threads, times={k: round(v, 3) for k, v in times.items()},
            seconds=round(time.perf_counter() - o.start, 3),
            patches_per_s=round(len(grid) / max(times.get("infer_s", 0.0), 1e-9), 1),
            package_version=__version__, files=sorted(p.name for p in tmp.iterdir()) + [SUMMARY], colour=o.colour,
            colour_shift=None if check.colour_shift is None else round(check.colour_shift, 3),
            tumour_share=round(check.tumour_share, 6), warnings=check.warnings)
        (tmp / SUMMARY).write_text(to_json(summary))
        signals.check()  # interrupted (its exception swallowed by a library's cleanup): never rename into place
        if os.path.lexists(final):  # finished ones were skipped unless --overwrite; anything else is a leftover
            remove_inside(final, root)
        os.replace(tmp, final)
        return summary
    except OSError as err:
        raise CamnetError(f"output {final}: cannot write ({os_reason(err)})") from None
    finally:
        with contextlib.suppress(OSError):
            remove_inside(tmp, root)
