"""Atomic small-file writes: a reader sees the old file or the whole new one, never half of it."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from layer1_patches.shared.errors import CamnetError


def partial_path(final: Path) -> Path:
    """Where a file is written before it is renamed to `final`; never taken for a finished file."""
    return final.with_name(f".{final.name}.partial")


def check_inside(path: Path, root: Path) -> Path:
    """`path` resolved, after checking it lies strictly inside `root` (resolved): what a writer may delete.

    Every removal of an output goes through here: a name that resolves elsewhere (a `..` stem, a symlink out of
    the folder) must never become an `rmtree` of someone else's data.
    """
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved == base or base not in resolved.parents:
        raise CamnetError(f"refusing to remove {path}: it resolves to {resolved}, outside output folder {base}")
    return resolved


def remove_inside(path: Path, root: Path) -> None:
    """Delete the file or folder `path` (a symlink itself, never its target), which must lie inside `root`."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    if path.is_symlink():  # the link's own entry: its folder must be inside root (or root itself)
        parent, base = path.parent.resolve(), Path(root).resolve()
        if parent != base and base not in parent.parents:
            raise CamnetError(f"refusing to remove {path}: outside output folder {base}")
        path.unlink()
        return
    check_inside(path, root)
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def read_json_object(path: Path) -> dict[str, Any]:
    """An optional JSON state file (timings, job ids, a stage's summary for a report): {} when it is missing,
    unreadable or not an object. Not for inputs a command needs: those fail with an error line."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    # The pid keeps two writers of one file (two SLURM steps, say) from renaming each other's half file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after a failed write or rename: nothing left behind
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=1))


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temporary file beside `final` for a writer that takes a path; renamed to `final` if the block succeeds.

    The temporary name keeps `final`'s suffix because matplotlib and Keras choose the format from it.
    """
    tmp = final.with_name(f".{final.stem}.{os.getpid()}.partial{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
