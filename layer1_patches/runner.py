"""Many slides on one machine: a process per slide, progress, and a per-slide summary.

One bad slide never stops the others; it shows as `failed` with its error line.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path
from typing import Any

from layer1_patches.extract import ExtractRequest, ExtractResult, extract_slide
from layer1_patches.shared import signals
from layer1_patches.shared.cohort import slide_label
from layer1_patches.shared.errors import CamnetError
from layer1_patches.shared.locks import OutputBusy

log = logging.getLogger(__name__)


_busy = False  # a worker process is extracting a slide (see `_worker_signal`)


def _run_one(req: ExtractRequest) -> ExtractResult:
    global _busy
    _busy = True
    try:
        return extract_slide(req)
    except OutputBusy as err:  # another run is writing this slide: not a failure of this one
        return ExtractResult(slide_label(req.slide), str(req.output), "busy", error=str(err))
    except CamnetError as err:
        return ExtractResult(slide_label(req.slide), str(req.output), "failed", error=str(err))
    except Exception as err:  # a bug or an unforeseen library failure must not stop the cohort
        # ...unless it is the SIGTERM itself, wrapped by a library: a signal arriving while ctypes converts
        # OpenSlide's arguments surfaces as ctypes.ArgumentError("argument 1: Terminated: SIGTERM")
        signals.check()
        log.exception("%s: unexpected failure", req.slide)
        return ExtractResult(slide_label(req.slide), str(req.output), "failed", error=f"{type(err).__name__}: {err}")
    finally:
        _busy = False


def _init_worker(level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    signals.stop_on_signals()
    signal.signal(signal.SIGTERM, _worker_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops the workers itself


def _worker_signal(signum: int, frame: object) -> None:
    """SIGTERM in a worker: unwind the slide being written (its writer removes the partial file), or, between
    slides, leave at once; raising there would only print the pool's traceback."""
    if _busy:
        signals.raise_terminated(signum, frame)
    os._exit(128 + signum)


def run_many(base: ExtractRequest, slides: list[tuple[Path, Path | None]], workers: int) -> list[ExtractResult]:
    requests = [replace(base, slide=s, annotation=a) for s, a in slides]
    results: list[ExtractResult] = []
    bar = _progress(len(requests))
    start = time.monotonic()
    if workers <= 1:
        for req in requests:
            results.append(_report(_run_one(req), len(results) + 1, len(requests), start, bar))
    else:
        ctx = multiprocessing.get_context("spawn")  # no inherited locks or open slide handles
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(logging.getLogger().level,)) as pool:
            try:
                futures = [pool.submit(_run_one, r) for r in requests]
                for fut in as_completed(futures):
                    results.append(_report(fut.result(), len(results) + 1, len(requests), start, bar))
            except KeyboardInterrupt:  # SIGTERM/SIGINT: stop the workers' slides too, each cleaning up
                _stop_workers(pool)
                raise
    if bar is not None:
        bar.close()
    order = {str(r.output): i for i, r in enumerate(requests)}
    return sorted(results, key=lambda r: order.get(r.output, 0))


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Send SIGTERM to the pool's workers and wait for them: without this, leaving the `with` block waits for
    every running slide to finish, and a `kill` of the parent leaves its workers writing."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(timeout=60)


def _progress(total: int) -> Any:
    if not sys.stderr.isatty():
        return None  # SLURM logs get one plain line per slide instead of carriage returns
    from tqdm import tqdm

    return tqdm(total=total, unit="slide", file=sys.stderr)


def _report(result: ExtractResult, done: int, total: int, start: float, bar: Any) -> ExtractResult:
    if bar is not None:
        bar.update(1)
        bar.set_postfix_str(f"{result.slide}: {result.status}")
    else:
        log.info("[%d/%d] %s %s (%.0f s elapsed)", done, total, result.slide, result.status,
                 time.monotonic() - start)
    if result.status in ("failed", "busy"):
        log.error("%s", result.error)
    return result


def summary_table(results: list[ExtractResult]) -> str:
    header = f"{'slide':32} {'status':8} {'tumour':>7} {'normal':>7} {'rejects':>8} {'seconds':>8}  note"
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(f"{r.slide[:32]:32} {r.status:8} {r.counts.get('tumour', 0):>7} {r.counts.get('normal', 0):>7} "
                     f"{sum(r.rejects.values()):>8} {r.seconds:>8.1f}  {r.error}")
    done = [r for r in results if r.status in ("done", "skipped")]
    lines.append("-" * len(header))
    tumour = sum(r.counts.get("tumour", 0) for r in done)
    normal = sum(r.counts.get("normal", 0) for r in done)
    lines.append(f"{len(done)}/{len(results)} slides ok; patches: tumour {tumour}, normal {normal}")
    return "\n".join(lines)
