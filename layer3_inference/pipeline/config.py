"""The experiment config: one YAML naming the cohort, the per-layer configs (+ overrides) and SLURM resources.

Relative paths are relative to the current directory, as for every other CamNet command. `load_experiment`
resolves them to absolute paths and loads every per-layer config with its overrides, so a typo in any layer
fails at submission with one line naming the key or file, not hours later in an array task.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from layer1_patches.errors import ConfigError
from layer1_patches.typedconfig import bounded, load_config, to_dict

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LayerRef:
    config: str = ""
    overrides: list[str] = bounded([], doc="`key.path=value` items, as --set on the layer's command line")


@dataclass(frozen=True)
class Layer1Ref(LayerRef):
    config: str = "configs/layer1/random.yaml"


@dataclass(frozen=True)
class IndexRef:
    split_by: Literal["patient", "centre"] = "patient"
    fractions: dict[str, float] = bounded({"train": 0.7, "val": 0.15, "test": 0.15},
                                          doc="split name -> share of patients (split_by patient)")
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
    config: str = "configs/layer2/resnet50.yaml"


@dataclass(frozen=True)
class HeatmapRef(LayerRef):
    config: str = "configs/layer3/heatmap.yaml"


@dataclass(frozen=True)
class EvaluateRef(LayerRef):
    config: str = "configs/layer3/evaluate.yaml"


@dataclass(frozen=True)
class ExplainRef(LayerRef):
    config: str = "configs/layer3/explain.yaml"
    enabled: bool = True


@dataclass(frozen=True)
class StageSlurm:
    partition: str | None = None  # null: the cluster's default partition
    time: str | None = None  # e.g. "04:00:00"; null: the sbatch script's default
    cpus: int | None = bounded(None, min=1, doc="CPUs per task (rank); null: the script's default")
    gpus: int = bounded(0, min=0, doc="GPUs per node (--gres=gpu:N)")
    ranks: int = bounded(1, min=1, doc="tasks per job (Horovod / MPI ranks) on one node")
    max_parallel: int | None = bounded(None, min=1, doc="array throttle %M (array stages)")
    account: str | None = None
    extra: list[str] = bounded([], doc="more sbatch options, e.g. [--mem=16G, --qos=short]")


@dataclass(frozen=True)
class SlurmConfig:
    layer1: StageSlurm = field(default_factory=StageSlurm)
    index: StageSlurm = field(default_factory=StageSlurm)
    layer2: StageSlurm = field(default_factory=StageSlurm)
    heatmap: StageSlurm = field(default_factory=StageSlurm)
    evaluate: StageSlurm = field(default_factory=StageSlurm)
    explain: StageSlurm = field(default_factory=StageSlurm)
    report: StageSlurm = field(default_factory=StageSlurm)

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
    name: str = "experiment"
    slides: list[str] = bounded([], doc="slide files, folders or globs")
    annotations: str | None = None  # folder of <slide stem>.xml/.geojson; null: normal patches only
    out: str = "experiments/experiment"
    container: str | None = None  # Apptainer/Singularity image (CAMNET_SIF) for every SLURM stage
    bind: str | None = None  # extra container binds (CAMNET_BIND), e.g. "/data,/scratch"
    local_workers: int = bounded(1, min=1, max=64, doc="slides processed at once by the local runner")
    layer1: Layer1Ref = field(default_factory=Layer1Ref)
    index: IndexRef = field(default_factory=IndexRef)
    layer2: Layer2Ref = field(default_factory=Layer2Ref)
    heatmap: HeatmapRef = field(default_factory=HeatmapRef)
    evaluate: EvaluateRef = field(default_factory=EvaluateRef)
    explain: ExplainRef = field(default_factory=ExplainRef)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def validate(self, path: str) -> None:
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
    from layer3_inference.pipeline.stages import Layout, layer2_sets

    # validated as the chain will run it: with the index and run dir the chain places
    forced = {"layer2": layer2_sets(Layout(Path(cfg.out)), cfg.layer2.overrides)}
    return Experiment(cfg, Path(path).resolve(), load_layer_configs(cfg, forced))


def resolved_yaml(exp: Experiment) -> str:
    """The experiment with absolute paths: what the SLURM steps and the report read back."""
    return yaml.safe_dump(to_dict(exp.cfg), sort_keys=False)
