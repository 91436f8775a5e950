"""The stages of an experiment, where each writes, how each knows it is finished, and its command line.

Both runners (SLURM and local) run the command lines built here: SLURM through the stage's sbatch script (which
takes the command line as its arguments), the local runner as subprocesses, an array stage once per manifest
index. So a stage does the same work either way, configured by its command line (and the manifest it names).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from layer1_patches.extract import output_path
from layer1_patches.shared.atomic import remove_inside
from layer1_patches.shared.cohort import pair_annotations, require_slides
from layer1_patches.shared.errors import CamnetError
from layer1_patches.shared.manifest import Manifest
from layer1_patches.shared.typedconfig import to_dict
from layer3_inference.pipeline import stamps
from layer3_inference.pipeline.config import Experiment
from layer3_inference.pipeline.layout import Layout, layer2_sets

STAGES = ("layer1", "index", "layer2", "heatmap", "evaluate", "explain", "report")
ARRAY_STAGES = frozenset({"layer1", "heatmap"})


def write_manifests(exp: Experiment) -> Manifest:
    """The cohort, fixed once: Layer 1's manifest, and the same slides for the heatmap array."""
    layout = Layout(exp.out)
    slides = require_slides(exp.cfg.slides, "config key 'slides': ")
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


# The sbatch script of each stage and the command it runs: a script takes the rest of the stage's command line
# as its arguments, so SLURM and the local runner run the same `python -m` command.
SCRIPTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "layer1": ("layer1_extract.sbatch", ("layer1_patches", "task")),
    "index": ("pipeline_step.sbatch", ()),
    "layer2": ("layer2_train.sbatch", ("layer2_training", "train")),
    "heatmap": ("layer3_heatmap.sbatch", ("layer3_inference", "pipeline", "heatmap-task")),
    "evaluate": ("pipeline_step.sbatch", ()),
    "explain": ("layer3_explain.sbatch", ("layer3_inference", "explain")),
    "report": ("pipeline_step.sbatch", ()),
}


@dataclass(frozen=True)
class StageCommand:
    """One stage's command line, `python -m ARGV...`; an array stage's task adds `--index i` (SLURM: its id)."""

    stage: str
    argv: tuple[str, ...]

    @property
    def script(self) -> str:
        return SCRIPTS[self.stage][0]

    @property
    def array(self) -> bool:
        return self.stage in ARRAY_STAGES

    def script_args(self) -> list[str]:
        """The arguments of the stage's sbatch script: its command line without what the script runs itself."""
        fixed = SCRIPTS[self.stage][1]
        if self.argv[:len(fixed)] != fixed:  # a bug in this module, not user input
            raise ValueError(f"stage {self.stage}: {self.argv} does not start with {fixed}")
        return list(self.argv[len(fixed):])

    def local_argv(self, index: int | None = None) -> list[str]:
        return [*self.argv, *(["--index", str(index)] if index is not None else [])]


def sets(overrides: list[str]) -> list[str]:
    return [item for o in overrides for item in ("--set", o)]


def annotations_dir(exp: Experiment) -> Path:
    # evaluate needs a folder; an empty one makes every slide tumour-free (missing_annotation: negative)
    return Path(exp.cfg.annotations) if exp.cfg.annotations else Layout(exp.out).no_annotations


def trained_split(exp: Experiment) -> str:
    """The index split Layer 2 trains on (`data.splits.train` of its resolved config)."""
    from layer2_training.config import load_layer2_config

    overrides = layer2_sets(Layout(exp.out), list(exp.cfg.layer2.overrides))
    return load_layer2_config(Path(exp.cfg.layer2.config), overrides).data.splits.train


def commands(exp: Experiment, manifest: Manifest) -> dict[str, StageCommand]:
    """Every stage's command line: the one route by which a stage gets its configuration."""
    from layer3_inference.outputs import final_dir

    layout, cfg, ix = Layout(exp.out), exp.cfg, exp.cfg.index
    # exactly the cohort's stores and heatmaps: a slide dropped from the cohort keeps its outputs, unused
    index = ["layer1_patches", "index", "--inputs", *map(str, stores(exp, manifest)), "--out", str(layout.index),
             "--split-by", ix.split_by, "--fractions", ",".join(f"{k}={v}" for k, v in ix.fractions.items()),
             "--seed", str(ix.seed)]
    if ix.centres:
        index += ["--centres", *(f"{k}={','.join(v)}" for k, v in ix.centres.items())]
    argv = {
        "layer1": ["layer1_patches", "task", "--manifest", str(layout.manifest)],
        "index": index,
        "layer2": ["layer2_training", "train", "--config", cfg.layer2.config,
                   *sets(layer2_sets(layout, cfg.layer2.overrides))],
        # the heatmap manifest carries the heatmap config and its overrides, as Layer 1's carries Layer 1's
        "heatmap": ["layer3_inference", "pipeline", "heatmap-task", "--manifest", str(layout.heatmap_manifest),
                    "--model", str(layout.run_dir)],
        # evaluate and explain read each slide's split from the index stage's output, so figures are per split
        # and explanations come from held-out slides
        # ... and the training split is the one Layer 2 trained on (a user's own override still wins)
        "evaluate": ["layer3_inference", "evaluate", "--config", cfg.evaluate.config, "--heatmaps",
                     str(layout.heatmaps), "--slides", *(final_dir(layout.heatmaps, Path(e.slide)).name
                                                          for e in manifest.entries),
                     "--annotations", str(annotations_dir(exp)), "--index", str(layout.index),
                     "--out", str(layout.evaluate),
                     *sets([f"trained_split={trained_split(exp)}", *cfg.evaluate.overrides])],
        "explain": ["layer3_inference", "explain", "--config", cfg.explain.config, "--model", str(layout.run_dir),
                    "--index", str(layout.index), "--store", *map(str, stores(exp, manifest)),
                    "--out", str(layout.explain), *sets(cfg.explain.overrides)],
        "report": ["layer3_inference", "pipeline", "report", "--config", str(layout.resolved)],
    }
    return {stage: StageCommand(stage, tuple(args)) for stage, args in argv.items()}


def array_output(stage: str, exp: Experiment) -> Path:
    """Where an array stage writes (and its tasks record their state)."""
    layout = Layout(exp.out)
    return layout.patches if stage == "layer1" else layout.heatmaps


def entries_done(stage: str, exp: Experiment, manifest: Manifest) -> list[bool]:
    """Per manifest entry of an array stage: is its output complete (by the layer's own completion marker)?"""
    from layer1_patches.store import is_complete
    from layer3_inference.outputs import final_dir, finished_hash

    if stage == "layer1":
        return [is_complete(p) for p in stores(exp, manifest)]
    return [finished_hash(final_dir(array_output(stage, exp), Path(e.slide))) is not None for e in manifest.entries]


def finished(stage: str, exp: Experiment, manifest: Manifest | None) -> bool:
    """Whether a stage's outputs are complete, judged by each layer's own completion marker."""
    layout = Layout(exp.out)
    if stage in ARRAY_STAGES:
        return manifest is not None and all(entries_done(stage, exp, manifest))
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


# --- what each stage is made from (its stamp) and what it leaves behind ---


def versions() -> dict[str, str]:
    import layer1_patches
    import layer2_training

    return {"layer1_patches": layer1_patches.__version__, "layer2_training": layer2_training.__version__}


def layer1_identity(cfg: Any) -> dict[str, Any]:
    """What a Layer 1 store is made from, as extract.store_hash judges it: the config without `reader` (threads and
    batch size change the speed, never the patches), and the mpp table by its content, not its path."""
    from layer1_patches.extract import store_identity

    data = store_identity(cfg)
    table = cfg.resolution.mpp_table
    if table:
        path = Path(table)
        data["resolution"]["mpp_table_content"] = (hashlib.sha256(path.read_bytes()).hexdigest()
                                                   if path.is_file() else table)
    return data


def _stage_config(stage: str, exp: Experiment) -> dict[str, Any]:
    if stage == "report":  # reads only what the other stages wrote, and always reruns
        return {}
    ref = to_dict(getattr(exp.cfg, stage))
    layer = exp.layers.get(stage)
    if stage == "layer1":
        ref["overrides"] = [o for o in ref.get("overrides", []) if not o.startswith("reader.")]
        return stamps.config_part(stage, ref, layer1_identity(layer) if layer else None)
    # the heatmap's own run hash (infer.heatmap_config_hash) includes `reader`: so does its stamp
    return stamps.config_part(stage, ref, to_dict(layer) if layer else None)


def _command_part(argv: tuple[str, ...]) -> list[str]:
    # a layer config is in the stamp by content (its resolved values): its path on the command line is left out
    return [a for i, a in enumerate(argv) if a != "--config" and (i == 0 or argv[i - 1] != "--config")]


def current_stamps(exp: Experiment, manifest: Manifest,
                   commands: dict[str, StageCommand]) -> dict[str, stamps.Stamp]:
    """The stamp every enabled stage would record if it ran now, in pipeline order. After an upgrade (the version
    part) an array stage's tasks rerun without clearing (stamps.per_slide_change) and reuse every slide whose own
    identity still matches; the other stages' outputs are rebuilt whole by the new code."""
    cohort = sorted([e.slide, e.annotation or ""] for e in manifest.entries)
    current: dict[str, stamps.Stamp] = {}
    for stage in STAGES:
        if not enabled(stage, exp):
            continue
        parts: dict[str, Any] = {"command": _command_part(commands[stage].argv), "config": _stage_config(stage, exp),
                                 "version": versions(), **({"cohort": cohort} if stage in ARRAY_STAGES else {})}
        current[stage] = stamps.make_stamp(stage, parts, current)
    return current


def completed_at(stage: str, exp: Experiment, manifest: Manifest) -> float:
    """When the stage's outputs were last completed (the newest completion marker's mtime; 0 when none)."""
    from layer3_inference.outputs import final_dir

    layout = Layout(exp.out)
    if stage == "layer1":
        markers = stores(exp, manifest)
    elif stage == "heatmap":
        markers = [final_dir(layout.heatmaps, Path(e.slide)) / "summary.json" for e in manifest.entries]
    else:
        markers = [{"index": layout.index, "layer2": layout.run_dir / "metrics.json",
                    "evaluate": layout.evaluate / "summary.json", "explain": layout.explain / "summary.json",
                    "report": layout.report}[stage]]
    return max((m.stat().st_mtime for m in markers if m.exists()), default=0.0)


def recorded_stamp(stage: str, exp: Experiment, manifest: Manifest, done: bool) -> stamps.Stamp | None:
    """What the stage's outputs on disk were made from (stamps.recorded); a pending stamp of outputs completed
    since becomes the stamp, as `pipeline status` would have made it."""
    state = Layout(exp.out).state
    stamp, pending = stamps.read_stamp(state, stage), stamps.read_pending(state, stage)
    if pending is None:
        return stamp
    made_after = done and completed_at(stage, exp, manifest) > stamps.pending_path(state, stage).stat().st_mtime
    found = stamps.recorded(stamp, pending[0], done, made_after)
    if made_after:
        stamps.finish(state, pending[0])
    return found


def stage_outputs(stage: str, exp: Experiment, manifest: Manifest) -> list[Path]:
    """What a rerun of a stage from other inputs must remove first: each layer refuses (Layer 1, heatmap) or
    resumes (Layer 2) an output made from something else."""
    from layer3_inference.outputs import final_dir

    layout = Layout(exp.out)
    if stage == "layer1":
        return stores(exp, manifest)
    if stage == "heatmap":
        return [final_dir(layout.heatmaps, Path(e.slide)) for e in manifest.entries]
    return {"index": [layout.index], "layer2": [layout.run_dir], "evaluate": [layout.evaluate],
            "explain": [layout.explain]}.get(stage, [])


def clear_outputs(stage: str, exp: Experiment, manifest: Manifest, slides: list[str] | None = None) -> None:
    """Remove the stage's outputs; with `slides`, those of these slides alone (an array stage)."""
    if slides is not None:
        manifest = replace(manifest, entries=tuple(e for e in manifest.entries if e.slide in slides))
    for path in stage_outputs(stage, exp, manifest):
        remove_inside(path, exp.out)
