"""Uncompressed patches written as whole HDF5 chunks, with the checksum HDF5's own filter would append."""

from __future__ import annotations

import struct

import h5py
import numpy as np

CHECKSUM_BYTES = 4  # HDF5's Fletcher-32 filter appends 4 bytes to each chunk


class ChunkRows:
    """A batch buffer laid out as the chunks it becomes: each row holds one patch's bytes, then room for its
    checksum, so `write_chunks` writes the rows where they are. `patches` is the (batch, size, size, 3) view that
    patches are cut or copied into; each of its patches is C-contiguous (issue 17: two copies of every patch fewer
    than filling a batch, then copying each patch next to its checksum)."""

    def __init__(self, batch: int, size: int) -> None:
        self.rows = np.empty((batch, size * size * 3 + CHECKSUM_BYTES), np.uint8)
        self.patches = self.rows[:, :-CHECKSUM_BYTES].reshape(batch, size, size, 3)

    def holds(self, patches: np.ndarray) -> bool:
        """Whether `patches` is this buffer's leading rows (`self.patches[:k]`)."""
        return (patches.dtype == np.uint8 and patches.shape[1:] == self.patches.shape[1:]
                and patches.strides == self.patches.strides and len(patches) <= len(self.rows)
                and patches.__array_interface__["data"][0] == self.rows.__array_interface__["data"][0])


def write_chunks(dataset: h5py.Dataset, first: int, patches: np.ndarray, checksum: bool,
                 rows: ChunkRows | None = None) -> None:
    """Uncompressed patches as whole chunks, one per patch, with the Fletcher-32 that HDF5's filter appends.

    HDF5's own path (`dataset[a:b] = patches`) runs each chunk through its filter pipeline: buffer copies and a
    Fletcher-32 that took 0.3-0.5 ms CPU per 224 px patch, more than decoding it (issue 17). imagecodecs computes
    the same checksum (HDF5's H5_checksum_fletcher32) in 0.07 ms, stored little-endian after the data as the filter
    does; every read through h5py verifies it (tests/layer1/test_chunks.py). `patches` that are the leading rows of
    `rows` are written in place; others are copied into a chunk first.
    """
    import imagecodecs  # lazy: heavy, and only the writers of uncompressed stores need it

    fletcher32 = getattr(imagecodecs, "h5checksum_fletcher32", None)
    if checksum and fletcher32 is None:  # an imagecodecs without HDF5's checksums: HDF5's own filter computes it
        dataset[first:first + len(patches)] = patches
        return
    size = patches[0].nbytes
    in_place = rows.rows if rows is not None and rows.holds(patches) else None
    spare = np.empty(size + CHECKSUM_BYTES, np.uint8)
    for i, patch in enumerate(patches):
        if in_place is not None:
            chunk = in_place[i]
        else:
            chunk = spare
            chunk[:size] = patch.reshape(-1)
        if checksum and fletcher32 is not None:
            chunk[size:] = np.frombuffer(struct.pack("<I", fletcher32(chunk[:size])), np.uint8)
            dataset.id.write_direct_chunk((first + i, 0, 0, 0), chunk)
        else:
            dataset.id.write_direct_chunk((first + i, 0, 0, 0), chunk[:size])
