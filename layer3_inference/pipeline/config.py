"""The experiment config: one YAML naming the cohort, the per-layer configs (+ overrides) and SLURM resources.

Relative paths in the experiment file are relative to that file's folder (as in Snakemake or Nextflow): the
path fields (`bounded(..., path=True)`) and, inside `<layer>.overrides`, items whose key is a path field of that
layer. Paths given with `--set`, and the defaults, are relative to the current directory. `load_experiment`
resolves every one to an absolute path and loads every per-layer config with its overrides, so a typo in any
layer fails at submission with one line naming its source (the file, or `--set`) and the key, not hours later
in an array task.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from layer1_patches.shared.errors import ConfigError
from layer1_patches.shared.sources import (
    absolute,
    anchor_item,
    anchor_paths,
    apply_overrides,
    covers,
    error_key,
    given_by,
    locate,
    path_keys,
    relabel,
    split_item,
)
from layer1_patches.shared.typedconfig import bounded, from_mapping, read_yaml, to_dict
from layer3_inference.pipeline.layout import Layout, layer2_sets


@dataclass(frozen=True)
class LayerRef:
    config: str = bounded("", doc="the layer's YAML config", path=True)
    overrides: list[str] = bounded([], doc="`key.path=value` items, as --set on the layer's command line")


@dataclass(frozen=True)
class Layer1Ref(LayerRef):
    config: str = bounded("configs/layer1/random.yaml", doc="Layer 1's YAML config", path=True)


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
    config: str = bounded("configs/layer2/resnet50.yaml", doc="Layer 2's YAML config", path=True)


@dataclass(frozen=True)
class HeatmapRef(LayerRef):
    config: str = bounded("configs/layer3/heatmap.yaml", doc="the heatmap YAML config", path=True)


@dataclass(frozen=True)
class EvaluateRef(LayerRef):
    config: str = bounded("configs/layer3/evaluate.yaml", doc="the evaluation YAML config", path=True)


@dataclass(frozen=True)
class ExplainRef(LayerRef):
    config: str = bounded("configs/layer3/explain.yaml", doc="the explain YAML config", path=True)
    enabled: bool = bounded(True, doc="run the explain stage; false: the report has no explanations")


@dataclass(frozen=True)
class StageSlurm:
    partition: str | None = bounded(None, doc="sbatch --partition; null: the cluster's default partition")
    time: str | None = bounded(None, doc="sbatch --time, e.g. \"04:00:00\"; null: the sbatch script's default")
    cpus: int | None = bounded(None, min=1, doc="CPUs per task (rank); null: the script's default")
    gpus: int = bounded(0, min=0, doc="GPUs per node (--gres=gpu:N); 0: none")
    ranks: int = bounded(1, min=1, doc="tasks per job (Horovod, tf.distribute or MPI ranks) on one node")
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
    slides: list[str] = bounded([], doc="slide files, folders or globs (required)", path=True)
    annotations: str | None = bounded(None, doc="folder of `<slide stem>.xml` / `.geojson`; null: normal patches "
                                      "only, every slide tumour-free in evaluate", path=True)
    out: str = bounded("experiments/experiment", doc="output folder of the whole experiment (see the output files "
                       "section)", path=True)
    container: str | None = bounded(None, doc="Apptainer/Singularity image every SLURM stage runs in (CAMNET_SIF); "
                                    "null: none", path=True)
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


@dataclass(frozen=True)
class Origin:
    """Where the values of an experiment came from: the file (as named), its folder, the directory `--set` paths
    and defaults are relative to, the key paths `--set` gave, and the path keys the file gave relative."""

    file: Path
    folder: Path
    cwd: Path
    given: frozenset[str] = frozenset()
    anchored: frozenset[str] = frozenset()

    def source(self, key: str) -> str:
        """Where the value at `key` came from, to start an error line: `--set KEY` or the file."""
        return f"--set {key}" if given_by(key, set(self.given)) else str(self.file)

    def relative_to(self, key: str) -> str:
        if key in self.anchored:
            return f"relative to {self.folder}, the folder of {self.file}"
        return f"relative to the current directory {self.cwd}"


def layer_path_keys(key: str) -> set[str]:
    """The path fields of a layer's config: their values in `<layer>.overrides` are resolved like the
    experiment's own paths."""
    from layer1_patches.config import Layer1Config
    from layer2_training.config import Layer2Config
    from layer3_inference.config import EvaluateConfig, HeatmapConfig
    from layer3_inference.explain.config import ExplainConfig

    classes = {"layer1": Layer1Config, "layer2": Layer2Config, "heatmap": HeatmapConfig,
               "evaluate": EvaluateConfig, "explain": ExplainConfig}
    return set(path_keys(classes[key]))


def _anchor_file_items(data: dict[str, Any], base: Path) -> None:
    """The file's `<layer>.overrides` items that name a layer's path field: absolute against the file's folder."""
    for key in LAYER_KEYS:
        ref = data.get(key)
        items = ref.get("overrides") if isinstance(ref, dict) else None
        if isinstance(ref, dict) and isinstance(items, list):
            keys = layer_path_keys(key)
            ref["overrides"] = [anchor_item(i, keys, base) if isinstance(i, str) else i for i in items]


def resolve_paths(cfg: ExperimentConfig, base: Path) -> ExperimentConfig:
    """Every path absolute, the relative ones against `base`: SLURM jobs may start in another directory."""
    def ref(key: str) -> Any:
        old: LayerRef = getattr(cfg, key)
        keys = layer_path_keys(key)
        return replace(old, config=absolute(old.config, base),
                       overrides=[anchor_item(i, keys, base) for i in old.overrides])

    return replace(
        cfg, slides=[absolute(s, base) for s in cfg.slides],
        annotations=absolute(cfg.annotations, base) if cfg.annotations else None,
        out=absolute(cfg.out, base), container=absolute(cfg.container, base) if cfg.container else None,
        **{k: ref(k) for k in LAYER_KEYS})


def _item_at_fault(message: str, items: list[str]) -> int | None:
    """The index of the last override item that set the key an error names (later items win), or None."""
    key = error_key(message)
    if key is None:
        return None
    keys = [split_item(item)[0] for item in items]
    hits = [i for i, k in enumerate(keys) if covers(k, key)]
    if not hits:  # an unknown section: the error names its first part (`sampling.randm` of `sampling.randm.n`)
        hits = [i for i, k in enumerate(keys) if covers(key, k)]
    return hits[-1] if hits else None


def _layer_error(message: str, key: str, items: list[str], origin: Origin) -> str:
    """A layer config error, labelled with its source: an override item (`mine.yaml: layer1.overrides[2]`,
    `--set layer1.overrides[3]`) or the layer's own file (as the loader said, plus the experiment key)."""
    i = _item_at_fault(message, items)
    if i is None:
        return f"{message} (experiment key '{key}.config')"
    where = f"{key}.overrides[{i}]"
    source = origin.source(where)
    return relabel(message, source if source.startswith("--set") else f"{source}: {where}")


def load_layer_configs(cfg: ExperimentConfig, origin: Origin,
                       forced: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Each layer's resolved config: the per-layer files are checked now, with the source of the value at fault."""
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
            where = f"{key}.config"
            raise ConfigError(f"{origin.source(where)}: config key '{where}': {ref.config}: no such file "
                              f"({origin.relative_to(where)})")
        bad = [i for i, o in enumerate(ref.overrides) if "=" not in o]
        if bad:
            where = f"{key}.overrides[{bad[0]}]"
            raise ConfigError(f"{origin.source(where)}: config key '{where}': {ref.overrides[bad[0]]!r} is not "
                              "key=value")
        sets = (forced or {}).get(key, list(ref.overrides))
        try:
            loaded[key] = loaders[key](path, sets)
        except ConfigError as err:
            raise ConfigError(_layer_error(str(err), key, list(ref.overrides), origin)) from None
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


def read_experiment(path: Path, overrides: list[str] | None = None,
                    base: Path | None = None) -> tuple[ExperimentConfig, Origin]:
    """The experiment with absolute paths: the file's relative paths against its folder, those from `--set`
    (and the defaults) against `base` (the current directory)."""
    origin = Origin(Path(path), Path(path).resolve().parent, (base or Path.cwd()).resolve())
    data = read_yaml(path)
    anchored = anchor_paths(data, path_keys(ExperimentConfig), origin.folder)
    _anchor_file_items(data, origin.folder)
    given: set[str] = set()
    apply_overrides(data, overrides or [], ExperimentConfig, given)
    origin = replace(origin, given=frozenset(given), anchored=frozenset(anchored))
    try:
        cfg = from_mapping(ExperimentConfig, data)
    except ConfigError as err:
        raise ConfigError(locate(str(err), path, given)) from None
    return resolve_paths(cfg, origin.cwd), origin


def load_experiment(path: Path, overrides: list[str] | None = None, base: Path | None = None) -> Experiment:
    cfg, origin = read_experiment(path, overrides, base)
    # validated as the chain will run it: with the index and run dir the chain places
    forced = {"layer2": layer2_sets(Layout(Path(cfg.out)), cfg.layer2.overrides)}
    return Experiment(cfg, Path(path).resolve(), load_layer_configs(cfg, origin, forced))


def resolved_yaml(exp: Experiment) -> str:
    """The experiment with absolute paths (overrides naming files too): what the SLURM steps and the report read
    back, whatever their working directory."""
    return yaml.safe_dump(to_dict(exp.cfg), sort_keys=False)
