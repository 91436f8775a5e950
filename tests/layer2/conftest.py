"""Layer 2 fixtures: tiny patch stores written with Layer 1's PatchWriter, configs, a CLI runner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from layer1_patches.index import build_index
from layer1_patches.store import PatchWriter, SlideMeta
from tests.helpers import cli_env

REPO = Path(__file__).resolve().parents[2]


def synthetic_patches(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Tumour: large dark purple blobs; normal: a few small dots on pink. Learnable in seconds."""
    yy, xx = np.mgrid[:size, :size]
    out = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        img = np.ones((size, size, 3)) * np.array([235, 190, 215]) + rng.normal(0, 6, (size, size, 3))
        n, radius = (3, size / 5) if label else (6, size / 20)
        for _ in range(n):
            cy, cx = rng.uniform(0, size, 2)
            blob = (yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2
            img[blob] = np.array([90, 40, 120]) + rng.normal(0, 8, 3)
        out[i] = np.clip(img, 0, 255)
    return out


def write_store(path: Path, patient: str, n_tumour: int, n_normal: int, size: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    labels = np.array([1] * n_tumour + [0] * n_normal, dtype=np.uint8)
    rng.shuffle(labels)
    n = len(labels)
    with PatchWriter(path, size) as writer:
        writer.append(synthetic_patches(labels, size, rng), np.stack([np.arange(n) * size, np.zeros(n)], 1),
                      labels, labels.astype(np.float32), np.ones(n, np.float32))
        meta = SlideMeta(slide_name=path.stem, slide_path=str(path), patient=patient, node="0", centre="0",
                         mpp=0.25, working_mpp=0.5, level=1, downsample=2.0, patch_size=size,
                         config_hash="test")
        return writer.finish(meta, {"patch_size": size, "patch_level": 1, "downsample": 2.0}, {}, {})


def make_cohort(root: Path, n_patients: int = 8, per_class: int = 12, size: int = 32,
                fractions: dict[str, float] | None = None) -> Path:
    stores = root / "stores"
    stores.mkdir(parents=True)
    for p in range(n_patients):
        write_store(stores / f"patient_{p:03d}_node_0.h5", f"{p:03d}", per_class, per_class, size, seed=p)
    out = root / "index.json"
    build_index([stores], out, "patient", fractions or {"train": 0.5, "val": 0.25, "test": 0.25}, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cohort(tmp_path_factory.mktemp("tiny_cohort"))


def base_config(index: Path, run_dir: Path, **extra: Any) -> dict[str, Any]:
    """A config that trains a tiny MobileNetV2 for one quick epoch on 32-px patches."""
    cfg: dict[str, Any] = {
        "data": {"index": str(index), "read_block": 4, "shuffle_window": 2},
        "model": {"backbone": "mobilenetv2", "weights": "none", "head": {"dropout": 0.0}},
        "optimizer": {"kind": "adam"},
        "schedule": {"lr": 0.001},
        "augment": {"flips": True, "rot90": True},
        "output": {"run_dir": str(run_dir), "tensorboard": False},
        "batch_size": 8, "epochs": 1, "seed": 1,
    }
    for key, value in extra.items():
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "layer2_training", *args], cwd=REPO, env=cli_env(**env),
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def synth_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Layer 1 cohort: synthetic slides -> `extract` (64-px patches) -> `index` by patient. Built once."""
    from layer1_patches.synth import write_cohort

    root = tmp_path_factory.mktemp("synth_cohort")
    write_cohort(root / "slides", 8, 2048, seed=0, tumour_fraction=0.2)
    layer1 = [sys.executable, "-m", "layer1_patches"]
    subprocess.run([*layer1, "extract", "--config", str(REPO / "configs/layer1/random.yaml"), "--slides",
                    str(root / "slides"), "--annotations", str(root / "slides"),
                    "--out", str(root / "stores"),
                    "--set", "patch_size=64", "--set", "sampling.random.per_class=60",
                    "--set", "sampling.random.grid_step=32", "--workers", "2"],
                   cwd=REPO, env=cli_env(), check=True, capture_output=True, timeout=300)
    index = root / "stores" / "index.json"
    subprocess.run([*layer1, "index", "--inputs", str(root / "stores"), "--out", str(index), "--split-by",
                    "patient", "--fractions", "train=0.5,val=0.25,test=0.25"],
                   cwd=REPO, env=cli_env(), check=True, capture_output=True, timeout=120)
    return index


def read_history(run_dir: Path) -> list[dict[str, str]]:
    import csv

    path = run_dir / "history.csv"
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


class Tmpfs:
    """A mounted tmpfs: a real file system that fills up or turns read-only on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler.bin"

    def fill(self, leave: int = 0) -> None:
        """Take all free space but `leave` bytes (rounded to pages by the kernel) with a filler file."""
        import os

        fd = os.open(self.filler, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
        try:
            for chunk in (1 << 20, 1 << 12, 1):  # big writes, then the last partial page byte by byte
                block = b"\0" * chunk
                while True:
                    try:
                        os.write(fd, block)
                    except OSError:
                        break
        finally:
            os.close(fd)
        if leave:
            os.truncate(self.filler, max(0, self.filler.stat().st_size - leave))

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def remount(self, mode: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{mode}", str(self.path)], check=True, capture_output=True)


@pytest.fixture
def mount_tmpfs() -> Any:
    """`mount_tmpfs(path, "256k")` mounts a tmpfs of that size at `path` (created if missing); all are unmounted
    after the test. Skips, saying why, where mounting is impossible (not root, no CAP_SYS_ADMIN)."""
    mounted: list[Path] = []

    def mount(path: Path, size: str) -> Tmpfs:
        path.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}")
        mounted.append(path)
        return Tmpfs(path)

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", str(path)], check=False, capture_output=True)


def leftovers(root: Path) -> list[Path]:
    """Partial outputs anywhere under `root`: ours (`.partial`), TensorFlow's (`_temp` folders, `.tmp<hex>`)."""
    import re

    pattern = re.compile(r"\.partial|_temp$|\.tmp[0-9a-f]{32}$")
    return [p for p in root.rglob("*") if pattern.search(p.name)]


def check_two_rank_run(run: Path, index: Path, engine: str, epochs: int = 2) -> None:
    """What every engine guarantees a 2-rank run with `data.record_sample_ids`: both ranks end with the same weights
    (their digests cover each rank's own BatchNorm statistics), and each epoch's shares are disjoint and cover the
    training split."""
    from layer2_training import data
    from layer2_training.config import DataConfig

    digests = {(run / "sample_ids" / f"weights_rank{r}.txt").read_text() for r in range(2)}
    assert len(digests) == 1, "ranks ended with different weights or BatchNorm statistics"
    env = json.loads((run / "environment.json").read_text())
    assert env["ranks"] == 2 and env["engine"] == engine, env
    split = data.load_split(data.load_index(index), "train", DataConfig(index=str(index)), 1, balance=False)
    for epoch in range(epochs):
        ids = [np.loadtxt(run / "sample_ids" / f"train_rank{r}_epoch{epoch}.txt", dtype=np.int64)
               for r in range(2)]
        assert not set(ids[0].tolist()) & set(ids[1].tolist()), f"epoch {epoch}: ranks overlap"
        assert len(ids[0]) + len(ids[1]) == len(split)
        assert set(np.concatenate(ids).tolist()) == set(split.sample_id.tolist()), f"epoch {epoch}"


def submit_train_sbatch(cluster: Any, cfg: Path, log: Path, name: str, export: str) -> str:
    """The real slurm/layer2_train.sbatch shrunk to 2 CPU ranks on one node by command-line options; the job id.
    --time leaves the script's USR1 (300 s before the limit) and its requeue far beyond a test; the script sees no
    GPU and applies its CPU-only settings (yielding MPI waits, ob1/vader, 1 TF thread). `log`'s folder must exist:
    sbatch does not create the --output directory."""
    return cluster.submit([f"--job-name={name}", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
                           "--gres=none", "--time=30", f"--output={log}", f"--export={export}",
                           str(REPO / "slurm" / "layer2_train.sbatch"), str(cfg)], cwd=log.parent)


def finished_log(cluster: Any, job: str, log: Path, timeout: float) -> str:
    """The job's log once it COMPLETED (else the test fails with the log's end)."""
    state = cluster.wait(job, timeout=timeout)
    text = log.read_text() if log.exists() else ""
    assert state == "COMPLETED", text[-3000:]
    return text
