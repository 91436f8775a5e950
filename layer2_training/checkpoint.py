"""Atomic checkpoints (model, optimiser, position in the epoch plan), resume, and preemption.

`last` holds the newest state; `best` the state with the best monitored validation metric. An exact tie of the
monitored metric is broken by a second one (val_loss lower; val_auc higher when val_loss is monitored): val AUC
is often exactly 1.0 on a small validation split for several epochs, and keeping the first of them kept a model
with a far worse loss. The second metric's best value, the best epoch and whether a tie-break chose it are saved
with the checkpoint, so a resumed run goes on choosing the same way. TF writes a
checkpoint's files first and the `checkpoint` pointer file last, so a kill mid-write leaves the previous
checkpoint in force.

Preemption (SIGTERM, or SIGUSR1 from SLURM's `--signal=B:USR1@300`): all ranks agree on the next batch
boundary, rank 0 saves the exact position (epoch, step) and the run exits with status 0 after writing
`preempted.json`; `slurm/layer2_train.sbatch` requeues the job, and the same command resumes mid-epoch
from that position (the epoch plan is a pure function of the epoch, so no sample is lost or repeated).
Mid-epoch, the ranks' BatchNorm moving statistics differ (each follows its own shard until the epoch's
average): rank 0 also saves every rank's (`ckpt-N.ranks.npz`) and each rank takes back its own on resume, so a
preempted run ends with the weights of an uninterrupted one, bit for bit (tests/slurm/test_multinode.py).
The marker stays while the run is unfinished and is removed once a rerun has trained all epochs. A signal seen
after an epoch's last batch stops the run once that epoch is finished (validated, saved at the next epoch's
start): a position at the end of an epoch would leave a resumed `fit` zero steps, which Keras refuses.

A save that fails (full disk, read-only file system) is one error line naming the checkpoint folder; the files
it had begun are removed and the `checkpoint` pointer still names the previous checkpoint, which a rerun after
freeing space resumes from.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from layer1_patches.shared.atomic import atomic_path, remove_inside
from layer1_patches.shared.errors import CamnetError, os_reason
from layer2_training import rundir
from layer2_training.distributed import (
    Dist,
    any_rank,
    average_variables,
    gather_arrays,
    in_step,
    local_values,
    on_writers,
    statistics,
    updated_state,
)

log = logging.getLogger(__name__)
PREEMPTED = "preempted.json"


class Preempted(Exception):
    """Raised out of `fit` after the state was saved on a preemption signal."""


@dataclass(frozen=True)
class Monitor:
    """The validation metric that picks the best checkpoint, and the one that breaks its exact ties."""

    name: str  # val_auc or val_loss

    @property
    def tie_break(self) -> str:
        return "val_auc" if self.name == "val_loss" else "val_loss"

    def replaces(self, new: tuple[float, float], best: tuple[float, float]) -> str | None:
        """Why (monitor value, tie-break value) `new` replaces `best`: "monitor" when the monitored metric is
        better, the tie-break's name when it ties exactly and the second metric is better; None when it does not.
        NaN is never better, so a missing second value (NaN) never wins a tie."""
        if _better(new[0], best[0], self.name):
            return "monitor"
        if new[0] == best[0] and _better(new[1], best[1], self.tie_break):
            return self.tie_break
        return None


def _better(value: float, best: float, metric: str) -> bool:
    return value < best if metric == "val_loss" else value > best


def _worst(metric: str) -> float:
    return float("inf") if metric == "val_loss" else float("-inf")


class TrainState:
    """The checkpointed state; restored from `run_dir`, saved into `write_dir` (the same, except on the other
    ranks of an engine whose saves are collective: their scratch folder, see `distributed.on_writers`)."""

    def __init__(self, run_dir: Path, model: tf.keras.Model, optimizer: Any, monitor: str,
                 write_dir: Path | None = None) -> None:
        self.run_dir = run_dir
        self.write_dir = write_dir or run_dir
        self.monitor = Monitor(monitor)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.best = tf.Variable(_worst(monitor), dtype=tf.float64, trainable=False, name="best")
        # checkpoints written before these existed restore without them: the initial (worst, 0) values stay
        self.best_second = tf.Variable(_worst(self.monitor.tie_break), dtype=tf.float64, trainable=False,
                                       name="best_second")
        self.best_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")  # 1-based, 0: none
        self.best_by_tie = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_by_tie")
        self.ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, epoch=self.epoch, step=self.step,
                                        best=self.best, best_second=self.best_second, best_epoch=self.best_epoch,
                                        best_by_tie=self.best_by_tie)
        self.last = tf.train.CheckpointManager(self.ckpt, str(run_dir / "checkpoints" / "last"),
                                               max_to_keep=2)
        self.best_manager = tf.train.CheckpointManager(self.ckpt, str(run_dir / "checkpoints" / "best"),
                                                       max_to_keep=1)
        self.last_out, self.best_out = self.last, self.best_manager
        if self.write_dir != run_dir:
            # only to take part in the collective save: one is enough (a checkpoint can be 1 GB: ResNet50 + Adam)
            self.last_out = tf.train.CheckpointManager(self.ckpt, str(self.write_dir / "checkpoints" / "last"),
                                                       max_to_keep=1)
            self.best_out = tf.train.CheckpointManager(self.ckpt, str(self.write_dir / "checkpoints" / "best"),
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
        return save(self.last_out)

    def improved(self, value: float, second: float = float("nan")) -> str | None:
        """Why (monitored value, tie-break value) would replace the best checkpoint (`Monitor.replaces`)."""
        return self.monitor.replaces((value, second), (float(self.best.numpy()), float(self.best_second.numpy())))

    def mark_best(self, value: float, second: float, epoch: int, reason: str) -> None:
        """Record epoch (1-based) as the best; `save_best` then writes it."""
        self.best.assign(value)
        # a NaN second value compares false with everything: stored as NaN, no later tie could ever replace it
        self.best_second.assign(_worst(self.monitor.tie_break) if math.isnan(second) else second)
        self.best_epoch.assign(epoch)
        self.best_by_tie.assign(int(reason == self.monitor.tie_break))

    def save_best(self) -> str:
        return save(self.best_out)

    def selected(self) -> dict[str, Any]:
        """metrics.json's `selected`: the epoch whose weights were exported and why (nulls: no best was kept,
        or a checkpoint from before the epoch was recorded)."""
        value = float(self.best.numpy())
        return {"epoch": int(self.best_epoch.numpy()) or None, "monitor": self.monitor.name,
                "value": value if math.isfinite(value) else None,
                "tie_break": self.monitor.tie_break if int(self.best_by_tie.numpy()) else None}

    def restore_best(self) -> bool:
        # read from the pointer files: on a rank that saves elsewhere, the managers still know the run dir's
        # checkpoints as they were when it started, which rank 0 has since replaced
        path = (tf.train.latest_checkpoint(self.best_manager.directory)
                or tf.train.latest_checkpoint(self.last.directory))
        if path is None:
            return False
        self.ckpt.restore(path).expect_partial()
        return True


def write_reason(err: Exception) -> str:
    """The system's words for a failed write: TensorFlow's I/O errors end "<file>; No space left on device
    [Op:SaveV2]" and carry no errno."""
    if isinstance(err, OSError):
        return os_reason(err)
    text = re.sub(r"\s*\[Op:\w+\]\s*$", "", str(getattr(err, "message", err)).strip())
    return text.rsplit("; ", 1)[-1].splitlines()[0] if text else type(err).__name__


def _names(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except OSError:
        return set()


def save(manager: tf.train.CheckpointManager) -> str:
    """A new checkpoint in `manager`'s folder; on failure, one error line and nothing new left behind."""
    folder = Path(manager.directory)
    before = _names(folder)
    try:
        return str(manager.save())
    except BaseException as err:  # Ctrl-C too: its half checkpoint goes as well
        discard_unreferenced(folder, before)
        if isinstance(err, OSError | tf.errors.OpError):
            raise CamnetError(f"output {folder}: cannot write checkpoint ({write_reason(err)})") from None
        raise


def rank_state_path(checkpoint: str) -> Path:
    return Path(f"{checkpoint}.ranks.npz")


def save_rank_state(checkpoint: str, per_rank: list[list[np.ndarray]]) -> None:
    """Rank 0: every rank's statistics variables, beside the (mid-epoch) checkpoint they belong to; the files
    of older checkpoints go."""
    path = rank_state_path(checkpoint)
    arrays = {f"r{r}_{i}": a for r, values in enumerate(per_rank) for i, a in enumerate(values)}
    try:
        with rundir.writing(path), atomic_path(path) as staged, staged.open("wb") as f:
            np.savez(f, ranks=np.int64(len(per_rank)), **arrays)
    except OSError as err:
        raise CamnetError(f"output {path}: cannot write ({os_reason(err)})") from None
    for old in path.parent.glob("*.ranks.npz"):
        if old != path:
            old.unlink(missing_ok=True)


def restore_rank_state(checkpoint: str | None, dist: Dist, model: tf.keras.Model) -> bool:
    """After the broadcast of rank 0's state: this rank's own statistics variables, when the checkpoint has them
    for this many ranks (a resume on another number of ranks keeps rank 0's)."""
    path = rank_state_path(checkpoint) if checkpoint is not None else None
    if path is None or dist.size == 1 or not path.is_file():
        return False
    variables = statistics(model)
    with np.load(path) as saved:
        if int(saved["ranks"]) != dist.size:
            log.warning("%s: saved by %d ranks, resumed on %d: every rank starts from rank 0's BatchNorm statistics",
                        path, int(saved["ranks"]), dist.size)
            return False
        if len(saved.files) - 1 != dist.size * len(variables):
            raise CamnetError(f"{path}: {len(saved.files) - 1} arrays for {dist.size} ranks of a model with "
                              f"{len(variables)} statistics variables: not this run's")
        for i, var in enumerate(variables):
            var.assign(saved[f"r{dist.rank}_{i}"])
    return True


def discard_unreferenced(folder: Path, before: set[str]) -> None:
    """Remove what a failed save added to `folder` (a `ckpt-N_temp` folder, `ckpt-N` files, the pointer's
    temporary file), except a checkpoint the `checkpoint` pointer names: TF renames the pointer into place
    before its second, final rewrite, so a save can fail after its checkpoint became the latest."""
    state = None
    with contextlib.suppress(tf.errors.OpError, ValueError):
        state = tf.train.get_checkpoint_state(str(folder))
    kept = {Path(p).name for p in state.all_model_checkpoint_paths} if state else set()
    for name in _names(folder) - before:
        if state and (name == "checkpoint" or name.split(".")[0] in kept):
            continue
        with contextlib.suppress(OSError):  # a read-only folder: nothing was written to remove
            remove_inside(folder / name, folder)


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


def history_text(path: Path, row: dict[str, Any]) -> str:
    """The history CSV with one epoch's row added, replacing any row of that epoch or later ones (a rerun that
    repeats an epoch), with the union of the columns, so that a history written before a column existed stays
    aligned ("" where a value is missing)."""
    rows: list[dict[str, Any]] = []
    with contextlib.suppress(FileNotFoundError):
        rows = [r for r in csv.DictReader(io.StringIO(path.read_text())) if _before(r, row["epoch"])]
    rows.append(row)
    fields = list(row) + [k for r in rows for k in r if k not in row and k is not None]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(dict.fromkeys(fields)), restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _before(row: dict[str, Any], epoch: int) -> bool:
    try:
        return float(row.get("epoch") or "") < epoch
    except ValueError:
        return True  # no epoch number: not a row a rerun repeats, keep it


class CheckpointCallback(tf.keras.callbacks.Callback):
    """Per-epoch save (all ranks agree, rank 0 writes), best tracking, history CSV, preemption."""

    def __init__(self, dist: Dist, state: TrainState, flag: SignalFlag, monitor: str, start: tuple[int, int],
                 lr_of_step: Any) -> None:
        super().__init__()
        # the run dir on rank 0, a scratch folder on ranks that save only to take part (`TrainState.write_dir`)
        self.dist, self.state, self.run_dir, self.flag, self.monitor = dist, state, state.write_dir, flag, monitor
        self.start, self.lr_of_step = start, lr_of_step
        self.epoch = start[0]
        self.t0, self.train_seconds = time.perf_counter(), 0.0
        self.stop_after_epoch = False

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
        if batch + 1 == (getattr(self, "params", None) or {}).get("steps"):
            self.stop_after_epoch = True  # the epoch's last batch: finish the epoch, then stop (module doc)
            return
        offset = self.start[1] if self.epoch == self.start[0] else 0
        epoch, step = self.epoch, offset + batch + 1
        per_rank = (gather_arrays(self.dist, local_values(self.dist, statistics(self.model)))
                    if self.dist.size > 1 else [])
        on_writers(self.dist, lambda: self._save_preempted(epoch, step, per_rank))
        raise Preempted(f"epoch {epoch} step {step}")

    def _save_preempted(self, epoch: int, step: int, per_rank: list[list[np.ndarray]]) -> None:
        checkpoint = self.state.save_last(epoch, step)
        if per_rank:
            save_rank_state(checkpoint, per_rank)
        self._mark_preempted(epoch, step, checkpoint)

    def _mark_preempted(self, epoch: int, step: int, checkpoint: str) -> None:
        marker = {"epoch": epoch, "step": step, "signal": self.flag.signum, "checkpoint": checkpoint}
        rundir.write_json(self.run_dir / PREEMPTED, marker)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = dict(logs or {})
        average_variables(self.dist, updated_state(self.model))
        on_writers(self.dist, lambda: self._save_epoch(epoch, logs))
        if self.stop_after_epoch:
            raise Preempted(f"epoch {epoch + 1} step 0")

    def _save_epoch(self, epoch: int, logs: dict[str, Any]) -> None:
        """Rank 0 (and the ranks of `on_writers`): the epoch's history row, best and last checkpoints."""
        value = logs.get(self.monitor)
        second = logs.get(self.state.monitor.tie_break, float("nan"))
        reason = None
        if value is not None:
            reason = self.state.improved(float(value), float(second))
            if reason:
                self.state.mark_best(float(value), float(second), epoch + 1, reason)
        iterations = int(self.model.optimizer.iterations.numpy())
        # a run resumed mid-epoch trained (and measured) this epoch from that step on only
        resumed = self.start[1] if epoch == self.start[0] and self.start[1] else ""
        row = {"epoch": epoch + 1, "resumed_at_step": resumed, "lr": float(self.lr_of_step(iterations)),
               "iterations": iterations,
               "train_seconds": round(self.train_seconds or time.perf_counter() - self.t0, 3),
               **{k: float(v) for k, v in sorted(logs.items())},
               # the epoch whose weights would be exported if training ended here
               "best_epoch": int(self.state.best_epoch.numpy()) or ""}
        history = self.run_dir / "history.csv"
        # the row is written first, so that a full disk fails before any checkpoint, and renamed into place last:
        # a row in the history means its epoch is saved
        with rundir.writing(history), atomic_path(history) as staged:
            in_step(self.dist, lambda: staged.write_text(history_text(history, row)))
            if reason:  # the same on every rank: the logs are (tf.distribute: metrics are over all ranks)
                in_step(self.dist, self.state.save_best)
            path = in_step(self.dist, lambda: self.state.save_last(epoch + 1, 0))
        if self.stop_after_epoch:
            self._mark_preempted(epoch + 1, 0, path)
