"""Batched whole-slide inference: reader threads ahead of the model, ranks sharding the grid, rank 0 writing.

Reading and decoding run in a producer thread (itself fanning out to `reader.threads` threads through
Layer 1's patch source: tiles decoded once where the slide allows, else OpenSlide) that fills a bounded queue
of batches, so the model never waits on the slide unless reading is the bottleneck. Ranks take contiguous shares
of the grid cut at global batch boundaries, the last batch padded to full size: every patch is computed in the
same batch, at the same place, whatever the number of ranks, so 2-rank output equals 1-rank output bit for bit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from layer1_patches.colour import ColourAccumulator, merged_stats
from layer1_patches.masks import masker_from_config
from layer1_patches.mpp import read_mpp_table
from layer1_patches.reading import PatchSource, open_source
from layer1_patches.shared.cohort import check_same_slide, slide_label
from layer1_patches.shared.errors import CamnetError, os_reason
from layer1_patches.shared.launch import check_world_size, launched_size
from layer1_patches.shared.locks import OutputBusy, output_lock
from layer1_patches.shared.typedconfig import data_hash, to_dict
from layer1_patches.slide import Slide
from layer3_inference import outputs
from layer3_inference.config import HeatmapConfig, ReaderConfig, WarningsConfig
from layer3_inference.grid import plan_grid, shard_batches
from layer3_inference.model import ModelSpec, working_resolution

log = logging.getLogger(__name__)
ModelFn = Callable[[np.ndarray], np.ndarray]
# Colour statistics read a regular lattice of at least COLOUR_SIDE x COLOUR_SIDE pixels per patch: every pixel of
# a 256-px batch cost ~1.1 CPU s per 1,000 patches, the lattice 0.12 s, and 4,096 pixels per patch are plenty
COLOUR_SIDE = 64


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks; `allgather` returns every rank's object, in rank order."""

    rank: int = 0
    size: int = 1
    gather: Callable[[Any], list[Any]] | None = None

    def allgather(self, obj: Any) -> list[Any]:
        return [obj] if self.gather is None else list(self.gather(obj))


def init_ranks() -> Ranks:
    """Horovod (gloo or MPI) when launched with several ranks, mpi4py without Horovod, else one rank.

    Several ranks launched but a runtime that sees one (e.g. Horovod's gloo under srun without a rendezvous)
    is an error: every rank would compute and write the whole heatmap."""
    if launched_size() == 1:
        return Ranks()
    try:
        import horovod.tensorflow as hvd
    except ImportError:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        check_world_size("MPI (mpi4py)", comm.Get_size())
        return Ranks(comm.Get_rank(), comm.Get_size(), comm.allgather)
    from layer2_training.distributed import pin_gpu

    hvd.init()
    check_world_size("Horovod", hvd.size())
    pin_gpu(hvd.local_rank())
    return Ranks(hvd.rank(), hvd.size(), lambda obj: hvd.allgather_object(obj, name="camnet_layer3"))


def compile_model(model: Any, patch_size: int) -> ModelFn:
    """uint8 batches in, float32 probabilities out, through one traced graph."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec((None, patch_size, patch_size, 3), tf.uint8)])
    def run(x: tf.Tensor) -> tf.Tensor:
        return tf.reshape(model(tf.cast(x, tf.float32), training=False), [-1])

    return lambda batch: np.asarray(run(tf.constant(batch)), dtype=np.float32)


_DONE = object()


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _produce(q: queue.Queue[Any], source: PatchSource, coords: np.ndarray, rc: ReaderConfig, stop: threading.Event,
             on_batch: Callable[[np.ndarray], None] | None) -> None:
    size, batch = source.patch_size, rc.batch_size
    # each patch lands in its row of the batch being filled: the source calls the slot while `next(patches)` runs
    # below, when `buf` and `k` name that batch and row
    patches = source.patches(coords, rc.threads, 2 * batch + rc.threads, lambda: buf[k])
    try:
        for start in range(0, len(coords), batch):
            n = min(batch, len(coords) - start)
            buf = np.empty((batch, size, size, 3), dtype=np.uint8)
            for k in range(n):  # noqa: B007 - the slot reads k
                next(patches)  # into buf[k]
            buf[n:] = buf[n - 1]  # padding keeps one batch shape for every batch (see module docstring)
            if on_batch is not None:
                on_batch(buf[:n])
            if not _put(q, (buf, n), stop):
                return
        _put(q, _DONE, stop)
    except BaseException as err:  # noqa: BLE001 - handed to the consumer, which re-raises it
        _put(q, err, stop)
    finally:
        if isinstance(patches, Generator):
            patches.close()  # cancels reads still queued when the consumer stopped early


def _add_colour(colour: ColourAccumulator, patch_size: int, stats: dict[str, float], valid: np.ndarray) -> None:
    t0, step = time.perf_counter(), max(1, patch_size // COLOUR_SIDE)
    colour.add(valid[:, ::step, ::step])
    stats["colour_s"] = stats.get("colour_s", 0.0) + time.perf_counter() - t0


def read_batches(source: PatchSource, coords: np.ndarray, rc: ReaderConfig, stats: dict[str, float],
                 colour: ColourAccumulator | None = None) -> Iterator[tuple[np.ndarray, int]]:
    """(full-size batch, valid rows) in order, read in the background; `stats['wait_s']` = time starved. `colour`
    (if given) adds the valid rows of each batch on the reading thread (on the model's it held up each batch)."""
    q: queue.Queue[Any] = queue.Queue(maxsize=rc.prefetch)
    stop = threading.Event()
    on_batch = None if colour is None else partial(_add_colour, colour, source.patch_size, stats)
    worker = threading.Thread(target=_produce, args=(q, source, coords, rc, stop, on_batch), name="camnet-reader",
                              daemon=True)
    worker.start()
    try:
        while True:
            t0 = time.perf_counter()
            item = q.get()
            stats["wait_s"] = stats.get("wait_s", 0.0) + time.perf_counter() - t0
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


def predict(model_fn: ModelFn, source: PatchSource, coords: np.ndarray, rc: ReaderConfig,
            stats: dict[str, float], colour: ColourAccumulator | None = None) -> np.ndarray:
    """The model's probability for every patch at `coords`, read `rc.batch_size` at a time ahead of the model;
    `colour` (if given) accumulates the colour of exactly the patches the model saw (not the padding)."""
    out = np.empty(len(coords), dtype=np.float32)
    done = 0
    for buf, n in read_batches(source, coords, rc, stats, colour):
        t0 = time.perf_counter()
        out[done:done + n] = model_fn(buf)[:n]
        stats["model_s"] = stats.get("model_s", 0.0) + time.perf_counter() - t0
        done += n
    return out


@dataclass(frozen=True)
class HeatmapRequest:
    slide: Path
    out_dir: Path
    config: HeatmapConfig
    overwrite: bool = False


@dataclass
class HeatmapResult:
    slide: str
    output: str
    status: str  # done, skipped, failed or busy
    patches: int = 0
    score: float | None = None
    seconds: float = 0.0
    error: str = ""
    times: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # codes of the summary's warnings


def run_hash(cfg: HeatmapConfig, spec: ModelSpec) -> str:
    # the model's identity is part of the hash: the same config with another model is another result
    return _digest(heatmap_config_hash(cfg), spec.identity())


def heatmap_config_hash(cfg: HeatmapConfig) -> str:
    """The config's hash, with `warnings` only when it differs from the defaults: a config from before the section
    existed keeps its hash (its finished heatmaps are skipped, not refused), and changed limits redo the summary."""
    data = to_dict(cfg)
    if cfg.warnings == WarningsConfig():
        del data["warnings"]
    if cfg.match.mpp_table is None:  # the key is newer than some finished heatmaps
        del data["match"]["mpp_table"]
    return data_hash(data)


def legacy_run_hash(cfg: HeatmapConfig, spec: ModelSpec) -> str:
    """The hash CamNet 0.1.0 wrote, before the model's identity held its content hash: its model file path as
    spelled (relative to the run dir given), so an unchanged command still resumes its finished slides."""
    identity = {k: v for k, v in spec.identity().items() if k != "model_sha256"}
    return _digest(heatmap_config_hash(cfg), {**identity, "model_file": str(spec.model_file)})


def _digest(config: str, model: dict[str, Any]) -> str:
    canonical = json.dumps({"config": config, "model": model}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def heatmap_slide(req: HeatmapRequest, spec: ModelSpec, model_fn: ModelFn, ranks: Ranks) -> HeatmapResult:
    """One slide on every rank; rank 0 writes. Raises `CamnetError` (on every rank) on bad input."""
    final = outputs.final_dir(req.out_dir, req.slide)
    digest = run_hash(req.config, spec)
    # Rank 0 alone decides (skip, busy, error or write) and holds the lock, since it writes; the other ranks
    # learn its verdict in a gather before anyone raises, or they would wait in the next collective forever.
    with contextlib.ExitStack() as stack:
        verdict = ("", "")
        if ranks.rank == 0:
            verdict = _take(stack, req, spec, final, digest)
        kind, message = ranks.allgather(verdict)[0]
        if kind == "skipped":
            codes = print_finished_warnings(slide_label(req.slide), final) if ranks.rank == 0 else []
            return HeatmapResult(slide_label(req.slide), str(final), "skipped", warnings=codes)
        if kind:
            raise (OutputBusy if kind == "busy" else CamnetError)(message)
        return _heatmap(req, spec, model_fn, ranks, digest)


def _take(stack: contextlib.ExitStack, req: HeatmapRequest, spec: ModelSpec, final: Path,
          digest: str) -> tuple[str, str]:
    """Rank 0 takes `final`'s lock into `stack`: ("", "") when it is ours to write, else (kind, message)."""
    try:
        if not req.overwrite and _finished(req, spec, final, digest):  # finished: only read, no lock needed
            return "skipped", ""
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CamnetError(f"output directory {final.parent}: cannot create ({os_reason(err)})") from None
        stack.enter_context(output_lock(final))
        if not req.overwrite and _finished(req, spec, final, digest):  # another writer finished it meanwhile
            return "skipped", ""
    except OutputBusy as err:
        return "busy", str(err)
    except CamnetError as err:
        return "error", str(err)
    except Exception as err:  # noqa: BLE001 - raised on rank 0 alone, it would leave the others in the gather
        return "error", f"{final}: {type(err).__name__}: {err}"
    return "", ""


def _finished(req: HeatmapRequest, spec: ModelSpec, final: Path, digest: str) -> bool:
    """True for a finished output of this config, model and slide; an error for one of another."""
    done = outputs.finished_summary(final)
    if done is None:
        return False
    model = done.get("model")
    legacy = isinstance(model, dict) and "model_sha256" not in model  # written by 0.1.0
    if done.get("run_hash") != digest and not (legacy and done.get("run_hash") == legacy_run_hash(req.config, spec)):
        raise CamnetError(f"{final}: finished with a different config or model; pass --overwrite to redo it")
    check_same_slide(final, str(done.get("slide_path", "")), req.slide)
    return True


def _heatmap(req: HeatmapRequest, spec: ModelSpec, model_fn: ModelFn, ranks: Ranks, digest: str) -> HeatmapResult:
    start = time.perf_counter()
    cfg = req.config
    final = outputs.final_dir(req.out_dir, req.slide)
    times: dict[str, float] = {}
    table = read_mpp_table(Path(cfg.match.mpp_table)) if cfg.match.mpp_table else None
    with Slide(req.slide, cfg.match.assume_mpp, table) as slide:
        res = working_resolution(slide, spec, cfg.match)
        t0 = time.perf_counter()
        tissue = masker_from_config(cfg.tissue)(slide)
        grid = plan_grid(slide.dimensions, res, spec.patch_size, tissue, cfg.grid,
                         str(req.slide))
        times["tissue_s"] = time.perf_counter() - t0
        lo, hi = shard_batches(len(grid), cfg.reader.batch_size, ranks.rank, ranks.size)
        source = open_source(slide, res, spec.patch_size, [])
        stats: dict[str, float] = {}
        colour = ColourAccumulator()
        t0 = time.perf_counter()
        error = ""
        try:
            probs = predict(model_fn, source, grid.coords[lo:hi], cfg.reader, stats, colour)
        except CamnetError as err:  # every rank must still reach the gather, or the others hang
            probs, error = np.zeros(0, np.float32), str(err)
        stats["infer_s"] = time.perf_counter() - t0
        shares = ranks.allgather((lo, probs, error, stats, colour))
        errors = [s[2] for s in shares if s[2]]
        if errors:
            raise CamnetError(errors[0])
        all_probs = np.concatenate([s[1] for s in sorted(shares, key=lambda s: s[0])])
        slide_colour = merged_stats([s[4] for s in shares])
        for key in ("infer_s", "model_s", "wait_s", "colour_s"):
            times[key] = max(s[3].get(key, 0.0) for s in shares)
        result = HeatmapResult(slide.name, str(final), "done", len(grid), times=times)
        if ranks.rank == 0:
            t0 = time.perf_counter()
            info = outputs.SlideInfo.of(slide, res, tissue, cfg.output.thumbnail_size)
            threshold = cfg.output.threshold if cfg.output.threshold is not None else spec.threshold
            written = outputs.SlideOutput(info=info, grid=grid, probs=all_probs, cfg=cfg, spec=spec,
                                          threshold=threshold, digest=digest, times=times, n_ranks=ranks.size,
                                          start=start, colour=slide_colour)
            summary = outputs.write_slide(final, written)
            result.score = summary.slide_score
            result.warnings = print_warnings(slide.name, [(w.code, w.message) for w in summary.warnings])
            times["write_s"] = time.perf_counter() - t0
    result.seconds = time.perf_counter() - start
    log.info("%s: %d patches on %d rank(s), %.1f s (model %.1f s, waiting on reads %.1f s)", result.slide,
             result.patches, ranks.size, result.seconds, times.get("model_s", 0.0), times.get("wait_s", 0.0))
    return result


def print_warnings(slide: str, warnings: list[tuple[str, str]]) -> list[str]:
    """One `warning: <slide>: <message>` line on stderr per (code, message), beside the log (seen even when logging
    is off); returns the codes."""
    for _, message in warnings:
        print(f"warning: {slide}: {message}", file=sys.stderr, flush=True)
    return [code for code, _ in warnings]


def print_finished_warnings(slide: str, final: Path) -> list[str]:
    """A skipped slide's warnings again, from its summary: a rerun reports what the first run did."""
    done = outputs.finished_summary(final) or {}
    if "tumour_share" not in done:
        print_warnings(slide, [("", "finished by an earlier CamNet without the colour and tumour-share checks; "
                                    "--overwrite runs them")])
        return []
    found = [w for w in done.get("warnings") or [] if isinstance(w, dict)]
    return print_warnings(slide, [(str(w.get("code", "")), str(w.get("message", ""))) for w in found])


@dataclass(frozen=True)
class CohortRun:
    results: list[HeatmapResult]
    rank: int  # this process's rank: rank 0 reports

    @property
    def failed(self) -> bool:
        """Some slide failed or was busy (written by another run): the cohort is not finished by this run."""
        return any(r.status in ("failed", "busy") for r in self.results)

    def table(self) -> str:
        header = f"{'slide':32} {'status':8} {'patches':>8} {'score':>7} {'seconds':>8}  note"
        lines = [header, "-" * len(header)]
        for r in self.results:
            score = f"{r.score:.3f}" if r.score is not None else "-"
            note = r.error or (f"warnings: {', '.join(r.warnings)}" if r.warnings else "")
            lines.append(f"{r.slide[:32]:32} {r.status:8} {r.patches:>8} {score:>7} {r.seconds:>8.1f}  {note}")
        ok = sum(r.status in ("done", "skipped") for r in self.results)
        lines.append(f"{ok}/{len(self.results)} slides ok")
        return "\n".join(lines)


def heatmap_cohort(spec: ModelSpec, slides: list[Path], out_dir: Path, cfg: HeatmapConfig, overwrite: bool = False,
                   strict: bool = False) -> CohortRun:
    """Heatmaps of `slides` with the run dir's model, on every rank started with this process.

    One bad slide does not stop the cohort: it is logged and listed `failed`; with `strict` (one slide, an
    array task) its error propagates as the command's one error line instead.
    """
    from layer3_inference.model import load_model

    ranks = init_ranks()
    model_fn = compile_model(load_model(spec), spec.patch_size)
    results: list[HeatmapResult] = []
    for i, slide in enumerate(slides):
        req = HeatmapRequest(Path(slide), out_dir, cfg, overwrite)
        try:
            results.append(heatmap_slide(req, spec, model_fn, ranks))
        except OutputBusy as err:  # another run is writing this slide: not a failure of this one
            if strict:
                raise
            log.error("%s", err)
            results.append(HeatmapResult(slide_label(Path(slide)), "", "busy", error=str(err)))
        except CamnetError as err:
            if strict:
                raise
            log.error("%s", err)
            results.append(HeatmapResult(slide_label(Path(slide)), "", "failed", error=str(err)))
        log.info("[%d/%d] %s %s", i + 1, len(slides), results[-1].slide, results[-1].status)
    return CohortRun(results, ranks.rank)
