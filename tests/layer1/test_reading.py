"""`layer1_patches/reading.py`: the tile source gives OpenSlide's pixels, so whole stores equal OpenSlide's.

The truth is OpenSlide itself: every store written with `reader.backend: auto` (tiles where the slide allows) is
compared dataset by dataset with the store `reader.backend: openslide` writes from the same slide and config.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import tifffile

from layer1_patches import reading
from layer1_patches.extract import ExtractRequest, extract_slide
from layer1_patches.reading import OpenSlideSource, PatchReader, TileSource, open_source
from layer1_patches.slide import Slide, WorkingResolution
from layer1_patches.store import PatchStore

from .conftest import CMU, make_config

# store attributes that differ between the two runs: the reader used and the wall time (the config differs only
# in `reader.backend`: compared without it)
RUN_ATTRS = {"reader", "seconds", "config"}


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2048 px generic TIFF pyramid (levels 2048, 1024) with 240 px tiles: partial tiles at every right and
    bottom edge. (slide, annotation)"""
    from layer1_patches.synth import SynthSpec, write_synthetic_slide

    folder = tmp_path_factory.mktemp("reading")
    tif, xml = folder / "patient_001_node_0.tif", folder / "patient_001_node_0.xml"
    write_synthetic_slide(tif, xml, SynthSpec(size=2048, seed=11, tumour_fraction=0.3, tile=240))
    return tif, xml


def _datasets(f: h5py.File) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def _same_attrs(ours: h5py.AttributeManager, theirs: h5py.AttributeManager, where: str) -> None:
    assert ours.keys() == theirs.keys(), where
    for key in set(theirs) - RUN_ATTRS:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"{where} attribute {key}")


def _extract_both(tmp_path: Path, slide: Path, annotation: Path | None, shard: tuple[int, int] | None = None,
                  **sections: Any) -> tuple[Path, Path]:
    """The stores of both backends, after checking each records its reader and that they hold the same data."""
    outputs = []
    for backend in ("auto", "openslide"):
        cfg = make_config(**{**sections, "reader": {**sections.get("reader", {}), "backend": backend}})
        result = extract_slide(ExtractRequest(slide, tmp_path / backend, cfg, annotation, shard=shard))
        assert result.status != "skipped"
        outputs.append(Path(result.output))
    tiles, osl = outputs
    with h5py.File(tiles, "r") as a, h5py.File(osl, "r") as b:
        assert a.attrs["reader"] == "tiles" and b.attrs["reader"] == "openslide"
        ours, theirs = _datasets(a), _datasets(b)
        assert sorted(ours) == sorted(theirs) and "patches" in ours
        assert len(ours["patches"]) > 20, "too few patches to compare"
        for name in theirs:
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
        for name in [*theirs, ""]:
            _same_attrs(a[name or "/"].attrs, b[name or "/"].attrs, name or "/")
        configs = [json.loads(f.attrs["config"]) for f in (a, b)]
        assert [c["reader"].pop("backend") for c in configs] == ["auto", "openslide"]
        assert configs[0] == configs[1]
    return tiles, osl


@pytest.mark.parametrize(("sections", "level", "downsample"), [
    pytest.param({"patch_size": 64, "sampling": {"mode": "dense"}}, 0, 1.0, id="dense-level0"),
    pytest.param({"patch_size": 48, "resolution": {"level": 1}, "sampling": {"mode": "dense"}}, 1, 2.0,
                 id="dense-level1"),
    # level 1 (1 um/px) resized by 1.5 to 1.5 um/px: 72 level-1 px per 48 px patch
    pytest.param({"patch_size": 48, "resolution": {"mpp": 1.5}, "sampling": {"mode": "dense"},
                  "reader": {"threads": 1}}, 1, 3.0, id="dense-mpp-resized"),
])
def test_synthetic_generic_tiff_stores_equal_openslide_stores(tmp_path: Path, synth: tuple[Path, Path],
                                                              sections: dict[str, Any], level: int,
                                                              downsample: float) -> None:
    tiles, _ = _extract_both(tmp_path, *synth, **sections)
    with h5py.File(tiles, "r") as f:  # read at the level meant, resized or not
        assert f.attrs["level"] == level and f.attrs["downsample"] == downsample


def test_dense_shard_store_equals_openslide(tmp_path: Path, synth: tuple[Path, Path]) -> None:
    _extract_both(tmp_path, *synth, shard=(1, 3), patch_size=64, sampling={"mode": "dense"})


def test_random_quota_stops_the_tile_stream_cleanly_and_equals_openslide(
        tmp_path: Path, synth: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A quota reached stops reading mid-stream: the tile generator must be closed (threads joined, file closed)."""
    streams: list[weakref.ref[Generator[Any, None, None]]] = []
    real = TileSource.patches

    def spy(self: TileSource, coords: np.ndarray, threads: int, ahead: int, slot: Any = None) -> Iterator[Any]:
        gen = real(self, coords, threads, ahead, slot)
        assert isinstance(gen, Generator)
        streams.append(weakref.ref(gen))  # a strong reference would keep it open
        return gen

    monkeypatch.setattr(TileSource, "patches", spy)
    fds, threads = len(os.listdir("/proc/self/fd")), threading.active_count()
    tiles, _ = _extract_both(tmp_path, *synth, patch_size=32,
                             sampling={"random": {"per_class": 15, "grid_step": 16}}, reader={"batch_size": 4})
    with PatchStore(tiles) as store:
        assert store.attrs["counts"] == {"tumour": 15, "normal": 15}  # both streams stopped at their quota
    assert len(streams) == 2
    assert all(ref() is None for ref in streams)  # finalised (closed) when the extraction let go of them
    assert threading.active_count() == threads  # the decoding threads are gone
    assert len(os.listdir("/proc/self/fd")) == fds  # each stream closed its slide file


def test_aperio_svs_store_equals_openslide(tmp_path: Path, cmu_xml: Path) -> None:
    _extract_both(tmp_path, CMU, cmu_xml, patch_size=64, sampling={"mode": "dense"})


def _lzw_copy(src: Path, dst: Path) -> None:
    """The same pixels as a generic TIFF pyramid of LZW tiles, which OpenSlide reads and the tile reader does not."""
    with tifffile.TiffFile(src) as tif:
        levels = [page.asarray() for page in tif.pages]
    with tifffile.TiffWriter(dst) as out:
        for i, pixels in enumerate(levels):
            out.write(pixels, tile=(256, 256), photometric="rgb", compression="lzw", metadata=None,
                      subfiletype=1 if i else 0)


def test_a_slide_the_tile_reader_does_not_serve_is_read_by_openslide(tmp_path: Path,
                                                                      synth: tuple[Path, Path]) -> None:
    slide = tmp_path / "patient_002_node_0.tif"
    _lzw_copy(synth[0], slide)
    cfg = make_config(patch_size=64, resolution={"level": 0, "assume_mpp": 0.5}, sampling={"mode": "dense"})
    result = extract_slide(ExtractRequest(slide, tmp_path / "out", cfg, synth[1]))
    with h5py.File(result.output, "r") as f:
        assert f.attrs["reader"] == "openslide" and len(f["patches"]) > 100
        with Slide(slide, assume_mpp=0.5) as s:
            assert s.vendor == "generic-tiff"  # a vendor the tile reader could take, were the tiles JPEG
            i = len(f["coords"]) // 2
            x, y = (int(v) for v in f["coords"][i])
            np.testing.assert_array_equal(f["patches"][i], s.read_rgb(x, y, 0, 64, 64))


# a level 1 with a fractional downsample (4.224 x 4.094, OpenSlide averages them): most level positions fall
# between level pixels, where the tile source hands the patch to OpenSlide
LEVEL0, LEVEL1 = (2112, 1433), (500, 350)


@pytest.fixture(scope="module")
def fractional(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fractional") / "slide.tif"
    jpeg: dict[str, Any] = {"tile": (128, 128), "photometric": "rgb", "compression": "jpeg",
                            "compressionargs": {"level": 90}, "metadata": None}
    noise = np.random.default_rng(17).integers(0, 256, (LEVEL1[1], LEVEL1[0], 3), dtype=np.uint8)
    with tifffile.TiffWriter(path) as tif:
        tif.write(np.full((LEVEL0[1], LEVEL0[0], 3), 200, np.uint8), **jpeg)
        tif.write(noise, subfiletype=1, **jpeg)
    return path


def test_tile_source_at_a_fractional_level_gives_openslide_pixels(fractional: Path) -> None:
    with Slide(fractional) as slide:
        ds = slide.level_downsamples[1]
        assert ds != round(ds)
        res = WorkingResolution(1, ds, ds, 0.5 * ds, 20 / ds)
        tiles = open_source(slide, res, 32, [])
        assert isinstance(tiles, TileSource)
        truth = OpenSlideSource(PatchReader(slide, res, 32, []))
        # the level-0 x and y whose level position x / ds is (nearly) a whole pixel, on either side of it, and
        # a grid across the whole level and past its right and bottom edges
        xs, ys = (sorted({v for v in range(-5, end) if abs(v / ds - round(v / ds)) < 1 / 600} | set(range(-5, end, 59)))
                  for end in (2150, 1500))
        coords = np.array([[x, y] for y in ys for x in xs], np.int64)
        exact = reading.level_pixels(coords, ds)[1]
        assert 40 < exact.sum() < len(coords) - 40  # both paths are taken, many times
        ours = list(tiles.patches(coords, 2, 64))
        theirs = list(truth.patches(coords, 2, 64))
    assert len(ours) == len(theirs) == len(coords)
    for (x, y), (a, _), (b, _) in zip(coords, ours, theirs, strict=True):
        assert np.array_equal(a, b), f"patch at level-0 ({x}, {y}): max difference {np.abs(a - b.astype(int)).max()}"


def test_layer3_predictions_over_the_tile_source_equal_openslide_bit_for_bit(synth: tuple[Path, Path]) -> None:
    from layer3_inference.config import ReaderConfig
    from layer3_inference.infer import predict

    weights = np.random.default_rng(3).standard_normal((32, 32, 3)).astype(np.float32)

    def model_fn(batch: np.ndarray) -> np.ndarray:  # sensitive to every pixel of every patch
        return (batch.astype(np.float32) * weights).sum(axis=(1, 2, 3)) / 1e4

    coords = np.array([[x, y] for y in range(0, 2048, 50) for x in range(0, 2048, 45)], np.int64)
    with Slide(synth[0]) as slide:
        res = WorkingResolution(0, 1.0, 1.0, 0.5, 20.0)
        source = open_source(slide, res, 32, [])
        assert isinstance(source, TileSource)
        rc = ReaderConfig(2, 16, prefetch=2)
        ours = predict(model_fn, source, coords, rc, {})
        theirs = predict(model_fn, OpenSlideSource(PatchReader(slide, res, 32, [])), coords, rc, {})
    assert ours.dtype == theirs.dtype == np.float32
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("path", ["synth", "cmu", "fractional"])
def test_backend_openslide_always_gives_openslide(path: str, request: pytest.FixtureRequest) -> None:
    slide_path = {"synth": lambda: request.getfixturevalue("synth")[0], "cmu": lambda: CMU,
                  "fractional": lambda: request.getfixturevalue("fractional")}[path]()
    with Slide(slide_path, tiles=False) as slide:  # what extract opens for reader.backend: openslide
        for level in range(slide.level_count):
            ds = slide.level_downsamples[level]
            res = WorkingResolution(level, ds, ds, 0.5 * ds, 20 / ds)
            assert isinstance(open_source(slide, res, 32, []), OpenSlideSource)
            assert open_source(slide, res, 32, []).name == "openslide"
    with Slide(slide_path) as slide:
        assert isinstance(open_source(slide, WorkingResolution(0, 1, 1, 0.5, 20), 32, []), TileSource)


def test_a_damaged_tile_is_one_error_naming_slide_and_tile(tmp_path: Path, synth: tuple[Path, Path]) -> None:
    """Regression: an undecodable tile raised imagecodecs' own exception (a traceback, not an `error:` line).
    OpenSlide cannot read that tile either (the truth), so the tile path must fail too, naming where."""
    from layer1_patches.shared.errors import CamnetError

    slide = tmp_path / synth[0].name
    slide.write_bytes(synth[0].read_bytes())
    with tifffile.TiffFile(slide) as tif:
        page = tif.pages[0]
        assert isinstance(page, tifffile.TiffPage)
        across = -(-page.imagewidth // page.tilewidth)
        t = 4 * across + 4  # a tile in the middle of the slide, under tissue
        offset, count = page.dataoffsets[t], page.databytecounts[t]
    with open(slide, "r+b") as fh:  # the tile's bytes zeroed: no JPEG markers left
        fh.seek(offset)
        fh.write(bytes(count))
    with Slide(slide) as s, pytest.raises(CamnetError, match="cannot read region"):
        s.read_rgb(4 * 240, 4 * 240, 0, 240, 240)
    cfg = make_config(patch_size=240, sampling={"mode": "dense"}, filters={"min_tissue_fraction": 0.0})
    with pytest.raises(CamnetError, match=rf"slide {slide}: cannot decode the JPEG tile at column 4, row 4 of level 0"):
        extract_slide(ExtractRequest(slide, tmp_path / "out", cfg, None))
    assert not list((tmp_path / "out").glob("*.h5"))


def _damage_tile(path: Path, how: str) -> tuple[int, int]:
    """Damage tile (1, 1) of a 512 px noise TIFF the way disks and copies do; returns its level-0 (x, y)."""
    img = np.random.default_rng(4).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    tifffile.imwrite(path, img, tile=(256, 256), photometric="rgb", compression="jpeg", metadata=None)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert isinstance(page, tifffile.TiffPage)
        offset, count = page.dataoffsets[3], page.databytecounts[3]
        counts = page.tags["TileByteCounts"]
        where, size = counts.valueoffset + 3 * 4, 4
    with open(path, "r+b") as fh:
        if how == "overwritten":  # a run of bytes that are markers inside the scan (a bad block, a stray write)
            fh.seek(offset + count // 2)
            fh.write(bytes([0xFF, 0xD3]) * 8)
        else:  # cut short: the tile's byte count halved, as a truncated copy leaves the last tile
            fh.seek(where)
            fh.write((count // 2).to_bytes(size, "little"))
    return 300, 300


@pytest.mark.parametrize("how", ["overwritten", "truncated"])
def test_a_damaged_tile_that_libjpeg_only_warns_about_is_an_error_as_in_openslide(tmp_path: Path, how: str) -> None:
    """Regression (issue 17 review): imagecodecs decodes on through libjpeg's warnings and fills the rest of the
    tile with grey, while OpenSlide makes every warning an error: the tile path returned grey patches silently."""
    from layer1_patches.shared.errors import CamnetError

    path = tmp_path / f"{how}.tif"
    x, y = _damage_tile(path, how)
    with Slide(path, assume_mpp=0.5) as slide:
        with pytest.raises(CamnetError, match="cannot read region"):  # the truth: OpenSlide refuses the tile
            slide.read_rgb(x, y, 0, 64, 64)
        source = open_source(slide, WorkingResolution(0, 1.0, 1.0, 0.5, 20.0), 64, [])
        assert isinstance(source, TileSource)
        with pytest.raises(CamnetError, match=rf"slide {path}: cannot decode the JPEG tile at column 1, row 1"):
            list(source.patches(np.array([[x, y]]), 1, 4))


def test_a_merged_store_records_its_reader(tmp_path: Path, synth: tuple[Path, Path]) -> None:
    """Regression (issue 17 review): `merge` carried every run attribute but `reader`."""
    from layer1_patches.merge import merge_shards

    cfg = make_config(patch_size=64, sampling={"mode": "dense"})
    for i in range(2):
        extract_slide(ExtractRequest(synth[0], tmp_path, cfg, None, shard=(i, 2)))
    merged = merge_shards(tmp_path, synth[0], 2)
    with PatchStore(merged) as store:
        assert store.attrs["reader"] == "tiles"


def test_the_tile_window_keeps_held_tiles_within_the_budget() -> None:
    """Regression (issue 17 review): a fixed 512-patch window held ~2 rows of 1024 px tiles across it (~670 MB)."""
    from layer1_patches.reading import TILE_BUDGET_BYTES, TILE_WINDOW, tile_window

    assert tile_window(224, 256, 256) == TILE_WINDOW  # the usual tiles: a dense row of a 100,000 px slide
    for patch, tile in ((224, 1024), (224, 2048), (1024, 256), (4096, 512)):
        window = tile_window(patch, tile, tile)
        assert 1 <= window < TILE_WINDOW
        assert 2 * window * max(patch, tile) * tile * 3 <= TILE_BUDGET_BYTES  # two tile rows across the window


def test_reading_threads_lower_the_gil_switch_interval_only_while_they_run() -> None:
    """Issue 17: at CPython's default 5 ms switch interval, reader threads waited for the consumer's GIL; the
    interval is lowered while an `ordered_map` with threads runs and is back when it ends or stops early."""
    import sys

    from layer1_patches.reading import SWITCH_INTERVAL, ordered_map

    before = sys.getswitchinterval()
    assert before > SWITCH_INTERVAL
    seen: list[float] = []
    assert list(ordered_map(lambda i: seen.append(sys.getswitchinterval()) or i, range(50), 2, 8)) == list(range(50))
    assert set(seen) == {SWITCH_INTERVAL} and sys.getswitchinterval() == before
    stream = ordered_map(lambda i: i, range(50), 2, 8)
    assert next(stream) == 0 and sys.getswitchinterval() == SWITCH_INTERVAL
    stream.close()  # a quota reached: the consumer stops early
    assert sys.getswitchinterval() == before
    assert list(ordered_map(lambda _: sys.getswitchinterval(), range(3), 1, 8)) == [before] * 3  # no threads
    # overlapping streams (review): A starts, B starts, A ends while B runs, then B ends
    a, b = ordered_map(lambda i: i, range(50), 2, 8), ordered_map(lambda i: i, range(50), 2, 8)
    next(a), next(b)
    a.close()
    assert sys.getswitchinterval() == SWITCH_INTERVAL  # B still runs
    b.close()
    assert sys.getswitchinterval() == before


def test_an_uncompressed_tile_extraction_cuts_and_writes_every_patch_in_place(
        tmp_path: Path, synth: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17 review: the copies the in-place path saves must actually be saved. Every patch the tile source cuts
    goes into a row of the writer's `ChunkRows` buffer, and every batch is written from those rows; the store still
    equals OpenSlide's (`_extract_both` and the other tests here)."""
    from layer1_patches import chunks, store

    cuts: list[bool] = []
    writes: list[bool] = []
    real_cut, real_write = reading.cut_into, store.write_chunks

    def cut(*args: Any) -> np.ndarray:
        out = args[-1]
        cuts.append(out.base is not None and out.base.shape[0] > 1)  # a row of a batch, not a patch of its own
        return real_cut(*args)

    def write(dataset: Any, first: int, patches: np.ndarray, checksum: bool,
              rows: chunks.ChunkRows | None = None) -> None:
        writes.append(rows is not None and rows.holds(patches))
        real_write(dataset, first, patches, checksum, rows)

    monkeypatch.setattr(reading, "cut_into", cut)
    monkeypatch.setattr(store, "write_chunks", write)
    cfg = make_config(patch_size=64, sampling={"mode": "dense"}, output={"codec": "none"}, reader={"batch_size": 16})
    result = extract_slide(ExtractRequest(synth[0], tmp_path, cfg, None))
    assert sum(result.counts.values()) > 16 and cuts and writes  # several batches
    assert all(cuts) and all(writes)
