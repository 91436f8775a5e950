"""Atomic checkpoints (model, optimiser, position in the epoch plan), resume, and preemption.

`last` holds the newest state; `best` the state with the best monitored validation metric. TF writes a
checkpoint's files first and the `checkpoint` pointer file last, so a kill mid-write leaves the previous
checkpoint in force.

Preemption (SIGTERM, or SIGUSR1 from SLURM's `--signal=B:USR1@300`): all ranks agree on the next batch
boundary, rank 0 saves the exact position (epoch, step) and the run exits with status 0 after writing
`preempted.json`; `slurm/layer2_train.sbatch` requeues the job, and the same command resumes mid-epoch
from that position (the epoch plan is a pure function of the epoch, so no sample is lost or repeated).
The marker stays while the run is unfinished and is removed once a rerun has trained all epochs.
"""

from __future__ import annotations

import csv
import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

import tensorflow as tf

from layer2_training.distributed import Dist, any_rank, average_variables, updated_state

log = logging.getLogger(__name__)
PREEMPTED = "preempted.json"


class Preempted(Exception):
    """Raised out of `fit` after the state was saved on a preemption signal."""


class TrainState:
    def __init__(self, run_dir: Path, model: tf.keras.Model, optimizer: Any, higher_is_better: bool) -> None:
        self.run_dir = run_dir
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        worst = float("-inf") if higher_is_better else float("inf")
        self.best = tf.Variable(worst, dtype=tf.float64, trainable=False, name="best")
        self.higher_is_better = higher_is_better
        self.ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=self.epoch, step=self.step,
                                        best=self.best)
        self.last = tf.train.CheckpointManager(self.ckpt, str(run_dir / "checkpoints" / "last"),
                                               max_to_keep=2)
        self.best_manager = tf.train.CheckpointManager(self.ckpt, str(run_dir / "checkpoints" / "best"),
                                                       max_to_keep=1)

    def restore(self) -> tuple[int, int]:
        """(epoch, step) to continue from; (0, 0) for a fresh run."""
        path = self.last.latest_checkpoint
        if path is None:
            return 0, 0
        # optimiser slots of layers frozen so far appear later; `expect_partial` lets them restore lazily
        self.ckpt.restore(path).expect_partial()
        log.info("resumed from %s at epoch %d step %d", path, int(self.epoch), int(self.step))
        return int(self.epoch), int(self.step)

    def save_last(self, epoch: int, step: int) -> str:
        self.epoch.assign(epoch)
        self.step.assign(step)
        return str(self.last.save())

    def improved(self, value: float) -> bool:
        best = float(self.best.numpy())
        return value > best if self.higher_is_better else value < best

    def save_best(self, value: float) -> str:
        self.best.assign(value)
        return str(self.best_manager.save())

    def restore_best(self) -> bool:
        path = self.best_manager.latest_checkpoint or self.last.latest_checkpoint
        if path is None:
            return False
        self.ckpt.restore(path).expect_partial()
        return True


class SignalFlag:
    """Set by SIGTERM/SIGUSR1; handlers only set an event, the training loop acts on it."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum = 0

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signum = signum
        self.event.set()


def append_history(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


class CheckpointCallback(tf.keras.callbacks.Callback):
    """Per-epoch save (all ranks agree, rank 0 writes), best tracking, history CSV, preemption."""

    def __init__(self, dist: Dist, state: TrainState, flag: SignalFlag, monitor: str, start: tuple[int, int],
                 lr_of_step: Any) -> None:
        super().__init__()
        self.dist, self.state, self.run_dir, self.flag, self.monitor = dist, state, state.run_dir, flag, monitor
        self.start, self.lr_of_step = start, lr_of_step
        self.epoch = start[0]
        self.t0, self.train_seconds = time.perf_counter(), 0.0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:  # noqa: ARG002 - Keras'
        self.epoch = epoch
        self.t0 = time.perf_counter()
        self.train_seconds = 0.0

    def on_test_begin(self, logs: dict[str, Any] | None = None) -> None:  # noqa: ARG002 - Keras' signature
        if not self.train_seconds:
            self.train_seconds = time.perf_counter() - self.t0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:  # noqa: ARG002
        if not any_rank(self.dist, self.flag.event.is_set()):
            return
        offset = self.start[1] if self.epoch == self.start[0] else 0
        step = offset + batch + 1
        if self.dist.is_chief:
            path = self.state.save_last(self.epoch, step)
            marker = {"epoch": self.epoch, "step": step, "signal": self.flag.signum, "checkpoint": path}
            (self.run_dir / PREEMPTED).write_text(json.dumps(marker))
        raise Preempted(f"epoch {self.epoch} step {step}")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = dict(logs or {})
        average_variables(self.dist, updated_state(self.model))
        if not self.dist.is_chief:
            return
        value = logs.get(self.monitor)
        if value is not None and self.state.improved(float(value)):
            self.state.save_best(float(value))
        self.state.save_last(epoch + 1, 0)
        iterations = int(self.model.optimizer.iterations.numpy())
        row = {"epoch": epoch + 1, "lr": float(self.lr_of_step(iterations)), "iterations": iterations,
               "train_seconds": round(self.train_seconds or time.perf_counter() - self.t0, 3),
               **{k: float(v) for k, v in sorted(logs.items())}}
        append_history(self.run_dir / "history.csv", row)
