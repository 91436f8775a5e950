"""`train`: validate everything, then fit phase by phase, checkpointing; rank 0 exports and evaluates.

Every user error (config, index, splits, sizes, weights, stain reference) is raised by `prepare`, before
the first training step, so a bad job fails in seconds rather than after queueing for GPUs.

A finished run also says what its figures are worth: `metrics.json` carries the health warnings of the val and
test predictions (`layer2_training.health`) and which epoch was exported and why, each warning is one `warning:`
line on stderr, and `model.json` records the training patches' colour statistics.
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import tensorflow as tf

from layer1_patches.colour import ColourAccumulator, ColourStats
from layer1_patches.index import DatasetIndex
from layer1_patches.shared.atomic import atomic_path, write_text_atomic
from layer1_patches.shared.errors import CamnetError
from layer1_patches.shared.kerasflavour import flavour
from layer1_patches.shared.typedconfig import config_hash
from layer2_training import data, metrics, progress, rundir
from layer2_training.augment import make_transform
from layer2_training.checkpoint import (
    PREEMPTED,
    CheckpointCallback,
    Preempted,
    SignalFlag,
    TrainState,
    restore_rank_state,
)
from layer2_training.config import DataConfig, Layer2Config
from layer2_training.distributed import (
    Dist,
    broadcast_variables,
    distribute,
    exported,
    fit_callbacks,
    local_values,
    on_chief,
    scope,
    wrap_optimizer,
)
from layer2_training.health import HealthWarning, classifier_warnings
from layer2_training.losses import make_loss
from layer2_training.model import build_model, check_phases, set_phase
from layer2_training.schedule import make_schedule
from layer2_training.sidecar import SIDECAR, FrameworkSidecar, ModelSidecar, StainSidecar
from layer2_training.stain import fit_reference, read_reference
from layer2_training.weights import resolve_weights, spec

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    cfg: Layer2Config
    index: DatasetIndex
    run_dir: Path
    patch_size: int
    input_size: int
    weights: Path | None
    stain: tuple[str, dict[str, Any]] | None
    train: data.SplitData
    val: data.SplitData
    test: data.SplitData | None


def resolve_input_size(cfg: Layer2Config, patch_size: int) -> int:
    size = cfg.model.input_size
    if size is None or size == patch_size:
        return patch_size
    if not cfg.model.resize:
        raise CamnetError(f"config key 'model.input_size': {size} differs from the stores' patch size "
                          f"{patch_size}; set model.resize: true to resize in the model, or drop input_size")
    return size


def prepare(cfg: Layer2Config) -> Prepared:
    """All checks that can fail on user input, in the order a user would fix them."""
    flavour()  # tf.keras must be Keras 2: an error line now, not a traceback from deep inside Keras 3
    index = data.load_index(Path(cfg.data.index))
    patch_size = data.index_patch_size(index)
    input_size = resolve_input_size(cfg, patch_size)
    min_size = spec(cfg.model.backbone).min_size
    if input_size < min_size:
        raise CamnetError(f"{cfg.model.backbone} needs inputs of at least {min_size} px; the patches are "
                          f"{patch_size} px (set model.input_size with model.resize: true)")
    weights = resolve_weights(cfg.model.weights, cfg.model.backbone, input_size, cfg.model.weights_cache)
    stain = None
    if cfg.stain.method != "none" and cfg.stain.reference:
        ref = read_reference(Path(cfg.stain.reference))
        stain = (cfg.stain.method, fit_reference(ref, cfg.stain.method))
    names = cfg.data.splits
    train = data.load_split(index, names.train, cfg.data, cfg.seed, balance=True)
    # a one-class val or test split trains and evaluates; metrics.json warns that its figures mean little
    val = data.load_split(index, names.val, cfg.data, cfg.seed, balance=False, both_classes=False)
    test = (data.load_split(index, names.test, cfg.data, cfg.seed, balance=False, both_classes=False)
            if names.test else None)
    return Prepared(cfg, index, Path(cfg.output.run_dir), patch_size, input_size, weights, stain, train, val,
                    test)


def make_optimizer(cfg: Layer2Config, schedule: Any) -> Any:
    # legacy optimisers: Horovod 0.28 wraps them reliably, and they create slots lazily, which lets the
    # fine-tune phase add variables to an optimiser restored from a head-phase checkpoint
    legacy = tf.keras.optimizers.legacy
    if cfg.optimizer.kind == "adam":
        return legacy.Adam(learning_rate=schedule, epsilon=cfg.optimizer.epsilon)
    opt = cfg.optimizer
    return legacy.SGD(learning_rate=schedule, momentum=opt.momentum, nesterov=opt.nesterov)


def segments(start: tuple[int, int], head_epochs: int, epochs: int) -> list[tuple[int, int, int, bool]]:
    """(first epoch, end epoch, first step, head only) fits: a partial first epoch and a phase change
    each need their own `fit` call."""
    out = []
    epoch, step = start
    while epoch < epochs:
        head = epoch < head_epochs
        end = epoch + 1 if step > 0 else (head_epochs if head else epochs)
        out.append((epoch, end, step, head))
        epoch, step = end, 0
    return out


def sidecar(p: Prepared, steps: int, colour: ColourStats | None = None) -> ModelSidecar:
    entry = p.index.entries[0]
    # p.stain's method is the config's Literal, typed str by the tuple
    stain = StainSidecar(cast(Any, p.stain[0]), p.stain[1], p.cfg.stain.reference) if p.stain else StainSidecar()
    return ModelSidecar(
        model_file="export/model.keras", patch_size=p.patch_size, working_mpp=entry.working_mpp,
        level=entry.level, threshold=p.cfg.output.threshold, backbone=p.cfg.model.backbone,
        input_size=p.input_size, resized_in_model=p.input_size != p.patch_size,
        input="RGB 0-255 (uint8 or float), shape (n, patch_size, patch_size, 3); all preprocessing is "
              "inside the model",
        output="sigmoid probability of class 1", preprocessing=spec(p.cfg.model.backbone).preprocessing,
        stain=stain, config_hash=config_hash(p.cfg), steps_per_epoch=steps, colour=colour,
        framework=FrameworkSidecar(**flavour()))


COLOUR_SEED = 13  # with cfg.seed: the colour sample's own stream, apart from subsampling and epoch order
COLOUR_BATCH = 256  # patches read and added at once: bounded memory (256-px patches: 50 MB)


def colour_positions(split: data.SplitData, k: int, seed: int) -> np.ndarray:
    """Sorted split positions of at most `k` distinct patches, a seeded uniform sample without replacement.

    Oversampling repeats tumour patches in the training split; each patch counts once, so the statistics
    describe the training tissue rather than the balancing."""
    _, first = np.unique(split.sample_id, return_index=True)
    if len(first) > k:
        first = np.random.default_rng([seed, COLOUR_SEED]).choice(first, size=k, replace=False)
    return np.sort(first)


def training_colour(split: data.SplitData, cfg: DataConfig, k: int, seed: int) -> ColourStats | None:
    """Optical-density statistics of the stained pixels of `colour_positions` (None: k is 0 or no pixel is
    stained)."""
    pos = colour_positions(split, k, seed)
    if len(pos) == 0:
        return None
    acc = ColourAccumulator()
    reader = data.BatchReader(split, COLOUR_BATCH, cfg, (0, 1), None)
    try:
        for chunk in np.array_split(pos, math.ceil(len(pos) / COLOUR_BATCH)):
            acc.add(reader.read_positions(chunk)[0])
    finally:
        reader.close()
    return acc.stats()


def predict(model: tf.keras.Model, split: data.SplitData, p: Prepared) -> np.ndarray:
    reader = data.BatchReader(split, p.cfg.batch_size, p.cfg.data, (0, 1), shuffle_seed=None)
    dc = p.cfg.data
    try:
        ds = data.make_dataset(reader, (0, 0), 1, reader.steps, None, dc)
        prob = model.predict(ds.map(lambda x, _y: x), verbose=0)
    finally:
        reader.close()
    return np.asarray(prob, dtype=np.float64).ravel()


def evaluation(curves: dict[str, tuple[np.ndarray, np.ndarray]], selected: dict[str, Any],
               threshold: float) -> dict[str, Any]:
    """metrics.json: `best_<monitor>`, `selected` (the exported epoch and why), per split the metrics at
    `threshold`, and `warnings` (HealthWarning dicts of every split)."""
    results: dict[str, Any] = {"best_" + selected["monitor"]: selected["value"], "selected": selected}
    warnings: list[HealthWarning] = []
    for name, (label, prob) in curves.items():
        results[name] = metrics.binary_metrics(label, prob, threshold)
        warnings += classifier_warnings(name, label, prob, threshold)
    results["warnings"] = [w.to_dict() for w in warnings]
    return results


def finish(model: tf.keras.Model, state: TrainState, p: Prepared, steps: int) -> dict[str, Any]:
    """Rank 0, `model` holding the best weights: export, metrics with health warnings, ROC plot, and the sidecar
    last (its presence means training finished)."""
    export = p.run_dir / "export" / "model.keras"
    with rundir.writing(export):
        export.parent.mkdir(exist_ok=True)
        with atomic_path(export) as tmp:
            model.save(str(tmp))
    curves = {name: (split.label, predict(model, split, p)) for name, split in (("val", p.val), ("test", p.test))
              if split is not None}
    results = evaluation(curves, state.selected(), p.cfg.output.threshold)
    rundir.write_json(p.run_dir / "metrics.json", results)
    with rundir.writing(p.run_dir / "roc.png"):
        metrics.plot_roc(curves, p.run_dir / "roc.png")
    colour = training_colour(p.train, p.cfg.data, p.cfg.output.colour_patches, p.cfg.seed)
    rundir.write_json(p.run_dir / SIDECAR, sidecar(p, steps, colour).to_dict())
    return results


def summary_lines(results: dict[str, Any]) -> list[str]:
    """What the end of training prints: the val AUC, then each warning as one `warning:` line (stderr)."""
    auc = results["val"]["auc"]
    head = f"val AUC {auc:.4f}" if auc is not None else "val AUC undefined (see the warnings)"
    return [head] + [f"warning: {w['message']} [{w['code']}]" for w in results["warnings"]]


def write_weights_digest(dist: Dist, model: tf.keras.Model, path: Path) -> None:
    """Diagnostics: ranks of one run must end with bit-identical weights (each rank's own values: BatchNorm
    statistics read plainly under tf.distribute would be the ranks' average)."""
    digest = hashlib.sha256()
    for w in local_values(dist, model.weights):
        digest.update(np.ascontiguousarray(w).tobytes())
    with rundir.writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, digest.hexdigest() + "\n")


def run(cfg: Layer2Config, dist: Dist) -> int:
    p = prepare(cfg)
    with ExitStack() as stack:
        # one training per run dir: rank 0 locks it until the run ends (a preemption or an error line
        # included); the other ranks learn whether it could, and stop too if not
        on_chief(dist, lambda: stack.enter_context(rundir.claim(p.run_dir)))
        scratch = None
        if dist.saves_on_every_rank and not dist.is_chief:  # its saves only take part in the collectives
            scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"camnet-rank{dist.rank}-")))
        return train_locked(p, dist, scratch)


def train_locked(p: Prepared, dist: Dist, scratch: Path | None = None) -> int:
    """The run itself, once rank 0 holds the run dir; `scratch`: where a rank other than 0 saves when every
    rank must (`distributed.on_writers`)."""
    cfg = p.cfg
    resumed = rundir.prepare(p.run_dir, cfg)
    tf.keras.utils.set_random_seed(cfg.seed)
    if cfg.mixed_precision:
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
    record = p.run_dir / "sample_ids" if cfg.data.record_sample_ids else None
    reader = data.BatchReader(p.train, cfg.batch_size, cfg.data, (dist.rank, dist.size), cfg.seed, record)
    steps = min(reader.steps, cfg.steps_per_epoch or reader.steps)
    val_reader = data.BatchReader(p.val, cfg.batch_size, cfg.data, (dist.rank, dist.size), None)
    schedule = make_schedule(cfg.schedule, dist.size, steps, cfg.epochs, cfg.phases.head_epochs,
                             cfg.phases.fine_tune_lr_factor)
    with scope(dist):  # tf.distribute mirrors the variables created here
        model = build_model(cfg.model, p.patch_size, p.input_size, p.weights, p.stain)
        # Wrapped once, before the checkpoint tracks it: Horovod's DistributedOptimizer is a new optimiser built
        # from the config (iterations 0, no slots), so wrapping at every `compile` restarted the LR schedule and
        # Adam's moments at each phase change and after a resumed partial epoch, and the checkpoint kept an unused
        # copy
        optimizer = wrap_optimizer(dist, make_optimizer(cfg, schedule))
        _ = optimizer.iterations  # created now so a checkpoint restores into it, not lazily later
    check_phases(model, cfg.phases.fine_tune_from)
    state = TrainState(p.run_dir, model, optimizer, cfg.output.monitor, scratch)
    start = state.restore() if resumed else (0, 0)
    placement = [{"rank": r, "host": host, "local_rank": local} for r, (host, local) in enumerate(dist.placement)]
    on_chief(dist, lambda: rundir.write_start(p.run_dir, cfg, dist.size, {
        "engine": dist.engine_name, "resumed_at": list(start), "steps_per_epoch": steps, "train_samples": len(p.train),
        "placement": placement}))
    broadcast_variables(dist, model.variables)
    if start[1]:  # resumed mid-epoch: each rank's own BatchNorm statistics, as they were
        restore_rank_state(state.last.latest_checkpoint, dist, model)
    flag = SignalFlag()
    flag.install()
    loss = make_loss(cfg.loss, p.train.n_tumour, len(p.train) - p.train.n_tumour)
    transform = make_transform(cfg.augment, cfg.seed, dist.rank)
    val_ds = distribute(dist, lambda: data.make_dataset(val_reader, (0, 0), 1, val_reader.steps, None, cfg.data))
    # a distributed dataset has no length Keras can see; a plain one is read to its end (given a count whose
    # dataset has no known cardinality, Keras would keep one iterator and find it empty after the first epoch)
    val_steps = None if isinstance(val_ds, tf.data.Dataset) else val_reader.steps
    log.info("rank %d/%d: %d train samples, %d steps/epoch, start at %s", dist.rank, dist.size, len(p.train),
             steps, start)
    # one for all fits of the run, so its mean epoch time (the ETA) carries over a phase change
    epoch_lines = progress.epoch_callback(cfg.epochs, steps) if dist.is_chief else None
    try:
        for first, end, step0, head in segments(start, cfg.phases.head_epochs, cfg.epochs):
            set_phase(model, head, cfg.phases.fine_tune_from)
            with scope(dist):
                model.compile(optimizer=optimizer, loss=loss,
                              metrics=[tf.keras.metrics.AUC(name="auc"),
                                       tf.keras.metrics.BinaryAccuracy(name="accuracy")])
            ds = distribute(dist, partial(data.make_dataset, reader, (first, step0), end, steps, transform, cfg.data))
            callbacks: list[Any] = fit_callbacks(dist)  # Horovod: averages each rank's validation metrics
            callbacks.append(CheckpointCallback(dist, state, flag, cfg.output.monitor,
                                                (first, step0), schedule))
            if epoch_lines is not None:  # after the engine's callbacks: it shows the averaged metrics
                callbacks.append(epoch_lines)
            if dist.is_chief and cfg.output.tensorboard:
                callbacks.append(tf.keras.callbacks.TensorBoard(str(p.run_dir / "tensorboard"),
                                                                write_graph=False, profile_batch=0))
            model.fit(ds, epochs=end, initial_epoch=first, steps_per_epoch=steps - step0,
                      validation_data=val_ds, validation_steps=val_steps, callbacks=callbacks,
                      verbose=0)  # `epoch_lines` reports
    except Preempted as stop:
        print(f"preempted at {stop}: state saved in {p.run_dir}; rerun the same command to resume")
        return 0
    except tf.errors.OpError as err:
        stated = data.data_error(err)
        if stated is None:
            raise
        raise stated from None
    finally:
        reader.close()
        val_reader.close()
    if record is not None:
        write_weights_digest(dist, model, record / f"weights_rank{dist.rank}.txt")
    if dist.is_chief or dist.saves_on_every_rank:
        state.restore_best()
    if dist.saves_on_every_rank:  # rank 0's restore everywhere: `exported` reads (averages) every rank's values
        broadcast_variables(dist, model.variables)
    # the phase decides the order of the weights, which `exported` may copy into a model rebuilt in this phase
    set_phase(model, False, cfg.phases.fine_tune_from)

    def rebuild() -> tf.keras.Model:
        copy = build_model(cfg.model, p.patch_size, p.input_size, None, p.stain)
        set_phase(copy, False, cfg.phases.fine_tune_from)
        return copy

    with exported(dist, model, rebuild) as best:
        if best is not None:
            # training is complete: a marker of an earlier preemption would now misreport the run as pending
            with rundir.writing(p.run_dir / PREEMPTED):
                (p.run_dir / PREEMPTED).unlink(missing_ok=True)
            result, *warnings = summary_lines(finish(best, state, p, steps))
            print(f"run dir {p.run_dir}: {result}")
            for line in warnings:
                print(line, file=sys.stderr)
    return 0
