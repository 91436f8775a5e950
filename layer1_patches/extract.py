"""One slide (or one dense shard of it) to one HDF5 patch store: the unit a SLURM array task runs."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from layer1_patches import __version__
from layer1_patches.annotations import Polygon, check_inside, load_annotations, tumour_mask, tumour_region
from layer1_patches.config import Layer1Config, MetadataConfig, ReaderConfig
from layer1_patches.filters import filters_from_config
from layer1_patches.fractions import TumourGeometry
from layer1_patches.masks import masker_from_config
from layer1_patches.mpp import MppTable, read_mpp_table
from layer1_patches.peers import PatchGeometry, peer_coords_attrs
from layer1_patches.reading import PatchSource, open_source
from layer1_patches.shared.cohort import check_same_slide, output_stem, slide_label
from layer1_patches.shared.errors import CamnetError, os_reason
from layer1_patches.shared.locks import output_lock
from layer1_patches.shared.typedconfig import data_hash, to_dict
from layer1_patches.slide import Slide, WorkingResolution, resolve_resolution
from layer1_patches.store import PatchStore, PatchWriter, SlideMeta, is_complete
from layer1_patches.tiler import (
    CandidateStream,
    DenseTiler,
    RandomTiler,
    SlideField,
    Tiler,
    label_patches,
    shard,
)

log = logging.getLogger(__name__)
PROGRESS_SECONDS = 30.0
EXACT_FRACTIONS = "exact polygon areas"  # in the store hash of annotated slides: see `store_hash`


@dataclass(frozen=True)
class ExtractRequest:
    slide: Path
    out_dir: Path
    config: Layer1Config
    annotation: Path | None = None
    shard: tuple[int, int] | None = None  # (index, count) of a dense shard
    overwrite: bool = False
    task_seed: int = 0  # added to sampling.seed (SLURM array tasks pass their id)

    @property
    def output(self) -> Path:
        return output_path(self.out_dir, self.slide, self.shard)


@dataclass
class ExtractResult:
    slide: str
    output: str
    status: str  # "done", "skipped", "failed" or "busy" (another run holds the output's lock)
    counts: dict[str, int] = field(default_factory=dict)  # accepted patches by class
    requested: dict[str, int] = field(default_factory=dict)
    rejects: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""


def output_path(out_dir: Path, slide: Path, shard_spec: tuple[int, int] | None) -> Path:
    stem = output_stem(slide)
    if shard_spec is None:
        return Path(out_dir) / f"{stem}.h5"
    i, k = shard_spec
    return Path(out_dir) / f"{stem}.shard-{i:03d}-of-{k:03d}.h5"


def parse_shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or int(match.group(2)) < 1 or int(match.group(1)) >= int(match.group(2)):
        raise CamnetError(f"--shard {text!r}: expected i/K with 0 <= i < K, e.g. 0/4")
    return int(match.group(1)), int(match.group(2))


def slide_identity(stem: str, cfg: MetadataConfig) -> dict[str, str]:
    """Patient, node and centre from the file name (Camelyon17: patient_XXX_node_Y)."""
    match = re.search(cfg.name_regex, stem)
    found = {k: v for k, v in (match.groupdict() if match else {}).items() if v is not None}
    patient = found.get("patient", "")
    centre = found.get("centre", "")
    if not centre and patient.isdigit() and cfg.patients_per_centre:
        centre = str(int(patient) // cfg.patients_per_centre)
    return {"patient": patient, "node": found.get("node", ""), "centre": centre}


def make_tiler(cfg: Layer1Config, seed: int) -> Tiler:
    if cfg.sampling.mode == "dense":
        dense = cfg.sampling.dense
        stride = dense.stride if dense.stride is not None else cfg.patch_size - dense.overlap
        return DenseTiler(stride)
    return RandomTiler(cfg.sampling.random, seed)


def store_hash(cfg: Layer1Config, annotated: bool, table_mpp: float | None = None) -> str:
    """The identity of a store's content: the resolved config without `reader`, whose threads and batch size change
    the speed of extraction, never its patches (a rerun with other reader settings skips a finished store).

    With an annotation it also names how tumour fractions are computed: stores whose fractions came from the
    rasterised annotation (before issue 14) have wrong labels near annotation edges, so a rerun must not take them
    for finished. Without one every fraction is 0 either way, and the hash is the one those versions wrote.

    `resolution.mpp_table` is a path; what the store depends on is the slide's row (`table_mpp`), so an edited row
    redoes that slide alone, and a config without a table keeps the hash it had before the key existed.
    """
    data = store_identity(cfg, table_mpp)
    if annotated:
        data["tumour_fraction"] = EXACT_FRACTIONS
    return data_hash(data)


def legacy_store_hash(cfg: Layer1Config) -> str:
    """The hash CamNet 0.1.0 wrote before `reader.batch` became `reader.batch_size` and `reader` left the identity:
    a store it finished is still the same content, so a rerun skips it instead of refusing it."""
    data = _identity(cfg, None)
    data["reader"] = {"threads": cfg.reader.threads, "batch": cfg.reader.batch_size}
    return data_hash(data)


def store_identity(cfg: Layer1Config, table_mpp: float | None = None) -> dict[str, Any]:
    """What a store's patches depend on: the config without `reader` (speed only) and without the mpp table's path
    (its row for the slide, `table_mpp`, instead). The pipeline's stamps use the same rule (pipeline/stages.py)."""
    return _identity(replace(cfg, reader=ReaderConfig()), table_mpp)


def _identity(cfg: Layer1Config, table_mpp: float | None) -> dict[str, Any]:
    data = to_dict(cfg)
    del data["resolution"]["mpp_table"]
    del data["reader"]["backend"]  # newer than finished stores, and speed only: both backends give the same pixels
    if table_mpp is not None:
        data["resolution"]["table_mpp"] = table_mpp
    return data


def table_mpp(req: ExtractRequest) -> tuple[MppTable | None, float | None]:
    """The cohort's mpp table (None without one) and this slide's row in it (None when not listed)."""
    path = req.config.resolution.mpp_table
    if not path:
        return None, None
    table = read_mpp_table(Path(path))
    return table, table.lookup(req.slide)


def extract_slide(req: ExtractRequest) -> ExtractResult:
    """Run one extraction; raises `CamnetError` on bad input, leaving no file under the final name.

    The output's lock is held from the completeness check to the rename: a second writer of the same store
    (two runs of one slide) stops with `OutputBusy` instead of renaming this one's half-written file.
    """
    start = time.monotonic()
    out = req.output
    if req.shard is not None and req.config.sampling.mode != "dense":
        raise CamnetError("--shard needs sampling.mode: dense (random sampling is not split)")
    if not req.overwrite and is_complete(out):  # a finished store needs no lock: it is only read
        return _skip_finished(req, start)
    try:
        req.out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CamnetError(f"output directory {req.out_dir}: cannot create ({os_reason(err)})") from None
    with output_lock(out):
        if not req.overwrite and is_complete(out):  # finished by another writer while we waited for nothing
            return _skip_finished(req, start)
        return _extract(req, start)


def _skip_finished(req: ExtractRequest, start: float) -> ExtractResult:
    """A finished store of the same config and the same slide is skipped; anything else is an error."""
    out, cfg = req.output, req.config
    try:
        with PatchStore(out) as done:
            attrs = done.attrs
    except CamnetError as err:  # damaged: a plain rerun would meet it again
        raise CamnetError(f"{err} (extract --overwrite redoes it)") from None
    refusal = _refusal(attrs, cfg, req.annotation, table_mpp(req)[1])
    if refusal:
        raise CamnetError(f"{out}: {refusal}; pass --overwrite to redo it")
    check_same_slide(out, str(attrs.get("slide_path", "")), req.slide)
    return ExtractResult(slide_label(req.slide), str(out), "skipped", seconds=time.monotonic() - start)


def _refusal(attrs: dict[str, object], cfg: Layer1Config, annotation: Path | None, listed: float | None) -> str:
    """Why a finished store is not what this run would write ("" when it is)."""
    found, had = attrs.get("config_hash"), str(attrs.get("annotation", ""))
    if had and annotation is None:
        return f"finished with annotation {had}, this run has none"
    if annotation is not None and not had:
        return f"finished without an annotation, this run has {annotation}"
    if found == store_hash(cfg, annotation is not None, listed):
        return ""
    if annotation is None and found == legacy_store_hash(cfg):
        return ""
    if annotation is not None and found in (store_hash(cfg, annotated=False), legacy_store_hash(cfg)):
        return (f"finished by an earlier CamNet whose tumour fractions came from the annotation rasterised at "
                f"{cfg.annotation.downsample:g}x, so labels near annotation edges can be wrong")
    return "finished with a different config"


def _extract(req: ExtractRequest, start: float) -> ExtractResult:
    cfg = req.config
    out = req.output
    table, listed = table_mpp(req)
    digest = store_hash(cfg, req.annotation is not None, listed)
    seed = cfg.sampling.seed + req.task_seed
    with Slide(req.slide, cfg.resolution.assume_mpp, table, tiles=cfg.reader.backend == "auto") as slide:
        res = resolve_resolution(slide, cfg.resolution)
        tissue = masker_from_config(cfg.tissue)(slide)
        if not tissue.array.any():
            raise CamnetError(f"slide {req.slide}: no tissue found (tissue.method {cfg.tissue.method})")
        thumbnails: dict[str, np.ndarray] = {}
        region = None
        if req.annotation is not None:
            polygons = load_annotations(req.annotation)
            check_inside(polygons, req.annotation, slide.dimensions)
            # labels come from exact areas: the raster moves edges by up to half a pixel (issue 14)
            region = TumourGeometry.of(tumour_region(polygons, cfg.annotation))
            thumbnails["tumour"] = tumour_thumbnail(polygons, cfg, slide.dimensions)
        field_ = SlideField(slide.dimensions, res.footprint(cfg.patch_size), res.downsample, tissue, region,
                            cfg.filters.min_tissue_fraction, cfg.labels)
        tiler = make_tiler(cfg, seed)
        streams = tiler.plan(field_)
        if req.shard is not None:
            streams = [shard(s, *req.shard) for s in streams]
        meta = slide_meta(req, slide, res, tiler, seed, digest)
        result = ExtractResult(slide.name, str(out), "done")
        try:
            with PatchWriter(out, cfg.patch_size, cfg.output.codec, cfg.output.gzip_level,
                             cfg.output.jpeg_quality) as writer:
                source = open_source(slide, res, cfg.patch_size, filters_from_config(cfg.filters))
                for stream in streams:
                    _run_stream(stream, source, writer, cfg, result)
                result.seconds = time.monotonic() - start
                writer.finish(
                    meta,
                    {**peer_coords_attrs(patch_geometry(res, cfg.patch_size)),
                     "level_dim": list(slide.level_dimensions[res.level]), "name": slide.name},
                    {"rejects": result.rejects, "counts": result.counts, "requested": result.requested,
                     "config": to_dict(cfg), "annotation": str(req.annotation or ""),
                     "mpp_from_metadata": slide.mpp_from_metadata, "mpp_source": slide.mpp_source,
                     "reader": source.name, "seconds": round(result.seconds, 3)},
                    {"tissue": tissue.thumbnail(cfg.output.thumbnail_size), **thumbnails})
        except OSError as err:  # disk full, read-only, quota: leaving the writer removed its partial file
            raise CamnetError(f"output {out}: cannot write ({os_reason(err)})") from None
    total = sum(result.counts.values())
    log.info("%s: %d patches %s, rejects %s, %.1f s (read by %s)", slide.name, total, result.counts, result.rejects,
             result.seconds, source.name)
    return result


def tumour_thumbnail(polygons: list[Polygon], cfg: Layer1Config, dimensions: tuple[int, int]) -> np.ndarray:
    """The stored tumour picture, rasterised near its own size: labels no longer need the full 16x raster, which
    took seconds per slide (6 CPU s for a 50,000 px slide with 10,000 annotation vertices) only to be shrunk."""
    coarse = max(cfg.annotation.downsample, max(dimensions) / cfg.output.thumbnail_size)
    mask = tumour_mask(polygons, replace(cfg.annotation, downsample=coarse), dimensions)
    return mask.thumbnail(cfg.output.thumbnail_size)


def patch_geometry(res: WorkingResolution, patch_size: int) -> PatchGeometry:
    """The numbers `PatchReader` reads by, for the attributes peer tools read the store with."""
    return PatchGeometry(res.level, res.level_downsample, res.downsample, res.read_size(patch_size),
                         res.footprint(patch_size), res.magnification * res.downsample)


def slide_meta(req: ExtractRequest, slide: Slide, res: WorkingResolution, tiler: Tiler, seed: int,
               digest: str) -> SlideMeta:
    cfg = req.config
    who = slide_identity(slide.name, cfg.metadata)
    return SlideMeta(
        slide_name=slide.name, slide_path=str(Path(req.slide).resolve()), patient=who["patient"], node=who["node"],
        centre=who["centre"], vendor=slide.vendor, mpp=float(slide.mpp or 0.0), working_mpp=res.mpp,
        magnification=res.magnification, level=res.level, downsample=res.downsample, patch_size=cfg.patch_size,
        stride=tiler.stride if isinstance(tiler, DenseTiler) else 0, sampling_mode=cfg.sampling.mode, seed=seed,
        shard=f"{req.shard[0]}/{req.shard[1]}" if req.shard else "", package_version=__version__,
        config_hash=digest)


def _run_stream(stream: CandidateStream, source: PatchSource, writer: PatchWriter,
                cfg: Layer1Config, result: ExtractResult) -> None:
    for why, n in stream.prefiltered.items():
        result.rejects[why] = result.rejects.get(why, 0) + n
    coords, tissue_fraction, tumour_fraction = stream.coords, stream.tissue_fraction, stream.tumour_fraction
    labels, _ = label_patches(tumour_fraction, cfg.labels)
    if stream.quota is not None:
        result.requested[stream.name] = stream.quota
    batch = cfg.reader.batch_size
    buf = writer.buffer(batch)
    keep: list[int] = []
    accepted = 0
    last_log = time.monotonic()

    def flush() -> None:
        idx = np.asarray(keep, dtype=np.int64)
        writer.append(buf[:len(keep)], coords[idx], labels[idx], tumour_fraction[idx], tissue_fraction[idx])
        for value, count in zip(*np.unique(labels[idx], return_counts=True), strict=True):
            cls = "tumour" if value == 1 else "normal"
            result.counts[cls] = result.counts.get(cls, 0) + int(count)
        keep.clear()

    result.counts.setdefault("tumour", 0)
    result.counts.setdefault("normal", 0)
    for i, (_, reason) in enumerate(source.patches(coords, cfg.reader.threads, 4 * batch, lambda: buf[len(keep)])):
        if reason is not None:
            result.rejects[reason] = result.rejects.get(reason, 0) + 1
        else:  # the patch is in buf[len(keep)] already (the slot)
            keep.append(i)
            accepted += 1
            if len(keep) == batch:
                flush()
        if stream.quota is not None and accepted >= stream.quota:
            break
        if time.monotonic() - last_log > PROGRESS_SECONDS:
            last_log = time.monotonic()
            log.info("%s %s: %d/%d candidates tried, %d patches", result.slide, stream.name, i + 1,
                     len(coords), accepted)
    if keep:
        flush()
