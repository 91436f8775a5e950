"""The experiment config: one YAML naming the cohort, the per-layer configs (+ overrides) and SLURM resources.

Relative paths are relative to the current directory, as for every other CamNet command. `load_experiment`
resolves them to absolute paths and loads every per-layer config with its overrides, so a typo in any layer
fails at submission with one line naming the key or file, not hours later in an array task.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from layer1_patches.shared.errors import ConfigError
from layer1_patches.shared.typedconfig import bounded, load_config, to_dict
from layer3_inference.pipeline.layout import Layout, layer2_sets


@dataclass(frozen=True)
class LayerRef:
    config: str = bounded("", doc="the layer's YAML config")
    overrides: list[str] = bounded([], doc="`key.path=value` items, as --set on the layer's command line")


@dataclass(frozen=True)
class Layer1Ref(LayerRef):
    config: str = bounded("configs/layer1/random.yaml", doc="Layer 1's YAML config")


@dataclass(frozen=True)
class IndexRef:
    split_by: Literal["patient", "centre"] = bounded("patient", doc="patient: shuffled patients cut by fractions; "
                                                     "centre: whole centres per split")
    fractions: dict[str, float] = bounded({"train": 0.7, "val": 0.15, "test": 0.15},
                                          doc="split name -> share of patients, relative to their sum (split_by "
                                              "patient)")
    centres: dict[str, list[str]] = bounded({}, doc="split name -> centres (split_by centre)")
    seed: int = bounded(0, min=0, doc="patient shuffle seed")

    def validate(self, path: str) -> None:
        if self.split_by == "centre" and not self.centres:
            raise ConfigError(f"config key '{path}.centres': required when split_by is 'centre'")
        bad = [k for k, v in self.fractions.items() if not 0 <= v <= 1]
        if bad:
            raise ConfigError(f"config key '{path}.fractions.{bad[0]}': must be within [0, 1]")


@dataclass(frozen=True)
class Layer2Ref(LayerRef):
    config: str = bounded("configs/layer2/resnet50.yaml", doc="Layer 2's YAML config")


@dataclass(frozen=True)
class HeatmapRef(LayerRef):
    config: str = bounded("configs/layer3/heatmap.yaml", doc="the heatmap YAML config")


@dataclass(frozen=True)
class EvaluateRef(LayerRef):
    config: str = bounded("configs/layer3/evaluate.yaml", doc="the evaluation YAML config")


@dataclass(frozen=True)
class ExplainRef(LayerRef):
    config: str = bounded("configs/layer3/explain.yaml", doc="the explain YAML config")
    enabled: bool = bounded(True, doc="run the explain stage; false: the report has no explanations")


@dataclass(frozen=True)
class StageSlurm:
    partition: str | None = bounded(None, doc="sbatch --partition; null: the cluster's default partition")
    time: str | None = bounded(None, doc="sbatch --time, e.g. \"04:00:00\"; null: the sbatch script's default")
    cpus: int | None = bounded(None, min=1, doc="CPUs per task (rank); null: the script's default")
    gpus: int = bounded(0, min=0, doc="GPUs per node (--gres=gpu:N); 0: none")
    ranks: int = bounded(1, min=1, doc="tasks per job (Horovod / MPI ranks) on one node")
    max_parallel: int | None = bounded(None, min=1, doc="array stages (layer1, heatmap): tasks running at once "
                                       "(%M); null: no limit")
    account: str | None = bounded(None, doc="sbatch --account; null: your default account")
    extra: list[str] = bounded([], doc="more sbatch options, e.g. [--mem=16G, --qos=short]")


@dataclass(frozen=True)
class SlurmConfig:
    layer1: StageSlurm = bounded(StageSlurm(), doc="the Layer 1 array: one task per slide")
    index: StageSlurm = bounded(StageSlurm(), doc="the dataset index job")
    layer2: StageSlurm = bounded(StageSlurm(), doc="the training job (its ranks on one node)")
    heatmap: StageSlurm = bounded(StageSlurm(), doc="the heatmap array: one task per slide")
    evaluate: StageSlurm = bounded(StageSlurm(), doc="the evaluation job")
    explain: StageSlurm = bounded(StageSlurm(), doc="the explain job")
    report: StageSlurm = bounded(StageSlurm(), doc="the report job")

    def validate(self, path: str) -> None:
        # Checked on load, not at submission: a failure half-way through `submit` would leave a partial chain.
        where = f"{path}." if path else ""
        for stage in ("index", "layer2", "evaluate", "explain", "report"):
            if getattr(self, stage).max_parallel is not None:
                raise ConfigError(f"config key '{where}{stage}.max_parallel': only for the array stages "
                                  "(layer1, heatmap)")
        if self.layer1.ranks != 1:
            # Several tasks per Layer 1 array task would all extract the same slide into one file.
            raise ConfigError(f"config key '{where}layer1.ranks': must be 1 (one task per slide)")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = bounded("experiment", doc="experiment name, without '/'; SLURM job names are `<name>-<stage>`")
    slides: list[str] = bounded([], doc="slide files, folders or globs (required)")
    annotations: str | None = bounded(None, doc="folder of `<slide stem>.xml` / `.geojson`; null: normal patches "
                                      "only, every slide tumour-free in evaluate")
    out: str = bounded("experiments/experiment", doc="output folder of the whole experiment (see the output files "
                       "section)")
    container: str | None = bounded(None, doc="Apptainer/Singularity image every SLURM stage runs in (CAMNET_SIF); "
                                    "null: none")
    bind: str | None = bounded(None, doc="extra container binds (CAMNET_BIND), e.g. \"/data,/scratch\"; null: "
                               "none")
    local_workers: int = bounded(1, min=1, max=64, doc="slides extracted at once by the local runner "
                                "(heatmaps run one at a time)")
    layer1: Layer1Ref = bounded(Layer1Ref(), doc="Layer 1: patch extraction, one run per slide")
    index: IndexRef = bounded(IndexRef(), doc="the dataset index: train/val/test splits")
    layer2: Layer2Ref = bounded(Layer2Ref(), doc="Layer 2: training; the pipeline sets data.index and "
                                "output.run_dir")
    heatmap: HeatmapRef = bounded(HeatmapRef(), doc="Layer 3 heatmaps, one run per slide")
    evaluate: EvaluateRef = bounded(EvaluateRef(), doc="Layer 3 evaluation against the annotations")
    explain: ExplainRef = bounded(ExplainRef(), doc="Layer 3 interpretability")
    slurm: SlurmConfig = bounded(SlurmConfig(), doc="SLURM resources per stage (the local runner ignores them)")

    def validate(self, _path: str) -> None:
        if not self.slides:
            raise ConfigError("config key 'slides': lists no slides (files, folders or globs)")
        if not self.name or "/" in self.name:
            raise ConfigError(f"config key 'name': {self.name!r} must be a non-empty name without '/'")


LAYER_KEYS = ("layer1", "layer2", "heatmap", "evaluate", "explain")


def _absolute(value: str, base: Path) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def resolve_paths(cfg: ExperimentConfig, base: Path) -> ExperimentConfig:
    """Every path absolute: SLURM jobs may start in another directory than the submission."""
    refs = {k: replace(getattr(cfg, k), config=_absolute(getattr(cfg, k).config, base)) for k in LAYER_KEYS}
    return replace(
        cfg, slides=[_absolute(s, base) for s in cfg.slides],
        annotations=_absolute(cfg.annotations, base) if cfg.annotations else None,
        out=_absolute(cfg.out, base), container=_absolute(cfg.container, base) if cfg.container else None,
        **refs)


def load_layer_configs(cfg: ExperimentConfig, forced: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Each layer's resolved config: the per-layer files are checked now, with the key or file at fault."""
    from layer1_patches.config import load_layer1_config
    from layer2_training.config import load_layer2_config
    from layer3_inference.config import load_evaluate_config, load_heatmap_config
    from layer3_inference.explain.config import load_explain_config

    loaders = {"layer1": load_layer1_config, "layer2": load_layer2_config, "heatmap": load_heatmap_config,
               "evaluate": load_evaluate_config, "explain": load_explain_config}
    loaded: dict[str, Any] = {}
    for key in LAYER_KEYS:
        ref: LayerRef = getattr(cfg, key)
        if key == "explain" and not cfg.explain.enabled:
            continue
        path = Path(ref.config)
        if not path.is_file():
            raise ConfigError(f"config key '{key}.config': {ref.config}: no such file")
        bad = [o for o in ref.overrides if "=" not in o]
        if bad:
            raise ConfigError(f"config key '{key}.overrides': {bad[0]!r} is not key=value")
        try:
            sets = (forced or {}).get(key, list(ref.overrides))
            loaded[key] = loaders[key](path, sets)
        except ConfigError as err:
            raise ConfigError(f"{err} (experiment key '{key}.config')") from None
    return loaded


@dataclass(frozen=True)
class Experiment:
    """The validated experiment with absolute paths, and every layer's resolved config."""

    cfg: ExperimentConfig
    source: Path
    layers: dict[str, Any]

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)


def load_experiment(path: Path, overrides: list[str] | None = None, base: Path | None = None) -> Experiment:
    cfg = load_config(ExperimentConfig, path, overrides)
    cfg = resolve_paths(cfg, base or Path.cwd())
    # validated as the chain will run it: with the index and run dir the chain places
    forced = {"layer2": layer2_sets(Layout(Path(cfg.out)), cfg.layer2.overrides)}
    return Experiment(cfg, Path(path).resolve(), load_layer_configs(cfg, forced))


def resolved_yaml(exp: Experiment) -> str:
    """The experiment with absolute paths: what the SLURM steps and the report read back."""
    return yaml.safe_dump(to_dict(exp.cfg), sort_keys=False)
