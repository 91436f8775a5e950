"""Layer 1 as SLURM array jobs on the real local cluster (slurm/local/start.sh)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from layer1_patches.store import PatchStore

from ..conftest import SlurmCluster

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
CMU = DATA / "CMU-1-Small-Region.svs"
pytestmark = pytest.mark.slurm


def cli(cluster: SlurmCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "layer1_patches", *args], cwd=REPO, env=cluster.env(),
                          capture_output=True, text=True, timeout=300)


def job_id(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def status_rows(cluster: SlurmCluster, manifest: Path, *extra: str) -> tuple[dict[str, str], str]:
    proc = cli(cluster, "status", "--manifest", str(manifest), *extra)
    rows = {}
    for line in proc.stdout.splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) == 3 and parts[0].isdigit():
            rows[parts[2].split("  ")[0]] = parts[1]
    return rows, proc.stdout


def test_array_with_a_corrupt_slide_then_resubmit_the_failed_index(slurm_cluster: SlurmCluster,
                                                                    tmp_path: Path) -> None:
    slides = tmp_path / "slides with space"
    slides.mkdir()
    odd = "it's a \"slide\" $(touch pwned).svs"
    shutil.copy(CMU, slides / odd)
    shutil.copy(DATA / "unopenable.tiff", slides / "broken.tiff")
    shutil.copy(CMU, slides / "plain.svs")
    out = tmp_path / "out"
    job = job_id(cli(slurm_cluster, "submit", "--config", "configs/layer1/random.yaml", "--slides", str(slides),
                     "--out", str(out), "--max-parallel", "2", "--set", "patch_size=64",
                     "--set", "sampling.random.per_class=5"))
    assert slurm_cluster.wait(job, timeout=180) == "FAILED"  # one of the three tasks failed
    rows, text = status_rows(slurm_cluster, out / "manifest.json")
    assert rows == {"broken.tiff": "failed", odd: "finished", "plain.svs": "finished"}, text
    assert "Unsupported TIFF compression" in text and "summary: 2 finished, 0 running, 0 pending, 1 failed" in text
    assert not (REPO / "pwned").exists() and not (tmp_path / "pwned").exists()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    assert set(before) == {"it's a \"slide\" $(touch pwned).h5", "plain.h5"}

    shutil.copy(CMU, slides / "broken.tiff")  # the user replaces the corrupt file
    proc = cli(slurm_cluster, "status", "--manifest", str(out / "manifest.json"), "--resubmit")
    entries = json.loads((out / "manifest.json").read_text())["entries"]
    assert [Path(e["slide"]).name for e in entries][-1] == "broken.tiff"  # largest slides first
    assert "resubmitted 1 slides" in proc.stdout and "indices [2]" in proc.stdout, proc.stdout
    assert slurm_cluster.wait(proc.stdout.split("as job ")[1].split(":")[0], timeout=180) == "COMPLETED"
    rows, text = status_rows(slurm_cluster, out / "manifest.json")
    assert set(rows.values()) == {"finished"}, text
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    assert {k: after[k] for k in before} == before  # finished slides were not touched
    with PatchStore(out / "broken.h5") as store:
        assert len(store) == 5 and store.attrs["seed"] == 2  # its manifest index (2) seeds it


def test_dense_with_two_subtasks_equals_a_single_process_run(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    settings = ["--set", "patch_size=64"]
    job = job_id(cli(slurm_cluster, "submit", "--config", "configs/layer1/dense.yaml", "--slides", str(CMU),
                     "--out", str(out), "--shards", "2", "--sbatch-arg=--cpus-per-task=1", *settings))
    assert slurm_cluster.wait(job, timeout=180) == "COMPLETED"
    assert [p.name for p in out.glob("*.h5")] == ["CMU-1-Small-Region.h5"]  # shards merged and removed
    single = cli(slurm_cluster, "extract", "--config", "configs/layer1/dense.yaml", "--slide", str(CMU),
                 "--out", str(tmp_path / "single"), *settings)
    assert single.returncode == 0, single.stderr
    with PatchStore(out / "CMU-1-Small-Region.h5") as a, PatchStore(tmp_path / "single" / "CMU-1-Small-Region.h5") as b:
        assert len(a) == len(b) > 100
        for name in ("coords", "labels", "tumour_fraction", "tissue_fraction"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert np.array_equal(a.read(np.arange(len(a))), b.read(np.arange(len(b))))
        assert a.attrs["rejects"] == b.attrs["rejects"] and a.attrs["counts"] == b.attrs["counts"]
        assert a.attrs["shard"] == "" and a.attrs["merged_from"] == 2
    log = next((out / "logs").glob("*.out")).read_text()
    assert "merged 2 shards" in log


def test_scancel_a_running_task_then_resubmit(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    slow = ["--set", "patch_size=16", "--set", "reader.threads=1", "--set", "output.codec=gzip",
            "--set", "output.gzip_level=9"]
    job = job_id(cli(slurm_cluster, "submit", "--config", "configs/layer1/dense.yaml", "--slides", str(CMU),
                     "--out", str(out), *slow))
    def partial() -> Path | None:
        return next(out.glob(".CMU-1-Small-Region.h5.*.partial"), None)

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not ((p := partial()) and p.stat().st_size > 100_000):
        time.sleep(0.2)
    assert partial(), "the task finished or never started before it could be cancelled"
    slurm_cluster.run(["scancel", job])
    assert slurm_cluster.wait(job, timeout=60) == "CANCELLED"
    rows, text = status_rows(slurm_cluster, out / "manifest.json")
    assert rows == {"CMU-1-Small-Region.svs": "failed"} and "interrupted by SIGTERM" in text, text
    assert not (out / "CMU-1-Small-Region.h5").exists()
    assert partial() is None and not (out / ".CMU-1-Small-Region.h5.lock").exists()  # SIGTERM cleaned up
    proc = cli(slurm_cluster, "status", "--manifest", str(out / "manifest.json"), "--resubmit")
    assert slurm_cluster.wait(proc.stdout.split("as job ")[1].split(":")[0], timeout=300) == "COMPLETED"
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["CMU-1-Small-Region.h5", "manifest.json"]
    clean = cli(slurm_cluster, "extract", "--config", "configs/layer1/dense.yaml", "--slide", str(CMU),
                "--out", str(tmp_path / "clean"), *slow)
    assert clean.returncode == 0
    with PatchStore(out / "CMU-1-Small-Region.h5") as a, PatchStore(tmp_path / "clean" / "CMU-1-Small-Region.h5") as b:
        assert np.array_equal(a.coords, b.coords)  # nothing duplicated, nothing lost


def test_manifest_problems(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    missing = cli(slurm_cluster, "task", "--manifest", str(tmp_path / "none.json"), "--index", "0")
    assert missing.returncode == 2 and f"error: manifest {tmp_path / 'none.json'}: no such file" in missing.stderr
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"manifest_version": 1, "config": "c", "out": str(tmp_path), "entries": []}))
    proc = cli(slurm_cluster, "task", "--manifest", str(empty), "--index", "0")
    assert proc.returncode == 2 and "lists no slides" in proc.stderr
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{")
    assert "malformed" in cli(slurm_cluster, "task", "--manifest", str(garbage), "--index", "0").stderr
    out = tmp_path / "out"
    assert cli(slurm_cluster, "submit", "--config", "configs/layer1/random.yaml", "--slides", str(CMU),
               "--out", str(out), "--dry-run").returncode == 0
    past = cli(slurm_cluster, "task", "--manifest", str(out / "manifest.json"), "--index", "3")
    assert past.returncode == 2 and "task index 3 is past the end (1 slides, indices 0-0)" in past.stderr
    # The same error reaches a real array task's log, and SLURM records the failure.
    job = slurm_cluster.submit(["--array=3", f"--output={tmp_path}/%A_%a.log",
                                f"--export=ALL,CAMNET_MANIFEST={out / 'manifest.json'},CAMNET_ROOT={REPO}",
                                str(REPO / "slurm" / "layer1_extract.sbatch")], cwd=REPO)
    assert slurm_cluster.wait(job, timeout=60) == "FAILED"
    assert "task index 3 is past the end" in next(tmp_path.glob("*.log")).read_text()
    nothing = cli(slurm_cluster, "submit", "--config", "configs/layer1/random.yaml", "--slides",
                  str(tmp_path / "no-such-*.svs"), "--out", str(out))
    assert nothing.returncode == 2 and "no slides found" in nothing.stderr
    gone = cli(slurm_cluster, "submit", "--config", "configs/layer1/random.yaml", "--slides",
               str(tmp_path / "gone.svs"), "--out", str(out))
    assert gone.returncode == 2 and f"slide {tmp_path / 'gone.svs'}: no such file" in gone.stderr
