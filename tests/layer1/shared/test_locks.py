"""`layer1_patches/shared/locks.py`: one writer per output, stale locks of dead local writers taken over."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from layer1_patches.shared.locks import (
    OutputBusy,
    _host,
    _start_time,
    _take_over,
    lock_path,
    output_lock,
    stale_partials,
    writer_partial,
)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(final: Path, **owner: object) -> Path:
    path = lock_path(final)
    path.write_text(json.dumps({"host": _host(), "pid": os.getpid(), "job": "", "time": 0, **owner}))
    return path


def test_lock_file_names_its_owner_and_goes_with_the_block(tmp_path: Path) -> None:
    final = tmp_path / "s.h5"
    with output_lock(final) as path:
        assert path == tmp_path / ".s.h5.lock"
        owner = json.loads(path.read_text())
        assert owner["host"] == _host() and owner["pid"] == os.getpid()
    assert not path.exists()


def test_second_writer_is_told_who_holds_the_output(tmp_path: Path) -> None:
    final = tmp_path / "s.h5"
    _write_lock(final, pid=os.getppid(), job="123")  # a live process of this host
    busy = (rf"s.h5: being written by {_host()}/pid {os.getppid()}, SLURM job 123 since .* "
            r"\(lock .*\.s\.h5\.lock\); if that process is gone, delete")
    with pytest.raises(OutputBusy, match=busy), output_lock(final):
        pass
    assert lock_path(final).exists()  # never removed by the writer that was refused


def test_stale_lock_of_a_dead_local_process_is_taken_over_with_its_partial(tmp_path: Path) -> None:
    final = tmp_path / "s.h5"
    dead = _dead_pid()
    _write_lock(final, pid=dead)
    leftover = tmp_path / f".s.h5.{_host()}-{dead}.partial"
    leftover.write_bytes(b"half")
    old_style = tmp_path / ".s.h5.partial"  # CamNet 0.1.0's partial name
    old_style.write_bytes(b"half")
    with output_lock(final) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
        assert not leftover.exists() and not old_style.exists()


def test_lock_of_another_host_is_not_taken_over(tmp_path: Path) -> None:
    # Its process may still be writing over the shared file system; only the user can know the node died.
    final = tmp_path / "s.h5"
    _write_lock(final, host="othernode", pid=_dead_pid())
    with pytest.raises(OutputBusy, match="being written by othernode/pid"), output_lock(final):
        pass


def test_partials_are_unique_per_writer_and_only_this_outputs_are_stale(tmp_path: Path) -> None:
    final = tmp_path / "a.h5"
    assert writer_partial(final) == tmp_path / f".a.h5.{_host()}-{os.getpid()}.partial"
    mine = [tmp_path / ".a.h5.partial", tmp_path / ".a.h5.n1-12.partial"]
    others = [tmp_path / ".a.h5.x.h5.n1-12.partial", tmp_path / ".b.h5.n1-12.partial", tmp_path / "a.h5"]
    for p in mine + others:
        p.write_bytes(b"")
    assert sorted(stale_partials(final)) == sorted(mine)


def _race(final: str, results: multiprocessing.Queue, start: Any) -> None:  # type: ignore[type-arg]
    start.wait()
    try:
        with output_lock(Path(final)):
            results.put("owner")
            import time

            time.sleep(1.0)  # hold it while the others try
    except OutputBusy:
        results.put("busy")


def test_writers_racing_for_one_stale_lock_get_one_owner(tmp_path: Path) -> None:
    # Without the guard, two writers that both read the stale lock could each delete the other's new one.
    final = tmp_path / "s.h5"
    _write_lock(final, pid=_dead_pid())
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    start = ctx.Barrier(6)
    procs = [ctx.Process(target=_race, args=(str(final), results, start)) for _ in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    outcomes = sorted(results.get(timeout=5) for _ in procs)
    assert outcomes == ["busy"] * 5 + ["owner"]
    assert not lock_path(final).exists()


def test_takeover_never_removes_a_lock_that_changed_since_it_was_read(tmp_path: Path) -> None:
    # The deterministic form of the race above: writer A read the stale record, writer B took the lock over
    # first; A's takeover must leave B's lock alone.
    final = tmp_path / "s.h5"
    path = _write_lock(final, pid=_dead_pid())
    seen = json.loads(path.read_text())
    _write_lock(final, pid=os.getppid())  # B's fresh lock
    _take_over(path, seen)
    assert json.loads(path.read_text())["pid"] == os.getppid()
    _take_over(path, json.loads(path.read_text()))
    assert not path.exists()  # unchanged since read: removed


def test_lock_left_empty_by_a_writer_stopped_while_creating_it_is_taken_over_once_old(tmp_path: Path) -> None:
    # A signal between creating the lock file and writing its record left an empty lock that named nobody, so
    # every later run was refused as busy by "an unknown writer".
    final = tmp_path / "s.h5"
    lock_path(final).write_text("")
    with pytest.raises(OutputBusy, match="an unknown writer"), output_lock(final):
        pass
    os.utime(lock_path(final), (0, 0))
    with output_lock(final) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_lock_of_a_dead_node_is_taken_over_by_the_requeued_job(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # Review of issue 13: a lock left on another node (SIGKILL after a time limit, OOM, node failure) refused the
    # requeued task forever. A requeue keeps the job id and counts restarts: the old record is its own past.
    final = tmp_path / "s.h5"
    _write_lock(final, host="node07", pid=4242, job="9001", restart="0")
    monkeypatch.setenv("SLURM_JOB_ID", "9001")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with output_lock(final) as path:
        assert json.loads(path.read_text())["restart"] == "1"
    # the same job and restart on another node is a concurrent step of one job: busy
    _write_lock(final, host="node07", pid=4242, job="9001", restart="1")
    with pytest.raises(OutputBusy, match="node07/pid 4242, SLURM job 9001"), output_lock(final):
        pass


def test_lock_of_another_node_whose_job_slurm_says_has_ended_is_taken_over(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "squeue").write_text('#!/bin/sh\n[ "$3" = 555 ] && exit 0\n'
                                 'echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1\n')
    (fake / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    final = tmp_path / "s.h5"
    for job in ("555", "777"):  # squeue lists nothing for 555 (ended); says 777 is unknown (purged)
        _write_lock(final, host="node07", pid=4242, job=job)
        with output_lock(final):
            pass
    (fake / "squeue").write_text('#!/bin/sh\necho "slurm_load_jobs error: Unable to contact slurm controller" >&2\n'
                                 'exit 1\n')
    _write_lock(final, host="node07", pid=4242, job="888")  # SLURM cannot vouch: the writer may be alive
    with pytest.raises(OutputBusy, match="node07/pid 4242, SLURM job 888"), output_lock(final):
        pass


def test_pid_reused_by_another_process_does_not_keep_a_dead_writers_lock(tmp_path: Path) -> None:
    final = tmp_path / "s.h5"
    _write_lock(final, pid=os.getppid(), started="1")  # our parent lives, but did not start at tick 1
    with output_lock(final) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    _write_lock(final, pid=os.getppid(), started=_start_time(os.getppid()))
    with pytest.raises(OutputBusy), output_lock(final):
        pass
