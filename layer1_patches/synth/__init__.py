"""Deterministic synthetic whole-slide images with exact tumour annotations, for tests, benches and the demo.

`slides` lays a slide out (tissue, tumour polygons, the ASAP XML truth) and writes cohorts, `pixels` renders
any tile of it, `pyramid` streams the pyramidal JPEG TIFF. Like histolab's `data/`, nothing in the pipeline
depends on it.
"""

from layer1_patches.synth.slides import (
    CohortSpec,
    SynthSpec,
    SynthTruth,
    write_cohort,
    write_cohort_spec,
    write_synthetic_slide,
)

__all__ = ["CohortSpec", "SynthSpec", "SynthTruth", "write_cohort", "write_cohort_spec", "write_synthetic_slide"]
