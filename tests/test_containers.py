"""containers/ (Dockerfile, Apptainer definition, README) and slurm/common.sh's camnet_run/camnet_srun."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMMON_SH = REPO / "slurm" / "common.sh"
BASH = shutil.which("bash") or "/bin/bash"
# Arguments that a shell would mangle if camnet_run ever re-parsed them.
TRICKY_ARGS = ["two words", "it's", '"double"', "$HOME", "*", "", "a\\b"]


def hadolint() -> str:
    for candidate in (Path(sys.executable).parent / "hadolint", shutil.which("hadolint")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail("hadolint not found: it comes with the dev extras (pip install -e '.[dev]')")


def test_dockerfile_passes_hadolint() -> None:
    proc = subprocess.run(
        [hadolint(), "--no-color", str(REPO / "containers" / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_apptainer_def_bootstraps_from_the_archive_that_build_sh_saves() -> None:
    """camnet.def takes the `docker save` archive of the Dockerfile's image as the build argument `archive`, and
    containers/build.sh passes the archive it saved (the Dockerfile stays the single source of truth)."""
    definition = (REPO / "containers" / "camnet.def").read_text()
    bootstrap = re.search(r"^Bootstrap:\s*(\S+)", definition, re.MULTILINE)
    source = re.search(r"^From:\s*(.+)$", definition, re.MULTILINE)
    assert bootstrap and bootstrap.group(1) == "docker-archive"
    assert source and source.group(1).strip() == "{{ archive }}"
    build = (REPO / "containers" / "build.sh").read_text()
    saved = re.search(r'docker save "\$IMAGE" -o "\$ARCHIVE\.part" \|\| die .*\n'
                      r'\s*mv "\$ARCHIVE\.part" "\$ARCHIVE"', build)
    assert saved and build.count('--build-arg archive="$ARCHIVE"') == 2  # host apptainer, or the sid image's


def run_common(args: list[str], tmp_path: Path, function: str = "camnet_run", **env: str) -> (
    subprocess.CompletedProcess[str]
):
    """Source slurm/common.sh in a strict bash and call FUNCTION with ARGS, under a clean CamNet env."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("CAMNET_") and k not in {"SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES"}}
    script = f'set -euo pipefail; . "$1"; shift; {function} "$@"'
    return subprocess.run(
        [BASH, "-c", script, "bash", str(COMMON_SH), *args],
        cwd=tmp_path,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def fake_binary(bin_dir: Path, name: str) -> None:
    """A test double for apptainer/singularity/srun (not installable here): prints its name and argv."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\necho {name}\nfor a in \"$@\"; do printf '%s\\n' \"$a\"; done\n")
    path.chmod(0o755)


def test_camnet_run_on_host_passes_arguments_unchanged(tmp_path: Path) -> None:
    marker = tmp_path / "injected"
    args = [*TRICKY_ARGS, f"$(touch {marker})", f"`touch {marker}`; touch {marker}"]
    proc = run_common(["printf", "%s\\n", *args], tmp_path)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:-1] == args
    assert not marker.exists()


def test_camnet_run_on_host_uses_camnet_python(tmp_path: Path) -> None:
    code = "import sys; print(sys.executable); print(sys.argv[1:])"
    proc = run_common(["python", "-c", code, *TRICKY_ARGS], tmp_path, CAMNET_PYTHON=sys.executable)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [sys.executable, repr(TRICKY_ARGS)]


def test_camnet_run_returns_the_command_status(tmp_path: Path) -> None:
    assert run_common(["sh", "-c", "exit 7"], tmp_path).returncode == 7


def test_camnet_run_with_missing_image_fails_with_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no such.sif"
    proc = run_common(["true"], tmp_path, CAMNET_SIF=str(missing))

    assert proc.returncode != 0
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1
    assert str(missing) in proc.stderr


def test_camnet_run_without_container_runtime_fails_with_one_line(tmp_path: Path) -> None:
    image = tmp_path / "camnet.sif"
    image.touch()
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    proc = run_common(["true"], tmp_path, CAMNET_SIF=str(image), CAMNET_ROOT=str(REPO), PATH=str(empty_bin))

    assert proc.returncode != 0
    assert len(proc.stderr.splitlines()) == 1
    assert "apptainer" in proc.stderr and "singularity" in proc.stderr


@pytest.mark.parametrize(
    ("gpu_env", "expect_nv"),
    [
        ({"CAMNET_GPU": "1"}, True),
        ({}, False),
        ({"CUDA_VISIBLE_DEVICES": "0"}, True),
        ({"SLURM_JOB_GPUS": "0,1"}, True),
        ({"SLURM_JOB_GPUS": "0", "CAMNET_GPU": "0"}, False),
    ],
    ids=["CAMNET_GPU=1", "no-gpu", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "CAMNET_GPU=0-wins"],
)
def test_camnet_run_with_image_builds_apptainer_exec(
    tmp_path: Path, gpu_env: dict[str, str], expect_nv: bool
) -> None:
    image = tmp_path / "camnet.sif"
    image.touch()
    fake_binary(tmp_path / "bin", "apptainer")
    fake_binary(tmp_path / "bin", "singularity")
    args = ["python", "-m", "layer1_patches", *TRICKY_ARGS, f"$(touch {tmp_path / 'injected'})"]
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "CAMNET_SIF": str(image), **gpu_env}
    proc = run_common(args, tmp_path, CAMNET_BIND="/data,/scratch:/scratch", **env)

    assert proc.returncode == 0, proc.stderr
    argv = proc.stdout.split("\n")[:-1]
    assert argv[:4] == ["apptainer", "exec", "--env", "PYTHONSAFEPATH=1"]
    assert ("--nv" in argv) == expect_nv
    options = argv[4 : argv.index(str(image))]
    binds = ["--bind", str(REPO), "--bind", "/data,/scratch:/scratch"]
    assert options == (["--nv"] if expect_nv else []) + binds
    assert argv[argv.index(str(image)) + 1 :] == args
    assert not (tmp_path / "injected").exists()


def test_camnet_run_falls_back_to_singularity(tmp_path: Path) -> None:
    image = tmp_path / "camnet.sif"
    image.touch()
    fake_binary(tmp_path / "bin", "singularity")
    proc = run_common(["python", "-V"], tmp_path, CAMNET_SIF=str(image), CAMNET_ROOT=str(REPO),
                      PATH=str(tmp_path / "bin"))

    assert proc.returncode == 0, proc.stderr
    expected = ["singularity", "exec", "--env", "PYTHONSAFEPATH=1", "--bind", str(REPO), str(image), "python", "-V"]
    assert proc.stdout.split("\n")[:-1] == expected


def test_camnet_srun_launches_the_container_command(tmp_path: Path) -> None:
    image = tmp_path / "camnet.sif"
    image.touch()
    fake_binary(tmp_path / "bin", "apptainer")
    fake_binary(tmp_path / "bin", "srun")
    args = ["python", "-m", "layer2_training", "two words"]
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "CAMNET_SIF": str(image)}
    proc = run_common(["--mpi=pmix", "-n", "2", "--", *args], tmp_path, function="camnet_srun", **env)

    assert proc.returncode == 0, proc.stderr
    expected = ["srun", "--mpi=pmix", "-n", "2", "apptainer", "exec", "--env", "PYTHONSAFEPATH=1", "--bind", str(REPO),
                str(image), *args]
    assert proc.stdout.split("\n")[:-1] == expected


def test_camnet_run_in_a_container_turns_off_cma_single_copy(tmp_path: Path) -> None:
    """Ranks in separate user namespaces (Apptainer without setuid) hung on their first large MPI message until
    OpenMPI's vader transport was told not to use CMA; a value the user set is kept."""
    image = tmp_path / "camnet.sif"
    image.touch()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "apptainer").write_text("#!/bin/sh\necho \"$OMPI_MCA_btl_vader_single_copy_mechanism\"\n")
    (bin_dir / "apptainer").chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CAMNET_SIF": str(image)}
    assert run_common(["true"], tmp_path, **env).stdout == "none\n"
    kept = run_common(["true"], tmp_path, OMPI_MCA_btl_vader_single_copy_mechanism="xpmem", **env)
    assert kept.stdout == "xpmem\n"
    assert run_common(["printenv", "OMPI_MCA_btl_vader_single_copy_mechanism"], tmp_path).stdout == ""  # host
