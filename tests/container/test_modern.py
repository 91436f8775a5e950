"""The modern variant's smoke test (containers/Dockerfile.modern: Debian 13, Python 3.13, TF 2.21 + tf_keras, no
Horovod), through `docker run` as the image's non-root user: every layer once, Layer 2 as two tf_distribute workers
found through TF_CONFIG, and the model it exports refused by the main environment's Keras with the one error line
that names both (issue 20). Built by `make container-test` (containers/build-modern.sh) before these run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ..conftest import subprocess_env
from ..layer2.test_tf_distribute import free_ports
from .conftest import REPO

IMAGE = os.environ.get("CAMNET_MODERN_IMAGE", "camnet:modern")
CONFIGS = ("layer1/random.yaml", "layer2/mobilenetv2_cpu.yaml", "layer3/heatmap.yaml")
TRAIN = ("python -m layer2_training train --config configs/layer2/mobilenetv2_cpu.yaml --set data.index=index.json "
         "--set output.run_dir=run --set output.tensorboard=false --set epochs=1 --set data.splits.test=null "
         "--set distributed.engine=tf_distribute")


def docker(work: Path, script: str, timeout: float = 1200) -> str:
    """`bash -c script` in the image, in `work` (mounted at /work), as its user; the checkout is not mounted."""
    proc = subprocess.run(["docker", "run", "--rm", "--network", "host", "-v", f"{work}:/work", "-w", "/work",
                           "-e", "TF_CPP_MIN_LOG_LEVEL=2", "-e", "OMP_NUM_THREADS=1", "-e", "TF_NUM_INTEROP_THREADS=1",
                           "-e", "TF_NUM_INTRAOP_THREADS=1", IMAGE, "bash", "-c", f"set -euo pipefail\n{script}"],
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("modern")
    path.chmod(0o777)  # the image's user (uid 1000) writes here
    for name in CONFIGS:
        (path / "configs" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "configs" / name, path / "configs" / name)
    return path


@pytest.mark.timeout(1800)
def test_every_layer_runs_on_python_3_13_with_two_tf_distribute_workers(work: Path) -> None:
    ports = [f"localhost:{port}" for port in free_ports(2)]  # the container runs on the host's network
    workers = [json.dumps({"cluster": {"worker": list(ports)}, "task": {"type": "worker", "index": i}})
               for i in range(2)]
    out = docker(work, f"""
python -c 'import sys; print("python", sys.version.split()[0])'
python -m layer1_patches synth --n-slides 4 --size 2048 --seed 11 --tumour-fraction 0.3 --out slides
python -m layer1_patches extract --config configs/layer1/random.yaml --slides slides --annotations slides \\
    --out stores --set patch_size=32 --set sampling.random.per_class=60 --set sampling.random.grid_step=16 \\
    --set reader.threads=1
python -m layer1_patches index --inputs stores --out index.json --fractions train=0.5,val=0.5
TF_CONFIG='{workers[1]}' {TRAIN} > worker1.log 2>&1 &
TF_CONFIG='{workers[0]}' {TRAIN}
wait $!
python -m layer3_inference heatmap --config configs/layer3/heatmap.yaml --model run \\
    --slide "$(ls slides/*.tif | head -n1)" --out heatmaps
""")
    assert "python 3.13." in out, out
    env = json.loads((work / "run" / "environment.json").read_text())
    assert env["engine"] == "tf_distribute" and env["ranks"] == 2, env
    assert env["versions"]["python"].startswith("3.13.") and env["versions"]["keras"].startswith("tf_keras 2.21"), env
    framework = json.loads((work / "run" / "model.json").read_text())["framework"]
    assert framework["keras"].startswith("tf_keras 2.21") and framework["python"].startswith("3.13."), framework
    summaries = list((work / "heatmaps").glob("*/summary.json"))
    assert len(summaries) == 1, list((work / "heatmaps").rglob("*"))

    # the main environment (TF 2.15's Keras) cannot load it: one error line naming both environments
    proc = subprocess.run([sys.executable, "-m", "layer3_inference", "heatmap", "--config",
                           str(work / "configs" / "layer3" / "heatmap.yaml"), "--model", str(work / "run"), "--slide",
                           str(sorted((work / "slides").glob("*.tif"))[0]), "--out", str(work / "host_heatmaps")],
                          cwd=work, env=subprocess_env(), capture_output=True, text=True, timeout=600, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr[-3000:]
    assert re.search(r"saved by TensorFlow 2\.21\.\d+ with tf_keras 2\.21\.\d+ \(Python 3\.13\.", errors[0]), errors
