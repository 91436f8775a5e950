"""Layer 2 input pipeline and training throughput, as ratios measured in one run (not a test).

  .venv/bin/python bench/layer2_pipeline.py [--out bench_out/layer2] [--patch 96] [--steps 30] [--rounds 4]

1. pipeline patches/s (read + decode + augment + cast, tf.data, 2 epochs after start-up) vs raw HDF5 reads of
   the same patches (PatchStore.read of 256 contiguous rows, on-disk order);
2. training steps/s fed by the pipeline vs the same model and batch size fed from in-memory tensors that are
   already read and augmented (target >= 0.9), timed in alternating rounds (load drifts on a shared machine);
3. training samples/s with 1 vs 2 Horovod ranks (horovodrun --gloo, CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_stores(out: Path, slides: int, per_slide: int, size: int) -> Path:
    from layer1_patches.index import build_index
    from layer1_patches.store import PatchWriter, SlideMeta

    index = out / "index.json"
    if index.exists():
        return index
    (out / "stores").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for s in range(slides):
        labels = (rng.random(per_slide) < 0.5).astype(np.uint8)
        # smooth-ish content so lz4 compresses like tissue rather than like noise
        base = rng.integers(120, 230, (per_slide, size // 8, size // 8, 3), dtype=np.uint8)
        patches = np.repeat(np.repeat(base, 8, axis=1), 8, axis=2)
        patches[labels == 1, ::3, ::3] = 60
        path = out / "stores" / f"patient_{s:03d}_node_0.h5"
        with PatchWriter(path, size) as writer:
            n = per_slide
            ones = np.ones(n, np.float32)
            writer.append(patches, np.zeros((n, 2)), labels, labels.astype(np.float32), ones)
            meta = SlideMeta(slide_name=path.stem, slide_path=str(path), patient=f"{s:03d}", working_mpp=0.5,
                             patch_size=size, config_hash="bench")
            writer.finish(meta, {"patch_size": size}, {}, {})
    build_index([out / "stores"], index, "patient", {"train": 0.75, "val": 0.25}, seed=0)
    return index


def config(index: Path, run: Path, batch: int, steps: int) -> object:
    from layer1_patches.shared.typedconfig import from_mapping
    from layer2_training.config import Layer2Config

    return from_mapping(Layer2Config, {
        "data": {"index": str(index), "read_block": 32, "shuffle_window": 8, "read_threads": 2, "prefetch": 4,
                 "splits": {"test": None}},
        "model": {"backbone": "mobilenetv2", "weights": "none"},
        "augment": {"flips": True, "rot90": True, "brightness": 0.1, "contrast": 0.1},
        "output": {"run_dir": str(run), "tensorboard": False},
        "batch_size": batch, "epochs": 1, "steps_per_epoch": steps})


def bench_read(index: Path, batch: int) -> dict[str, float]:
    from layer1_patches.store import PatchStore
    from layer2_training import data
    from layer2_training.augment import make_transform
    from layer2_training.config import AugmentConfig, DataConfig

    cfg = DataConfig(index=str(index), read_block=32, shuffle_window=8, read_threads=2, prefetch=4)
    split = data.load_split(data.load_index(index), "train", cfg, 0, balance=False)
    start = time.perf_counter()
    for k, path in enumerate(split.paths):
        with PatchStore(path) as store:
            rows = split.row[split.store == k]
            for i in range(0, len(rows), 256):
                store.read(rows[i:i + 256])
    raw = len(split) / (time.perf_counter() - start)
    reader = data.BatchReader(split, batch, cfg, (0, 1), 0)
    transform = make_transform(AugmentConfig(brightness=0.1, contrast=0.1), 0, 0)
    ds = data.make_dataset(reader, (0, 0), 2, reader.steps, transform, cfg)
    it = iter(ds)
    next(it)  # start-up (tracing the dataset's functions) is not throughput
    start = time.perf_counter()
    n = sum(int(x.shape[0]) for x, _ in it)
    pipe = n / (time.perf_counter() - start)
    reader.close()
    return {"raw_hdf5_patches_per_s": raw, "pipeline_patches_per_s": pipe, "ratio": pipe / raw}


def bench_train(index: Path, out: Path, batch: int, steps: int, rounds: int) -> dict[str, float]:
    import tensorflow as tf

    from layer2_training import data
    from layer2_training.augment import make_transform
    from layer2_training.config import ModelConfig
    from layer2_training.model import build_model

    cfg = config(index, out / "run", batch, steps)
    split = data.load_split(data.load_index(index), "train", cfg.data, 0, balance=False)  # type: ignore[attr-defined]
    reader = data.BatchReader(split, batch, cfg.data, (0, 1), 0)  # type: ignore[attr-defined]
    transform = make_transform(cfg.augment, 0, 0)  # type: ignore[attr-defined]
    model_cfg = ModelConfig(backbone="mobilenetv2", head=cfg.model.head)  # type: ignore[attr-defined]
    model = build_model(model_cfg, split.patch_size, split.patch_size, None, None)
    model.compile(optimizer=tf.keras.optimizers.legacy.Adam(1e-3), loss="binary_crossentropy")
    dc = cfg.data  # type: ignore[attr-defined]
    warm = 5
    # the real pipeline exactly as `train` builds it and feeds it to `fit` (a Dataset, iterated in-graph)
    epochs = -(-(warm + steps) // reader.steps)
    real = data.make_dataset(reader, (0, 0), epochs, reader.steps, transform, dc)
    # the baseline: the same batch size of already read, decoded and augmented batches cached in memory, so
    # it pays no per-step input cost at all (a strict baseline: the pipeline must hide all of its work)
    x, y, _ = reader.read_positions(np.arange(min(len(split), batch * 8)))
    mem = tf.data.Dataset.from_tensor_slices((x, y[:, None])).batch(batch)
    mem = mem.map(lambda a, b: (transform(a, tf.constant([0, 0], tf.int64)), b)).cache().repeat().prefetch(2)
    model.fit(mem, steps_per_epoch=warm, epochs=1, verbose=0)  # trace and warm up once

    class Clock(tf.keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.ticks: list[float] = []

        def on_train_batch_end(self, batch: int, logs: object = None) -> None:  # noqa: ARG002 - Keras' signature
            self.ticks.append(time.perf_counter())

    seconds = {"in_memory": 0.0, "pipeline": 0.0}
    modes = [("in_memory", mem), ("pipeline", real)]
    for r in range(rounds):  # alternate A B B A ..., so a load drift on a shared machine hits both alike
        for name, ds in modes if r % 2 == 0 else modes[::-1]:
            clock = Clock()
            # each fit starts a fresh iterator: its start-up falls in the `warm` untimed steps
            model.fit(ds, steps_per_epoch=warm + steps, epochs=1, verbose=0, callbacks=[clock])
            seconds[name] += clock.ticks[-1] - clock.ticks[warm - 1]
    out_rates = {f"{name}_steps_per_s": rounds * steps / sec for name, sec in seconds.items()}
    out_rates["ratio"] = out_rates["pipeline_steps_per_s"] / out_rates["in_memory_steps_per_s"]
    reader.close()
    return out_rates


def bench_ranks(index: Path, out: Path, batch: int, steps: int) -> dict[str, float]:
    import yaml

    rates = {}
    for n in (1, 2):
        run = out / f"ranks{n}"
        cfg = {"data": {"index": str(index), "read_block": 32, "shuffle_window": 8, "splits": {"test": None}},
               "model": {"backbone": "mobilenetv2", "weights": "none"}, "batch_size": batch, "epochs": 2,
               "steps_per_epoch": steps, "output": {"run_dir": str(run), "tensorboard": False}}
        path = out / f"ranks{n}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        subprocess.run(["rm", "-rf", str(run)], check=True)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
               "HOROVOD_CYCLE_TIME": "5"}  # as slurm/layer2_train.sbatch sets it on CPU
        horovodrun = str(Path(sys.executable).parent / "horovodrun")
        subprocess.run([horovodrun, "-np", str(n), "--gloo", sys.executable, "-m", "layer2_training", "train",
                        "--config", str(path)], cwd=REPO, env=env, check=True, capture_output=True)
        import csv

        with (run / "history.csv").open() as f:
            last = list(csv.DictReader(f))[-1]  # epoch 2: traced and warm
        rates[f"ranks{n}_samples_per_s"] = steps * batch * n / float(last["train_seconds"])
    rates["speedup"] = rates["ranks2_samples_per_s"] / rates["ranks1_samples_per_s"]
    return rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench_out" / "layer2")
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4, help="alternating timed rounds of --steps per mode")
    parser.add_argument("--skip-ranks", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    index = make_stores(args.out, 8, 512, args.patch)
    report = {"read": bench_read(index, args.batch),
              "train": bench_train(index, args.out, args.batch, args.steps, args.rounds)}
    if not args.skip_ranks:
        report["ranks"] = bench_ranks(index, args.out, args.batch, args.steps)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
