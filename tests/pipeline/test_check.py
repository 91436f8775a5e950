"""`pipeline check`: each check finds its problem, all problems at once, and `run` / `submit` stop before writing."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from layer1_patches.config import AnnotationConfig, Layer1Config, ResolutionConfig
from layer1_patches.index import IndexEntry, assign_by_patient, patient_splits
from layer1_patches.synth import CohortSpec, write_cohort_spec
from layer2_training.config import ModelConfig
from layer2_training.weights import spec
from layer3_inference.pipeline.check import (
    Problem,
    SlidePlan,
    annotation_problems,
    output_problems,
    pattern_problems,
    slide_problems,
    slurm_problems,
    split_problems,
    weights_problems,
)
from layer3_inference.pipeline.config import IndexRef, SlurmConfig, StageSlurm

from .conftest import REPO, run_pipeline, write_experiment

DATA = REPO / "tests" / "data"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four tiny synthetic slides with tumour annotations, two patients; the XML lies next to the slides."""
    folder = tmp_path_factory.mktemp("check") / "slides"
    write_cohort_spec(folder, CohortSpec(4, 512, seed=7, tumour_fraction=0.3))
    return folder


def _messages(problems: list[Problem]) -> list[str]:
    return [f"{p.severity}: {p.message}" for p in problems]


def test_three_problems_give_three_error_lines_exit_2_and_no_output(cohort: Path, tmp_path: Path) -> None:
    slides = tmp_path / "slides"
    slides.mkdir()
    for f in cohort.iterdir():
        (slides / f.name).symlink_to(f)
    (slides / "patient_000_node1.xml").symlink_to(cohort / "patient_000_node_1.xml")  # misnamed copy: an orphan
    cfg = write_experiment(
        tmp_path / "exp.yaml", name="t", slides=[str(slides), str(tmp_path / "nope" / "*.svs")],
        annotations=str(slides), out=str(tmp_path / "out" / "exp"), index={"fractions": {"train": 0.5, "val": 0.5}},
        layer1={"config": str(REPO / "configs/layer1/random.yaml")},
        layer2={"config": str(REPO / "configs/layer2/resnet50.yaml"),
                "overrides": [f"model.weights_cache={tmp_path / 'cache'}"]})
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run_pipeline(["check", "--config", str(cfg)], timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2 and len(errors) == 3, proc.stderr
    assert "nope/*.svs: the glob matches no file" in errors[0]
    assert "patient_000_node1.xml: matches no slide (did you mean patient_000_node_1.xml" in errors[1]
    assert "ImageNet weights for resnet50 not in the cache" in errors[2]
    assert "OK" not in proc.stdout and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output folder, no probe left


def test_run_and_submit_stop_before_writing_when_check_fails(cohort: Path, tmp_path: Path) -> None:
    cfg = write_experiment(
        tmp_path / "exp.yaml", name="t", slides=[str(cohort)], annotations=str(cohort), out=str(tmp_path / "out"),
        index={"fractions": {"train": 0.5, "val": 0.5}, "seed": 0},
        layer1={"config": str(REPO / "configs/layer1/random.yaml")},
        layer2={"config": str(REPO / "configs/layer2/mobilenetv2_cpu.yaml")},
        slurm={"layer2": {"partition": "nosuchpartition"}})
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sinfo").write_text("#!/bin/sh\nprintf 'debug*\\n'\n")
    (fake / "sinfo").chmod(0o755)
    env = {"PATH": str(fake)}  # no sbatch: submit must not reach it
    run = run_pipeline(["run", "--config", str(cfg), "--set", "index.fractions={train: 0.3, val: 0.3, test: 0.4}"],
                       env=env, timeout=120)
    assert run.returncode == 2 and "' has no patients; fix: fewer splits" in run.stderr, run.stderr
    submit = run_pipeline(["submit", "--config", str(cfg)], env=env, timeout=120)
    assert submit.returncode == 2, submit.stderr
    assert "sbatch is not on PATH" in submit.stderr and "partition 'nosuchpartition'" in submit.stderr
    assert not (tmp_path / "out").exists()
    ok = run_pipeline(["check", "--config", str(cfg)], env=env, timeout=120)  # the SLURM checks are for submit
    assert ok.returncode == 0 and ok.stdout.startswith("check: OK: 4 slides, 4 annotated, 2 patients"), ok.stderr
    assert "train 2, val 2" in ok.stdout


def test_patterns_matching_nothing_are_named(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("")
    found = _messages(pattern_problems([str(tmp_path / "missing.svs"), str(tmp_path / "gone"),
                                        str(tmp_path / "*.ndpi"), str(tmp_path / "empty"), str(DATA / "boxes.tiff")]))
    assert found == [f"error: config key 'slides': {tmp_path}/missing.svs: no such file or folder",
                     f"error: config key 'slides': {tmp_path}/gone: no such file or folder",
                     f"error: config key 'slides': {tmp_path}/*.ndpi: the glob matches no file",
                     f"error: config key 'slides': {tmp_path}/empty: the folder holds no slide files"]


def test_slides_that_do_not_open_or_lack_mpp_are_errors() -> None:
    slides = [DATA / "unopenable.tiff", DATA / "tcga-cr-7395-01a-01-ts1.svs", DATA / "CMU-1-Small-Region.svs"]
    found = _messages(slide_problems(slides, ResolutionConfig(level=0)))
    assert len(found) == 2 and "unopenable.tiff: cannot open" in found[0]
    assert "tcga-cr-7395-01a-01-ts1.svs: no mpp" in found[1]
    assert len(slide_problems(slides[1:], ResolutionConfig(level=0, assume_mpp=0.25))) == 0
    assert "finer than level 0" in slide_problems(slides[2:], ResolutionConfig(mpp=0.1))[0].message


def test_orphan_and_misnamed_annotations_are_errors_or_warnings(cohort: Path, tmp_path: Path) -> None:
    slides = sorted(cohort.glob("*.tif"))
    (tmp_path / "patient_000_node1.xml").write_text((cohort / "patient_000_node_1.xml").read_text())
    (tmp_path / "patient_009_node_0.xml").write_text((cohort / "patient_000_node_0.xml").read_text())
    (tmp_path / "patient_000_node_0.xml").write_text((cohort / "patient_000_node_0.xml").read_text())
    (tmp_path / "slide.tif").write_text("")  # a slide lying in the annotation folder is not an annotation
    strict = annotation_problems(tmp_path, slides, AnnotationConfig(), allow_orphans=False)
    found = _messages(strict.problems)
    assert len(found) == 2 and all(m.startswith("error: ") for m in found)
    assert "patient_000_node1.xml: matches no slide (did you mean patient_000_node_1.xml" in found[0]
    assert "patient_009_node_0.xml: matches no slide" in found[1] and "--allow-orphans" in found[1]
    assert strict.tumour == {"patient_000_node_0"} and strict.paired == 1
    lenient = annotation_problems(tmp_path, slides, AnnotationConfig(), allow_orphans=True)
    assert [p.severity for p in lenient.problems] == ["warning", "warning"]


def test_unparseable_annotation_is_an_error(cohort: Path, tmp_path: Path) -> None:
    (tmp_path / "patient_001_node_0.xml").write_text("<ASAP_Annotations><Annotations>")
    found = annotation_problems(tmp_path, sorted(cohort.glob("*.tif")), AnnotationConfig(), False)
    assert len(found.problems) == 1 and "patient_001_node_0.xml" in found.problems[0].message
    assert found.tumour == set()


def test_missing_imagenet_weights_use_layer2s_own_lookup(tmp_path: Path) -> None:
    model = replace(ModelConfig(), backbone="mobilenetv2", weights="imagenet", weights_cache=str(tmp_path))
    layer1 = replace(Layer1Config(), patch_size=96)
    found = weights_problems(layer1, model)
    wanted = tmp_path / "models" / spec("mobilenetv2").weights_file(96)  # the patch size picks the file
    assert len(found) == 1 and str(wanted) in found[0].message
    wanted.parent.mkdir()
    wanted.write_bytes(b"")
    assert weights_problems(layer1, model) == []
    assert weights_problems(layer1, replace(model, weights="none", weights_cache=str(tmp_path / "x"))) == []


def _plan(tumour_patients: set[str], n: int) -> list[SlidePlan]:
    return [SlidePlan(f"patient_{p}_node_{k}", p, p, p in tumour_patients and k == 0)
            for p in (f"{i:03d}" for i in range(n)) for k in range(2)]


def test_split_without_tumour_is_an_error_suggesting_a_seed_that_works() -> None:
    index = IndexRef(fractions={"train": 0.5, "val": 0.5}, seed=0)
    split_of = patient_splits(["000", "001", "002", "003"], index.fractions, 0)
    plan = _plan({p for p, s in split_of.items() if s == "train"}, 4)  # seed 0 puts every tumour in train
    sizes, found = split_problems(plan, index)
    assert sizes == {"train": 4, "val": 4} and len(found) == 1
    message = found[0].message
    assert "split 'val' has only patients" in message and "without tumour patches" in message
    seed = int(message.split("index.seed ")[1].split()[0])
    assert split_problems(plan, replace(index, seed=seed))[1] == []
    assert all(split_problems(plan, replace(index, seed=s))[1] for s in range(seed))  # the first that works


def test_split_plan_is_the_split_the_index_makes() -> None:
    patients = [f"{i:03d}" for i in range(7)]
    entries = [IndexEntry(f"{p}.h5", f"patient_{p}_node_0", p, "0", "0", "", 2, 1, 1, 8, 0, 0.5, "h")
               for p in patients]
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    indexed = {e.patient: e.split for e in assign_by_patient(entries, fractions, 5)}
    assert patient_splits(patients, fractions, 5) == indexed


def test_centre_split_names_slides_of_centres_in_no_split() -> None:
    plan = [SlidePlan("a", "1", "0", True), SlidePlan("b", "2", "3", True)]
    sizes, found = split_problems(plan, IndexRef(split_by="centre", centres={"train": ["0"]}))
    assert _messages(found) == ["error: slide b: centre '3' is in no split (index.centres: {'train': ['0']})"]


def test_output_folder_must_be_writable_and_the_probe_is_removed(tmp_path: Path) -> None:
    assert output_problems(tmp_path / "a" / "b") == [] and list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("")
    assert "is not a folder" in output_problems(tmp_path / "file" / "out")[0].message
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        assert "cannot write in" in output_problems(tmp_path / "ro" / "out")[0].message


def test_slurm_partitions_and_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sinfo").write_text("#!/bin/sh\nprintf 'debug*\\ngpu\\n'\n")
    (tmp_path / "sinfo").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    slurm = replace(SlurmConfig(), layer2=StageSlurm(partition="gpu"), heatmap=StageSlurm(partition="big"),
                    index=StageSlurm(partition="debug"))
    found = _messages(slurm_problems(slurm))
    assert found[0].startswith("error: slurm: sbatch is not on PATH")
    assert found[1:] == ["error: config key 'slurm.heatmap.partition': partition 'big' does not exist (sinfo lists: "
                         "debug, gpu)"]
    (tmp_path / "sbatch").write_text("#!/bin/sh\n")
    (tmp_path / "sbatch").chmod(0o755)
    assert slurm_problems(replace(slurm, heatmap=StageSlurm())) == []


def test_a_missing_cohort_folder_is_not_repeated_as_split_errors(tmp_path: Path) -> None:
    from layer3_inference.pipeline.check import check_experiment
    from layer3_inference.pipeline.config import load_experiment

    cfg = write_experiment(
        tmp_path / "exp.yaml", slides=[str(tmp_path / "later"), str(DATA / "CMU-1-Small-Region.svs")],
        annotations=str(tmp_path / "later"), out=str(tmp_path / "out"),
        layer1={"config": str(REPO / "configs/layer1/random.yaml")},
        layer2={"config": str(REPO / "configs/layer2/mobilenetv2_cpu.yaml")})
    found = _messages(check_experiment(load_experiment(cfg)))
    assert found == [f"error: config key 'slides': {tmp_path}/later: no such file or folder",
                     f"error: config key 'annotations': {tmp_path}/later: no such folder"]
