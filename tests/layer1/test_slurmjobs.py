from __future__ import annotations

from pathlib import Path

from layer1_patches.slurmjobs import TaskState, cohort_status, write_task_state


def test_task_state_of_another_slide_is_ignored(tmp_path: Path) -> None:
    """Regression: manifests are ordered by file size, so a rewritten manifest can put another slide at index 0;
    the old index-0 state ("failed") must not be reported against it."""
    write_task_state(tmp_path, TaskState(0, "/data/old.svs", "failed", "12", "cannot open", 0.0))
    write_task_state(tmp_path, TaskState(1, "/data/b.svs", "failed", "12", "cannot open", 0.0))
    rows = cohort_status(tmp_path, ["/data/new.svs", "/data/b.svs"], [False, False])
    assert [(r.slide, r.status) for r in rows] == [("/data/new.svs", "missing"), ("/data/b.svs", "failed")]
