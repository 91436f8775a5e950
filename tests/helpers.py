"""Assertions and environments shared by the command-line tests of all layers."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def assert_one_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """Exit status 2, exactly one `error: ...` line containing every needle, and no traceback."""
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a TensorFlow command in a test: quiet, one thread per pool (2 shared cores)."""
    env = dict(os.environ)
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                "TF_NUM_INTEROP_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1", **extra})
    return env
