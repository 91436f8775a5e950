"""The HDF5 patch store: the one file per WSI (and shard) that Layer 1 writes.

Layers 2 and 3 import this module; it is the schema's single definition.

Layout (schema version 1):
  /patches          (N, H, W, 3) uint8 RGB, one patch per chunk; or, with codec "jpeg",
                    (N,) variable-length JPEG bytes that `PatchStore.read` decodes
  /coords           (N, 2) int64 level-0 top-left x, y; attrs for CLAM, TRIDENT and WSInfer (`peers.py`):
                    patch_level, patch_size (pixels read at patch_level), custom_downsample,
                    level0_magnification, target_magnification, patch_size_level0; and downsample (working)
  /labels           (N,) uint8: 1 tumour, 0 normal
  /tumour_fraction  (N,) float32: exact tumour share of the patch's level-0 square (from the annotation polygons)
  /tissue_fraction  (N,) float32: tissue share of the patch's area (from the tissue mask)
  /masks/tissue, /masks/tumour   small uint8 thumbnails (255 = inside)
  file attrs        see `SlideMeta`, plus `complete` (the completion marker, set last),
                    `rejects` and `counts` (JSON), `config` (resolved config, JSON)

A file is finished only if it sits at its final name *and* carries `complete = True`:
writers fill `.<name>.<host>-<pid>.partial` (under the output's lock, `shared/locks.py`) and rename it when
done, so a killed run leaves at most a
`.partial` file that no reader accepts.

Integrity: every chunk of the per-patch datasets carries a Fletcher-32 checksum (stores written before, without,
stay readable); a chunk zeroed with its checksum passes it, so the small datasets are gzip too, and with codec none
an all-zero patch is refused where the store's black filter rejects them. `PatchStore` turns a failed read into one
error line and refuses external links, virtual datasets and external raw storage. Codec "jpeg" patches have no
checksum: HDF5 refuses filters on variable-length data, which would cover only the row table (each row's length
and heap address), never the JPEG bytes in HDF5's global heap; damaged JPEG bytes may decode unnoticed.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from layer1_patches import integrity
from layer1_patches.chunks import ChunkRows, write_chunks
from layer1_patches.pagecache import PageCacheDropper
from layer1_patches.shared import signals
from layer1_patches.shared.errors import CamnetError, os_reason
from layer1_patches.shared.locks import writer_partial
from layer1_patches.shared.typedconfig import bounded, required

SCHEMA_VERSION = 1
CODECS = ("lz4", "gzip", "lzf", "none", "jpeg")
GROW = 256  # rows added when a dataset fills up
WRITE_CACHE_BYTES = 64 * 1024
# Every DROP_CACHE_BYTES written the writer drops the file's pages from the page cache (pagecache.py says why and
# what bench/page_cache.py measured).
DROP_CACHE_BYTES = 64 * 1024 * 1024
JSON_ATTRS = ("rejects", "counts", "requested", "config", "extra")  # dicts stored as JSON text
# Fletcher-32 per chunk, which a chunk zeroed with its checksum passes (zeros sum to 0): the small datasets are
# gzip too, whose zlib header refuses zeros. A flag so that bench/layer1_extract.py can measure the cost.
CHECKSUMS = True
DATASETS = ("patches", "coords", "labels", "tumour_fraction", "tissue_fraction")  # one row per patch each


@dataclass(frozen=True)
class SlideMeta:
    """Per-file attributes; everything downstream needs to know where patches came from."""

    slide_name: str = required("slide file stem")
    slide_path: str = required("absolute path of the slide read")
    patient: str = bounded("", doc="patient id from the slide name (metadata.name_regex)")
    node: str = bounded("", doc="lymph node id from the slide name")
    centre: str = bounded("", doc="centre id from the slide name (Camelyon17: patient // 20)")
    vendor: str = bounded("", doc="OpenSlide's vendor of the slide")
    mpp: float = bounded(0.0, min=0, doc="level-0 micrometres per pixel (0: unknown)")
    working_mpp: float = bounded(0.0, min=0, doc="micrometres per pixel of the stored patches (0: unknown)")
    magnification: float = bounded(0.0, min=0, doc="objective power of the stored patches (0: unknown)")
    level: int = bounded(0, min=0, doc="slide level the patches were read from")
    downsample: float = bounded(1.0, min_exclusive=0, doc="working downsample relative to level 0")
    patch_size: int = bounded(0, min=0, doc="patch side in pixels at the working resolution")
    stride: int = bounded(0, min=0, doc="dense grid step in working pixels; 0 for random sampling")
    sampling_mode: str = bounded("", doc="random or dense")
    seed: int = bounded(0, doc="seed of random sampling (sampling.seed + array index)")
    shard: str = bounded("", doc="'i/K' for a dense shard, '' for a whole slide")
    package_version: str = bounded("", doc="CamNet version that wrote the store")
    config_hash: str = bounded("", doc="hash of the resolved Layer 1 config")
    extra: dict[str, str] = bounded({}, doc="free-form string attributes for other tools (CamNet writes none)")


def _require_lz4() -> Any:
    try:
        import hdf5plugin
    except ImportError:  # pragma: no cover - hdf5plugin is a declared dependency
        raise CamnetError("codec 'lz4' needs the hdf5plugin package (pip install hdf5plugin)") from None
    return hdf5plugin


def _compression(codec: str, gzip_level: int) -> dict[str, Any]:
    if codec == "lz4":
        return dict(_require_lz4().LZ4())
    if codec == "gzip":
        return {"compression": "gzip", "compression_opts": gzip_level}
    if codec == "lzf":
        return {"compression": "lzf"}
    return {}


def is_complete(path: Path) -> bool:
    """True only for a finished store at its final name; never raises."""
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return bool(f.attrs.get("complete", False))
    except (OSError, ValueError):
        return False


def discard_h5(f: h5py.File, path: Path) -> None:
    """Close and delete a half-written HDF5 file, whatever failed while writing it.

    Its space is freed first: on a full disk HDF5 cannot write its metadata when closing, and h5py then crashes
    (segfault) freeing the file's objects (h5py issues 914, 2160). The contents are garbage anyway.
    """
    try:
        if f.id.valid:
            with contextlib.suppress(OSError):
                os.truncate(path, 0)
            with contextlib.suppress(Exception):
                f.close()
    finally:
        Path(path).unlink(missing_ok=True)


class PatchWriter:
    """Appends patches to `.<name>.<host>-<pid>.partial`; `finish` marks complete and renames atomically.

    One process writes a file; leaving the `with` block without `finish` deletes the partial.
    """

    def __init__(self, final: Path, patch_size: int, codec: str = "lz4", gzip_level: int = 4,
                 jpeg_quality: int = 90) -> None:
        if codec not in CODECS:
            raise CamnetError(f"unknown codec {codec!r} (known: {', '.join(CODECS)})")
        self.final = Path(final)
        self.tmp = writer_partial(self.final)  # unique per writer: a second writer never renames this one's file
        self.codec = codec
        self.jpeg_quality = jpeg_quality
        self.n = 0
        self._bytes_since_drop = 0
        self._dropper = PageCacheDropper()
        self._rows: ChunkRows | None = None
        self.tmp.unlink(missing_ok=True)
        try:
            # A chunk cache smaller than one patch: patch chunks, written once and whole, then bypass it (a copy
            # less per patch), while the small coords/labels chunks, filled a batch at a time, stay cached.
            self._f = h5py.File(self.tmp, "w", rdcc_nbytes=WRITE_CACHE_BYTES)
        except OSError as err:
            raise CamnetError(f"output {self.final}: cannot write ({os_reason(err)})") from None
        except BaseException:  # a signal after the file was created, before it was ours to close
            self.tmp.unlink(missing_ok=True)
            raise
        try:
            self._create(patch_size, codec, gzip_level)
        except BaseException:  # a full disk or a signal between creating the file and its datasets
            self._discard()
            raise

    def _create(self, size: int, codec: str, gzip_level: int) -> None:
        small = {"fletcher32": True, "compression": "gzip", "compression_opts": 1} if CHECKSUMS else {}
        if codec == "jpeg":
            # No checksum: HDF5 refuses filters on variable-length data (see the module docstring).
            self._patches = self._f.create_dataset(
                "patches", shape=(0,), maxshape=(None,), dtype=h5py.vlen_dtype(np.uint8), chunks=(64,))
        else:
            self._patches = self._f.create_dataset(
                "patches", shape=(0, size, size, 3), maxshape=(None, size, size, 3), dtype=np.uint8,
                chunks=(1, size, size, 3), fletcher32=CHECKSUMS, **_compression(codec, gzip_level))
        self._patches.attrs["codec"] = codec
        self._patches.attrs["patch_size"] = size
        self._coords = self._f.create_dataset("coords", shape=(0, 2), maxshape=(None, 2), dtype=np.int64,
                                              chunks=(1024, 2), **small)
        self._labels = self._f.create_dataset("labels", shape=(0,), maxshape=(None,), dtype=np.uint8,
                                              chunks=(4096,), **small)
        self._tumour = self._f.create_dataset("tumour_fraction", shape=(0,), maxshape=(None,),
                                              dtype=np.float32, chunks=(4096,), **small)
        self._tissue = self._f.create_dataset("tissue_fraction", shape=(0,), maxshape=(None,),
                                              dtype=np.float32, chunks=(4096,), **small)

    def __enter__(self) -> PatchWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._discard()  # after finish() the file was renamed already; otherwise it is half-written

    def _discard(self) -> None:
        try:
            self._dropper.close()  # its advice uses the file's descriptor
        finally:  # a signal while waiting for it must still remove the partial file
            discard_h5(self._f, self.tmp)

    def buffer(self, batch: int) -> np.ndarray:
        """An empty (batch, size, size, 3) array for `append`, whose leading patches codec none writes in place."""
        size = int(self._patches.attrs["patch_size"])
        if self.codec != "none":  # compressed through h5py, which would copy a batch with gaps between its rows
            return np.empty((batch, size, size, 3), np.uint8)
        self._rows = ChunkRows(batch, size)
        return self._rows.patches

    def _encode(self, patch: np.ndarray) -> np.ndarray:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(patch).save(buf, format="JPEG", quality=self.jpeg_quality)
        return np.frombuffer(buf.getvalue(), dtype=np.uint8)

    def append(self, patches: np.ndarray, coords: np.ndarray, labels: np.ndarray,
               tumour_fraction: np.ndarray, tissue_fraction: np.ndarray) -> None:
        k = len(patches)
        if k == 0:
            return
        end = self.n + k
        for ds in (self._patches, self._coords, self._labels, self._tumour, self._tissue):
            if ds.shape[0] < end:
                ds.resize(max(end, ds.shape[0] + GROW), axis=0)
        if self.codec == "jpeg":
            for i, patch in enumerate(patches):  # row by row: h5py turns equal-length encodings into a 2-D array
                self._patches[self.n + i] = self._encode(patch)
        elif self.codec == "none":
            write_chunks(self._patches, self.n, patches, CHECKSUMS, self._rows)
        else:
            self._patches[self.n:end] = patches
        self._coords[self.n:end] = coords
        self._labels[self.n:end] = labels
        self._tumour[self.n:end] = tumour_fraction
        self._tissue[self.n:end] = tissue_fraction
        self.n = end
        signals.check()  # a SIGTERM whose exception h5py's cleanup swallowed stops the writer here
        self._bytes_since_drop += patches.nbytes
        if self._bytes_since_drop >= DROP_CACHE_BYTES:
            self._bytes_since_drop = 0
            self._drop_cache()

    def _drop_cache(self) -> None:
        self._dropper.drop(self._f.id.get_vfd_handle())

    def finish(self, meta: SlideMeta, coords_attrs: dict[str, Any], extra_attrs: dict[str, Any],
               masks: dict[str, np.ndarray]) -> Path:
        for ds in (self._patches, self._coords, self._labels, self._tumour, self._tissue):
            ds.resize(self.n, axis=0)
        for key, value in coords_attrs.items():
            self._coords.attrs[key] = value
        group = self._f.create_group("masks")
        for name, mask in masks.items():
            group.create_dataset(name, data=mask, compression="gzip")
        attrs = self._f.attrs
        attrs["schema_version"] = SCHEMA_VERSION
        for key, value in asdict(meta).items():
            attrs[key] = json.dumps(value) if isinstance(value, dict) else value
        for key, value in extra_attrs.items():
            attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value
        attrs["n_patches"] = self.n
        attrs["complete"] = True  # last: a crash before here leaves an unmarked file
        self._f.flush()
        signals.check()  # interrupted: never rename into place
        self._dropper.close()
        self._f.close()
        os.replace(self.tmp, self.final)
        return self.final


class PatchStore:
    """Read-only view of a finished store. Refuses unfinished, damaged or foreign files with one error line."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CamnetError(f"patch store {self.path}: no such file")
        try:
            self._f = h5py.File(self.path, "r")
        except OSError as err:
            raise CamnetError(f"patch store {self.path}: not a readable HDF5 file ({err})") from None
        try:
            self._open()
        except BaseException:
            self._f.close()
            raise

    def _open(self) -> None:
        f = self._f
        if not bool(f.attrs.get("complete", False)):
            raise CamnetError(f"patch store {self.path}: incomplete (no completion marker); rerun extraction")
        version = int(f.attrs.get("schema_version", -1))
        if version != SCHEMA_VERSION:
            raise CamnetError(f"patch store {self.path}: schema version {version}, expected {SCHEMA_VERSION}")
        # checked before use: opening an external link opens another file
        data = [integrity.own(self.path, f, name) for name in DATASETS]
        for name in integrity.own(self.path, f, "masks", h5py.Group) if f.id.links.exists(b"masks") else ():
            integrity.own(self.path, f["masks"], name)
        self._patches = data[0]
        if not {"codec", "patch_size"} <= set(self._patches.attrs):
            raise integrity.damaged(self.path, "'patches' has no codec or patch_size attribute")
        self.codec = str(self._patches.attrs["codec"])
        self.patch_size = int(self._patches.attrs["patch_size"])
        if self.codec == "lz4":
            _require_lz4()
        self.coords, self.labels, self.tumour_fraction, self.tissue_fraction = map(self._whole, data[1:])
        self.layout = {name: (ds.shape, ds.dtype) for name, ds in zip(DATASETS, data, strict=True)}  # as stored
        self._zeros_are_damage = integrity.zeros_are_damage(f.attrs, self.codec)

    def _whole(self, ds: h5py.Dataset) -> np.ndarray:
        with integrity.reading(self.path, ds):
            return np.asarray(ds[()])

    def __enter__(self) -> PatchStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    @property
    def attrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self._f.attrs.items():
            if isinstance(value, bytes):
                value = value.decode()
            if isinstance(value, np.generic):
                value = value.item()
            if key in JSON_ATTRS and isinstance(value, str):
                value = json.loads(value)
            out[key] = value
        return out

    @property
    def coords_attrs(self) -> dict[str, Any]:
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self._f["coords"].attrs.items()}

    def mask_names(self) -> list[str]:
        return list(self._f["masks"]) if "masks" in self._f else []

    def mask(self, name: str) -> np.ndarray:
        return self._whole(self._f["masks"][name])

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Patches at `indices` (any order, repeats allowed) as (k, H, W, 3) uint8 RGB."""
        idx = np.asarray(indices, dtype=np.int64)
        size = self.patch_size
        out = np.empty((len(idx), size, size, 3), dtype=np.uint8)
        if len(idx) == 0:
            return out
        if idx.min() < 0 or idx.max() >= len(self):
            raise CamnetError(f"patch store {self.path}: index out of range 0..{len(self) - 1}")
        ds = self._patches
        if self.codec == "jpeg":
            import io

            from PIL import Image

            for j, i in enumerate(idx):
                with integrity.reading(self.path, ds, f"row {i} is not a readable JPEG"):
                    out[j] = np.asarray(Image.open(io.BytesIO(ds[int(i)].tobytes())).convert("RGB"))
            return out
        uniq, inverse = np.unique(idx, return_inverse=True)
        block = out if len(uniq) == len(idx) and np.array_equal(uniq, idx) else np.empty_like(out[:len(uniq)])
        # Each contiguous run is one hyperslab read: h5py's point selection (ds[list]) was 10-80x slower.
        breaks = np.flatnonzero(np.diff(uniq) != 1) + 1
        with integrity.reading(self.path, ds):
            for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(uniq)], strict=True):
                ds.read_direct(block, np.s_[int(uniq[start]):int(uniq[stop - 1]) + 1], np.s_[int(start):int(stop)])
        flat = block.reshape(len(block), -1)
        for j in np.flatnonzero(~flat[:, ::997].any(axis=1)) if self._zeros_are_damage else ():
            if not flat[j].any():
                raise integrity.damaged(self.path, f"damaged data in 'patches' (row {uniq[j]} is all zeros, which this "
                                        "store's black filter never keeps: a zeroed chunk)")
        if block is not out:
            out[:] = block[inverse]
        return out

    def iter_batches(self, batch: int = 256) -> Iterator[np.ndarray]:
        for start in range(0, len(self), batch):
            yield self.read(np.arange(start, min(start + batch, len(self))))

    def verify(self) -> None:
        """Read every mask and patch (every chunk's checksum checked, every JPEG decoded): a pass over the file."""
        for name in self.mask_names():
            self.mask(name)
        for _ in self.iter_batches():
            pass
