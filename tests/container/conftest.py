"""The built image under test (issue 18): collected only by `make container-test` (CAMNET_CONTAINER_TEST=1),
which builds it first with `make container`; without the image these tests fail, they never skip.

Commands run as `apptainer exec SIF ...`: the host's apptainer, else tests/container/apptainer, a launcher for the
tests only that runs the real Apptainer of the camnet-apptainer:sid image as the non-root user `runner`."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCHER_DIR = Path(__file__).resolve().parent

if os.environ.get("CAMNET_CONTAINER_TEST") != "1":
    collect_ignore_glob = ["test_*.py"]  # `make test` leaves the image's tests to `make container-test`


def cache_dir() -> Path:
    """containers/lib.sh's cache folder."""
    explicit = os.environ.get("CAMNET_CONTAINER_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "camnet-container"


@dataclass(frozen=True)
class Container:
    sif: Path
    env: dict[str, str]
    launcher_log: Path

    def exec(self, args: list[str], cwd: Path, timeout: float = 600,
             **env: str) -> subprocess.CompletedProcess[str]:
        """`apptainer exec SIF ARGS` in `cwd` (umask 0: the container's user and the host's root share folders)."""
        return subprocess.run(["apptainer", "exec", str(self.sif), *args], cwd=cwd, env={**self.env, **env},
                              capture_output=True, text=True, timeout=timeout, check=False,
                              preexec_fn=lambda: os.umask(0))


@pytest.fixture(scope="session")
def container(tmp_path_factory: pytest.TempPathFactory) -> Container:
    sif = Path(os.environ.get("CAMNET_TEST_SIF") or cache_dir() / "camnet-cpu.sif")
    if not sif.is_file():
        pytest.fail(f"{sif}: no image; build it with `make container`", pytrace=False)
    log = tmp_path_factory.mktemp("launcher") / "calls.log"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
           "TF_NUM_INTRAOP_THREADS": "1", "CAMNET_LAUNCHER_LOG": str(log)}
    env.pop("PYTHONPATH", None)  # the image's own CamNet, not the checkout's
    if shutil.which("apptainer") is None:
        env["PATH"] = f"{LAUNCHER_DIR}:{env['PATH']}"
    return Container(sif, env, log)


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    """A folder the container's non-root user and the host's root both write to (outside pytest's 0700 tree)."""
    path = Path(tempfile.mkdtemp(prefix="camnet-container-test-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)
