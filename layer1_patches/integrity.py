"""What a patch-store reader checks before it trusts the file: links, storage and checksums.

A store's data must be its own (no external or soft link, virtual dataset or external raw file: opening one
opens another file, possibly a moving target), and a failed read (a Fletcher-32 mismatch, an undecodable chunk,
a file truncated under the reader) becomes one error line naming the store and the dataset.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py

from layer1_patches.shared.errors import CamnetError


def damaged(path: Path, what: str) -> CamnetError:
    return CamnetError(f"patch store {path}: {what}; re-extract this slide")


def own(path: Path, group: h5py.Group, name: str, kind: type = h5py.Dataset) -> Any:
    """`group[name]` if its data is this file's: no external or soft link, virtual dataset or external raw file."""
    what = f"{group.name}/{name}".lstrip("/")
    link = group.id.links.get_info(name.encode()).type if group.id.links.exists(name.encode()) else None
    obj = group[name] if link == h5py.h5l.TYPE_HARD else None
    dataset = isinstance(obj, h5py.Dataset)
    refused = ("" if link is None else "an external link" if link == h5py.h5l.TYPE_EXTERNAL else
               "a soft link" if obj is None else "a virtual dataset" if dataset and obj.is_virtual else
               "stored in external files" if dataset and obj.external else "")
    if refused:
        raise CamnetError(f"patch store {path}: '{what}' is {refused}; refused")
    if not isinstance(obj, kind):
        raise damaged(path, f"'{what}' is missing" if obj is None else f"'{what}' is not a {kind.__name__.lower()}")
    return obj


@contextlib.contextmanager
def reading(path: Path, ds: h5py.Dataset, why: str = "") -> Iterator[None]:
    """A failed read (checksum, codec, file truncated under us) or, with `why`, decoding: one error line."""
    try:
        yield
    except (OSError, ValueError) as err:
        if not (why or isinstance(err, OSError)):
            raise
        if not why and ds.fletcher32 and "filter returned failure" in str(err):
            # HDF5 reports failed filters alike; a chunk zeroed with its checksum passes Fletcher-32, fails a codec
            alone = ds.id.get_create_plist().get_nfilters() == 1
            why = "checksum mismatch" if alone else "checksum mismatch or undecodable chunk"
        raise damaged(path, f"damaged data in '{ds.name.lstrip('/')}' ({why or err})") from None


def zeros_are_damage(attrs: Any, codec: str) -> bool:
    """A raw patch chunk zeroed with its checksum passes it (zeros sum to 0) and reads as a black patch. Where the
    store's config has a black filter (rejecting all-black patches), an all-zero patch can only be that."""
    with contextlib.suppress(ValueError, AttributeError, TypeError, KeyError):  # no such config: no such promise
        black = json.loads(attrs.get("config", "")).get("filters", {}).get("black")
        return bool(codec == "none" and black["max_fraction"] < 1 and black["level"] > 0)
    return False
