"""`synth`: write a deterministic synthetic cohort (pyramidal TIFFs + ASAP XML) for tests and the demo."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from layer1_patches.synth import CohortSpec, write_cohort_spec

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "synth", help="write synthetic slides with tumour annotations",
        description="Write DIR/patient_XXX_node_Y.tif (JPEG pyramidal TIFF) and .xml (ASAP, Camelyon16 "
                    "format) per slide; same arguments give byte-identical files; complete slides are "
                    "skipped. Slide i is patient i // P, node i % P (P: --slides-per-patient, default 2): "
                    "--n-slides 6 gives patient_000_node_0, patient_000_node_1, patient_001_node_0, ... "
                    "(3 patients); --slides-per-patient 1 gives one patient per slide.")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    parser.add_argument("--n-slides", type=int, required=True, metavar="K", help="number of slides")
    parser.add_argument("--size", type=int, required=True, metavar="PX",
                        help="level-0 width and height (>= 512)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="cohort seed (default 0)")
    parser.add_argument("--tumour-fraction", type=float, default=0.1, metavar="F",
                        help="approximate tumour share of the tissue area; 0 for tumour-free slides "
                             "(default 0.1)")
    parser.add_argument("--mpp", type=float, default=0.5, help="level-0 micrometres per pixel (default 0.5)")
    parser.add_argument("--slides-per-patient", type=int, default=2, metavar="P",
                        help="slides (lymph nodes) per patient: N slides give ceil(N / P) patients, which the "
                             "patient split of `index` divides (default 2)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    paths = write_cohort_spec(args.out, CohortSpec(args.n_slides, args.size, args.seed, args.tumour_fraction,
                                                   args.mpp, args.slides_per_patient))
    log.info("synth: %d slides in %s (%.1f s)", len(paths), args.out, time.perf_counter() - start)
    return 0
