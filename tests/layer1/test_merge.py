"""Dense shards merge into the store a single process writes; unfinished or mismatched shards are refused."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from layer1_patches.extract import ExtractRequest, extract_slide, output_path
from layer1_patches.merge import merge_shards
from layer1_patches.shared.errors import CamnetError
from layer1_patches.store import PatchStore

from .conftest import CMU, make_config

DENSE = make_config(patch_size=64, sampling={"mode": "dense"})


def shards(out: Path, count: int = 2, cfg=DENSE) -> list[Path]:  # type: ignore[no-untyped-def]
    return [Path(extract_slide(ExtractRequest(CMU, out, cfg, shard=(i, count))).output) for i in range(count)]


def test_merged_shards_equal_one_process(tmp_path: Path) -> None:
    whole = Path(extract_slide(ExtractRequest(CMU, tmp_path / "whole", DENSE)).output)
    parts = shards(tmp_path / "sharded")
    merged = merge_shards(tmp_path / "sharded", CMU, 2)
    assert merged == output_path(tmp_path / "sharded", CMU, None) and not any(p.exists() for p in parts)
    with PatchStore(whole) as a, PatchStore(merged) as b:
        order = np.lexsort(b.coords.T[::-1])
        assert len(a) == len(b) > 0
        assert np.array_equal(a.coords[np.lexsort(a.coords.T[::-1])], b.coords[order])
        assert a.attrs["counts"] == b.attrs["counts"] and b.attrs["merged_from"] == 2 and b.attrs["shard"] == ""
    assert merge_shards(tmp_path / "sharded", CMU, 2) == merged  # merged before: nothing to do


def test_unfinished_shard_is_named(tmp_path: Path) -> None:
    shards(tmp_path, 2)[1].unlink()
    with pytest.raises(CamnetError, match=r"shard files not finished: CMU-1-Small-Region\.shard-001-of-002"):
        merge_shards(tmp_path, CMU, 2)


def test_shards_of_different_configs_are_refused(tmp_path: Path) -> None:
    other = replace(DENSE, filters=replace(DENSE.filters, white=None))
    a = extract_slide(ExtractRequest(CMU, tmp_path, DENSE, shard=(0, 2)))
    b = extract_slide(ExtractRequest(CMU, tmp_path, other, shard=(1, 2)))
    assert a.status == b.status == "done"
    with pytest.raises(CamnetError, match="shards were made with different configs"):
        merge_shards(tmp_path, CMU, 2)
