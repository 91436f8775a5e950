"""The run directory: what was run, with what, and what came out; rank 0 writes, atomically.

One training at a time per run dir: rank 0 holds `.<run dir>.lock` beside it from before the run dir is read
until the run ends (`claim`). A write the file system refuses (full, read-only) is one error line naming the
file (`writing`); the atomic writers have removed their partial file by then.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from layer1_patches.shared.atomic import remove_inside, write_text_atomic
from layer1_patches.shared.errors import CamnetError, os_reason
from layer1_patches.shared.kerasflavour import flavour
from layer1_patches.shared.locks import output_lock
from layer1_patches.shared.typedconfig import config_hash, read_yaml, to_dict
from layer2_training.config import Layer2Config

CONFIG = "config.yaml"
# what a killed writer leaves: our atomic writers' `.<name>.<pid>.partial[.suffix]`, TensorFlow's checkpoint
# `ckpt-N_temp` folders and `checkpoint.tmp<hex>` pointer files
LEFTOVER = re.compile(r"^\..+\.partial(\.\w+)?$|^ckpt-\d+_temp$|^checkpoint\.tmp[0-9a-f]{32}$")


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """A write into the run dir; an `OSError` (disk full, read-only, quota) becomes one error line naming `path`."""
    try:
        yield
    except OSError as err:
        raise CamnetError(f"output {path}: cannot write ({os_reason(err)})") from None


def write_json(path: Path, data: Any) -> Path:
    with writing(path):
        return write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


@contextmanager
def claim(run_dir: Path) -> Iterator[None]:
    """Rank 0's lock on the run dir for the whole run; another writer gets `OutputBusy` (one error line).

    Holding it, the partial files of earlier, killed writers inside the run dir are removed: nobody else writes
    there, and no reader (resume, Layer 3) takes a partial file for a finished one anyway.
    """
    try:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CamnetError(f"run dir {run_dir}: cannot create ({os_reason(err)})") from None
    with output_lock(run_dir):
        remove_leftovers(run_dir)
        yield


def remove_leftovers(run_dir: Path) -> list[Path]:
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.rglob("*") if LEFTOVER.match(p.name)]
    for path in found:
        remove_inside(path, run_dir)
    return found


def versions() -> dict[str, str]:
    import h5py
    import numpy as np
    import tensorflow as tf

    out = {"python": platform.python_version(), "tensorflow": tf.__version__, "numpy": np.__version__,
           "h5py": h5py.__version__, "platform": platform.platform(), "keras": flavour()["keras"]}
    try:
        from importlib.metadata import version

        out["horovod"] = version("horovod")
    except Exception:  # noqa: BLE001 - missing or broken metadata only means "unknown"
        out["horovod"] = "not installed"
    return out


def git_commit() -> str | None:
    repo = Path(__file__).resolve().parent.parent
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=10, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def prepare(run_dir: Path, cfg: Layer2Config) -> bool:
    """Create or reopen the run dir; True when it holds a run of the same config (resume).

    A run dir of a different config is refused: resuming it would mix two experiments.
    """
    saved = run_dir / CONFIG
    if saved.is_file():
        old = read_yaml(saved)  # a corrupt file is one error line naming it
        if old.get("config_hash") != config_hash(cfg):
            raise CamnetError(f"run dir {run_dir} holds a run of a different config; choose another "
                              "output.run_dir (or delete it)")
        return True
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CamnetError(f"run dir {run_dir}: cannot create ({os_reason(err)})") from None
    return False


def write_start(run_dir: Path, cfg: Layer2Config, size: int, extra: dict[str, Any]) -> None:
    data = {"config_hash": config_hash(cfg), "config": to_dict(cfg)}
    with writing(run_dir / CONFIG):
        write_text_atomic(run_dir / CONFIG, yaml.safe_dump(data, sort_keys=False))
    # camnet_source: the code that ran (a container's /opt/camnet/... or a checkout that shadowed it)
    write_json(run_dir / "environment.json", {"versions": versions(), "git_commit": git_commit(),
                                              "camnet_source": str(Path(__file__).resolve().parent.parent),
                                              "seed": cfg.seed, "ranks": size, **extra})
