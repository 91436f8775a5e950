"""The run dir: one writer at a time, partial files of killed writers removed, refused writes as one error line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from layer1_patches.shared.errors import CamnetError
from layer1_patches.shared.locks import OutputBusy, lock_path
from layer2_training import rundir


def test_partial_files_of_a_killed_run_stayed_in_the_run_dir(tmp_path: Path) -> None:
    run = tmp_path / "run"
    last = run / "checkpoints" / "last"
    (last / "ckpt-3_temp").mkdir(parents=True)
    (last / "ckpt-3_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"half")
    (run / "export").mkdir()
    partial = [run / ".config.yaml.123.partial", run / "export" / ".model.77.partial.keras",
               last / f"checkpoint.tmp{'ab' * 16}", last / "ckpt-3_temp"]
    finished = [run / "config.yaml", run / "export" / "model.keras", last / "checkpoint", last / "ckpt-2.index",
                last / "ckpt-2.data-00000-of-00001", run / "history.csv"]
    for path in partial[:3] + finished:
        path.write_text("x")
    with rundir.claim(run):
        assert json.loads(lock_path(run).read_text())["pid"] == os.getpid()
        assert [p for p in partial if p.exists()] == []
        assert all(p.exists() for p in finished)
    assert not lock_path(run).exists()


def test_a_second_writer_of_a_run_dir_is_refused_while_the_first_holds_it(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "a"  # the parent is created for the lock beside the run dir
    with rundir.claim(run), pytest.raises(OutputBusy, match=rf"^{run}: being written by .*/pid {os.getpid()}"):
        rundir.claim(run).__enter__()
    with rundir.claim(run):  # released: the next run takes it
        pass


def test_refused_writes_to_the_run_dir_were_tracebacks(tmp_path: Path, mount_tmpfs) -> None:
    disk = mount_tmpfs(tmp_path / "disk", "64k")
    disk.remount("ro")
    run = disk.path / "runs" / "a"  # its parent, where the lock goes, cannot be made
    with pytest.raises(CamnetError, match=rf"^run dir {run}: cannot create \(Read-only file system\)$"):
        rundir.claim(run).__enter__()
    disk.remount("rw")
    disk.fill()
    target = disk.path / "metrics.json"
    with pytest.raises(CamnetError, match=rf"^output {target}: cannot write \(No space left on device\)$"):
        rundir.write_json(target, {"auc": 0.5})
    assert sorted(p.name for p in disk.path.iterdir()) == ["filler.bin"], "no partial file"
