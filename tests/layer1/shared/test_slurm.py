from __future__ import annotations

import os
from pathlib import Path

import pytest

from layer1_patches.shared.errors import CamnetError
from layer1_patches.shared.manifest import Manifest, ManifestEntry
from layer1_patches.shared.slurm import (
    TaskState,
    array_sbatch_args,
    array_task_index,
    cohort_status,
    read_task_state,
    recorded_task,
    write_task_state,
)


def test_task_state_of_another_slide_is_ignored(tmp_path: Path) -> None:
    """Regression: manifests are ordered by file size, so a rewritten manifest can put another slide at index 0;
    the old index-0 state ("failed") must not be reported against it."""
    write_task_state(tmp_path, TaskState(0, "/data/old.svs", "failed", "12", "cannot open", 0.0))
    write_task_state(tmp_path, TaskState(1, "/data/b.svs", "failed", "12", "cannot open", 0.0))
    rows = cohort_status(tmp_path, ["/data/new.svs", "/data/b.svs"], [False, False])
    assert [(r.slide, r.status) for r in rows] == [("/data/new.svs", "missing"), ("/data/b.svs", "failed")]


def test_array_task_index_comes_from_the_option_or_slurm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    assert array_task_index(None) == 7 and array_task_index(2) == 2
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    with pytest.raises(CamnetError, match="--index not given and SLURM_ARRAY_TASK_ID is not set"):
        array_task_index(None)


def test_recorded_task_writes_running_then_done_or_the_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "42")
    monkeypatch.delenv("SLURM_PROCID", raising=False)
    with recorded_task(tmp_path, 0, "/data/a.svs"):
        assert read_task_state(tmp_path, 0).state == "running"  # type: ignore[union-attr]
    assert read_task_state(tmp_path, 0) == TaskState(0, "/data/a.svs", "done", "42", "",
                                                     read_task_state(tmp_path, 0).time)  # type: ignore[union-attr]
    with pytest.raises(CamnetError), recorded_task(tmp_path, 1, "/data/b.svs"):
        raise CamnetError("slide /data/b.svs: cannot open")
    assert read_task_state(tmp_path, 1).error == "slide /data/b.svs: cannot open"  # type: ignore[union-attr]
    with pytest.raises(ZeroDivisionError), recorded_task(tmp_path, 2, "/data/c.svs"):
        _ = 1 / 0  # a bug still marks the task failed: `status` must not wait for it
    assert read_task_state(tmp_path, 2).state == "failed"  # type: ignore[union-attr]
    with recorded_task(tmp_path, 3, "/data/d.svs", final=False):
        pass  # a dense shard: the merge step records `done`
    assert read_task_state(tmp_path, 3).state == "running"  # type: ignore[union-attr]


def test_only_rank_0_records_progress_but_any_rank_records_failure(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_PROCID", "1")
    with recorded_task(tmp_path, 0, "/data/a.svs"):
        pass
    assert read_task_state(tmp_path, 0) is None
    with pytest.raises(CamnetError), recorded_task(tmp_path, 0, "/data/a.svs"):
        raise CamnetError("rank 1 failed")
    assert read_task_state(tmp_path, 0).error == "rank 1 failed"  # type: ignore[union-attr]


def test_array_arguments_pass_the_manifest_on_the_scripts_command_line(tmp_path: Path) -> None:
    manifest = Manifest("c.yaml", str(tmp_path / "out"), (ManifestEntry("/a,b.svs"),), shards=3)
    args = array_sbatch_args(Path("/repo/slurm/x.sbatch"), tmp_path / "m,1.json", manifest, [0, 1, 2, 5], 2,
                             ["--partition=cpu"])
    assert args[0] == "--array=0-2,5%2" and f"--output={tmp_path / 'out' / 'logs'}/%x_%A_%a.out" in args
    assert "--ntasks=3" in args and args.index("--partition=cpu") < args.index("/repo/slurm/x.sbatch")
    # after the script: its own arguments, never through --export (which splits on commas)
    assert args[-3:] == ["/repo/slurm/x.sbatch", "--manifest", str(tmp_path / "m,1.json")]
    assert not any("CAMNET_MANIFEST" in a for a in args)


def test_jobs_run_the_submitters_python(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: submitted from .venv-modern (TF 2.21), the jobs ran the checkout's .venv (TF 2.15), which
    slurm/common.sh takes when CAMNET_PYTHON is unset; a CAMNET_PYTHON that is set stays."""
    import sys

    from layer1_patches.shared.slurm import sbatch

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    seen = tmp_path / "seen"
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$CAMNET_PYTHON" >> {seen}\necho 42\n')
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv("CAMNET_PYTHON", raising=False)
    assert sbatch(["x.sbatch"], tmp_path) == "42"
    monkeypatch.setenv("CAMNET_PYTHON", "/opt/other/python")
    sbatch(["x.sbatch"], tmp_path)
    assert seen.read_text().splitlines() == [sys.executable, "/opt/other/python"]
