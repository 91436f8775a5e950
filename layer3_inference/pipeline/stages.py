"""The stages of an experiment, where each writes, how each knows it is finished, and its command line.

Both runners (SLURM and local) build their commands here, so a stage does the same work either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from layer1_patches.errors import CamnetError
from layer1_patches.extract import output_path
from layer1_patches.manifest import Manifest
from layer1_patches.runner import discover_slides, pair_annotations
from layer3_inference.pipeline.config import Experiment

STAGES = ("layer1", "index", "layer2", "heatmap", "evaluate", "explain", "report")
ARRAY_STAGES = frozenset({"layer1", "heatmap"})


@dataclass(frozen=True)
class Layout:
    """Every output of one experiment lives under `out`; stages find each other's files here."""

    out: Path

    @property
    def patches(self) -> Path:
        return self.out / "patches"

    @property
    def manifest(self) -> Path:
        return self.patches / "manifest.json"

    @property
    def index(self) -> Path:
        return self.patches / "index.json"

    @property
    def run_dir(self) -> Path:
        return self.out / "run"

    @property
    def heatmaps(self) -> Path:
        return self.out / "heatmaps"

    @property
    def heatmap_manifest(self) -> Path:
        return self.heatmaps / "manifest.json"

    @property
    def evaluate(self) -> Path:
        return self.out / "evaluate"

    @property
    def explain(self) -> Path:
        return self.out / "explain"

    @property
    def report(self) -> Path:
        return self.out / "report" / "index.html"

    @property
    def state(self) -> Path:
        return self.out / "pipeline"

    @property
    def jobs(self) -> Path:
        return self.state / "jobs.json"

    @property
    def timings(self) -> Path:
        return self.state / "timings.json"

    @property
    def resolved(self) -> Path:
        return self.state / "experiment.yaml"

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def no_annotations(self) -> Path:
        return self.state / "no_annotations"


def write_manifests(exp: Experiment) -> Manifest:
    """The cohort, fixed once: Layer 1's manifest, and the same slides for the heatmap array."""
    layout = Layout(exp.out)
    slides = discover_slides(exp.cfg.slides)
    if not slides:
        raise CamnetError(f"config key 'slides': no slides found in {' '.join(exp.cfg.slides)}")
    missing = [str(s) for s in slides if not s.is_file()]
    if missing:
        raise CamnetError(f"config key 'slides': slide {missing[0]}: no such file")
    annotations = Path(exp.cfg.annotations) if exp.cfg.annotations else None
    pairs = pair_annotations(slides, annotations)
    for folder in (layout.patches, layout.heatmaps, layout.logs, layout.no_annotations):
        folder.mkdir(parents=True, exist_ok=True)
    manifest = Manifest.for_slides(exp.cfg.layer1.config, str(layout.patches), pairs,
                                   tuple(exp.cfg.layer1.overrides))
    manifest.save(layout.manifest)
    Manifest(exp.cfg.heatmap.config, str(layout.heatmaps), manifest.entries,
             tuple(exp.cfg.heatmap.overrides)).save(layout.heatmap_manifest)
    return manifest


def stores(exp: Experiment, manifest: Manifest) -> list[Path]:
    return [output_path(Layout(exp.out).patches, Path(e.slide), None) for e in manifest.entries]


def index_argv(exp: Experiment) -> list[str]:
    layout, ix = Layout(exp.out), exp.cfg.index
    argv = ["layer1_patches", "index", "--inputs", str(layout.patches), "--out", str(layout.index),
            "--split-by", ix.split_by, "--fractions", ",".join(f"{k}={v}" for k, v in ix.fractions.items()),
            "--seed", str(ix.seed)]
    if ix.centres:
        argv += ["--centres", *(f"{k}={','.join(v)}" for k, v in ix.centres.items())]
    return argv


def layer2_sets(layout: Layout, overrides: list[str]) -> list[str]:
    # The chain owns where the index and the run dir are; a user's value for them would break the next stage.
    owned = ("data.index=", "output.run_dir=")
    kept = [o for o in overrides if not o.replace(" ", "").startswith(owned)]
    return [*kept, f"data.index={layout.index}", f"output.run_dir={layout.run_dir}"]


def sets(overrides: list[str]) -> list[str]:
    return [item for o in overrides for item in ("--set", o)]


def layer2_argv(exp: Experiment) -> list[str]:
    overrides = layer2_sets(Layout(exp.out), exp.cfg.layer2.overrides)
    return ["layer2_training", "train", "--config", exp.cfg.layer2.config, *sets(overrides)]


def heatmap_argv(exp: Experiment, manifest: Manifest) -> list[str]:
    layout = Layout(exp.out)
    return ["layer3_inference", "heatmap", "--config", exp.cfg.heatmap.config, "--model", str(layout.run_dir),
            "--slides", *(e.slide for e in manifest.entries), "--out", str(layout.heatmaps),
            *sets(exp.cfg.heatmap.overrides)]


def annotations_dir(exp: Experiment) -> Path:
    # evaluate needs a folder; an empty one makes every slide tumour-free (missing_annotation: negative)
    return Path(exp.cfg.annotations) if exp.cfg.annotations else Layout(exp.out).no_annotations


def evaluate_argv(exp: Experiment) -> list[str]:
    layout = Layout(exp.out)
    return ["layer3_inference", "evaluate", "--config", exp.cfg.evaluate.config, "--heatmaps",
            str(layout.heatmaps), "--annotations", str(annotations_dir(exp)), "--out", str(layout.evaluate),
            *sets(exp.cfg.evaluate.overrides)]


def explain_args(exp: Experiment, manifest: Manifest) -> list[str]:
    """Arguments after `explain --config X` (slurm/layer3_explain.sbatch adds that part itself)."""
    layout = Layout(exp.out)
    return ["--model", str(layout.run_dir), "--store", *map(str, stores(exp, manifest)), "--out",
            str(layout.explain), *sets(exp.cfg.explain.overrides)]


def explain_argv(exp: Experiment, manifest: Manifest) -> list[str]:
    return ["layer3_inference", "explain", "--config", exp.cfg.explain.config, *explain_args(exp, manifest)]


def report_argv(exp: Experiment) -> list[str]:
    return ["layer3_inference", "pipeline", "report", "--config", str(Layout(exp.out).resolved)]


def finished(stage: str, exp: Experiment, manifest: Manifest | None) -> bool:
    """Whether a stage's outputs are complete, judged by each layer's own completion marker."""
    from layer1_patches.store import is_complete
    from layer3_inference.outputs import final_dir, finished_hash

    layout = Layout(exp.out)
    if stage in ARRAY_STAGES:
        if manifest is None:
            return False
        if stage == "layer1":
            return all(is_complete(p) for p in stores(exp, manifest))
        return all(finished_hash(final_dir(layout.heatmaps, Path(e.slide))) is not None for e in manifest.entries)
    marker = {"index": layout.index, "layer2": layout.run_dir / "metrics.json",
              "evaluate": layout.evaluate / "summary.json", "explain": layout.explain / "summary.json",
              "report": layout.report}[stage]
    return marker.is_file()


def enabled(stage: str, exp: Experiment) -> bool:
    return stage != "explain" or exp.cfg.explain.enabled


def load_manifest(exp: Experiment) -> Manifest | None:
    try:
        return Manifest.load(Layout(exp.out).manifest)
    except CamnetError:
        return None
