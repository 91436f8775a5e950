from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from layer1_patches.shared.errors import CamnetError
from layer1_patches.store import CODECS, PatchStore, PatchWriter, SlideMeta, is_complete, partial_path


def _write(path: Path, codec: str, n: int = 10, finish: bool = True) -> np.ndarray:
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 255, size=(n, 32, 32, 3), dtype=np.uint8)
    patches[:, :16] = 120  # some smooth content so JPEG error is meaningful
    with PatchWriter(path, 32, codec) as w:
        w.append(patches[:4], np.arange(8).reshape(4, 2), np.array([1, 0, 1, 0]), np.ones(4), np.ones(4))
        w.append(patches[4:], np.arange(8, 2 * n).reshape(-1, 2), np.zeros(n - 4), np.zeros(n - 4), np.ones(n - 4))
        if finish:
            w.finish(SlideMeta("s", "/x/s.svs", patient="7"), {"patch_size": 32, "patch_level": 0, "downsample": 1.0},
                     {"rejects": {"white": 2}}, {"tissue": np.ones((4, 4), np.uint8)})
    return patches


@pytest.mark.parametrize("codec", [c for c in CODECS if c != "jpeg"])
def test_lossless_roundtrip(tmp_path: Path, codec: str) -> None:
    path = tmp_path / "s.h5"
    patches = _write(path, codec)
    with PatchStore(path) as store:
        assert len(store) == 10 and store.codec == codec
        np.testing.assert_array_equal(store.read(np.arange(10)), patches)
        np.testing.assert_array_equal(store.read([7, 2, 7]), patches[[7, 2, 7]])
        assert store.labels.tolist() == [1, 0, 1, 0] + [0] * 6
        assert store.attrs["patient"] == "7" and store.attrs["rejects"] == {"white": 2}
        assert store.coords_attrs == {"patch_size": 32, "patch_level": 0, "downsample": 1.0}
        assert store.mask("tissue").shape == (4, 4)


def test_schema_is_readable_without_this_package(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    _write(path, "gzip")
    with h5py.File(path, "r") as f:
        assert f["patches"].shape == (10, 32, 32, 3) and f["patches"].chunks == (1, 32, 32, 3)
        assert f["coords"].dtype == np.int64 and f["labels"].shape == (10,)
        assert set(f) >= {"patches", "coords", "labels", "tumour_fraction", "tissue_fraction", "masks"}
        assert f.attrs["complete"] and f.attrs["schema_version"] == 1


def test_jpeg_codec_decodes_close_to_original(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    patches = _write(path, "jpeg")
    with PatchStore(path) as store:
        got = store.read([0, 5])
    assert got.shape == (2, 32, 32, 3)
    assert np.abs(got[:, :16].astype(int) - patches[[0, 5], :16]).mean() < 3


def test_jpeg_batch_of_identical_patches(tmp_path: Path) -> None:
    """Equal-length encodings in one batch must still be stored one per row (not as a 2-D array)."""
    path = tmp_path / "s.h5"
    patches = np.full((5, 32, 32, 3), 200, np.uint8)
    with PatchWriter(path, 32, "jpeg") as w:
        w.append(patches, np.zeros((5, 2), np.int64), np.zeros(5), np.zeros(5), np.ones(5))
        w.finish(SlideMeta("s", "/x/s.svs"), {"patch_size": 32}, {}, {})
    with PatchStore(path) as store:
        assert len(store) == 5
        assert np.abs(store.read(np.arange(5)).astype(int) - 200).max() <= 2


def test_unfinished_writer_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    _write(path, "lz4", finish=False)
    assert not path.exists() and not partial_path(path).exists()


def test_partial_file_is_never_complete(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:  # what a killed writer's file looks like, renamed by hand
        f.create_dataset("patches", data=np.zeros((1, 2, 2, 3), np.uint8))
    assert not is_complete(path)
    with pytest.raises(CamnetError, match="incomplete"):
        PatchStore(path)
    (tmp_path / "junk.h5").write_text("not hdf5")
    assert not is_complete(tmp_path / "junk.h5")
    with pytest.raises(CamnetError, match="not a readable HDF5 file"):
        PatchStore(tmp_path / "junk.h5")


def test_out_of_range_index(tmp_path: Path) -> None:
    path = tmp_path / "s.h5"
    _write(path, "none")
    with PatchStore(path) as store, pytest.raises(CamnetError, match="index out of range"):
        store.read([10])


@pytest.mark.parametrize("codec", ["none", "lz4", "jpeg"])
def test_read_any_index_pattern_equals_row_by_row(tmp_path: Path, codec: str) -> None:
    path = tmp_path / "s.h5"
    _write(path, codec, n=40)
    rng = np.random.default_rng(1)
    with PatchStore(path) as store:
        rows = np.stack([store.read([i])[0] for i in range(40)])
        for idx in (np.arange(5, 30), rng.permutation(40)[:17], np.array([3, 3, 9, 2, 9]), np.arange(0, 40, 3)):
            np.testing.assert_array_equal(store.read(idx), rows[idx])


def test_writer_drops_written_patches_from_page_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from layer1_patches import store as store_mod

    calls: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        calls.append((offset, advice))
        real(fd, offset, length, advice)  # the real advice, so a dropped page cache must not corrupt the file

    monkeypatch.setattr(store_mod, "DROP_CACHE_BYTES", 3 * 32 * 32 * 3)  # every 3 patches
    monkeypatch.setattr(os, "posix_fadvise", record)
    patches = _write(tmp_path / "s.h5", "none")  # appends 4, then 6 patches

    assert calls == [(0, os.POSIX_FADV_DONTNEED)] * 2
    with PatchStore(tmp_path / "s.h5") as store:
        np.testing.assert_array_equal(store.read(np.arange(10)), patches)


def test_writer_without_page_cache_advice_still_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from layer1_patches import store as store_mod

    def refuse(_fd: int, _offset: int, _length: int, _advice: int) -> None:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(store_mod, "DROP_CACHE_BYTES", 1)
    monkeypatch.setattr(os, "posix_fadvise", refuse)
    patches = _write(tmp_path / "s.h5", "none")
    with PatchStore(tmp_path / "s.h5") as store:
        np.testing.assert_array_equal(store.read(np.arange(10)), patches)
