"""`pipeline check`: every problem an experiment would hit, found before anything runs, all at once.

Each check is a small function returning `Problem`s; none reads pixels (opening a slide reads its metadata only),
so checking a cohort of terabytes takes seconds per slide at most. The split plan is the one the index stage
will make (`layer1_patches.index.patient_splits`), computed from the slide names and annotations before any
patch exists: a tumour slide is one with at least one tumour-group polygon, and every slide gives normal patches
(tissue outside its tumour), so a split lacks tumour when none of its patients has an annotated tumour.
"""

from __future__ import annotations

import difflib
import glob
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from layer1_patches.annotations import load_annotations, tumour_region
from layer1_patches.config import AnnotationConfig, Layer1Config, ResolutionConfig
from layer1_patches.extract import slide_identity
from layer1_patches.index import SplitPlan, patient_splits, split_advice
from layer1_patches.mpp import MppTable, read_mpp_table
from layer1_patches.shared.cohort import ANNOTATION_SUFFIXES, discover_slides, find_annotation, output_stem
from layer1_patches.shared.errors import CamnetError
from layer1_patches.slide import Slide, resolve_resolution
from layer2_training.config import ModelConfig
from layer2_training.weights import resolve_weights
from layer3_inference.pipeline.config import Experiment, IndexRef, SlurmConfig

Severity = Literal["error", "warning"]
SLURM_STAGES = ("layer1", "index", "layer2", "heatmap", "evaluate", "explain", "report")


@dataclass(frozen=True)
class Problem:
    message: str
    severity: Severity = "error"


@dataclass(frozen=True)
class CheckOptions:
    """`allow_orphans`: an annotation matching no slide is a warning, not an error; `slurm`: also check the
    partitions asked for and that `sbatch` is on PATH (what `submit` needs)."""

    allow_orphans: bool = False
    slurm: bool = False


@dataclass(frozen=True)
class SlidePlan:
    """One slide as the split plan sees it."""

    stem: str
    patient: str  # from the name (metadata.name_regex), else the stem: the index's rule
    unit: str  # what the split assigns: the patient, or split by centre the centre
    tumour: bool


@dataclass(frozen=True)
class CheckResult:
    problems: list[Problem]
    slides: int = 0
    annotated: int = 0
    patients: int = 0
    split_sizes: dict[str, int] = field(default_factory=dict)  # planned slides per split

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def summary(self) -> str:
        splits = ", ".join(f"{k} {v}" for k, v in self.split_sizes.items())
        return (f"check: OK: {self.slides} slides, {self.annotated} annotated, {self.patients} patients; planned "
                f"split (slides): {splits}")


def pattern_problems(patterns: list[str]) -> list[Problem]:
    """A pattern that matches nothing: an empty glob, a missing file or folder, a folder without slides."""
    out = []
    for pattern in patterns:
        path = Path(pattern)
        if any(ch in pattern for ch in "*?[") and not path.exists():
            if not glob.glob(pattern):
                out.append(Problem(f"config key 'slides': {pattern}: the glob matches no file"))
        elif path.is_dir():
            try:
                found = discover_slides([pattern])
            except CamnetError:
                found = [path]  # a clash of names inside the folder is reported for the whole cohort
            if not found:
                out.append(Problem(f"config key 'slides': {pattern}: the folder holds no slide files"))
        elif not path.exists():
            out.append(Problem(f"config key 'slides': {pattern}: no such file or folder"))
    return out


def cohort(patterns: list[str]) -> tuple[list[Path], list[Problem]]:
    """The slides the chain will run on, from the patterns that match something."""
    usable = [p for p in patterns if Path(p).exists() or glob.glob(p)]
    try:
        return [s for s in discover_slides(usable) if s.is_file()], []
    except CamnetError as err:
        return [], [Problem(f"config key 'slides': {err}")]


def _mpp_table(cfg: ResolutionConfig) -> tuple[MppTable | None, list[Problem]]:
    if not cfg.mpp_table:
        return None, []
    try:
        return read_mpp_table(Path(cfg.mpp_table)), []
    except CamnetError as err:
        return None, [Problem(f"layer1: {err}")]


def slide_problems(slides: list[Path], cfg: ResolutionConfig) -> list[Problem]:
    """Every slide opens and has a level-0 mpp and the working resolution asked for, as extraction resolves it."""
    table, out = _mpp_table(cfg)
    for path in slides:
        try:
            with Slide(path, cfg.assume_mpp, table) as slide:
                resolve_resolution(slide, cfg)
        except CamnetError as err:
            out.append(Problem(str(err)))
    return out


def annotation_files(folder: Path) -> list[Path]:
    """Annotation files only: the folder may hold the slides too (the demo writes both into one)."""
    return [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in ANNOTATION_SUFFIXES
            and not p.name.startswith(".")]


def orphan_problem(path: Path, stems: dict[str, Path], allow: bool) -> Problem:
    """An annotation no slide pairs with: a misnamed file would leave its tumour slide tumour-free."""
    close = difflib.get_close_matches(path.stem, list(stems), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}{path.suffix}, for slide {stems[close[0]]}?)" if close else ""
    return Problem(f"annotation {path}: matches no slide{hint}; annotations pair with slides by file stem"
                   f"{'' if allow else ': rename or remove it, or pass --allow-orphans'}",
                   "warning" if allow else "error")


@dataclass(frozen=True)
class Annotated:
    tumour: set[str]  # stems of slides with at least one tumour polygon
    paired: int
    problems: list[Problem]


def annotation_problems(folder: Path, slides: list[Path], cfg: AnnotationConfig, allow_orphans: bool) -> Annotated:
    """Each slide's annotation parses; every annotation file pairs with a slide."""
    if not folder.is_dir():
        return Annotated(set(), 0, [Problem(f"config key 'annotations': {folder}: no such folder")])
    stems = {output_stem(s): s for s in slides}
    problems: list[Problem] = []
    tumour: set[str] = set()
    paired: set[Path] = set()
    for stem, slide in stems.items():
        path = find_annotation(slide, folder)
        if path is None:
            continue
        paired.add(path)
        try:
            if not tumour_region(load_annotations(path), cfg).is_empty:
                tumour.add(stem)
        except CamnetError as err:
            problems.append(Problem(str(err)))
    for path in annotation_files(folder):
        if path.stem not in stems:
            problems.append(orphan_problem(path, stems, allow_orphans))
        elif path not in paired:
            problems.append(Problem(f"annotation {path}: ignored, slide {stems[path.stem]} uses "
                                    f"{find_annotation(stems[path.stem], folder)}", "warning"))
    return Annotated(tumour, len(paired), problems)


def plan_slides(slides: list[Path], tumour: set[str], layer1: Layer1Config, split_by: str) -> list[SlidePlan]:
    out = []
    for slide in slides:
        stem = output_stem(slide)
        who = slide_identity(stem, layer1.metadata)
        patient = who["patient"] or stem
        out.append(SlidePlan(stem, patient, patient if split_by == "patient" else who["centre"], stem in tumour))
    return out


def planned_split(plan: list[SlidePlan], index: IndexRef) -> tuple[dict[str, str], list[Problem]]:
    """Unit -> split, as the index stage will assign it."""
    units = sorted({p.unit for p in plan})
    if index.split_by == "patient":
        try:
            return patient_splits(units, index.fractions, index.seed), []
        except CamnetError as err:
            return {}, [Problem(f"config key 'index.fractions': {err}")]
    split_of = {c: name for name, members in index.centres.items() for c in members}
    missing = [p for p in plan if p.unit not in split_of]
    return split_of, [Problem(f"slide {p.stem}: centre {p.unit!r} is in no split (index.centres: "
                              f"{index.centres})") for p in missing]


def split_problems(plan: list[SlidePlan], index: IndexRef) -> tuple[dict[str, int], list[Problem]]:
    """Planned slides per split, and a problem per split without both classes, with the fix."""
    split_of, problems = planned_split(plan, index)
    if problems or not plan:
        return {}, problems
    classes: dict[str, tuple[bool, bool]] = {}
    for p in plan:
        classes[p.unit] = (classes.get(p.unit, (False, True))[0] or p.tumour, True)
    assigned = {u: s for u, s in split_of.items() if u in classes}
    fractions = index.fractions if index.split_by == "patient" else None
    advice = split_advice(SplitPlan(classes, assigned, fractions, "index.seed"))
    sizes = Counter(split_of[p.unit] for p in plan)
    names = list(index.fractions) if fractions is not None else list(index.centres)
    return {n: sizes.get(n, 0) for n in names}, [Problem(f"config key 'index': {a}") for a in advice]


def weights_problems(layer1: Layer1Config, model: ModelConfig) -> list[Problem]:
    """ImageNet (or file) weights Layer 2 will load are there: its own lookup, so the message is its own."""
    size = model.input_size or layer1.patch_size  # Layer 2's input: the patch size unless resized
    try:
        resolve_weights(model.weights, model.backbone, size, model.weights_cache)
    except CamnetError as err:
        return [Problem(f"layer2: {err}")]
    return []


def output_problems(out: Path) -> list[Problem]:
    """The output folder can be made: a probe file in the nearest existing ancestor, removed at once."""
    ancestor = out
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return [Problem(f"config key 'out': {out}: {ancestor} is not a folder")]
    try:
        fd, probe = tempfile.mkstemp(prefix=".camnet-check-", dir=ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return [Problem(f"config key 'out': {out}: cannot write in {ancestor} ({err.strerror or err})")]
    return []


def partition_problems(slurm: SlurmConfig, available: set[str]) -> list[Problem]:
    out = []
    for stage in SLURM_STAGES:
        asked = getattr(slurm, stage).partition
        if asked is not None and asked not in available:
            out.append(Problem(f"config key 'slurm.{stage}.partition': partition {asked!r} does not exist "
                               f"(sinfo lists: {', '.join(sorted(available)) or 'none'})"))
    return out


def list_partitions() -> tuple[set[str], list[Problem]]:
    """The cluster's partitions (`sinfo -h -o %P`, the default one marked `*`)."""
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return set(), [Problem(f"slurm: cannot list partitions with sinfo ({err})")]
    if proc.returncode != 0:
        return set(), [Problem(f"slurm: sinfo failed: {proc.stderr.strip() or proc.returncode}")]
    return {line.strip().rstrip("*") for line in proc.stdout.splitlines() if line.strip()}, []


def slurm_problems(slurm: SlurmConfig) -> list[Problem]:
    out = [] if shutil.which("sbatch") else [Problem("slurm: sbatch is not on PATH (load the SLURM module, or "
                                                     "use `pipeline run` to run here)")]
    if any(getattr(slurm, s).partition is not None for s in SLURM_STAGES):
        available, problems = list_partitions()
        out += problems or partition_problems(slurm, available)
    return out


def run_checks(exp: Experiment, options: CheckOptions = CheckOptions()) -> CheckResult:
    cfg, layer1 = exp.cfg, exp.layers["layer1"]
    problems = pattern_problems(cfg.slides)
    slides, found = cohort(cfg.slides)
    problems += found + slide_problems(slides, layer1.resolution)
    annotated = Annotated(set(), 0, [])
    if cfg.annotations:
        annotated = annotation_problems(Path(cfg.annotations), slides, layer1.annotation, options.allow_orphans)
    # a plan from a cohort or annotations known to be wrong would only repeat those errors as split errors
    trusted = not any(p.severity == "error" for p in problems if "config key 'slides'" in p.message) and \
        not any(p.severity == "error" for p in annotated.problems)
    problems += annotated.problems + weights_problems(layer1, exp.layers["layer2"].model)
    plan = plan_slides(slides, annotated.tumour, layer1, cfg.index.split_by)
    sizes, split = split_problems(plan, cfg.index)
    problems += (split if trusted else []) + output_problems(exp.out)
    if options.slurm:
        problems += slurm_problems(cfg.slurm)
    return CheckResult(problems, len(slides), annotated.paired, len({p.patient for p in plan}), sizes)


def check_experiment(exp: Experiment, options: CheckOptions = CheckOptions()) -> list[Problem]:
    """Every problem found, errors and warnings, in the order a user would fix them."""
    return run_checks(exp, options).problems
