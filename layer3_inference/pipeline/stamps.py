"""Stage stamps: what each finished stage was made from, so `pipeline run` reruns only what changed.

A stamp (OUT/pipeline/stamps/<stage>.json) holds a hash and the parts it is made of: the stage's command line
(without config paths), its resolved config as a flat key -> value map, the hashes of the stages it reads from,
the cohort of an array stage and the code version. The parts are what the stage's outputs depend on, as the layer
itself judges it: Layer 1's store identity leaves `reader` out, so the stamp does too (see stages.py); and an
array stage whose stamp moved only by the version or the cohort reruns its tasks without clearing, since each
task judges its slide's output by the slide's own identity, which has no version. Keeping the parts, not just
the hash, lets a difference be named ("index.fractions changed"). Stamps depend on configuration alone, never on
output contents, so every stage's current stamp is known before anything runs, and a downstream stage is stale
exactly when an upstream stage's stamp moved.

While a stage runs (or its SLURM job waits), the stamp it is making is "pending": its outputs on disk are being
made from it. A pending stamp becomes the stamp when the stage finishes (see `recorded`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layer1_patches.shared.atomic import read_json_object, write_json_atomic

STAMP_VERSION = 2  # 1 held config paths and Layer 1's reader: read as no stamp (current)
# The stages each stage reads from: the SLURM dependencies of chain.py, and the order staleness flows in.
UPSTREAM: dict[str, tuple[str, ...]] = {"layer1": (), "index": ("layer1",), "layer2": ("index",),
                                        "heatmap": ("layer2",), "evaluate": ("heatmap",), "explain": ("layer2",),
                                        "report": ("evaluate", "explain")}
NOT_FINISHED = "not finished"
COHORT_CHANGED = "cohort changed"


@dataclass(frozen=True)
class Stamp:
    stage: str
    parts: dict[str, Any]

    @property
    def hash(self) -> str:
        canonical = json.dumps(self.parts, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> dotted keys; lists stay values (an override list is one thing to a user)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def config_part(stage: str, ref: Mapping[str, Any], resolved: Mapping[str, Any] | None) -> dict[str, Any]:
    """The experiment's keys of a stage (`layer2.overrides`, `index.fractions`) as given, and the layer's
    resolved config (YAML plus overrides, as a mapping) as `layer2:epochs`: an edit of the YAML file changes only
    the latter. The YAML's path is left out: the same content at another path is the same config."""
    given = {f"{stage}.{k}": v for k, v in ref.items() if k != "config"}
    return {**given, **({f"{stage}:{k}": v for k, v in flatten(resolved).items()} if resolved else {})}


def make_stamp(stage: str, parts: dict[str, Any], upstream: Mapping[str, Stamp]) -> Stamp:
    """The stamp of `stage` from its own parts and its upstream stages' (current) stamps."""
    ups = {s: upstream[s].hash for s in UPSTREAM[stage] if s in upstream}
    return Stamp(stage, {**parts, "upstream": ups})


def _changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def reason(old: Mapping[str, Any], new: Mapping[str, Any], roots: Mapping[str, str] | None = None) -> str:
    """Why a stage recorded with parts `old` is stale now (parts `new`); "" when nothing differs.

    An upstream change is named after the stage where it began (`roots`: stage -> that stage), so every stage
    below a changed index says "upstream index changed", not "upstream layer2 changed"."""
    if old.get("version") != new.get("version"):
        return "CamNet version changed"
    old_cfg, new_cfg = old.get("config", {}), new.get("config", {})
    keys = _changed_keys(old_cfg, new_cfg)
    given = [k for k in keys if ":" not in k]
    if given:
        resolved = [k.split(":", 1)[1] for k in keys if ":" in k]
        return f"{', '.join(given)} changed" + (f" ({', '.join(resolved[:3])})" if resolved else "")
    if keys:
        stage = keys[0].split(":", 1)[0]
        return f"{stage} config {', '.join(k.split(':', 1)[1] for k in keys[:3])} changed"
    ups = _changed_keys(old.get("upstream", {}), new.get("upstream", {}))
    if ups:
        named = dict.fromkeys((roots or {}).get(u, u) for u in ups)
        return f"upstream {', '.join(named)} changed"
    if old.get("cohort") != new.get("cohort"):
        return COHORT_CHANGED
    return "command line changed" if old.get("command") != new.get("command") else ""


def stale_reasons(recorded: Mapping[str, Stamp | None], current: Mapping[str, Stamp]) -> dict[str, str]:
    """Stage -> why its recorded stamp differs from its current one, for stages that have a recorded stamp.

    `current` must be in pipeline order, so an upstream stage's root is known before its dependants ask."""
    reasons: dict[str, str] = {}
    roots: dict[str, str] = {}
    for stage, now in current.items():
        old = recorded.get(stage)
        if old is None or old.hash == now.hash:
            continue
        reasons[stage] = reason(old.parts, now.parts, roots)
        ups = _changed_keys(old.parts.get("upstream", {}), now.parts.get("upstream", {}))
        if reasons[stage].startswith("upstream ") and ups:
            roots[stage] = roots.get(ups[0], ups[0])
    return reasons


def changed_slides(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """Slides in both cohorts whose annotation differs (added, removed, renamed): their finished outputs were made
    with the other annotation, which the layer refuses. Slides only in one cohort are not among them: a new one is
    simply made, a removed one is left alone (unused, not deleted)."""
    before = {slide: annotation for slide, annotation in (old or {}).get("cohort", [])}
    return sorted(slide for slide, annotation in new.get("cohort", [])
                  if slide in before and before[slide] != annotation)


@dataclass(frozen=True)
class Plan:
    """Per stage: why it runs now ("" = skip it, it is finished and current), the stamp it will record, and the
    slides whose outputs go first when the stage is not cleared as a whole."""

    why: dict[str, str]
    current: dict[str, Stamp]
    slides: dict[str, list[str]] = field(default_factory=dict)

    def runs(self, stage: str) -> bool:
        return bool(self.why.get(stage))

    keep: frozenset[str] = frozenset()

    def clears(self, stage: str) -> bool:
        """Whether the stage's earlier outputs go before it runs: they were made from something else (a finished
        Layer 1 store or heatmap of another config is refused by its layer, a run dir would resume), unless only
        missing outputs (a failed slide, new slides) are to be made, or the stage's tasks judge each slide
        themselves (`keep`)."""
        return (self.runs(stage) and self.why[stage] not in (NOT_FINISHED, COHORT_CHANGED, "always")
                and stage not in self.keep)


@dataclass(frozen=True)
class StageState:
    """What the planner needs to know of one stage."""

    finished: bool
    recorded: Stamp | None


def plan(states: Mapping[str, StageState], current: Mapping[str, Stamp], forced: frozenset[str]) -> Plan:
    """Which stages run, in pipeline order: forced ones, stale ones, unfinished ones, and every stage below a
    stage that runs. Stale comes before unfinished: an output left unfinished under another config is cleared, not
    resumed. A finished stage without a stamp (an older CamNet's) counts as current. The report always runs: it
    shows the other stages' timings."""
    stale = stale_reasons({s: st.recorded for s, st in states.items()}, current)
    why: dict[str, str] = {}
    for stage, state in states.items():
        above = [u for u in UPSTREAM[stage] if why.get(u)]
        if stage in forced:
            why[stage] = "forced"
        elif above:
            why[stage] = stale.get(stage) or f"upstream {above[0]} reruns"
        elif stale.get(stage):
            why[stage] = stale[stage]
        elif not state.finished:
            why[stage] = NOT_FINISHED
        else:
            why[stage] = "always" if stage == "report" else ""
    keep = frozenset(s for s, st in states.items() if s not in forced and per_slide_change(st.recorded, current[s]))
    todo = Plan(why, dict(current), keep=keep)
    slides = {s: changed_slides(st.recorded.parts if st.recorded else None, current[s].parts)
              for s, st in states.items() if todo.runs(s) and not todo.clears(s)}
    return Plan(why, dict(current), {s: v for s, v in slides.items() if v}, keep)


def per_slide_change(old: Stamp | None, new: Stamp) -> bool:
    """Whether an array stage's stamp moved by its cohort or the CamNet version alone: its tasks skip each slide
    whose own identity still matches (and the layer refuses one that does not), so nothing is cleared."""
    if old is None or "cohort" not in new.parts:
        return False
    changed = set(_changed_keys(old.parts, new.parts))
    return bool(changed) and changed <= {"cohort", "version"}


def forced_stages(force: bool | list[str] | None, stages: tuple[str, ...]) -> frozenset[str]:
    """`--force` alone (or `--force all`): every stage; `--force STAGE`: that stage (its dependants follow by
    the plan)."""
    if force is True or (isinstance(force, list) and "all" in force):
        return frozenset(stages)
    return frozenset(force or ())


# --- thin I/O ---


def stamp_path(state_dir: Path, stage: str) -> Path:
    return state_dir / "stamps" / f"{stage}.json"


def read_stamp(state_dir: Path, stage: str) -> Stamp | None:
    """The recorded stamp, None when there is none (or it is unreadable: then the stage counts as unstamped)."""
    data = read_json_object(stamp_path(state_dir, stage))
    parts = data.get("parts")
    if data.get("stamp_version") != STAMP_VERSION or not isinstance(parts, dict):
        return None
    return Stamp(stage, parts)


def write_stamp(state_dir: Path, stamp: Stamp) -> Path:
    path = stamp_path(state_dir, stamp.stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(path, {"stamp_version": STAMP_VERSION, "stage": stamp.stage, "hash": stamp.hash,
                                    "parts": stamp.parts})


def remove_stamp(state_dir: Path, stage: str) -> None:
    """Before a stage's outputs change: neither its stamp nor a submission's pending one may name them."""
    stamp_path(state_dir, stage).unlink(missing_ok=True)
    remove_pending(state_dir, stage)


# A SLURM submission cannot stamp its stages (they have not run); it records what each job will have made from,
# and `pipeline status` turns that into the stage's stamp once it sees the job finished.


def pending_path(state_dir: Path, stage: str) -> Path:
    return state_dir / "stamps" / "pending" / f"{stage}.json"


def write_pending(state_dir: Path, stamp: Stamp, job: str) -> Path:
    path = pending_path(state_dir, stamp.stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json_atomic(path, {"stamp_version": STAMP_VERSION, "stage": stamp.stage, "job": job,
                                    "parts": stamp.parts})


def begin(state_dir: Path, stamp: Stamp, job: str) -> None:
    """A stage starts making its outputs (or its job is queued to): the stamp being made is recorded first, then the
    old one goes, so at every moment one of them names what is on disk."""
    write_pending(state_dir, stamp, job)
    stamp_path(state_dir, stamp.stage).unlink(missing_ok=True)


def finish(state_dir: Path, stamp: Stamp) -> None:
    write_stamp(state_dir, stamp)
    remove_pending(state_dir, stamp.stage)


def recorded(stamp: Stamp | None, pending: Stamp | None, finished: bool, made_after_pending: bool) -> Stamp | None:
    """What a stage's outputs on disk were made from. A pending stamp names them while they are unfinished (an
    interrupted or queued stage) and once they were completed after it was written (a SLURM job that finished,
    whether or not `pipeline status` saw it); complete outputs older than it are an earlier run's."""
    if pending is not None and (not finished or made_after_pending):
        return pending
    return stamp


def read_pending(state_dir: Path, stage: str) -> tuple[Stamp, str] | None:
    data = read_json_object(pending_path(state_dir, stage))
    parts = data.get("parts")
    if data.get("stamp_version") != STAMP_VERSION or not isinstance(parts, dict):
        return None
    return Stamp(stage, parts), str(data.get("job", ""))


def remove_pending(state_dir: Path, stage: str) -> None:
    pending_path(state_dir, stage).unlink(missing_ok=True)
