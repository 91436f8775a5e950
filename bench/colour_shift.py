"""The colour-shift calibration behind `heatmap.warnings.max_colour_shift` (README, "Is this slide like the
training data?"): training colour from class-balanced tumour/normal patches of a synthetic slide, then the shift of
other synthetic slides (other seed; 0 % and 80 % tumour) and of the two real H&E slides in tests/data.

    .venv/bin/python bench/colour_shift.py [--out DIR] [--mpp 0.5] [--patch 64]

Prints one line per slide: its colour_shift against the training colour, and per channel. No timing: this is a
measurement of the data, deterministic by seed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from layer1_patches.colour import ColourAccumulator, ColourStats, colour_shift
from layer1_patches.config import ResolutionConfig, TissueConfig
from layer1_patches.masks import masker_from_config
from layer1_patches.reading import PatchReader
from layer1_patches.slide import Slide, resolve_resolution
from layer1_patches.synth.slides import SynthSpec, SynthTruth, make_layout, slide_seed, write_cohort
from layer3_inference.config import GridConfig
from layer3_inference.grid import plan_grid

REPO = Path(__file__).resolve().parents[1]
SIZE = 2048


def grid_colour(path: Path, mpp: float, patch: int, assume_mpp: float | None = None,
                spec: SynthSpec | None = None) -> dict[str, ColourAccumulator]:
    """Colour of every tissue grid patch ("all"); with a synthetic `spec`, also of pure tumour and pure normal."""
    tumour = None
    if spec is not None:
        layout, t, h = make_layout(spec)
        tumour = SynthTruth(spec, t, h, layout).tumour_mask(16)
    accs = {k: ColourAccumulator() for k in ("all", "tumour", "normal")}
    with Slide(path, assume_mpp) as slide:
        res = resolve_resolution(slide, ResolutionConfig(mpp=mpp, assume_mpp=assume_mpp))
        grid = plan_grid(slide.dimensions, res, patch, masker_from_config(TissueConfig())(slide), GridConfig(), "x")
        reader = PatchReader(slide, res, patch, [])
        f = grid.footprint
        for coord in grid.coords:
            x, y = int(coord[0]), int(coord[1])
            rgb = reader(coord)[0]
            accs["all"].add(rgb)
            if tumour is not None:
                share = tumour[y // 16:(y + f) // 16, x // 16:(x + f) // 16].mean()
                if share >= 0.9:
                    accs["tumour"].add(rgb)
                elif share == 0:
                    accs["normal"].add(rgb)
    return accs


def balanced(accs: dict[str, ColourAccumulator]) -> ColourStats:
    """Tumour and normal colour weighted equally, as Layer 2's class-balanced training sees them."""
    out = ColourAccumulator()
    out.counts = accs["tumour"].counts * accs["normal"].patches + accs["normal"].counts * accs["tumour"].patches
    out.patches = 1
    stats = out.stats()
    assert stats is not None
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="folder for the synthetic slides (default: a temporary one)")
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--patch", type=int, default=64)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        train_path, other_path = write_cohort(root / "seed3", 2, SIZE, seed=3, tumour_fraction=0.3)
        training = balanced(grid_colour(train_path, args.mpp, args.patch,
                                        spec=SynthSpec(SIZE, slide_seed(3, 0), tumour_fraction=0.3)))
        print(f"training colour (balanced, {train_path.name}): OD mean {training.od_mean}, std {training.od_std}")
        slides: list[tuple[str, Path, float | None]] = [("synthetic, same cohort", other_path, None)]
        for seed, share in ((11, 0.0), (15, 0.8)):
            path = write_cohort(root / f"seed{seed}", 1, SIZE, seed=seed, tumour_fraction=share)[0]
            slides.append((f"synthetic, seed {seed}, {share:.0%} tumour", path, None))
        slides += [("TCGA (assume 0.25 um/px)", REPO / "tests/data/tcga-cr-7395-01a-01-ts1.svs", 0.25),
                   ("TCGA (assume 0.5 um/px)", REPO / "tests/data/tcga-cr-7395-01a-01-ts1.svs", 0.5),
                   ("CMU-1-Small-Region", REPO / "tests/data/CMU-1-Small-Region.svs", None)]
        for name, path, assume in slides:
            stats = grid_colour(path, args.mpp, args.patch, assume)["all"].stats()
            assert stats is not None
            per = [round(abs(s - t) / sd, 2) for s, t, sd in zip(stats.od_mean, training.od_mean, training.od_std,
                                                                  strict=True)]
            print(f"{name:32s} colour_shift {colour_shift(stats, training):.3f}  per channel R, G, B {per}")


if __name__ == "__main__":
    main()
