"""Layer 3 explain cost: seconds per patch for each method, and how RCV time grows with patches and layers.

    .venv/bin/python bench/layer3_explain.py [--model RUN_DIR --store H5 ...] [--patches 16] [--threads 2]

Without --model it trains the tiny Layer 2-layout CNN of `layer3_inference.explain.toy` on synthetic-slide
patches (64 px) in a temporary folder. Everything is measured in one run on this (shared, noisy) machine;
the growth table is what to read (time relative to the smallest setting), not the absolute seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="Layer 2 run dir (default: train the tiny model)")
    parser.add_argument("--store", type=Path, nargs="*", default=[], help="patch stores (with --model)")
    parser.add_argument("--patches", type=int, default=16, help="patches for the per-patch methods")
    parser.add_argument("--lime-samples", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2, help="TensorFlow intra-op threads")
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from layer3_inference.explain import concepts, gradcam, lime_explain, probe, rcv, toy
    from layer3_inference.explain.config import CONCEPTS, ConceptConfig, LimeConfig, RcvConfig
    from layer3_inference.model import load_model, read_spec

    with tempfile.TemporaryDirectory() as tmp:
        if args.model is None:
            stores = toy.synthetic_stores(Path(tmp), n_slides=2, size=3072, per_class=120)
            x, y = toy.read_all(stores)
            model, _ = toy.train_tiny(x, y)
            run_dir = toy.export(model, Path(tmp) / "run", x.shape[1])
        else:
            run_dir, (x, y) = args.model, toy.read_all(args.store)
        model = load_model(read_spec(run_dir))
    flat = probe.flatten(model)
    layer = probe.gradcam_layer(flat, None, 7).name
    print(f"model {run_dir}: {model.name}, input {model.input_shape[1:]}, Grad-CAM layer {layer}, "
          f"{len(x)} patches available, {args.threads} TF threads")
    n = min(args.patches, len(x))
    patches = x[:n]
    gradcam.cams(flat, patches[:2], layer, "logit")  # graph building is a one-off, not per patch

    rows: list[tuple[str, float]] = []
    t, _ = timed(lambda: gradcam.cams(flat, patches, layer, "logit"))
    rows.append(("Grad-CAM + Grad-CAM++ (together)", t / n))
    lcfg = LimeConfig(num_samples=args.lime_samples)
    t, _ = timed(lambda: lime_explain.lime_maps(flat, patches[: max(1, n // 4)], lcfg))
    rows.append((f"LIME ({args.lime_samples} samples)", t / max(1, n // 4)))
    t, rand = timed(lambda: probe.randomised_copy(model, 1, patches))
    rows.append(("sanity: randomise + flatten + BatchNorm statistics (once)", t))
    t, _ = timed(lambda: gradcam.cams(rand, patches, layer, "logit"))
    rows.append(("sanity: Grad-CAM maps of random model", t / n))
    t, _ = timed(lambda: concepts.measure_all(patches, ConceptConfig()))
    rows.append(("concept measures (segmentation + GLCM)", t / n))
    print(f"\n{'method':44s} {'s/patch':>9s}")
    for name, value in rows:
        print(f"{name:44s} {value:9.4f}")

    rng = np.random.default_rng(0)
    spatial = probe.spatial_layers(flat)
    cfg = RcvConfig(n_random=100, n_repeats=20)
    print("\nRCV (one concept, nuclei_area): activations+gradients / regression+baselines, seconds")
    print(f"{'patches':>8s} {'layers':>7s} {'acts':>8s} {'stats':>8s} {'total':>8s} {'x smallest':>11s}")
    base = None
    for n_layers in (1, 2, 3):
        layers = probe.auto_layers(flat, n_layers) if n_layers <= len(spatial) else spatial
        taps = probe.tap_model(flat, layers)
        for n_patch in (40, 80, 160):
            half = n_patch // 2
            pick = np.concatenate([rng.choice(np.flatnonzero(y == c), half, replace=False) for c in (0, 1)])
            values = concepts.measure_all(x[pick], ConceptConfig())[:, [CONCEPTS.index("nuclei_area")]]
            start = time.perf_counter()
            data, _ = rcv.activations(taps, layers, x[pick], 32)
            t_act = time.perf_counter() - start
            rcv.score_all(data, values, ["nuclei_area"], y[pick], cfg)
            t_stat = time.perf_counter() - start - t_act
            total = t_act + t_stat
            base = base or total
            print(f"{n_patch:8d} {len(layers):7d} {t_act:8.2f} {t_stat:8.2f} {total:8.2f} {total / base:11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
