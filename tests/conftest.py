"""Repo-wide test setup: the `slurm` marker and the `slurm_cluster` fixture; `multinode_cluster`, the
multi-node test cluster; `trained_layer2`, a model trained by Layer 2 on a synthetic cohort, shared by the
Layer 3 acceptance tests and the SLURM explain tests.

A test marked `slurm` (or using `slurm_cluster`) is skipped when no SLURM cluster answers, and fails instead
when CAMNET_REQUIRE_SLURM=1 (CI). The cluster is found through SLURM_CONF, else through the env.sh that
slurm/local/start.sh writes into its default state dir, else /etc/slurm/slurm.conf.

`multinode_cluster` (tests marked `multinode`) uses the cluster of `slurm/local/start.sh --nodes N` in
CAMNET_MULTINODE_STATE_DIR (default ${TMPDIR:-/tmp}/camnet-slurm-nodes) when it answers, else starts one with
MULTINODE_NODES nodes for the session (root only) and stops it afterwards; without one it skips with the
reason, or fails when CAMNET_REQUIRE_MULTINODE=1 (slurm/local/with-cluster.sh sets it as root).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from layer1_patches.shared.kerasflavour import prefer_tf_keras

# before any test module imports TensorFlow: tf.keras must be tf_keras where it is installed (.venv-modern), as the
# CLIs make it
prefer_tf_keras()

SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
NO_CLUSTER = "no SLURM cluster answers: start one with slurm/local/start.sh"
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
    }
)
_JOB_STATE = re.compile(r"\bJobState=(\S+)")


def default_state_dir() -> Path:
    """slurm/local/start.sh's default state dir (kept in step with slurm/local/env.sh)."""
    explicit = os.environ.get("CAMNET_SLURM_STATE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("TMPDIR") or "/tmp") / "camnet-slurm"


def find_slurm_conf() -> Path:
    """SLURM_CONF from the environment, else from the default state dir's env.sh, else SLURM's default."""
    if os.environ.get("SLURM_CONF"):
        return Path(os.environ["SLURM_CONF"])
    env_sh = default_state_dir() / "env.sh"
    try:
        text = env_sh.read_text()
    except OSError:
        return SYSTEM_CONF
    match = re.search(r"^export SLURM_CONF=(\S+)$", text, re.MULTILINE)
    return Path(match.group(1)) if match else SYSTEM_CONF


@dataclass(frozen=True)
class SlurmCluster:
    """A SLURM cluster that answered `sinfo`, configured by `conf`."""

    conf: Path

    def env(self) -> dict[str, str]:
        """os.environ with SLURM_CONF: the environment for SLURM clients."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, args: Sequence[str], cwd: Path | str | None = None, timeout: float = 30.0) -> str:
        """Run a SLURM client command; its stdout, or AssertionError naming the command and its stderr."""
        proc = subprocess.run(
            list(args), cwd=cwd, env=self.env(), capture_output=True, text=True, timeout=timeout, check=False
        )
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def submit(self, args: Sequence[str], cwd: Path | str) -> str:
        """`sbatch --parsable ARGS` in cwd; the job id."""
        out = self.run(["sbatch", "--parsable", *args], cwd=cwd)
        return out.strip().split(";")[0]

    def show_job(self, job_id: str) -> str:
        """`scontrol show job -o ID`: one line per job (per task for an array), "" once SLURM forgot it."""
        proc = subprocess.run(
            ["scontrol", "show", "job", "-o", job_id],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return proc.stdout if proc.returncode == 0 else ""

    def job_state(self, job_id: str) -> str:
        """The job's state; for an array the first unfinished task's, else the first not COMPLETED, else
        COMPLETED. UNKNOWN when SLURM does not know the job (any more)."""
        states = _JOB_STATE.findall(self.show_job(job_id))
        if not states:
            return "UNKNOWN"
        unfinished = [s for s in states if s not in FINAL_STATES]
        if unfinished:
            return unfinished[0]
        return next((s for s in states if s != "COMPLETED"), "COMPLETED")

    def wait(self, job_id: str, timeout: float = 60.0) -> str:
        """Poll until the job (all array tasks) has finished; its final state. Fails the test on timeout."""
        deadline = time.monotonic() + timeout
        state = self.job_state(job_id)
        while state not in FINAL_STATES:
            if time.monotonic() > deadline:
                pytest.fail(f"job {job_id} still {state} after {timeout:.0f} s:\n{self.show_job(job_id)}")
            time.sleep(0.5)
            state = self.job_state(job_id)
        return state


@functools.cache
def _answering_cluster() -> SlurmCluster | None:
    cluster = SlurmCluster(find_slurm_conf())
    # SLURM clients retry a missing configuration file for a minute: don't ask them.
    if not cluster.conf.is_file():
        return None
    try:
        out = cluster.run(["sinfo", "-h", "-o", "%T"], timeout=15)
    except (AssertionError, OSError, subprocess.TimeoutExpired):
        return None
    return cluster if out.strip() else None


def _require_cluster() -> SlurmCluster:
    cluster = _answering_cluster()
    if cluster is None:
        if os.environ.get("CAMNET_REQUIRE_SLURM") == "1":
            pytest.fail(f"{NO_CLUSTER} (CAMNET_REQUIRE_SLURM=1)", pytrace=False)
        pytest.skip(NO_CLUSTER)
    return cluster


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("slurm") is not None:
        _require_cluster()


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    return _require_cluster()


# --- the multi-node test cluster (slurm/local/start.sh --nodes N) ---------------------------------------------

MULTINODE_NODES = 3


def multinode_state_dir() -> Path:
    explicit = os.environ.get("CAMNET_MULTINODE_STATE_DIR")
    return Path(explicit) if explicit else Path(os.environ.get("TMPDIR") or "/tmp") / "camnet-slurm-nodes"


def node_names(cluster: SlurmCluster) -> list[str]:
    """The cluster's nodes that are up, [] when it does not answer."""
    if not cluster.conf.is_file():
        return []
    try:
        out = cluster.run(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=15)
    except (AssertionError, OSError, subprocess.TimeoutExpired):
        return []
    up = ("idle", "mixed", "allocated", "completing")
    return sorted({line.split()[0] for line in out.splitlines() if line.split()[1:2] and line.split()[1] in up})


def _why_no_multinode() -> str | None:
    if os.geteuid() != 0:
        return "the multi-node test cluster needs root (network namespaces, slurmd)"
    missing = [cmd for cmd in ("slurmctld", "slurmd", "munged", "ip", "nsenter", "unshare") if not shutil.which(cmd)]
    if missing:
        return f"the multi-node test cluster needs {', '.join(missing)} (apt-get install slurm-wlm munge iproute2)"
    return None


@pytest.fixture(scope="session")
def multinode_cluster() -> Iterator[SlurmCluster]:
    state = multinode_state_dir()
    cluster = SlurmCluster(state / "slurm.conf")
    if len(node_names(cluster)) >= 2:
        yield cluster  # somebody else's: left running
        return
    reason = _why_no_multinode()
    if reason is not None:
        if os.environ.get("CAMNET_REQUIRE_MULTINODE") == "1":
            pytest.fail(f"{reason} (CAMNET_REQUIRE_MULTINODE=1)", pytrace=False)
        pytest.skip(reason)
    local = REPO / "slurm" / "local"
    proc = subprocess.run(["bash", str(local / "start.sh"), "--nodes", str(MULTINODE_NODES), str(state)],
                          capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        subprocess.run(["bash", str(local / "stop.sh"), "--nodes", str(state)], capture_output=True, timeout=120,
                       check=False)  # what it had started (daemons, namespaces)
        message = f"slurm/local/start.sh --nodes {MULTINODE_NODES} failed:\n{proc.stderr}"
        if os.environ.get("CAMNET_REQUIRE_MULTINODE") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        yield cluster
    finally:
        subprocess.run(["bash", str(local / "stop.sh"), "--nodes", str(state)], capture_output=True, timeout=120,
                       check=False)


# --- a MobileNetV2 trained by `python -m layer2_training train` on synthetic slides, built once per session ---

REPO = Path(__file__).resolve().parents[1]
# Bump TRAINED_VERSION whenever the recipe or the steps of `build_trained_run` change: it names the cache dir.
TRAINED_VERSION = "v3"  # v3: exact tumour fractions and checkpoint tie-break (issue 14)
TRAINED_RECIPE: dict[str, Any] = {"slides": 4, "size": 3072, "seed": 11, "per_class": 150, "patch": 64,
                                  "epochs": 4, "fractions": "train=0.5,val=0.5",
                                  "config": "configs/layer2/mobilenetv2_cpu.yaml"}


@dataclass(frozen=True)
class TrainedRun:
    """A finished Layer 2 run dir and the Layer 1 stores of the patient it never trained on."""

    run_dir: Path
    val_stores: list[Path]


def subprocess_env() -> dict[str, str]:
    """os.environ for the repo's CLIs: quiet TensorFlow, one thread per pool (tests share 2 cores)."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
            "TF_NUM_INTEROP_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1"}


def build_trained_run(root: Path) -> TrainedRun:
    """Synth -> Layer 1 random extract (64-px, labelled) -> index by patient (train/val) -> Layer 2 train, all
    through the real CLIs; reused when `root` holds a finished build of this recipe, else rebuilt from empty."""
    r = TRAINED_RECIPE
    stamp, run_dir, stores, slides = root / "recipe.json", root / "run", root / "stores", root / "slides"
    want = {"version": TRAINED_VERSION, **r}
    done = stamp.is_file() and json.loads(stamp.read_text()) == want and (run_dir / "model.json").is_file()
    if not done:
        for path in (stamp, root / "index.json"):  # an interrupted or older build: start clean
            path.unlink(missing_ok=True)
        for path in (run_dir, stores, slides):
            shutil.rmtree(path, ignore_errors=True)
        py = [sys.executable, "-m"]
        steps = [
            [*py, "layer1_patches", "synth", "--out", str(slides), "--n-slides", str(r["slides"]),
             "--size", str(r["size"]), "--seed", str(r["seed"]), "--tumour-fraction", "0.3"],
            [*py, "layer1_patches", "extract", "--config", "configs/layer1/random.yaml", "--slides", str(slides),
             "--annotations", str(slides), "--out", str(stores), "--set", f"patch_size={r['patch']}",
             "--set", f"sampling.random.per_class={r['per_class']}", "--set", "sampling.random.grid_step=16"],
            [*py, "layer1_patches", "index", "--inputs", str(stores), "--out", str(root / "index.json"),
             "--fractions", str(r["fractions"])],
            [*py, "layer2_training", "train", "--config", str(r["config"]),
             "--set", f"data.index={root / 'index.json'}", "--set", f"output.run_dir={run_dir}",
             "--set", "output.tensorboard=false",
             "--set", f"epochs={r['epochs']}", "--set", "data.splits.test=null"],
        ]
        for cmd in steps:
            proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                                  timeout=3000, check=False)
            assert proc.returncode == 0, f"{' '.join(cmd[2:])}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        stamp.write_text(json.dumps(want))
    index = json.loads((root / "index.json").read_text())
    val = [root / e["path"] for e in index["entries"] if e["split"] == "val"]
    return TrainedRun(run_dir, val)


@pytest.fixture(scope="session")
def trained_layer2(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> TrainedRun:
    """One Layer 2 model for every test that needs a real one, built once: cached across sessions in
    `.pytest_cache/d/camnet-trained-layer2-<TRAINED_VERSION>` (`pytest --cache-clear` rebuilds it);
    CAMNET_TRAINED_CACHE=DIR keeps it elsewhere."""
    cache = os.environ.get("CAMNET_TRAINED_CACHE")
    if cache:
        root = Path(cache)
        root.mkdir(parents=True, exist_ok=True)
    elif getattr(request.config, "cache", None) is not None:
        root = Path(request.config.cache.mkdir(f"camnet-trained-layer2-{TRAINED_VERSION}"))
    else:
        root = tmp_path_factory.mktemp("trained_layer2")
    return build_trained_run(root)
