"""`python -m layer3_inference explain` end to end on the tiny model, and its user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from layer3_inference.cli import main
from layer3_inference.explain.config import load_explain_config

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "layer3" / "explain.yaml"
SMALL = ["--set", "select.k=2", "--set", "lime.num_samples=60", "--set", "lime.n_segments=20",
         "--set", "rcv.per_class=25", "--set", "rcv.n_random=20", "--set", "rcv.n_repeats=5",
         "--set", "rcv.auto_layers=2", "--set", "rcv.concepts=[nuclei_area, glcm_contrast]"]


def test_shipped_config_is_valid() -> None:
    cfg = load_explain_config(CONFIG)
    assert cfg.rcv.test == "ttest" and cfg.gradcam.score == "logit"


def test_an_empty_selection_split_names_the_key() -> None:
    from layer1_patches.shared.errors import ConfigError

    with pytest.raises(ConfigError, match=r"config key 'select.split': empty split name \(use all for every store\)"):
        load_explain_config(CONFIG, ["select.split=' '"])


def test_cli_writes_all_outputs(explain_toy, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "layer3_inference", "explain", "--config", str(CONFIG),
                           "--model", str(explain_toy.run_dir), "--store", *map(str, explain_toy.stores),
                           "--out", str(out), *SMALL], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sanity gradcam" in proc.stdout and "rcv" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["patches"]) == 2 and len(summary["rcv_layers"]) == 2
    for pid in summary["patches"]:
        assert (out / "panels" / f"{pid}.png").is_file()
        with __import__("numpy").load(out / "maps" / f"{pid}.npz") as z:
            assert {"patch", "gradcam", "gradcam_pp", "lime", "random_gradcam", "meta_probability"} <= set(z.files)
    for name in ("sanity.json", "concepts.csv", "rcv_scores.csv", "rcv_scores.json", "r2_by_layer.png",
                 "tcav_vs_random.png"):
        assert (out / name).is_file(), name
    scores = json.loads((out / "rcv_scores.json").read_text())
    assert {r["concept"] for r in scores} == {"nuclei_area", "glcm_contrast"}
    assert all("p_value" in r and "r2_heldout" in r and "r2_label_baseline" in r for r in scores)
    assert {r["status"] for r in scores} <= {"significant", "not significant", "undefined", "restates class"}
    # a row with a test has its 20 random fits; an undefined one (constant gradients) may have none
    assert all(len(r["tcav_random"]) == 20 for r in scores if r["status"] != "undefined")
    assert not list(out.rglob(".*partial*"))


@pytest.mark.horovod
def test_two_ranks_write_what_one_rank_writes(explain_toy, tmp_path: Path) -> None:
    """Ranks share the patches (horovodrun, gloo); rank 0's outputs equal a single process's."""
    import numpy as np

    horovodrun = Path(sys.executable).parent / "horovodrun"
    if not horovodrun.is_file():
        pytest.fail("horovodrun not installed: make horovod")
    small = [*SMALL, "--set", "rcv.concepts=[nuclei_area]", "--set", "sanity.methods=[gradcam]"]
    args = ["-m", "layer3_inference", "explain", "--config", str(CONFIG), "--model", str(explain_toy.run_dir),
            "--store", *map(str, explain_toy.stores), *small]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600, check=False)
    two = subprocess.run([str(horovodrun), "-np", "2", "--gloo", "-H", "localhost:2", sys.executable, *args,
                          "--out", str(tmp_path / "two")], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600, check=False)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-1500:], two.stderr[-1500:])
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["ranks"] == 2
    a = json.loads((tmp_path / "one" / "rcv_scores.json").read_text())
    b = json.loads((tmp_path / "two" / "rcv_scores.json").read_text())
    assert [(r["r2_heldout"], r["tcav"], r["p_value"]) for r in a] == [(r["r2_heldout"], r["tcav"], r["p_value"])
                                                                     for r in b]
    for npz in sorted((tmp_path / "one" / "maps").glob("*.npz")):
        with np.load(npz) as x, np.load(tmp_path / "two" / "maps" / npz.name) as y:
            for key in ("gradcam", "gradcam_pp", "lime"):
                np.testing.assert_allclose(x[key], y[key], rtol=1e-5, atol=1e-6)


def test_top_k_from_a_heatmap_output(explain_toy, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The heatmap command's real output drives the selection; pixels are read back from the slide."""
    import numpy as np

    from layer1_patches.slide import Slide

    slide = Path(explain_toy.stores[0]).parent.parent / "slides" / f"{Path(explain_toy.stores[0]).stem}.tif"
    assert main(["heatmap", "--config", str(REPO / "configs" / "layer3" / "heatmap.yaml"), "--model",
                 str(explain_toy.run_dir), "--slide", str(slide), "--out", str(tmp_path / "hm")]) == 0
    code, err = run_main(capsys, ["--model", str(explain_toy.run_dir), "--heatmap", str(tmp_path / "hm"),
                                  "--out", str(tmp_path / "x"), "--set", "select.k=2", "--set", "rcv.enabled=false",
                                  "--set", "lime.enabled=false", "--set", "sanity.enabled=false"])
    assert code == 0, err
    summary = json.loads((tmp_path / "x" / "summary.json").read_text())
    assert len(summary["patches"]) == 2
    with np.load(tmp_path / "x" / "maps" / f"{summary['patches'][0]}.npz") as z, Slide(slide) as s:
        expected = s.read_rgb(int(z["meta_x"]), int(z["meta_y"]), 0, 64, 64)
        np.testing.assert_array_equal(z["patch"], expected)
        assert int(z["meta_label"]) == -1 and float(z["meta_probability"]) > 0.5


def run_main(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str]:
    code = main(["explain", "--config", str(CONFIG), *args])
    return code, capsys.readouterr().err


def test_unknown_layer_is_a_clear_error(explain_toy, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(capsys, ["--model", str(explain_toy.run_dir), "--store", str(explain_toy.stores[0]),
                                  "--out", str(tmp_path / "o"), "--set", "gradcam.layer=conv9"])
    assert code == 2
    assert err.startswith("error: config key 'gradcam.layer': unknown layer 'conv9'")
    code, err = run_main(capsys, ["--model", str(explain_toy.run_dir), "--store", str(explain_toy.stores[0]),
                                  "--out", str(tmp_path / "o"), "--set", "rcv.layers=[conv2, nope]"])
    assert code == 2 and "config key 'rcv.layers[1]': unknown layer 'nope'" in err


def test_empty_selection_is_a_clear_error(explain_toy, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(capsys, ["--model", str(explain_toy.run_dir), "--store", str(explain_toy.stores[0]),
                                  "--out", str(tmp_path / "o"), "--set", "select.mode=indices",
                                  "--set", "rcv.enabled=false"])
    assert code == 2 and err.startswith("error: patch selection is empty")
    assert not (tmp_path / "o" / "summary.json").exists()


def test_config_errors_name_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"rcv": {"concepts": ["nuclei_size"]}}))
    code = main(["explain", "--config", str(bad), "--model", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "config key 'rcv.concepts': unknown concept 'nuclei_size'" in capsys.readouterr().err


def test_missing_model_and_missing_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_main(capsys, ["--model", str(tmp_path / "none"), "--store", str(tmp_path / "x.h5"),
                                  "--out", str(tmp_path / "o")])
    assert code == 2 and err.startswith("error: run dir")
    code, err = run_main(capsys, ["--model", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2 and "rcv needs labelled patches" in err


def test_masks_from_the_config_are_used(explain_toy, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: concepts.masks in the YAML was silently ignored (only --masks was read)."""
    wrong = tmp_path / "masks.npz"
    np.savez(wrong, masks=np.zeros((3, 8, 8), np.int32))  # not one mask per store row
    code, err = run_main(capsys, ["--model", str(explain_toy.run_dir), "--store", str(explain_toy.stores[0]),
                                  "--out", str(tmp_path / "o"), "--set", f"concepts.masks={wrong}",
                                  "--set", "lime.enabled=false", "--set", "sanity.enabled=false"])
    assert code == 2 and err.startswith(f"error: concepts.masks {wrong}: shape (3, 8, 8)"), err
    assert not (tmp_path / "o" / "summary.json").exists()


def write_index(path: Path, splits: dict[Path, str]) -> Path:
    from layer1_patches.index import DatasetIndex, IndexEntry

    entries = tuple(IndexEntry(path=str(p), slide_name=p.stem, patient=p.stem, node="", centre="", split=split,
                               n_patches=1, n_tumour=1, n_normal=0, patch_size=64, level=0, working_mpp=0.5,
                               config_hash="x") for p, split in splits.items())
    return DatasetIndex(path.parent, "patient", entries).save(path)


MAPS_ONLY = ["--set", "select.mode=random_per_class", "--set", "select.per_class=2", "--set", "rcv.enabled=false",
             "--set", "lime.enabled=false", "--set", "sanity.methods=[gradcam]", "--set", "sanity.depths=2"]


def test_training_slides_are_not_explained_given_the_index(explain_toy, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: explain chose 5 of its 6 patches from training slides; with --index it takes the test split's."""
    train, test = map(Path, explain_toy.stores)
    index = write_index(tmp_path / "index.json", {train: "train", test: "test"})
    out = tmp_path / "o"
    code = main(["explain", "--config", str(CONFIG), "--model", str(explain_toy.run_dir), "--store", str(train),
                 str(test), "--index", str(index), "--out", str(out), *MAPS_ONLY])
    stdout = capsys.readouterr().out
    assert code == 0 and "patches from split test" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["split"] == "test" and len(summary["patches"]) == 4
    assert all(pid.startswith(f"{test.stem}_") for pid in summary["patches"]), summary["patches"]
    assert not [w for w in summary["warnings"] if w["code"] == "split_unknown"]
    # sanity.json as the report reads it
    doc = json.loads((out / "sanity.json").read_text())
    assert {"random_logit_std", "trained_logit_std", "min_logit_std", "status", "depths", "methods"} <= set(doc)
    assert [d["depth"] for d in doc["depths"]] == [1, 2] and doc["depths"][-1]["randomised_to"] == "conv1"
    assert doc["random_logit_std"] > 1e-3 and doc["status"] in ("passed", "failed")
    gradcam = doc["methods"]["gradcam"]
    assert {"status", "input_independent", "cross_patch_correlation", "threshold", "by_depth",
            "rank_correlation"} <= set(gradcam) and len(gradcam["rank_correlation"]) == 4
    assert summary["sanity"]["methods"]["gradcam"]["status"] == gradcam["status"]
    assert summary["gradcam_layer"] == "conv3_relu" and summary["gradcam_layer_size"] == [16, 16]


def test_without_an_index_the_split_is_unknown_and_said(explain_toy, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    code = main(["explain", "--config", str(CONFIG), "--model", str(explain_toy.run_dir), "--store",
                 str(explain_toy.stores[0]), "--out", str(out), *MAPS_ONLY, "--set", "sanity.enabled=false"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["split"] is None and "sanity" not in summary
    assert [w["code"] for w in summary["warnings"]] == ["split_unknown"] and summary["warnings"][0]["split"] is None
    assert "warning: patches selected without --index" in capsys.readouterr().out


def test_split_without_a_store_is_one_error_line(explain_toy, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    train, test = map(Path, explain_toy.stores)
    index = write_index(tmp_path / "index.json", {train: "train", test: "test"})
    code, err = run_main(capsys, ["--model", str(explain_toy.run_dir), "--store", str(train), "--index", str(index),
                                  "--out", str(tmp_path / "o"), *MAPS_ONLY])
    assert code == 2 and err.startswith(f"error: select.split 'test': none of the 1 given stores is in that split "
                                        f"of index {index}") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o" / "summary.json").exists()
