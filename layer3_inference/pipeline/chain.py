"""Run an experiment's stages: as SLURM jobs chained with `afterok`, or locally one after another.

SLURM: Layer 1 array (Layer 1's own submit machinery) -> index -> Layer 2 -> heatmap array -> evaluate;
explain needs only the model, so it waits for Layer 2 alone; the report waits for evaluate (afterok) and
explain (afterany: a failed explanation should not cost the user the rest of the report).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from layer1_patches.atomic import write_json_atomic, write_text_atomic
from layer1_patches.cli.submit import sbatch_args as layer1_sbatch_args
from layer1_patches.errors import CamnetError
from layer1_patches.slurmjobs import array_spec, record_submission, sbatch
from layer3_inference.pipeline import stages
from layer3_inference.pipeline.config import REPO, Experiment, StageSlurm, resolved_yaml
from layer3_inference.pipeline.stages import STAGES, Layout

SLURM = REPO / "slurm"
Print = Callable[[str], None]


def sbatch_resources(s: StageSlurm, stage: str) -> list[str]:
    args = [f"--{k}={v}" for k, v in (("partition", s.partition), ("time", s.time), ("account", s.account),
                                       ("cpus-per-task", s.cpus)) if v is not None]
    if s.gpus:
        args.append(f"--gres=gpu:{s.gpus}")
    elif stage == "layer2":
        args.append("--gres=none")  # slurm/layer2_train.sbatch asks for 4 GPUs by default
    if stage == "layer2":
        args += ["--nodes=1", f"--ntasks-per-node={s.ranks}"]
    else:
        args.append(f"--ntasks={s.ranks}")
    return [*args, *s.extra]


@contextlib.contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    # sbatch copies the submitting environment into the job; --export cannot carry values with commas (binds)
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def job_env(exp: Experiment) -> dict[str, str]:
    env = {"CAMNET_ROOT": str(REPO), "HDF5_USE_FILE_LOCKING": "FALSE", "TF_CPP_MIN_LOG_LEVEL": "2"}
    if exp.cfg.container:
        env["CAMNET_SIF"] = exp.cfg.container
    if exp.cfg.bind:
        env["CAMNET_BIND"] = exp.cfg.bind
    return env


def _dependency(jobs: dict[str, str], stage: str) -> list[str]:
    after = {"index": ["layer1"], "layer2": ["index"], "heatmap": ["layer2"], "evaluate": ["heatmap"],
             "explain": ["layer2"]}
    if stage == "report":
        parts = [f"afterok:{jobs['evaluate']}"] + ([f"afterany:{jobs['explain']}"] if "explain" in jobs else [])
        return [f"--dependency={','.join(parts)}"]
    need = [jobs[s] for s in after.get(stage, []) if s in jobs]
    return [f"--dependency=afterok:{':'.join(need)}"] if need else []


def submit(exp: Experiment, echo: Print = print) -> dict[str, str]:
    """Submit every stage with its dependencies; stage -> job id, also saved in OUT/pipeline/jobs.json."""
    layout = Layout(exp.out)
    manifest = stages.write_manifests(exp)
    write_text_atomic(layout.resolved, resolved_yaml(exp))
    n = len(manifest.entries)
    logs = layout.logs
    jobs: dict[str, str] = {}

    def single(stage: str, script: Path, args: list[str], env: dict[str, str] | None = None,
               array: str | None = None) -> None:
        res = sbatch_resources(getattr(exp.cfg.slurm, stage), stage)
        output = f"--output={logs}/{stage}_%A_%a.out" if array else f"--output={logs}/{stage}_%j.out"
        command = [f"--job-name={exp.cfg.name}-{stage}", output, *([f"--array={array}"] if array else []), *res,
                   *_dependency(jobs, stage), str(script), *args]
        with _environ({**job_env(exp), **(env or {})}):
            jobs[stage] = sbatch(command, cwd=REPO)
        echo(f"  {stage:9s} job {jobs[stage]}")

    echo(f"submitting {exp.cfg.name}: {n} slides, outputs in {exp.out}")
    l1 = exp.cfg.slurm.layer1
    extra = [f"--job-name={exp.cfg.name}-layer1", *sbatch_resources(l1, "layer1")]
    with _environ(job_env(exp)):
        jobs["layer1"] = sbatch(layer1_sbatch_args(layout.manifest, manifest, list(range(n)), l1.max_parallel,
                                                   extra), cwd=REPO)
    record_submission(layout.patches, jobs["layer1"], list(range(n)))
    echo(f"  {'layer1':9s} job {jobs['layer1']} (array of {n})")
    single("index", SLURM / "pipeline_step.sbatch", stages.index_argv(exp))
    train_sets = stages.sets(stages.layer2_sets(layout, exp.cfg.layer2.overrides))
    single("layer2", SLURM / "layer2_train.sbatch", [exp.cfg.layer2.config, *train_sets])
    hm = exp.cfg.slurm.heatmap
    single("heatmap", SLURM / "layer3_heatmap.sbatch", [],
           {"CAMNET_MANIFEST": str(layout.heatmap_manifest), "CAMNET_MODEL": str(layout.run_dir),
            "CAMNET_OUT": str(layout.heatmaps), "CAMNET_CONFIG": exp.cfg.heatmap.config},
           array=array_spec(list(range(n)), hm.max_parallel))
    record_submission(layout.heatmaps, jobs["heatmap"], list(range(n)))
    single("evaluate", SLURM / "pipeline_step.sbatch", stages.evaluate_argv(exp))
    if exp.cfg.explain.enabled:
        single("explain", SLURM / "layer3_explain.sbatch", stages.explain_args(exp, manifest),
               {"CAMNET_CONFIG": exp.cfg.explain.config})
    single("report", SLURM / "pipeline_step.sbatch", stages.report_argv(exp))
    write_json_atomic(layout.jobs, {"submitted": time.time(), "mode": "slurm", "jobs": jobs})
    return jobs


# --- the local runner: the same commands as subprocesses, in order, resumable ---


@dataclass(frozen=True)
class StageRun:
    stage: str
    status: str  # done, skipped, failed
    seconds: float


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["HDF5_USE_FILE_LOCKING"] = "FALSE"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    return env


def _run_module(argv: list[str], log: Path) -> None:
    with open(log, "a") as f:
        f.write(f"$ python -m {' '.join(argv)}\n")
        f.flush()
        proc = subprocess.run([sys.executable, "-m", *argv], cwd=REPO, env=_python_env(), stdout=f,
                              stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise CamnetError(f"{argv[0]} {argv[1]} exited with status {proc.returncode}; log {log}:\n{tail}")


def _save_timing(layout: Layout, run: StageRun, start: float) -> None:
    try:
        data = json.loads(layout.timings.read_text())
    except (OSError, ValueError):
        data = {}
    data[run.stage] = {"status": run.status, "seconds": round(run.seconds, 2), "start": start,
                       "end": start + run.seconds}
    write_json_atomic(layout.timings, data)


def run_local(exp: Experiment, echo: Print = print, force: bool = False) -> list[StageRun]:
    """Every stage in order as subprocesses (what the SLURM jobs run); finished stages are skipped."""
    from layer3_inference.pipeline.report import write_report

    layout = Layout(exp.out)
    manifest = stages.write_manifests(exp)
    write_text_atomic(layout.resolved, resolved_yaml(exp))
    write_json_atomic(layout.jobs, {"submitted": time.time(), "mode": "local", "jobs": {}})
    n = len(manifest.entries)
    work: dict[str, Callable[[Path], None]] = {
        "layer1": lambda log: _layer1_local(layout.manifest, n, exp.cfg.local_workers, log),
        "index": lambda log: _run_module(stages.index_argv(exp), log),
        "layer2": lambda log: _run_module(stages.layer2_argv(exp), log),
        "heatmap": lambda log: _run_module(stages.heatmap_argv(exp, manifest), log),
        "evaluate": lambda log: _run_module(stages.evaluate_argv(exp), log),
        "explain": lambda log: _run_module(stages.explain_argv(exp, manifest), log),
        "report": lambda log: None,
    }
    runs: list[StageRun] = []
    for i, stage in enumerate(STAGES, 1):
        head = f"[{i}/{len(STAGES)}] {stage:9s}"
        if not stages.enabled(stage, exp):
            echo(f"{head} disabled")
            continue
        start = time.time()
        if stage == "report":
            # the report includes its own stage's timing only as "running": write it after the others
            path = write_report(exp)
            runs.append(StageRun(stage, "done", time.time() - start))
            _save_timing(layout, runs[-1], start)
            echo(f"{head} done in {runs[-1].seconds:.0f} s: {path}")
            continue
        if not force and stages.finished(stage, exp, manifest):
            echo(f"{head} finished before, skipped")
            runs.append(StageRun(stage, "skipped", 0.0))
            continue
        echo(f"{head} running (log {layout.logs / (stage + '.log')})")
        try:
            work[stage](layout.logs / f"{stage}.log")
        except CamnetError:
            _save_timing(layout, StageRun(stage, "failed", time.time() - start), start)
            raise
        runs.append(StageRun(stage, "done", time.time() - start))
        _save_timing(layout, runs[-1], start)
        echo(f"{head} done in {runs[-1].seconds:.0f} s")
    return runs


def _layer1_local(manifest: Path, n: int, workers: int, log: Path) -> None:
    # One `layer1_patches task` per slide, as the SLURM array runs them: same seeds, same task state files.
    def one(i: int) -> None:
        _run_module(["layer1_patches", "task", "--manifest", str(manifest), "--index", str(i)],
                    log.with_name(f"layer1_{i}.log"))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(one, i) for i in range(n)]:
            future.result()

