"""The run directory: what was run, with what, and what came out; rank 0 writes, atomically."""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import yaml

from layer1_patches.shared.atomic import write_text_atomic
from layer1_patches.shared.errors import CamnetError
from layer1_patches.shared.typedconfig import config_hash, read_yaml, to_dict
from layer2_training.config import Layer2Config

CONFIG = "config.yaml"


def write_json(path: Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def versions() -> dict[str, str]:
    import h5py
    import numpy as np
    import tensorflow as tf

    out = {"python": platform.python_version(), "tensorflow": tf.__version__, "numpy": np.__version__,
           "h5py": h5py.__version__, "platform": platform.platform()}
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
    run_dir.mkdir(parents=True, exist_ok=True)
    return False


def write_start(run_dir: Path, cfg: Layer2Config, size: int, extra: dict[str, Any]) -> None:
    data = {"config_hash": config_hash(cfg), "config": to_dict(cfg)}
    write_text_atomic(run_dir / CONFIG, yaml.safe_dump(data, sort_keys=False))
    write_json(run_dir / "environment.json", {"versions": versions(), "git_commit": git_commit(),
                                              "seed": cfg.seed, "horovod_size": size, **extra})
