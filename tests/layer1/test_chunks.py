"""`layer1_patches/chunks.py`: chunks written directly hold exactly what HDF5's own filtered write holds, and HDF5
verifies their checksum on every read."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from layer1_patches.chunks import ChunkRows, write_chunks


def _chunked(f: h5py.File, name: str, n: int, checksum: bool) -> h5py.Dataset:
    """A patch dataset laid out as the writer's uncompressed one: a chunk per patch, Fletcher-32 when asked."""
    return f.create_dataset(name, shape=(n, 24, 24, 3), maxshape=(None, 24, 24, 3), dtype=np.uint8,
                            chunks=(1, 24, 24, 3), fletcher32=checksum)


def _patches(n: int) -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (n, 24, 24, 3), dtype=np.uint8)


@pytest.mark.parametrize("checksum", [True, False], ids=["fletcher32", "plain"])
def test_write_chunks_stores_the_bytes_hdf5s_own_filtered_write_stores(tmp_path: Path, checksum: bool) -> None:
    """HDF5 is the truth: the chunks written directly equal, byte for byte, what `dataset[a:b] = patches` writes
    through HDF5's filter pipeline, and h5py reads them back (verifying the Fletcher-32 when there is one)."""
    patches, path = _patches(7), tmp_path / "chunks.h5"
    with h5py.File(path, "w") as f:
        ours, theirs = _chunked(f, "ours", 7, checksum), _chunked(f, "theirs", 7, checksum)
        write_chunks(ours, 0, patches[:3], checksum)
        write_chunks(ours, 3, patches[3:], checksum)  # appended after the first batch, as the writer does
        theirs[0:7] = patches
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["ours"][()], patches)
        for i in range(7):
            mask, raw = f["ours"].id.read_direct_chunk((i, 0, 0, 0))
            assert (mask, raw) == f["theirs"].id.read_direct_chunk((i, 0, 0, 0)), f"chunk {i}"
            assert len(raw) == patches[i].nbytes + 4 * checksum


@pytest.mark.parametrize("checksum", [True, False], ids=["fletcher32", "plain"])
def test_a_flipped_byte_in_a_directly_written_chunk_fails_hdf5s_checksum(tmp_path: Path, checksum: bool) -> None:
    """With the checksum HDF5's Fletcher-32 filter fails the read; without it (the control) the flip reads back."""
    patches, path = _patches(4), tmp_path / "chunks.h5"
    with h5py.File(path, "w") as f:
        write_chunks(_chunked(f, "patches", 4, checksum), 0, patches, checksum)
    with h5py.File(path, "r") as f:
        info = f["patches"].id.get_chunk_info_by_coord((2, 0, 0, 0))
    with path.open("r+b") as fh:
        fh.seek(info.byte_offset + 1000)
        byte = fh.read(1)[0]
        fh.seek(info.byte_offset + 1000)
        fh.write(bytes([byte ^ 0x10]))
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["patches"][[0, 1, 3]], patches[[0, 1, 3]])
        if not checksum:
            flipped = patches[2].copy()
            flipped.reshape(-1)[1000] ^= 0x10
            np.testing.assert_array_equal(f["patches"][2], flipped)
            return
        with pytest.raises(OSError, match="filter returned failure during read"):  # HDF5's Fletcher-32 filter
            f["patches"][2]


@pytest.mark.parametrize("checksum", [True, False], ids=["fletcher32", "plain"])
def test_patches_in_a_chunk_rows_buffer_are_written_in_place_as_hdf5_writes_them(tmp_path: Path,
                                                                                 checksum: bool) -> None:
    """A `ChunkRows` buffer is filled twice (3 patches, then 2: a partly filled batch, with stale rows behind it),
    written from where the patches lie; the chunks equal HDF5's own filtered write byte for byte. A slice that does
    not start at the first row is not the buffer's and goes through the copying path, with the same result."""
    patches, path = _patches(7), tmp_path / "rows.h5"
    rows = ChunkRows(4, 24)
    with h5py.File(path, "w") as f:
        ours, theirs = _chunked(f, "ours", 7, checksum), _chunked(f, "theirs", 7, checksum)
        rows.patches[:3] = patches[:3]
        assert rows.holds(rows.patches[:3]) and rows.patches[0].flags.c_contiguous
        write_chunks(ours, 0, rows.patches[:3], checksum, rows)
        rows.patches[:2] = patches[3:5]
        write_chunks(ours, 3, rows.patches[:2], checksum, rows)
        rows.patches[1:3] = patches[5:7]
        assert not rows.holds(rows.patches[1:3]) and not rows.holds(patches[5:7])
        write_chunks(ours, 5, rows.patches[1:3], checksum, rows)
        theirs[0:7] = patches
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["ours"][()], patches)
        for i in range(7):
            assert f["ours"].id.read_direct_chunk((i, 0, 0, 0)) == f["theirs"].id.read_direct_chunk((i, 0, 0, 0))
