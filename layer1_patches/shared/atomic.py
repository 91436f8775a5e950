"""Atomic small-file writes: a reader sees the old file or the whole new one, never half of it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def partial_path(final: Path) -> Path:
    """Where a file is written before it is renamed to `final`; never taken for a finished file."""
    return final.with_name(f".{final.name}.partial")


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
