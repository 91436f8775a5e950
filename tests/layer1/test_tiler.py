from __future__ import annotations

import numpy as np
import pytest

from layer1_patches.config import LabelConfig, RandomConfig
from layer1_patches.masks import Mask
from layer1_patches.tiler import DenseTiler, RandomTiler, SlideField, label_patches, shard


def _field(tumour: bool = True) -> SlideField:
    tissue = np.zeros((100, 100), bool)
    tissue[10:90, 10:90] = True
    tumour_mask = np.zeros((100, 100), bool)
    tumour_mask[20:50, 20:50] = True
    return SlideField((1000, 1000), 40, 1.0, Mask(tissue, 10, 10), Mask(tumour_mask, 10, 10) if tumour else None,
                      0.5, LabelConfig())


def test_dense_grid_is_over_tissue_and_row_major() -> None:
    (stream,) = DenseTiler(40).plan(_field())
    xy = stream.coords
    assert len(xy) > 0 and stream.quota is None
    assert np.all(xy >= 60) and np.all(xy + 40 <= 940)  # half of each patch inside the tissue square
    assert np.array_equal(np.lexsort((xy[:, 0], xy[:, 1])), np.arange(len(xy)))  # y then x


@pytest.mark.parametrize("k", [1, 2, 3, 7])
def test_dense_shards_partition_the_full_set(k: int) -> None:
    (full,) = DenseTiler(30).plan(_field())
    parts = [shard(full, i, k) for i in range(k)]
    assert np.array_equal(np.concatenate([p.coords for p in parts]), full.coords)
    assert sum(sum(p.prefiltered.values()) for p in parts) == sum(full.prefiltered.values())


def test_random_is_deterministic_by_seed_and_without_replacement() -> None:
    cfg = RandomConfig(per_class=20, max_attempts_factor=3, grid_step=10)
    a = RandomTiler(cfg, seed=1).plan(_field())
    b = RandomTiler(cfg, seed=1).plan(_field())
    c = RandomTiler(cfg, seed=2).plan(_field())
    for sa, sb in zip(a, b, strict=True):
        assert np.array_equal(sa.coords, sb.coords)
    assert not np.array_equal(a[0].coords, c[0].coords)
    for stream in a:
        assert len(stream.coords) <= 60  # attempts are bounded
        assert len(np.unique(stream.coords, axis=0)) == len(stream.coords)


def test_random_streams_hold_only_their_class() -> None:
    field = _field()
    tumour, normal = RandomTiler(RandomConfig(per_class=50, grid_step=5), 0).plan(field)
    assert (field.tumour_fraction(tumour.coords) >= 0.5).all()
    assert (field.tumour_fraction(normal.coords) == 0).all()


def test_without_annotation_everything_is_normal() -> None:
    tumour, normal = RandomTiler(RandomConfig(per_class=5), 0).plan(_field(tumour=False))
    assert len(tumour.coords) == 0 and len(normal.coords) > 0


def test_labels_have_an_ambiguous_band() -> None:
    labels, ambiguous = label_patches(np.array([0.0, 0.1, 0.5, 0.9]), LabelConfig(0.5, 0.0))
    assert labels.tolist() == [0, 0, 1, 1] and ambiguous.tolist() == [False, True, False, False]
