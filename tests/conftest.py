"""Repo-wide test setup: the `slurm` marker and the `slurm_cluster` fixture.

A test marked `slurm` (or using `slurm_cluster`) is skipped when no SLURM cluster answers, and fails instead
when CAMNET_REQUIRE_SLURM=1 (CI). The cluster is found through SLURM_CONF, else through the env.sh that
slurm/local/start.sh writes into its default state dir, else /etc/slurm/slurm.conf.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

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
