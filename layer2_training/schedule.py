"""Learning rate as a function of the optimiser's step: warm-up, then constant, step or cosine.

A schedule of `optimizer.iterations` is restored with the optimiser, so a resumed run continues
the curve where it stopped.
"""

from __future__ import annotations

import math
from typing import Any

import tensorflow as tf

from layer2_training.config import ScheduleConfig


def peak_lr(cfg: ScheduleConfig, ranks: int) -> float:
    # Goyal et al. 2017: the effective batch grows with the ranks, so does the rate (after a warm-up)
    return cfg.lr * (ranks if cfg.scale_by_ranks else 1)


def lr_at(step: float, cfg: ScheduleConfig, ranks: int, steps_per_epoch: int, total_epochs: int,
          switch: tuple[int, float] = (0, 1.0)) -> float:
    """Pure-Python twin of `WarmupSchedule`: the schedule in plain arithmetic, which the tests hold it to."""
    switch_epoch, switch_factor = switch  # the fine-tuning phase's start epoch and its rate factor
    peak = peak_lr(cfg, ranks)
    epoch = step / steps_per_epoch
    scale = switch_factor if switch_epoch > 0 and epoch >= switch_epoch else 1.0
    warm = cfg.warmup_epochs
    if warm > 0 and epoch < warm:
        return scale * (cfg.lr + (peak - cfg.lr) * epoch / warm)
    if cfg.kind == "step":
        return scale * peak * cfg.step_gamma ** sum(epoch >= e for e in cfg.step_epochs)
    if cfg.kind == "cosine":
        span = max(total_epochs - warm, 1e-9)
        t = min(max(epoch - warm, 0.0) / span, 1.0)
        floor = peak * cfg.min_lr_factor
        return scale * (floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * t)))
    return scale * peak


@tf.keras.utils.register_keras_serializable(package="camnet")
class WarmupSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    # keyword arguments of a Keras-serialisable object: get_config() round-trips them one by one
    def __init__(self, lr: float, peak: float, warmup_epochs: float, kind: str, step_epochs: list[int],  # noqa: PLR0913
                 step_gamma: float, min_lr_factor: float, steps_per_epoch: int, total_epochs: int,
                 switch_epoch: int = 0, switch_factor: float = 1.0) -> None:
        self.lr, self.peak, self.warmup_epochs, self.kind = lr, peak, warmup_epochs, kind
        self.step_epochs, self.step_gamma, self.min_lr_factor = list(step_epochs), step_gamma, min_lr_factor
        self.steps_per_epoch, self.total_epochs = steps_per_epoch, total_epochs
        self.switch_epoch, self.switch_factor = switch_epoch, switch_factor

    def __call__(self, step: Any) -> tf.Tensor:
        epoch = tf.cast(step, tf.float32) / float(self.steps_per_epoch)
        warm = float(self.warmup_epochs)
        if self.kind == "step":
            n = tf.add_n([tf.cast(epoch >= float(e), tf.float32) for e in self.step_epochs] or [0.0 * epoch])
            after = self.peak * tf.pow(self.step_gamma, n)
        elif self.kind == "cosine":
            t = tf.clip_by_value((epoch - warm) / max(self.total_epochs - warm, 1e-9), 0.0, 1.0)
            floor = self.peak * self.min_lr_factor
            after = floor + (self.peak - floor) * 0.5 * (1 + tf.cos(math.pi * t))
        else:
            after = tf.constant(self.peak, tf.float32) + 0.0 * epoch
        if warm > 0:
            ramp = self.lr + (self.peak - self.lr) * epoch / warm
            after = tf.where(epoch < warm, ramp, after)
        if self.switch_epoch > 0:
            # fine-tuning after the head phase runs at its own (usually lower) rate
            after = tf.where(epoch >= float(self.switch_epoch), after * self.switch_factor, after)
        return after

    def get_config(self) -> dict[str, Any]:
        keys = ("lr", "peak", "warmup_epochs", "kind", "step_epochs", "step_gamma", "min_lr_factor",
                "steps_per_epoch", "total_epochs", "switch_epoch", "switch_factor")
        return {k: getattr(self, k) for k in keys}


def make_schedule(cfg: ScheduleConfig, ranks: int, steps_per_epoch: int, total_epochs: int,
                  switch_epoch: int = 0, switch_factor: float = 1.0) -> WarmupSchedule:
    return WarmupSchedule(cfg.lr, peak_lr(cfg, ranks), cfg.warmup_epochs, cfg.kind, cfg.step_epochs,
                          cfg.step_gamma, cfg.min_lr_factor, steps_per_epoch, total_epochs, switch_epoch,
                          switch_factor)
