"""The CPU image of containers/Dockerfile as its SIF, run through real `apptainer exec` as a non-root user: every
layer's entry points, Layer 1 stores equal to the host's byte for byte, Horovod training on two ranks inside,
heatmap probabilities equal to the host's within float tolerance, and a whole experiment submitted to the local
SLURM cluster with `container:` set (issue 18)."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from ..conftest import SlurmCluster, subprocess_env
from ..pipeline.conftest import run_pipeline, write_experiment
from .conftest import REPO, Container

CONFIGS = ("layer1/random.yaml", "layer2/mobilenetv2_cpu.yaml", "layer3/heatmap.yaml", "layer3/evaluate.yaml")
EXTRACT = ["--set", "patch_size=32", "--set", "sampling.random.per_class=60", "--set", "sampling.random.grid_step=16",
           "--set", "reader.threads=1"]


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def host(args: list[str], cwd: Path) -> str:
    """The same CLI on the host, from the checkout's venv."""
    return ok(subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=subprocess_env(), capture_output=True,
                             text=True, timeout=900, check=False))


SYNTH = ["layer1_patches", "synth", "--n-slides", "4", "--size", "2048", "--seed", "11", "--tumour-fraction", "0.3"]


@pytest.fixture(scope="module")
def cohort(container: Container, work: Path) -> Path:
    """Four synthetic slides (two patients) with annotations made inside the image, and copies of the configs the
    steps use: a checkout under a folder the container's user cannot enter must not matter."""
    ok(container.exec(["python", "-m", *SYNTH, "--out", str(work / "slides")], work))
    for name in CONFIGS:
        (work / "configs" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "configs" / name, work / "configs" / name)
    return work


def test_every_layer_answers_inside_the_image_as_a_non_root_user(container: Container, work: Path) -> None:
    for module in ("layer1_patches", "layer2_training", "layer3_inference"):
        assert "usage:" in ok(container.exec(["python", "-m", module, "-h"], work))
    assert "usage:" in ok(container.exec(["camnet", "-h"], work))
    where = ok(container.exec(["python", "-c", "import os, layer1_patches, horovod.tensorflow; "
                                               "print(layer1_patches.__file__, os.getuid())"], work)).split()
    assert where[0].startswith("/opt/camnet/") and where[1] != "0"  # the image's CamNet, not the checkout's


def test_the_image_has_no_build_tools_and_names_its_commit(container: Container, work: Path) -> None:
    # one name per `command -v`: dash (Debian's sh) looks up only the first of several
    found = ok(container.exec(["sh", "-c", "for t in gcc g++ cc c++ cmake make; do command -v $t; done; echo checked"],
                              work))
    assert found == "checked\n", found
    labels = json.loads(ok(subprocess.run(["apptainer", "inspect", "--json", "--labels", str(container.sif)],
                                          cwd=work, env=container.env, capture_output=True, text=True,
                                          timeout=120, check=False)))
    labels = labels.get("data", {}).get("attributes", {}).get("labels", labels)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=False).stdout.strip()
    assert labels["org.opencontainers.image.revision"].startswith(head), labels
    assert labels["org.opencontainers.image.version"] == __import__("layer1_patches").__version__


@pytest.fixture(scope="module")
def stores(container: Container, cohort: Path) -> Path:
    """Layer 1 extract and index run inside the image."""
    cfg = str(cohort / "configs" / "layer1" / "random.yaml")
    ok(container.exec(["python", "-m", "layer1_patches", "extract", "--config", cfg, "--slides",
                       str(cohort / "slides"), "--annotations", str(cohort / "slides"), "--out",
                       str(cohort / "stores"), *EXTRACT], cohort))
    ok(container.exec(["python", "-m", "layer1_patches", "index", "--inputs", str(cohort / "stores"), "--out",
                       str(cohort / "index.json"), "--fractions", "train=0.5,val=0.5"], cohort))
    return cohort / "stores"


def test_synth_inside_equals_the_hosts_byte_for_byte(cohort: Path) -> None:
    host([*SYNTH, "--out", str(cohort / "host_slides")], cohort)
    inside = sorted(p.name for p in (cohort / "slides").iterdir())
    assert len(inside) == 8 and inside == sorted(p.name for p in (cohort / "host_slides").iterdir())
    for name in inside:
        assert (cohort / "slides" / name).read_bytes() == (cohort / "host_slides" / name).read_bytes(), name


def test_layer1_stores_made_inside_equal_the_hosts_byte_for_byte(stores: Path, cohort: Path) -> None:
    host(["layer1_patches", "extract", "--config", str(cohort / "configs" / "layer1" / "random.yaml"), "--slides",
          str(cohort / "slides"), "--annotations", str(cohort / "slides"), "--out", str(cohort / "host_stores"),
          *EXTRACT], cohort)
    inside = sorted(p.name for p in stores.glob("*.h5"))
    assert len(inside) == 4 and inside == sorted(p.name for p in (cohort / "host_stores").glob("*.h5"))
    for name in inside:
        assert without_timing(stores / name) == without_timing(cohort / "host_stores" / name), name


def without_timing(store: Path) -> bytes:
    """The store's bytes with its one run-dependent value, the float64 `seconds` attribute (extraction time),
    zeroed: everything else is equal byte for byte between two runs."""
    data = bytearray(store.read_bytes())
    with h5py.File(store) as f:
        value = struct.pack("<d", float(f.attrs["seconds"]))
    at = data.index(value, data.index(b"seconds\x00"))
    data[at:at + 8] = bytes(8)
    return bytes(data)


@pytest.fixture(scope="module")
def trained(container: Container, stores: Path, cohort: Path) -> Path:
    """A short Layer 2 training inside the image, two Horovod ranks started by the image's horovodrun."""
    run = cohort / "run"
    ok(container.exec(["horovodrun", "-np", "2", "--gloo", "-H", "localhost:2", "python", "-m", "layer2_training",
                       "train", "--config", str(cohort / "configs" / "layer2" / "mobilenetv2_cpu.yaml"),
                       "--set", f"data.index={cohort / 'index.json'}", "--set", f"output.run_dir={run}",
                       "--set", "output.tensorboard=false", "--set", "epochs=2", "--set", "data.splits.test=null"],
                      cohort, timeout=900, HOROVOD_CYCLE_TIME="5"))
    assert stores.is_dir()
    return run


@pytest.mark.timeout(1800)  # its fixtures extract, index and train inside the image (setup.cfg's limit is 900 s)
def test_horovod_trains_on_two_ranks_inside_the_image(trained: Path) -> None:
    env = json.loads((trained / "environment.json").read_text())
    assert env["ranks"] == 2 and env["camnet_source"].startswith("/opt/camnet/")
    assert (trained / "model.json").is_file()


def test_heatmap_and_evaluate_inside_match_the_host(container: Container, trained: Path, cohort: Path) -> None:
    cfg = str(cohort / "configs" / "layer3" / "heatmap.yaml")
    slides = sorted(str(p) for p in (cohort / "slides").glob("*.tif"))[:2]
    common = ["--config", cfg, "--set", "output.thumbnail_size=128", "--model", str(trained), "--slides", *slides]
    ok(container.exec(["python", "-m", "layer3_inference", "heatmap", *common, "--out", str(cohort / "hm")], cohort))
    host(["layer3_inference", "heatmap", *common, "--out", str(cohort / "host_hm")], cohort)
    for slide in slides:
        stem = Path(slide).stem
        with h5py.File(cohort / "hm" / stem / "probabilities.h5") as a, \
                h5py.File(cohort / "host_hm" / stem / "probabilities.h5") as b:
            assert sorted(a) == sorted(b)
            for name in a:
                if a[name].dtype.kind == "f":
                    np.testing.assert_allclose(a[name][()], b[name][()], rtol=0, atol=1e-5, err_msg=name)
                else:
                    np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
    ok(container.exec(["python", "-m", "layer3_inference", "evaluate", "--config",
                       str(cohort / "configs" / "layer3" / "evaluate.yaml"), "--heatmaps", str(cohort / "hm"),
                       "--annotations", str(cohort / "slides"), "--index", str(cohort / "index.json"),
                       "--out", str(cohort / "eval")], cohort))
    summary = json.loads((cohort / "eval" / "summary.json").read_text())
    assert summary["slides"] == 2


@pytest.mark.slurm
@pytest.mark.timeout(1800)
def test_pipeline_submit_runs_every_stage_through_apptainer(container: Container, slurm_cluster: SlurmCluster,
                                                            work: Path) -> None:
    from layer1_patches.synth import write_cohort

    exp_dir = work / "experiment"
    exp_dir.mkdir(mode=0o777)
    slides = exp_dir / "slides"
    write_cohort(slides, 6, 2048, seed=21, tumour_fraction=0.3)  # three patients: train, val, test
    cfg = write_experiment(
        exp_dir / "exp.yaml", name="containertest", slides=[str(slides)], annotations=str(slides),
        out=str(exp_dir / "out"), container=str(container.sif),
        layer1={"config": "configs/layer1/random.yaml", "overrides": [e for e in EXTRACT if e != "--set"]},
        index={"fractions": {"train": 0.34, "val": 0.33, "test": 0.33}, "seed": 0},
        layer2={"config": "configs/layer2/mobilenetv2_cpu.yaml", "overrides": ["epochs=2", "output.tensorboard=false"]},
        heatmap={"config": "configs/layer3/heatmap.yaml", "overrides": ["output.thumbnail_size=128"]},
        explain={"enabled": False},
        slurm={s: {"cpus": 1} for s in ("layer1", "index", "heatmap", "evaluate", "report")}
        | {"layer2": {"cpus": 1, "ranks": 2}})  # two Horovod ranks: srun --mpi=pmix starts two containers
    env = {**slurm_cluster.env(), **{k: v for k, v in container.env.items() if k.startswith(("CAMNET_", "PATH"))},
           "CAMNET_LAUNCHER_BINDS": str(work),  # paths inside the stages' YAML files, which no argument names
           "CAMNET_LAUNCHER_ROOT": "1",  # the jobs run as root, and PMIx wants the job's uid in the container
           "PYTHONPATH": ""}  # as a user has it: nothing points Python at the checkout
    proc = run_pipeline(["submit", "--config", str(cfg)], env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    jobs = json.loads((exp_dir / "out" / "pipeline" / "jobs.json").read_text())["jobs"]
    assert slurm_cluster.wait(jobs["report"], timeout=1700) == "COMPLETED", run_pipeline(
        ["status", "--config", str(cfg)], env=env).stdout
    for stage, job in jobs.items():
        assert slurm_cluster.job_state(job) == "COMPLETED", stage
    if shutil.which("apptainer") is None:  # the launcher ran Apptainer: every stage's job went through it
        calls = container.launcher_log.read_text()
        assert calls.count(f"exec --env PYTHONSAFEPATH=1 --bind {REPO} {container.sif} ") >= len(jobs), calls
    run_env = json.loads((exp_dir / "out" / "run" / "environment.json").read_text())
    assert run_env["ranks"] == 2
    # the jobs run from the checkout (CAMNET_ROOT): still the image's CamNet trained, not the checkout's sources
    assert run_env["camnet_source"].startswith("/opt/camnet/"), run_env["camnet_source"]
    assert (exp_dir / "out" / "report" / "index.html").is_file()
