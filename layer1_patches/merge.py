"""Merge the K dense shards of one slide into the file a single-process dense run writes."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from layer1_patches.extract import output_path
from layer1_patches.shared.atomic import remove_inside
from layer1_patches.shared.errors import CamnetError, os_reason
from layer1_patches.shared.locks import output_lock
from layer1_patches.store import PatchStore, PatchWriter, SlideMeta, is_complete


def merge_shards(out_dir: Path, slide: Path, count: int, keep_shards: bool = False) -> Path:
    final = output_path(out_dir, slide, None)
    shards = [output_path(out_dir, slide, (i, count)) for i in range(count)]
    if is_complete(final) and not any(p.exists() for p in shards):
        return final  # merged before; the shards are gone
    missing = [p.name for p in shards if not is_complete(p)]
    if missing:
        raise CamnetError(f"cannot merge {final}: shard files not finished: {', '.join(missing)}")
    with output_lock(final):
        if not (is_complete(final) and not any(p.exists() for p in shards)):  # not merged while we waited
            try:
                _merge(final, shards, count)
            except OSError as err:  # disk full, read-only: the writer has removed its partial file
                raise CamnetError(f"output {final}: cannot write ({os_reason(err)})") from None
            if not keep_shards:  # under the lock: a second merge must not read shards being deleted
                for path in shards:
                    remove_inside(path, out_dir)
    return final


def _merge(final: Path, shards: list[Path], count: int) -> None:
    stores = [PatchStore(p) for p in shards]
    try:
        first = stores[0].attrs
        hashes = {s.attrs["config_hash"] for s in stores}
        if len(hashes) > 1:
            raise CamnetError(f"cannot merge {final}: shards were made with different configs")
        # PatchStore.attrs has already decoded the JSON ones; only the shard marker changes
        meta = SlideMeta(**{**{k: first[k] for k in SlideMeta.__dataclass_fields__ if k in first}, "shard": ""})
        codec = stores[0].codec
        config = first["config"]
        output = config["output"]
        with PatchWriter(final, stores[0].patch_size, codec, output["gzip_level"], output["jpeg_quality"]) as writer:
            for store in stores:
                for start in range(0, len(store), 256):
                    idx = np.arange(start, min(start + 256, len(store)))
                    writer.append(store.read(idx), store.coords[idx], store.labels[idx],
                                  store.tumour_fraction[idx], store.tissue_fraction[idx])
            carried = ("requested", "config", "annotation", "mpp_from_metadata", "mpp_source", "reader")
            extra: dict[str, Any] = {key: first[key] for key in carried if key in first}
            extra["rejects"] = _sum(s.attrs["rejects"] for s in stores)
            extra["counts"] = _sum(s.attrs["counts"] for s in stores)
            extra["seconds"] = round(sum(float(s.attrs.get("seconds", 0.0)) for s in stores), 3)
            extra["merged_from"] = count
            masks = {name: stores[0].mask(name) for name in stores[0].mask_names()}
            writer.finish(meta, stores[0].coords_attrs, extra, masks)
    finally:
        for store in stores:
            store.close()


def _sum(dicts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for d in dicts:
        for key, value in d.items():
            total[key] = total.get(key, 0) + int(value)
    return total
