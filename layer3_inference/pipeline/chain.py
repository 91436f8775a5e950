"""Run an experiment's stages: as SLURM jobs chained with `afterok`, or locally one after another.

SLURM: Layer 1 array (Layer 1's own submit machinery) -> index -> Layer 2 -> heatmap array -> evaluate;
explain needs only the model, so it waits for Layer 2 alone; the report waits for evaluate (afterok) and
explain (afterany: a failed explanation should not cost the user the rest of the report).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from layer1_patches.shared.atomic import read_json_object, write_json_atomic, write_text_atomic
from layer1_patches.shared.errors import CamnetError
from layer1_patches.shared.manifest import Manifest
from layer1_patches.shared.slurm import REPO, SLURM_DIR, array_sbatch_args, array_spec, record_submission, sbatch
from layer3_inference.pipeline import stages, stamps
from layer3_inference.pipeline.config import Experiment, StageSlurm, resolved_yaml
from layer3_inference.pipeline.stages import STAGES, Layout

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
    if stage == "report":  # a stage missing from `jobs` was current, not submitted: nothing to wait for
        parts = [f"{kind}:{jobs[s]}" for s, kind in (("evaluate", "afterok"), ("explain", "afterany")) if s in jobs]
        return [f"--dependency={','.join(parts)}"] if parts else []
    need = [jobs[s] for s in after.get(stage, []) if s in jobs]
    return [f"--dependency=afterok:{':'.join(need)}"] if need else []


def _plan(exp: Experiment, manifest: Manifest, commands: dict[str, stages.StageCommand],
          force: bool | list[str] | None) -> stamps.Plan:
    current = stages.current_stamps(exp, manifest, commands)
    states = {}
    for stage in current:
        done = stages.finished(stage, exp, manifest)
        states[stage] = stamps.StageState(done, stages.recorded_stamp(stage, exp, manifest, done))
    return stamps.plan(states, current, stamps.forced_stages(force, STAGES))


def _clear(exp: Experiment, manifest: Manifest, todo: stamps.Plan, stage: str) -> None:
    """Before a stage runs: its outputs when made from something else, or those of the slides whose annotation
    changed (a finished store made with another annotation is refused by extract)."""
    if todo.clears(stage):
        stages.clear_outputs(stage, exp, manifest)
    elif todo.slides.get(stage):
        stages.clear_outputs(stage, exp, manifest, todo.slides[stage])


def cancel(job: str) -> None:
    """Cancel a job this submission holds (best effort: the error being raised is the one to show)."""
    subprocess.run(["scancel", job], capture_output=True, timeout=120, check=False)


def release(job: str) -> None:
    """Let a job submitted with --hold start."""
    proc = subprocess.run(["scontrol", "release", job], capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise CamnetError(f"scontrol release {job} failed: {proc.stderr.strip() or proc.stdout.strip()}; "
                          f"the job is held: release it with `scontrol release {job}` or cancel it")


def submit(exp: Experiment, echo: Print = print, force: bool | list[str] | None = False) -> dict[str, str]:
    """Submit every stage that is to run (see stamps.plan) with its dependencies; stage -> job id, also saved in
    OUT/pipeline/jobs.json. Current stages are not submitted; their dependants do not wait for them."""
    layout = Layout(exp.out)
    manifest = stages.write_manifests(exp)
    write_text_atomic(layout.resolved, resolved_yaml(exp))
    n = len(manifest.entries)
    commands = stages.commands(exp, manifest)
    todo = _plan(exp, manifest, commands, force)
    jobs: dict[str, str] = {}
    echo(f"submitting {exp.cfg.name}: {n} slides, outputs in {exp.out}")
    for stage in STAGES:
        if not stages.enabled(stage, exp):
            continue
        if not todo.runs(stage):
            echo(f"  {stage:9s} finished before, not submitted")
            continue
        cmd = commands[stage]
        res = getattr(exp.cfg.slurm, stage)
        # held until its outputs are cleared: nothing is removed before sbatch accepted the job
        head = [f"--job-name={exp.cfg.name}-{stage}", "--hold", *sbatch_resources(res, stage),
                *_dependency(jobs, stage)]
        script = SLURM_DIR / cmd.script
        if stage == "layer1":  # Layer 1's own array arguments (logs, dense shards), as its `submit` uses
            args = array_sbatch_args(script, layout.manifest, manifest, list(range(n)), res.max_parallel, head)
            if args[-2:] != cmd.script_args():  # the same command line either way; a bug here, not user input
                raise ValueError(f"layer1: {args[-2:]} differs from the stage's {cmd.script_args()}")
        else:
            output = f"--output={layout.logs}/{stage}_%A_%a.out" if cmd.array else \
                f"--output={layout.logs}/{stage}_%j.out"
            array = [f"--array={array_spec(list(range(n)), res.max_parallel)}"] if cmd.array else []
            args = [*head, output, *array, str(script), *cmd.script_args()]
        with _environ(job_env(exp)):
            jobs[stage] = sbatch(args, cwd=REPO)
        try:
            _clear(exp, manifest, todo, stage)
            # stamped when the job is seen finished (status.promote_pending, or the next plan: recorded_stamp)
            stamps.begin(layout.state, todo.current[stage], jobs[stage])
        except (CamnetError, OSError):
            cancel(jobs[stage])  # held, and its outputs may be half cleared: it must not run as it is
            raise
        release(jobs[stage])
        if cmd.array:
            record_submission(stages.array_output(stage, exp), jobs[stage], list(range(n)))
        echo(f"  {stage:9s} job {jobs[stage]}" + (f" (array of {n})" if cmd.array else "") +
             (f": {todo.why[stage]}" if todo.why[stage] != stamps.NOT_FINISHED else ""))
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


# Stage processes running now. On SIGTERM or Ctrl-C the runner passes SIGTERM on, as scancel does, so each stage
# removes its partial output and lock (and training saves its state); `subprocess.run` would SIGKILL them.
_children: set[subprocess.Popen[bytes]] = set()
_children_lock = threading.Lock()
_stopping = threading.Event()
STOP_GRACE_S = 120.0  # a stage still running this long after SIGTERM is killed


def _run_module(argv: list[str], log: Path) -> None:
    with open(log, "a") as f:
        # Logs are appended across runs (an earlier failure stays readable); a failure shows this run's part only.
        this_run = f.tell()
        f.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} run by pid {os.getpid()} ===\n"
                f"$ python -m {' '.join(argv)}\n")
        f.flush()
        with _children_lock:
            if _stopping.is_set():
                raise CamnetError(f"{argv[0]} {argv[1]}: not started, the runner is stopping")
            proc = subprocess.Popen([sys.executable, "-m", *argv], cwd=REPO, env=_python_env(), stdout=f,
                                    stderr=subprocess.STDOUT)
            _children.add(proc)
        try:
            returncode = proc.wait()
        except KeyboardInterrupt:
            _stop_children()
            raise
        finally:
            with _children_lock:
                _children.discard(proc)
    if returncode != 0:
        with open(log, "rb") as f:
            f.seek(this_run)
            tail = "\n".join(f.read().decode(errors="replace").splitlines()[-15:])
        raise CamnetError(f"{argv[0]} {argv[1]} exited with status {returncode}; log {log}:\n{tail}")


def _stop_children() -> None:
    """SIGTERM to every running stage, then wait for them to clean up (SIGKILL after STOP_GRACE_S)."""
    with _children_lock:
        _stopping.set()
        procs = list(_children)
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _save_timing(layout: Layout, run: StageRun, start: float) -> None:
    data = read_json_object(layout.timings)
    data[run.stage] = {"status": run.status, "seconds": round(run.seconds, 2), "start": start,
                       "end": start + run.seconds}
    write_json_atomic(layout.timings, data)


def _save_running(layout: Layout, stage: str, start: float, logs: str) -> None:
    """While a local stage runs, `pipeline status` shows it running, for how long and where its log is; the runner's
    host and pid tell an interrupted run (its process gone) from a running one."""
    data = read_json_object(layout.timings)
    data[stage] = {"status": "running", "start": start, "host": socket.gethostname(), "pid": os.getpid(),
                   "logs": logs}
    write_json_atomic(layout.timings, data)


def log_names(log: Path, array: bool, n: int) -> str:
    """The log files a stage writes, as they are named on disk: one per task for an array stage."""
    if not array:
        return str(log)
    first = log.with_name(f"{log.stem}_0.log")
    return str(first) if n == 1 else f"{first} .. {log.stem}_{n - 1}.log (one per slide)"


def run_local(exp: Experiment, echo: Print = print, force: bool | list[str] | None = False) -> list[StageRun]:
    """Every stage in order as subprocesses (the commands the SLURM jobs run). A stage runs when it is forced,
    unfinished, stale (its stamp differs: see stamps.py) or below a stage that runs; the others are skipped."""
    _stopping.clear()
    layout = Layout(exp.out)
    manifest = stages.write_manifests(exp)
    write_text_atomic(layout.resolved, resolved_yaml(exp))
    write_json_atomic(layout.jobs, {"submitted": time.time(), "mode": "local", "jobs": {}})
    commands = stages.commands(exp, manifest)
    todo = _plan(exp, manifest, commands, force)
    n = len(manifest.entries)
    runs: list[StageRun] = []
    for i, stage in enumerate(STAGES, 1):
        head = f"[{i}/{len(STAGES)}] {stage:9s}"
        if not stages.enabled(stage, exp):
            echo(f"{head} disabled")
            continue
        if not todo.runs(stage):
            echo(f"{head} finished before, skipped")
            runs.append(StageRun(stage, "skipped", 0.0))
            continue
        _clear(exp, manifest, todo, stage)
        # the stamp being made names the outputs from now on, so an interrupted stage is judged by it next time
        stamps.begin(layout.state, todo.current[stage], "local")
        log = layout.logs / f"{stage}.log"
        shown = log_names(log, commands[stage].array, n)
        echo(f"{head} running, {todo.why[stage]} (log {shown})")
        start = time.time()
        _save_running(layout, stage, start, shown)
        try:
            if commands[stage].array:
                # heatmap tasks each load the model (and on a workstation share its one GPU): one at a time
                workers = exp.cfg.local_workers if stage == "layer1" else 1
                _array_local(commands[stage], n, workers, log)
            else:
                _run_module(commands[stage].local_argv(), log)
        except CamnetError:
            _save_timing(layout, StageRun(stage, "failed", time.time() - start), start)
            raise
        stamps.finish(layout.state, todo.current[stage])
        runs.append(StageRun(stage, "done", time.time() - start))
        _save_timing(layout, runs[-1], start)
        echo(f"{head} done in {runs[-1].seconds:.0f} s" + (f": {layout.report}" if stage == "report" else ""))
    return runs


def _array_local(cmd: stages.StageCommand, n: int, workers: int, log: Path) -> None:
    # One task per manifest index, as the SLURM array runs them: same seeds, same task state files.
    def one(i: int) -> None:
        _run_module(cmd.local_argv(i), log.with_name(f"{cmd.stage}_{i}.log"))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        try:
            for future in [pool.submit(one, i) for i in range(n)]:
                future.result()
        except KeyboardInterrupt:  # in this (main) thread: stop the queued tasks and the running ones
            pool.shutdown(wait=False, cancel_futures=True)
            _stop_children()
            raise
