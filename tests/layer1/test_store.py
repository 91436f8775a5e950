from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from layer1_patches.shared.errors import CamnetError
from layer1_patches.store import CODECS, PatchStore, PatchWriter, SlideMeta, is_complete

BLACK_FILTER = {"filters": {"black": {"level": 30, "max_fraction": 0.5}}}  # the default config's, as stored


def _write(path: Path, codec: str, n: int = 10, finish: bool = True, config: object = BLACK_FILTER) -> np.ndarray:
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 255, size=(n, 32, 32, 3), dtype=np.uint8)
    patches[:, :16] = 120  # some smooth content so JPEG error is meaningful
    with PatchWriter(path, 32, codec) as w:
        w.append(patches[:4], np.arange(8).reshape(4, 2), np.array([1, 0, 1, 0]), np.ones(4), np.ones(4))
        w.append(patches[4:], np.arange(8, 2 * n).reshape(-1, 2), np.zeros(n - 4), np.zeros(n - 4), np.ones(n - 4))
        if finish:
            w.finish(SlideMeta("s", "/x/s.svs", patient="7"), {"patch_size": 32, "patch_level": 0, "downsample": 1.0},
                     {"rejects": {"white": 2}, "config": config}, {"tissue": np.ones((4, 4), np.uint8)})
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
    assert list(tmp_path.iterdir()) == []  # neither the store nor its partial file, whatever that is named


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
    import threading
    import time

    from layer1_patches import store as store_mod

    calls: list[tuple[int, int, bool]] = []
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        time.sleep(0.2)  # slow: a writer that closed the file without waiting would see the call unfinished
        real(fd, offset, length, advice)  # the real advice, so a dropped page cache must not corrupt the file
        calls.append((offset, advice, threading.current_thread() is threading.main_thread()))

    monkeypatch.setattr(store_mod, "DROP_CACHE_BYTES", 3 * 32 * 32 * 3)  # every 3 patches
    monkeypatch.setattr(os, "posix_fadvise", record)
    patches = _write(tmp_path / "s.h5", "none")  # appends 4, then 6 patches

    # each drop is one call, finished before the file closed, on a thread beside the writer's (issue 17)
    assert calls == [(0, os.POSIX_FADV_DONTNEED, False)] * 2
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


# Integrity (issue 13 item 5): damage to a finished store must fail its reader, naming the store.

LOSSLESS = [c for c in CODECS if c != "jpeg"]
SMALL = ("coords", "labels", "tumour_fraction", "tissue_fraction")


def _zero_chunk(path: Path, name: str, row: int, part: str = "whole") -> None:
    """Overwrite with zeros, in the file itself, the stored bytes of the chunk of dataset `name` that holds `row`:
    all of them (with the checksum at their end), or up to 256 in their middle (a damaged sector inside)."""
    with h5py.File(path, "r") as f:
        ds = f[name]
        info = ds.id.get_chunk_info_by_coord((row // ds.chunks[0] * ds.chunks[0],) + (0,) * (ds.ndim - 1))
    start, size = info.byte_offset, info.size
    if part == "middle":
        start, size = start + size // 2 - min(128, size // 8), min(256, size // 4)
    with path.open("r+b") as fh:
        fh.seek(start)
        fh.write(bytes(size))


def _damaged(path: Path, what: str) -> str:
    return f"patch store {path}: damaged data in 'patches' ({what}); re-extract this slide"


@pytest.mark.parametrize("part", ["whole", "middle"])
@pytest.mark.parametrize("codec", LOSSLESS)
def test_zeroed_patch_chunk_is_not_read_as_a_black_tumour_patch(tmp_path: Path, codec: str, part: str) -> None:
    """Regression (issue 13.5): a zeroed patch chunk read back as a black patch labelled tumour (codec none), or
    as wrong pixels (a damaged middle of an lz4 or lzf chunk), or failed with a bare OSError traceback."""
    path = tmp_path / "s.h5"
    patches = _write(path, codec)
    _zero_chunk(path, "patches", 0, part)
    # A chunk zeroed with its checksum passes Fletcher-32 (zeros sum to 0): a codec then fails to decompress it,
    # and a raw one is caught as a black patch, which this store's black filter never keeps.
    why = {"none": "checksum mismatch"}.get(codec, "checksum mismatch or undecodable chunk")
    if part == "whole" and codec == "none":
        why = "row 0 is all zeros, which this store's black filter never keeps: a zeroed chunk"
    with PatchStore(path) as store:
        assert store.labels[0] == 1  # the damaged patch is a tumour patch
        np.testing.assert_array_equal(store.read([1, 2]), patches[1:3])  # the other chunks are intact
        for rows in ([0], np.arange(10)):
            with pytest.raises(CamnetError) as err:
                store.read(rows)
            assert str(err.value) == _damaged(path, why)


def test_black_patch_reads_where_the_black_filter_was_off(tmp_path: Path) -> None:
    """An all-zero patch is damage only where the store's own config rejected black patches."""
    path = tmp_path / "s.h5"
    _write(path, "none", config={"filters": {"black": None}})
    _zero_chunk(path, "patches", 0)
    with PatchStore(path) as store:
        assert not store.read([0]).any()


@pytest.mark.parametrize("name", SMALL)
def test_zeroed_coords_or_labels_chunk_fails_at_open(tmp_path: Path, name: str) -> None:
    """Regression (issue 13.5): zeroed labels read as 'all normal', zeroed coords as 'all at (0, 0)'. A zeroed
    chunk passes Fletcher-32 with its zeroed checksum, so these small datasets are gzip too: zeros are no zlib."""
    for part in ("middle", "whole"):
        path = tmp_path / f"{part}.h5"
        _write(path, "lz4", n=300)
        _zero_chunk(path, name, 0, part)
        with pytest.raises(CamnetError) as err:
            PatchStore(path)
        assert str(err.value) == (f"patch store {path}: damaged data in '{name}' (checksum mismatch or undecodable "
                                  "chunk); re-extract this slide")


def test_store_truncated_under_an_open_reader_fails_to_read(tmp_path: Path) -> None:
    """Regression (issue 13.5): reads past the end of a file truncated after it was opened returned zeros."""
    import os

    path = tmp_path / "s.h5"
    _write(path, "none")
    with PatchStore(path) as store:
        os.truncate(path, 4096)
        with pytest.raises(CamnetError, match=rf"^patch store {path}: damaged data in 'patches' \("):
            store.read([9])


def test_damaged_jpeg_row_table_is_an_error_line(tmp_path: Path) -> None:
    """Regression (issue 13.5): a zeroed row table of a jpeg store raised PIL's UnidentifiedImageError (a
    traceback). HDF5 puts no checksum on variable-length data; the JPEG bytes themselves stay unprotected."""
    path = tmp_path / "s.h5"
    _write(path, "jpeg")
    _zero_chunk(path, "patches", 0)
    with PatchStore(path) as store, pytest.raises(CamnetError) as err:
        store.read([3])
    assert str(err.value) == _damaged(path, "row 3 is not a readable JPEG")


def test_verify_reads_every_patch_chunk(tmp_path: Path) -> None:
    """Opening reads coords and labels whole but no patch; `verify` reads every chunk, so checks every checksum."""
    path = tmp_path / "s.h5"
    _write(path, "lz4", n=300)
    with PatchStore(path) as store:
        store.verify()
    _zero_chunk(path, "patches", 299, "middle")
    with PatchStore(path) as store, pytest.raises(CamnetError) as err:
        store.verify()
    assert str(err.value) == _damaged(path, "checksum mismatch or undecodable chunk")


@pytest.mark.parametrize("codec", CODECS)
def test_every_dataset_but_jpeg_patches_is_checksummed(tmp_path: Path, codec: str) -> None:
    path = tmp_path / "s.h5"
    _write(path, codec)
    with h5py.File(path, "r") as f:
        assert f["patches"].fletcher32 is (codec != "jpeg")  # HDF5 refuses filters on variable-length data
        assert all(f[name].fletcher32 and f[name].compression == "gzip" for name in SMALL)


@pytest.mark.parametrize("codec", CODECS)
def test_stores_written_before_checksums_stay_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       codec: str) -> None:
    """Forward compatibility: finished stores of earlier versions (no checksums) are not invalidated."""
    from layer1_patches import store as store_mod

    path, old = tmp_path / "new.h5", tmp_path / "old.h5"
    _write(path, codec)
    monkeypatch.setattr(store_mod, "CHECKSUMS", False)  # the writer as it was before checksums
    _write(old, codec)
    with h5py.File(old, "r") as f:
        assert not any(f[name].fletcher32 or f[name].compression for name in SMALL) and not f["patches"].fletcher32
    with PatchStore(path) as new, PatchStore(old) as store:
        store.verify()
        np.testing.assert_array_equal(store.read(np.arange(10)), new.read(np.arange(10)))
        np.testing.assert_array_equal(store.labels, new.labels)
        assert store.attrs == new.attrs and store.mask_names() == ["tissue"]


def _replace(path: Path, name: str, make: Callable[[h5py.File, str], object]) -> None:
    """Swap the store's `name` for what `make(file, name)` creates, keeping the dataset's attributes."""
    with h5py.File(path, "r+") as f:
        attrs = dict(f[name].attrs)
        del f[name]
        make(f, name)
        if isinstance(f.get(name, getlink=True), h5py.HardLink):
            f[name].attrs.update(attrs)


@pytest.mark.parametrize("name", ["patches", "coords", "labels", "masks", "masks/tissue"])
def test_external_link_in_a_store_is_refused(tmp_path: Path, name: str) -> None:
    """Regression (issue 13.5): a store whose dataset or mask group is an external link read another file's data
    as its own (a moved or deleted target reads as missing, an edited one as changed)."""
    other, path = tmp_path / "other.h5", tmp_path / "s.h5"
    _write(other, "none")
    _write(path, "none")

    def link(f: h5py.File, n: str) -> None:
        f[n] = h5py.ExternalLink(str(other), f"/{n}")

    _replace(path, name, link)
    with pytest.raises(CamnetError) as err:
        PatchStore(path)
    assert str(err.value) == f"patch store {path}: '{name}' is an external link; refused"


def test_soft_link_in_a_store_is_refused(tmp_path: Path) -> None:
    """A soft link may lead on to an external one; the writer makes none."""
    path = tmp_path / "s.h5"
    _write(path, "none")
    with h5py.File(path, "r+") as f:
        f.move("labels", "elsewhere")
        f["labels"] = h5py.SoftLink("/elsewhere")
    with pytest.raises(CamnetError) as err:
        PatchStore(path)
    assert str(err.value) == f"patch store {path}: 'labels' is a soft link; refused"


@pytest.mark.parametrize("name", ["patches", "labels", "masks/tissue"])
def test_virtual_dataset_in_a_store_is_refused(tmp_path: Path, name: str) -> None:
    """Regression (issue 13.5): a virtual dataset mapping another file was read as the store's own data."""
    other, path = tmp_path / "other.h5", tmp_path / "s.h5"
    _write(other, "none")
    _write(path, "none")
    with h5py.File(other, "r") as f:
        shape, dtype = f[name].shape, f[name].dtype

    def virtual(f: h5py.File, n: str) -> None:
        layout = h5py.VirtualLayout(shape, dtype)
        layout[...] = h5py.VirtualSource(str(other), n, shape)
        f.create_virtual_dataset(n, layout)

    _replace(path, name, virtual)
    with pytest.raises(CamnetError) as err:
        PatchStore(path)
    assert str(err.value) == f"patch store {path}: '{name}' is a virtual dataset; refused"


def test_dataset_in_an_external_raw_file_is_refused(tmp_path: Path) -> None:
    """Regression (issue 13.5): labels kept in a raw file beside the store (HDF5 external storage) were read."""
    path, raw = tmp_path / "s.h5", tmp_path / "labels.bin"
    _write(path, "none")
    raw.write_bytes(bytes([1] * 10))
    _replace(path, "labels", lambda f, n: f.create_dataset(n, (10,), np.uint8, external=[(str(raw), 0, 10)]))
    with pytest.raises(CamnetError) as err:
        PatchStore(path)
    assert str(err.value) == f"patch store {path}: 'labels' is stored in external files; refused"


@pytest.mark.parametrize(("change", "message"), [
    (lambda f: f.__delitem__("coords"), "'coords' is missing"),
    (lambda f: (f.__delitem__("masks/tissue"), f["masks"].create_group("tissue")), "'masks/tissue' is not a dataset"),
    (lambda f: f["patches"].attrs.__delitem__("codec"), "'patches' has no codec or patch_size attribute"),
], ids=["missing", "group", "no-codec"])
def test_foreign_layout_is_an_error_line(tmp_path: Path, change: Callable[[h5py.File], object], message: str) -> None:
    """Regression (issue 13.5): a store missing a dataset or attribute failed with a KeyError traceback."""
    path = tmp_path / "s.h5"
    _write(path, "none")
    with h5py.File(path, "r+") as f:
        change(f)
    with pytest.raises(CamnetError) as err:
        PatchStore(path)
    assert str(err.value) == f"patch store {path}: {message}; re-extract this slide"


def test_extracted_store_with_a_zeroed_patch_chunk_fails_to_read(tmp_path: Path, cmu_xml: Path) -> None:
    """Regression (issue 13.5), on a store the extraction writes (default codec none, default black filter): a
    patch chunk zeroed with its checksum read as a black patch."""
    from layer1_patches.extract import ExtractRequest, extract_slide

    from .conftest import CMU, make_config

    cfg = make_config(patch_size=64, sampling={"random": {"per_class": 5}})
    path = Path(extract_slide(ExtractRequest(CMU, tmp_path, cfg, cmu_xml)).output)
    _zero_chunk(path, "patches", 2)
    with PatchStore(path) as store, pytest.raises(CamnetError) as err:
        store.read(np.arange(len(store)))
    assert str(err.value) == _damaged(path, "row 2 is all zeros, which this store's black filter never keeps: a "
                                            "zeroed chunk")


@pytest.mark.parametrize("checksums", [True, False])
def test_uncompressed_store_round_trips_with_and_without_checksums(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  checksums: bool) -> None:
    from layer1_patches import store as store_module

    monkeypatch.setattr(store_module, "CHECKSUMS", checksums)
    path = tmp_path / "s.h5"
    patches = _write(path, "none")
    with h5py.File(path, "r") as f:
        assert f["patches"].fletcher32 == checksums and f["patches"].compression is None
        np.testing.assert_array_equal(f["patches"][()], patches)
    with PatchStore(path) as store:
        np.testing.assert_array_equal(store.read(np.arange(10)), patches)


def test_a_signal_while_waiting_for_the_page_cache_thread_still_removes_the_partial(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17 review: the writer waits for its page-cache thread before closing the file; a SIGTERM or a second
    Ctrl-C arriving during that wait skipped removing the half-written file."""
    from layer1_patches.pagecache import PageCacheDropper

    def interrupted(_self: PageCacheDropper) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(PageCacheDropper, "close", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path / "s.h5", "none", finish=False)
    assert list(tmp_path.iterdir()) == []
