from __future__ import annotations

import json
from pathlib import Path

from layer1_patches.store import PatchStore

from .conftest import run_cli


def test_demo_runs_layer1_on_synthetic_and_bundled_slides(tmp_path: Path) -> None:
    proc = run_cli("demo", "--out", str(tmp_path), "--n-slides", "2", "--size", "2048", "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert "3/3 slides ok" in proc.stdout and "demo finished" in proc.stdout
    stores = sorted(p.name for p in (tmp_path / "patches").glob("*.h5"))
    assert stores == ["CMU-1-Small-Region.h5", "patient_000_node_0.h5", "patient_000_node_1.h5"]
    with PatchStore(tmp_path / "patches" / "patient_000_node_0.h5") as store:
        assert store.labels.sum() > 0 and (store.labels == 0).sum() > 0  # both classes from the synthetic slide
    index = json.loads((tmp_path / "patches" / "index.json").read_text())
    assert len(index["entries"]) == 3
