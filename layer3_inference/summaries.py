"""Layer 3's published outputs as contracts: a slide's heatmap `summary.json` and the evaluation `summary.json`.

Writers build these dataclasses, readers (`pipeline collect`, the report, other tools) load them with
`from_mapping`, which validates through the typed-config system; `json_schema` of each is in the README
("Contracts"). A field added here is added to the writer, the reader and the published schema at once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from layer1_patches.colour import ColourStats
from layer1_patches.shared.errors import CamnetError
from layer1_patches.shared.typedconfig import bounded, load_contract, required, to_dict
from layer2_training.health import HealthWarning
from layer3_inference.config import FrocConfig

T = TypeVar("T")


@dataclass(frozen=True)
class HeatmapSummary:
    """One slide's heatmap: written last into `OUT/<stem>/`, so it also marks the folder finished."""

    slide: str = required("slide name (file stem)")
    slide_path: str = required("absolute path of the slide read")
    run_hash: str = required("hash of the heatmap config and the model: a rerun with other ones is refused")
    model: dict[str, Any] = required("identity of the model (run dir, sidecar values)")
    patches: int = required("grid cells predicted (tissue patches)", min=0)
    grid_shape: list[int] = required("grid rows, columns")
    footprint: int = required("side of one patch in level-0 pixels", min=1)
    step: float = required("grid stride in level-0 pixels", min_exclusive=0)
    level: int = required("pyramid level the patches were read from", min=0)
    downsample: float = required("working resolution's downsample relative to level 0", min_exclusive=0)
    working_mpp: float = required("micrometres per pixel of the patches (0: slide without mpp)", min=0)
    mpp: float = required("micrometres per pixel at level 0 (0: unknown)", min=0)
    dimensions: list[int] = required("slide width, height in level-0 pixels")
    tissue_area_mm2: float = required("tissue area in mm^2 (0 without mpp)", min=0)
    tumour_area_mm2: float = required("area of the probability map at or above threshold, mm^2", min=0)
    threshold: float = required("probability threshold for tumour", min=0, max=1)
    slide_score: float = required("slide-level tumour score (score_method over patch probabilities)", min=0, max=1)
    score_method: str = required("how slide_score is computed: max or percentile")
    max_probability: float = required("highest patch probability", min=0, max=1)
    mean_probability: float = required("mean patch probability", min=0, max=1)
    tumour_regions: int = required("tumour regions in the GeoJSON", min=0)
    ranks: int = required("processes that computed the grid", min=1)
    batch_size: int = required("patches per model call", min=1)
    reader_threads: int = required("reader threads per rank", min=1)
    times: dict[str, float] = required("seconds per phase (tissue_s, infer_s, model_s, wait_s, ...)")
    seconds: float = required("wall time for the slide", min=0)
    patches_per_s: float = required("patches per second of inference", min=0)
    package_version: str = required("CamNet version that wrote it")
    files: list[str] = bounded([], doc="every file of the slide's folder, this one included: the folder is finished "
                                       "only when all exist ([] in older summaries: probabilities.h5, heatmap.png and "
                                       "overlay.png)")
    colour: ColourStats | None = bounded(None, doc="optical-density statistics of the stained pixels of the tissue "
                                         "patches predicted (null: none stained, or a summary older than the field)")
    colour_shift: float | None = bounded(None, min=0, doc="largest per-channel |slide - training| mean optical "
                                         "density in training standard deviations (null: model.json or the slide "
                                         "has no colour statistics)")
    tumour_share: float | None = bounded(None, min=0, max=1, doc="share of the tissue patches at or above threshold "
                                         "(null in summaries older than the field)")
    warnings: list[HealthWarning] = bounded([], doc="reasons to distrust this heatmap, {code, message, split: null}: "
                                            "colour_shift, tumour_share, no_training_colour")
    summary_version: int = bounded(1, min=1, max=1, doc="version of this contract")


@dataclass(frozen=True)
class SplitEvaluation:
    """The figures of one split's slides (`splits.<name>` of the evaluation summary); no split is pooled with
    another."""

    slides: int = required("slides evaluated in this split", min=1)
    tumour_slides: int = required("slides with annotated tumour", min=0)
    trained_on: bool = required("true for the split the model was trained on (train): its figures are not a test")
    lesions: int = required("annotated lesions counted by the FROC (isolated tumour cells excluded)", min=0)
    slide_auc: float | None = required("slide-level ROC AUC of slide_score (null: one class only)", min=0, max=1)
    froc_score: float | None = required("Camelyon16 FROC score: mean sensitivity at fp_rates (null: no lesions)",
                                        min=0, max=1)
    froc_sensitivity: dict[str, float | None] = required("lesion sensitivity at each average FP per slide")
    mean_dice_tumour_slides: float | None = required("mean Dice of tumour slides (null: none)", min=0, max=1)
    mean_iou_tumour_slides: float | None = required("mean IoU of tumour slides (null: none)", min=0, max=1)
    mean_pixel_auc: float | None = required("mean per-slide pixel AUC (null: none computable)", min=0, max=1)
    plots: list[str] = bounded([], doc="this split's plot files: froc_<split>.png, slide_roc_<split>.png")


@dataclass(frozen=True)
class EvaluationSummary:
    """A cohort's evaluation against annotations (`evaluate --out OUT`: OUT/summary.json), per split."""

    headline_split: str = required("the split to quote: test if evaluated, else val, else the first other split "
                                   "not trained on, else train or unknown")
    slides: int = required("slides evaluated, all splits", min=1)
    score_method: str = required("slide score method")
    threshold: float | None = required("probability threshold for Dice and IoU (null: each heatmap's own)",
                                      min=0, max=1)
    froc_config: FrocConfig = required("the FROC detection and lesion parameters used")
    splits: dict[str, SplitEvaluation] = required("figures per split (from Layer 1's index; unknown: no index "
                                                  "given; unassigned: slides the index does not list)")
    warnings: list[HealthWarning] = bounded([], doc="reasons to distrust the figures, {code, message, split}: "
                                            "no_split, unassigned_slides, froc_empty, and the slide-level "
                                            "classifier checks (one_class, never_crosses_threshold, "
                                            "threshold_miscalibrated, auc_small_sample)")
    plots: list[str] = bounded([], doc="every plot file written beside it")
    summary_version: int = bounded(2, min=2, max=2, doc="version of this contract (2: per split; version 1 "
                                   "pooled every slide and is refused: evaluate again)")


def to_json(summary: Any) -> str:
    return json.dumps(to_dict(summary), indent=1, sort_keys=True) + "\n"


def load(cls: type[T], path: Path) -> T:
    """A summary file, validated; one error line naming the file and key."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CamnetError(f"{path}: cannot read ({err})") from None
    older = _older_version(cls, data)
    if older is not None:
        raise CamnetError(f"{path}: summary_version {older[0]} was written by an earlier CamNet; this one reads "
                          f"version {older[1]}: run the command that wrote it again")
    return load_contract(cls, data, str(path))


def _older_version(cls: type, data: Any) -> tuple[int, int] | None:
    """(found, current) when `data` is an older version of `cls`'s contract: named as such, not as a missing key."""
    fields = getattr(cls, "__dataclass_fields__", {})
    if "summary_version" not in fields or not isinstance(data, dict):
        return None
    found, current = data.get("summary_version"), fields["summary_version"].default
    if isinstance(found, int) and not isinstance(found, bool) and found < current:
        return found, current
    return None
