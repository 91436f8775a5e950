"""`explain`: Grad-CAM, Grad-CAM++, LIME, the randomisation sanity check and RCV concept scores.

Runs as one process, or as several MPI ranks under srun / mpirun (patches are split between ranks and
rank 0 writes every output).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from layer1_patches.shared.cli import add_overrides


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "explain", help="explain a trained model: saliency maps, sanity check, concept vectors",
        description="Writes OUT/maps/<id>.npz and OUT/panels/<id>.png per selected patch, OUT/sanity.json, "
                    "OUT/concepts.csv, OUT/rcv_scores.csv|json, R^2 and TCAV plots, and OUT/summary.json "
                    "(last).")
    p.add_argument("--config", type=Path, required=True, help="explain YAML (configs/layer3/explain.yaml)")
    add_overrides(p, "select.k=4")
    p.add_argument("--model", type=Path, required=True, metavar="RUN_DIR", help="Layer 2 run directory")
    p.add_argument("--store", type=Path, nargs="+", default=[], metavar="H5",
                   help="Layer 1 patch stores: patches to select from and the labelled patches for RCV")
    p.add_argument("--index", type=Path, metavar="INDEX_JSON",
                   help="Layer 1's index.json: select patches only from stores of split select.split (default test); "
                        "without --store, the index's stores")
    p.add_argument("--heatmap", type=Path, metavar="DIR",
                   help="heatmap output (OUT or OUT/<stem>): select the top-k cells by tumour probability")
    p.add_argument("--masks", type=Path, metavar="H5_OR_NPZ",
                   help="nuclei label masks (array 'masks', one per row of the single --store) for concepts")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from layer3_inference.explain.config import load_explain_config

    cfg = load_explain_config(args.config, args.overrides)  # config errors before TensorFlow loads
    from layer3_inference.explain.run import Request
    from layer3_inference.explain.run import run as explain

    summary = explain(Request(cfg, args.model, args.out, list(args.store), args.heatmap, args.masks, args.index))
    if summary.get("rank", 0) != 0:
        return 0
    print(f"explain: patches from split {summary.get('split') or 'unknown'}; Grad-CAM layer {summary['gradcam_layer']}")
    if "sanity" in summary:
        print_sanity(summary["sanity"])
    for warning in summary.get("warnings", []):
        print(f"warning: {warning['message']}")
    for row in summary.get("rcv", []):
        if row.get("r2_heldout") is None:
            print(f"rcv {row['layer']:>20s} {row['concept']:20s} skipped (see rcv_scores.json)")
            continue
        p, tcav = row.get("p_adjusted"), row.get("tcav")
        print(f"rcv {row['layer']:>20s} {row['concept']:20s} R2 {row['r2_heldout']:+.3f} "
              f"TCAV {'-' if tcav is None else format(tcav, '.2f')} p_adj {'-' if p is None else format(p, '.2g')} "
              f"{row.get('status', '')}")
    print(f"explain: outputs in {args.out}")
    return 0


def print_sanity(sanity: dict[str, Any]) -> None:
    print(f"sanity {sanity['status']}: randomised logits' std across patches {sanity['random_logit_std']:.3g}")
    for method, result in sanity["methods"].items():
        median = result["median"]
        shown = "-" if median is None or median != median else f"{median:+.3f}"  # NaN: no ranked patch
        flag = "  INPUT-INDEPENDENT" if result["input_independent"] else ""
        print(f"sanity {method:11s} {result['status']:12s} median rank correlation trained vs random {shown}{flag}")
