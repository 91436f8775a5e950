"""Experiment configs: the shipped ones load; bad ones fail with one `error:` line naming the key or file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from layer1_patches.shared.errors import ConfigError
from layer1_patches.shared.typedconfig import describe
from layer3_inference.pipeline import config
from layer3_inference.pipeline.config import LAYER_KEYS, ExperimentConfig, load_experiment, resolved_yaml

from .conftest import REPO, run_pipeline, write_experiment


@pytest.mark.parametrize("name", ["demo.yaml", "camelyon16.yaml"])
def test_shipped_experiment_configs_load(name: str) -> None:
    exp = load_experiment(REPO / "configs" / "experiment" / name, base=REPO)
    assert Path(exp.cfg.out).is_absolute() and set(exp.layers) >= {"layer1", "layer2", "heatmap", "evaluate"}
    # the chain's own paths are what Layer 2 was validated with
    assert exp.layers["layer2"].data.index == str(Path(exp.cfg.out) / "patches" / "index.json")


def test_every_key_is_documented() -> None:
    rows = describe(ExperimentConfig)
    keys = {r[0] for r in rows}
    assert {"slides", "layer2.overrides", "slurm.heatmap.max_parallel", "index.fractions", "container"} <= keys
    assert [key for key, _, _, doc in rows if not doc.strip()] == []  # and the README table is generated from these


def _status(tmp_path: Path, **keys: object) -> tuple[int, str, str]:
    cfg = write_experiment(tmp_path / "exp.yaml", slides=[str(tmp_path)], out=str(tmp_path / "out"), **keys)
    proc = run_pipeline(["status", "--config", str(cfg)], timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


def test_unknown_key_is_one_error_line_naming_it(tmp_path: Path) -> None:
    code, out, err = _status(tmp_path, slurm={"layer2": {"gpu": 4}})
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "'slurm.layer2.gpu': unknown key" in err


def test_missing_layer_config_file_names_the_key_and_the_file(tmp_path: Path) -> None:
    code, _, err = _status(tmp_path, layer2={"config": "configs/layer2/nope.yaml"})
    assert code == 2 and err.count("\n") == 1
    assert "'layer2.config'" in err and "nope.yaml: no such file" in err


def test_bad_key_inside_a_layer_config_names_both(tmp_path: Path) -> None:
    layer = tmp_path / "heatmap.yaml"
    layer.write_text("grid: {min_tissue: 7}\n")
    code, _, err = _status(tmp_path, heatmap={"config": str(layer)})
    assert code == 2 and err.count("\n") == 1
    assert "heatmap.yaml" in err and "'grid.min_tissue'" in err and "experiment key 'heatmap.config'" in err


def test_typo_in_layer_overrides_is_reported_against_the_experiment_file_with_its_index(tmp_path: Path) -> None:
    """Regression: `layer1.overrides: [..., patch_sise=64]` was reported against configs/layer1/random.yaml."""
    code, out, err = _status(tmp_path, layer1={"overrides": ["patch_size=64", "resolution.mpp=0.5", "patch_sise=64"]})
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"error: {tmp_path / 'exp.yaml'}: layer1.overrides[2]: config key 'patch_sise': unknown key")
    assert "random.yaml" not in err
    # the item named is the one whose value was used: the last to set the key
    cfg = write_experiment(tmp_path / "two.yaml", slides=["a"], layer1={"overrides": ["patch_size=a", "patch_size=b"]})
    with pytest.raises(ConfigError, match=r"two.yaml: layer1.overrides\[1\]: config key 'patch_size': expected an"):
        load_experiment(cfg)


def test_typo_in_the_middle_of_an_override_key_was_blamed_on_the_layer_yaml(tmp_path: Path) -> None:
    """Regression (review of issue 16): an unknown section names only the key's first parts (`sampling.randm` of
    `sampling.randm.per_class`), which no override item equals, so the error went to configs/layer1/random.yaml."""
    cfg = write_experiment(tmp_path / "mine.yaml", slides=["a"],
                           layer1={"overrides": ["patch_size=64", "sampling.randm.per_class=3"]})
    with pytest.raises(ConfigError) as err:
        load_experiment(cfg)
    assert str(err.value).startswith(f"{cfg}: layer1.overrides[1]: config key 'sampling.randm': unknown key")
    with pytest.raises(ConfigError) as err:
        load_experiment(write_experiment(tmp_path / "ok.yaml", slides=["a"]), ["layer1.overrides+=[bogus.key=1]"])
    assert str(err.value).startswith("--set layer1.overrides[")
    assert "config key 'bogus': unknown key" in str(err.value) and "random.yaml" not in str(err.value)


def test_bad_set_value_is_reported_against_the_command_line_not_the_file(tmp_path: Path) -> None:
    """Regression: `--set local_workers=two` was reported against the experiment file."""
    cfg = write_experiment(tmp_path / "exp.yaml", slides=[str(tmp_path)], out=str(tmp_path / "out"))
    proc = run_pipeline(["status", "--config", str(cfg), "--set", "local_workers=two"], timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "error: --set local_workers: config key 'local_workers': expected an integer, got 'two'\n"


def test_appended_layer_override_is_reported_against_the_command_line(tmp_path: Path) -> None:
    cfg = write_experiment(tmp_path / "e.yaml", slides=["a"], layer1={"overrides": ["patch_size=64"]})
    exp = load_experiment(cfg, ["layer1.overrides+=reader.threads=3"])
    assert exp.cfg.layer1.overrides == ["patch_size=64", "reader.threads=3"]  # appended, not replaced
    assert exp.layers["layer1"].patch_size == 64 and exp.layers["layer1"].reader.threads == 3
    with pytest.raises(ConfigError, match=r"^--set layer1.overrides\[2\]: config key 'patch_sise': unknown key"):
        load_experiment(cfg, ["layer1.overrides+=[reader.threads=3, patch_sise=1]"])
    with pytest.raises(ConfigError, match=r"^--set 'local_workers\+=2': config key 'local_workers' is not a list"):
        load_experiment(cfg, ["local_workers+=2"])


def test_no_slides_and_bad_override(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'slides': lists no slides"):
        load_experiment(write_experiment(tmp_path / "e.yaml", out="x"))
    with pytest.raises(ConfigError, match=r"f.yaml: config key 'layer1.overrides\[0\]': 'patch_size' is not key=value"):
        load_experiment(write_experiment(tmp_path / "f.yaml", slides=["a"], layer1={"overrides": ["patch_size"]}))


def test_relative_paths_are_relative_to_the_experiment_file_not_the_current_directory(tmp_path: Path) -> None:
    """Regression: `slides: ../slides` in experiments/mine.yaml was looked up below the directory of the command."""
    folder = tmp_path / "experiments"
    folder.mkdir()
    layer1 = os.path.relpath(REPO / "configs" / "layer1" / "random.yaml", folder)
    cfg = write_experiment(folder / "mine.yaml", slides=["../slides", "/abs/s.svs"], annotations="ann",
                           out="out", container="c.sif", layer1={"config": layer1})
    exp = load_experiment(cfg, ["out=o"], base=REPO)
    c = exp.cfg
    assert c.slides == [str(tmp_path / "slides"), "/abs/s.svs"]
    assert (c.annotations, c.container) == (str(folder / "ann"), str(folder / "c.sif"))
    assert c.out == str(REPO / "o")  # --set: relative to the current directory
    assert c.layer1.config == str(REPO / "configs" / "layer1" / "random.yaml")
    assert c.layer2.config == str(REPO / "configs" / "layer2" / "resnet50.yaml")  # a default: the current directory
    with pytest.raises(ConfigError) as err:
        load_experiment(cfg, ["layer2.config=../l2.yaml"], base=REPO)
    assert str(err.value) == (f"--set layer2.config: config key 'layer2.config': {REPO.parent}/l2.yaml: no such file "
                              f"(relative to the current directory {REPO})")


def test_missing_layer_config_says_which_directory_it_was_resolved_against(tmp_path: Path) -> None:
    cfg = write_experiment(tmp_path / "mine.yaml", slides=["a"], layer2={"config": "nope.yaml"})
    with pytest.raises(ConfigError) as err:
        load_experiment(cfg, base=REPO)
    assert str(err.value) == (f"{cfg}: config key 'layer2.config': {tmp_path}/nope.yaml: no such file (relative to "
                              f"{tmp_path}, the folder of {cfg})")


def test_override_items_naming_files_are_resolved_against_their_source(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # which layer keys are paths comes from the layer's schema (`path=True`); pinned here to one key
    monkeypatch.setattr(config, "layer_path_keys", lambda key: {"resolution.mpp_table"} if key == "layer1" else set())
    cfg = write_experiment(tmp_path / "mine.yaml", slides=["a"],
                           layer1={"overrides": ["resolution.mpp_table=mpp.csv", "patch_size=64"]})
    exp = load_experiment(cfg, base=REPO)
    assert exp.cfg.layer1.overrides == [f"resolution.mpp_table={tmp_path}/mpp.csv", "patch_size=64"]
    assert exp.layers["layer1"].resolution.mpp_table == f"{tmp_path}/mpp.csv"
    exp = load_experiment(cfg, ["layer1.overrides+=resolution.mpp_table=t.csv"], base=REPO)
    assert exp.layers["layer1"].resolution.mpp_table == f"{REPO}/t.csv"
    assert f"- resolution.mpp_table={REPO}/t.csv" in resolved_yaml(exp)


# Where make demo wrote before experiment paths became file-relative: relative to the repository root.
BUNDLED_AT_HEAD = {
    "demo.yaml": {"slides": ["demo_out/slides", "tests/data/CMU-1-Small-Region.svs"], "annotations": "demo_out/slides",
                  "out": "demo_out/experiment", "container": None, "layer1": "configs/layer1/random.yaml",
                  "layer2": "configs/layer2/mobilenetv2_cpu.yaml", "heatmap": "configs/layer3/heatmap.yaml",
                  "evaluate": "configs/layer3/evaluate.yaml", "explain": "configs/layer3/explain.yaml"},
    "camelyon16.yaml": {"slides": ["/data/camelyon16/training/normal", "/data/camelyon16/training/tumor"],
                        "annotations": "/data/camelyon16/training/lesion_annotations",
                        "out": "/scratch/camelyon16-resnet50", "container": None,
                        "layer1": "configs/layer1/random.yaml", "layer2": "configs/layer2/resnet50.yaml",
                        "heatmap": "configs/layer3/heatmap.yaml", "evaluate": "configs/layer3/evaluate.yaml",
                        "explain": "configs/layer3/explain.yaml"},
}


@pytest.mark.parametrize("name", sorted(BUNDLED_AT_HEAD))
def test_bundled_experiments_resolve_where_they_did_relative_to_the_repo_root(name: str, tmp_path: Path) -> None:
    """Rewritten relative to configs/experiment/, they name the same files, whatever the current directory."""
    def at_repo(p: str | None) -> str | None:
        return None if p is None else str(REPO / p)

    want = BUNDLED_AT_HEAD[name]
    exp = load_experiment(REPO / "configs" / "experiment" / name, base=tmp_path)
    got = {"slides": exp.cfg.slides, "annotations": exp.cfg.annotations, "out": exp.cfg.out,
           "container": exp.cfg.container, **{k: getattr(exp.cfg, k).config for k in LAYER_KEYS}}
    assert got == {k: [at_repo(p) for p in v] if isinstance(v, list) else at_repo(v) for k, v in want.items()}
    text = resolved_yaml(exp)
    assert ".." not in text and str(tmp_path) not in text


@pytest.mark.parametrize(
    ("slurm", "message"),
    [({"report": {"max_parallel": 2}}, "config key 'slurm.report.max_parallel': only for the array stages"),
     ({"layer1": {"ranks": 2}}, "config key 'slurm.layer1.ranks': must be 1")],
)
def test_slurm_resources_are_checked_on_load_not_half_way_through_submit(tmp_path: Path, slurm: dict[str, object],
                                                                         message: str) -> None:
    """Regression: a bad report throttle failed inside `submit` after the first stages were queued."""
    with pytest.raises(ConfigError, match=message):
        load_experiment(write_experiment(tmp_path / "e.yaml", slides=["a"], slurm=slurm))


def test_layer_path_fields_are_marked_so_their_override_items_resolve_against_the_experiment_file() -> None:
    # Without `path=True` on these fields, `layer1.overrides: [resolution.mpp_table=mpp.csv]` in mine.yaml would
    # name mpp.csv in the directory the command runs in, not next to mine.yaml.
    assert {"resolution.mpp_table", "tissue.external_mask_dir"} <= config.layer_path_keys("layer1")
    assert {"data.index", "model.weights_cache", "stain.reference", "output.run_dir"} <= \
        config.layer_path_keys("layer2")
    assert "match.mpp_table" in config.layer_path_keys("heatmap")
    assert "concepts.masks" in config.layer_path_keys("explain")
