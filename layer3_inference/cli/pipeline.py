"""`pipeline`: a whole experiment from one YAML: submit to SLURM, run locally, status, report, demo."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from layer1_patches.shared.cli import add_overrides
from layer1_patches.shared.errors import CamnetError
from layer1_patches.shared.slurm import REPO
from layer3_inference.pipeline.config import load_experiment

DEMO_CONFIG = REPO / "configs" / "experiment" / "demo.yaml"


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "pipeline", help="the whole chain from one experiment YAML (SLURM or local), status and HTML report",
        description="Stages: layer1 (array per slide) -> index -> layer2 -> heatmap (array per slide) -> evaluate, "
                    "explain -> report. Outputs under the experiment's `out` folder.")
    cmds = p.add_subparsers(dest="pipeline_command", required=True)

    def common(name: str, text: str, config_required: bool = True) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = cmds.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        c.add_argument("--config", type=Path, required=config_required, help="experiment YAML (configs/experiment/)")
        add_overrides(c, "slurm.layer1.max_parallel=8")
        return c

    c = add_check_options(common("check", "find every problem before running: slides, annotations, weights, split "
                                         "plan, output folder (and SLURM with --slurm); exit 2 on any error"))
    c.add_argument("--slurm", action="store_true", help="also check what `submit` needs: sbatch on PATH and the "
                   "partitions of slurm.<stage>.partition in `sinfo`")
    c.set_defaults(func=run_check)
    c = add_check_options(common("submit", "submit every stage that is not current to SLURM, with afterok "
                                            "dependencies"))
    add_force(c)
    c.set_defaults(func=run_submit)
    c = add_check_options(common("run", "run every stage here, one after another (no SLURM); stages that are "
                                 "current (finished, same inputs) are skipped"))
    add_force(c)
    c.set_defaults(func=run_local)
    common("status", "each stage's jobs and state").set_defaults(func=run_status)
    common("report", "write OUT/report/index.html from whatever has finished").set_defaults(func=run_report)
    c = common("demo", "synthetic cohort + bundled slide through the whole chain (what `make demo` runs)", False)
    c.add_argument("--mode", choices=("auto", "slurm", "local"), default="auto",
                   help="auto: SLURM when a cluster answers (sinfo), else local")
    c.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the SLURM chain")
    c.add_argument("--n-slides", type=int, default=6, help="synthetic slides (two per patient)")
    c.add_argument("--size", type=int, default=4096, help="synthetic slide side in pixels")
    c.set_defaults(func=run_demo, config=DEMO_CONFIG)
    c = cmds.add_parser("heatmap-task", help="one heatmap array task of a JSON manifest (used by the sbatch script)",
                        description="Runs the heatmap of one slide of the pipeline's heatmap manifest: what each "
                                    "SLURM array task of the heatmap stage runs.")
    c.add_argument("--manifest", type=Path, required=True, help="the heatmap stage's manifest JSON")
    c.add_argument("--model", type=Path, required=True, metavar="RUN_DIR", help="Layer 2 run directory")
    c.add_argument("--index", type=int, default=None, help="entry; default $SLURM_ARRAY_TASK_ID")
    add_overrides(c)
    c.set_defaults(func=run_heatmap_task)


def add_force(c: argparse.ArgumentParser) -> None:
    c.add_argument("--force", action="append", nargs="?", const="all", metavar="STAGE",
                   choices=("layer1", "index", "layer2", "heatmap", "evaluate", "explain", "report", "all"),
                   help="redo STAGE and every stage after it that reads from it, even if current (repeatable); "
                        "alone: redo every stage")


def add_check_options(c: argparse.ArgumentParser) -> argparse.ArgumentParser:
    c.add_argument("--allow-orphans", action="store_true", help="an annotation file matching no slide is a warning, "
                   "not an error (default: error, as a misnamed annotation leaves its tumour slide tumour-free)")
    return c


def print_problems(problems: list[Any]) -> bool:
    """One `error:` / `warning:` line per problem on stderr; True when none is an error."""
    import sys

    for problem in problems:
        print(f"{problem.severity}: {problem.message}", file=sys.stderr)
    return not any(p.severity == "error" for p in problems)


def run_check(args: argparse.Namespace) -> int:
    from layer3_inference.pipeline.check import CheckOptions, run_checks

    result = run_checks(load_experiment(args.config, args.overrides), CheckOptions(args.allow_orphans, args.slurm))
    if not print_problems(result.problems):
        return 2
    print(result.summary())
    return 0


def checked(exp: Any, args: argparse.Namespace, slurm: bool) -> bool:
    """`pipeline check` before `run` / `submit`: nothing is written when it finds an error."""
    from layer3_inference.pipeline.check import CheckOptions, check_experiment

    return print_problems(check_experiment(exp, CheckOptions(args.allow_orphans, slurm)))


def run_submit(args: argparse.Namespace) -> int:
    from layer3_inference.pipeline.chain import submit

    exp = load_experiment(args.config, args.overrides)
    if not checked(exp, args, slurm=True):
        return 2
    jobs = submit(exp, force=args.force)
    print(f"status: python -m layer3_inference pipeline status --config {args.config}")
    print(f"report (when done): {exp.out / 'report' / 'index.html'}")
    print(" ".join(jobs.values()))
    return 0


def run_local(args: argparse.Namespace) -> int:
    from layer3_inference.pipeline.chain import run_local as local

    exp = load_experiment(args.config, args.overrides)
    if not checked(exp, args, slurm=False):
        return 2
    local(exp, force=args.force)
    print(f"report: {exp.out / 'report' / 'index.html'}")
    return 0


def run_status(args: argparse.Namespace) -> int:
    from layer3_inference.pipeline.status import format_status, stage_status

    rows = stage_status(load_experiment(args.config, args.overrides))
    print(format_status(rows))
    return 1 if any(r.state == "failed" for r in rows) else 0


def run_report(args: argparse.Namespace) -> int:
    from layer3_inference.pipeline.report import write_report

    print(f"report: {write_report(load_experiment(args.config, args.overrides))}")
    return 0


def run_heatmap_task(args: argparse.Namespace) -> int:
    from layer3_inference.pipeline.tasks import heatmap_task

    return heatmap_task(args.manifest, args.model, args.index, args.overrides)


def slurm_answers() -> bool:
    """A cluster answers `sinfo`; SLURM_CONF is taken from slurm/local/start.sh's env.sh when not set."""
    if shutil.which("sinfo") is None:
        return False
    conf = os.environ.get("SLURM_CONF")
    if not conf:
        state = Path(os.environ.get("CAMNET_SLURM_STATE_DIR") or Path(os.environ.get("TMPDIR") or "/tmp") /
                     "camnet-slurm")
        try:
            found = re.search(r"^export SLURM_CONF=(\S+)$", (state / "env.sh").read_text(), re.MULTILINE)
        except OSError:
            found = None
        conf = found.group(1) if found else "/etc/slurm/slurm.conf"
    if not Path(conf).is_file():  # clients retry a missing config for a minute: don't ask them
        return False
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], env={**os.environ, "SLURM_CONF": conf},
                              capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    if proc.returncode != 0 or not proc.stdout.strip():
        return False
    os.environ["SLURM_CONF"] = conf
    return True


def wait_for_chain(exp: Any, timeout: float) -> None:
    from layer3_inference.pipeline.status import stage_status

    start = time.monotonic()
    deadline = start + timeout
    seen: dict[str, tuple[str, str]] = {}
    while True:
        rows = stage_status(exp)
        for r in rows:
            if seen.get(r.stage) != (r.state, r.detail):
                seen[r.stage] = (r.state, r.detail)
                print(f"{time.monotonic() - start:6.0f} s  {r.stage:9s} {r.state:9s} {r.detail}".rstrip(), flush=True)
        report = next(r for r in rows if r.stage == "report")
        if report.state == "finished":
            return
        failed = [r for r in rows if r.state == "failed"]
        if failed or report.state in ("not submitted",):
            raise CamnetError(f"stage {failed[0].stage if failed else 'report'} failed: "
                              f"{failed[0].detail if failed else 'not submitted'}")
        if time.monotonic() > deadline:
            raise CamnetError(f"chain not finished after {timeout:.0f} s; follow it with `pipeline status`")
        time.sleep(3)


def run_demo(args: argparse.Namespace) -> int:
    from layer1_patches.synth import write_cohort

    start = time.monotonic()
    exp = load_experiment(args.config, args.overrides)
    if not exp.cfg.annotations:
        raise CamnetError(f"{args.config}: the demo writes its synthetic slides into 'annotations'; set it")
    folder = Path(exp.cfg.annotations)
    print(f"demo: synthetic cohort of {args.n_slides} slides of {args.size} px in {folder}", flush=True)
    write_cohort(folder, args.n_slides, args.size, seed=0, tumour_fraction=0.3)
    print(f"demo: synthetic cohort ready after {time.monotonic() - start:.0f} s", flush=True)
    mode = args.mode if args.mode != "auto" else ("slurm" if slurm_answers() else "local")
    if mode == "slurm":
        from layer3_inference.pipeline.chain import submit

        print(f"demo: a SLURM cluster answers ({os.environ.get('SLURM_CONF')}): submitting the chain", flush=True)
        submit(exp)
        wait_for_chain(exp, args.timeout)
    else:
        from layer3_inference.pipeline.chain import run_local as local

        why = "no SLURM cluster answers" if args.mode == "auto" else "--mode local"
        print(f"demo: {why}: running the chain here, stage by stage", flush=True)
        local(exp)
    from layer3_inference.pipeline.collect import collect
    from layer3_inference.pipeline.report import console_summary

    print("\n" + console_summary(collect(exp)))
    print(f"\ndemo finished in {time.monotonic() - start:.0f} s")
    print(f"report: {exp.out / 'report' / 'index.html'}")
    return 0
