"""Progress of long steps: Layer 2's per-epoch lines (metrics, seconds per epoch, ETA) and throttled loop lines
(`explain: lime 3/8 patches`).

Everything goes through `logging`, whose stderr handler flushes each record: under the pipeline a stage's
stdout and stderr go to a log file, where `print` would be block-buffered and the log would stay empty until
the process ends. On a terminal, training also draws a tqdm bar over the batches of the epoch; in a log file
there is one plain line per epoch and no bar (Keras' own bar is off: its lines duplicated ours).
"""

from __future__ import annotations

import contextvars
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from layer1_patches.shared.units import duration

log = logging.getLogger("camnet.progress")

EVERY = 5.0  # seconds between two lines of one loop in a log: enough to see where it is, not a flood

# What the loops running now belong to ("sanity depth 2/4"), so that a Grad-CAM loop inside the sanity
# check does not read like the trained model's; and whether this process reports at all (rank 0 only).
_scope: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("progress_scope", default=())
_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("progress_enabled", default=True)


def eta(seconds: list[float], fractions: list[float], remaining: float) -> float | None:
    """Seconds left for `remaining` full epochs at the mean speed of the epochs timed so far.

    `fractions[i]` is the share of a full epoch that the timed epoch `i` trained: the first epoch after a
    mid-epoch resume runs only its remaining steps and must not count as a whole epoch. Epochs finished
    before a resume are neither timed nor remaining, so they are not counted twice. None before any timing."""
    done = sum(fractions)
    if done <= 0:
        return None
    return sum(seconds) / done * max(0.0, remaining)


def metric_text(logs: dict[str, Any]) -> str:
    """`loss 0.4321 auc 0.8123 val_loss 0.5012`: training metrics first, then validation, in Keras' order;
    non-numbers (and a learning rate some callbacks add) are left out."""
    keys = [k for k in logs if not k.startswith("val_")] + [k for k in logs if k.startswith("val_")]
    parts = []
    for key in keys:
        value = logs[key]
        if key == "lr" or not isinstance(value, int | float) or isinstance(value, bool):
            continue
        parts.append(f"{key} {float(value):.4f}" if math.isfinite(float(value)) else f"{key} {float(value)}")
    return " ".join(parts)


def epoch_line(epoch: int, epochs: int, logs: dict[str, Any], seconds: float, left: float | None) -> str:
    """One line per finished epoch; `epoch` counts from 0 as Keras does and is shown from 1."""
    tail = f"{seconds:.1f} s/epoch"
    if epoch + 1 < epochs:
        tail += f", ETA {duration(left)}" if left is not None else ""
    else:
        tail += ", last epoch"
    metrics = metric_text(logs)
    return f"epoch {epoch + 1}/{epochs}: {metrics + ' | ' if metrics else ''}{tail}"


def loop_line(label: str, done: int, total: int, unit: str, extra: str = "", scope: tuple[str, ...] = ()) -> str:
    """`explain: sanity depth 2/4: lime 3/8 patches (60 samples)`."""
    where = "".join(f"{s}: " for s in scope)
    return f"explain: {where}{label} {done}/{total}{' ' + unit if unit else ''}{f' ({extra})' if extra else ''}"


def due(now: float, last: float | None, done: int, total: int, every: float) -> bool:
    """A loop's line is written at its start, at its end, and otherwise at most once every `every` seconds."""
    return last is None or done >= total or now - last >= every


def note(message: str) -> None:
    """A one-off `explain: ...` line (where a long step begins), on the reporting rank only."""
    if _enabled.get():
        log.info("explain: %s", "".join(f"{s}: " for s in _scope.get()) + message)


class Ticker:
    """Throttled progress lines of one loop: `tick(done)` after each item."""

    def __init__(self, label: str, total: int, unit: str = "", extra: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label, self.total, self.unit, self.extra, self.clock = label, total, unit, extra, clock
        self.scope = _scope.get()
        self.last: float | None = None
        self.tick(0)

    def tick(self, done: int) -> None:
        now = self.clock()
        if not _enabled.get() or not due(now, self.last, done, self.total, EVERY):
            return
        self.last = now
        log.info("%s", loop_line(self.label, done, self.total, self.unit, self.extra, self.scope))


def ticking(items: list[Any], label: str, unit: str = "", extra: str = "") -> Iterator[Any]:
    """`items`, with a `Ticker` line as each one is done."""
    ticker = Ticker(label, len(items), unit, extra)
    for i, item in enumerate(items, start=1):
        yield item
        ticker.tick(i)


@contextmanager
def scope(name: str) -> Iterator[None]:
    """Loops inside say what they belong to."""
    token = _scope.set((*_scope.get(), name))
    try:
        yield
    finally:
        _scope.reset(token)


@contextmanager
def enabled(on: bool) -> Iterator[None]:
    """Progress lines on (rank 0) or off (the other ranks: one rank's lines describe the run)."""
    token = _enabled.set(on)
    try:
        yield
    finally:
        _enabled.reset(token)


def epoch_callback(epochs: int, steps: int, bar: bool | None = None) -> Any:
    """The Keras callback of `EpochClock` (TensorFlow is imported here: explain uses this module without it)."""
    import tensorflow as tf

    kind = type("EpochProgress", (EpochClock, tf.keras.callbacks.Callback), {})
    return kind(epochs, steps, bar)


class EpochClock:
    """Per-epoch lines with metrics, seconds per epoch and ETA (rank 0 only: train.py adds it there).

    One instance spans all `fit` calls of a run (a phase change or a mid-epoch resume starts a new `fit`), so the
    mean epoch time and the ETA carry over; `steps` is a full epoch's steps, `epochs` the run's total. The
    hooks are Keras callback methods; `params` is what Keras sets (`steps`: this `fit`'s steps per epoch)."""

    def __init__(self, epochs: int, steps: int, bar: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.params: dict[str, Any] = {}
        super().__init__()
        self.epochs, self.full_steps, self.clock = epochs, steps, clock
        self.bar_wanted = sys.stderr.isatty() if bar is None else bar
        self.seconds: list[float] = []
        self.fractions: list[float] = []
        self.started = 0.0
        self.bar: Any = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:  # noqa: ARG002 - Keras hook
        self.started = self.clock()
        if self.bar_wanted:
            from tqdm import tqdm

            self.bar = tqdm(total=self.params.get("steps"), desc=f"epoch {epoch + 1}/{self.epochs}",
                            unit="batch", leave=False, file=sys.stderr)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:  # noqa: ARG002 - Keras hook
        if self.bar is not None:
            self.bar.update(1)
            if logs:
                self.bar.set_postfix_str(metric_text(logs), refresh=False)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._close_bar()
        took = self.clock() - self.started
        self.seconds.append(took)
        steps = self.params.get("steps") or self.full_steps
        self.fractions.append(min(1.0, steps / self.full_steps) if self.full_steps else 1.0)
        left = eta(self.seconds, self.fractions, self.epochs - epoch - 1)
        log.info("%s", epoch_line(epoch, self.epochs, dict(logs or {}), took, left))

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:  # noqa: ARG002 - Keras hook
        self._close_bar()  # a preemption stops fit mid-epoch

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
