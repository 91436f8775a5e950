"""Stage stamps: a change is named after the key (or the upstream stage) it began at, and the plan reruns
exactly the changed stage and the stages below it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from layer3_inference.pipeline import stamps
from layer3_inference.pipeline.stages import STAGES

BASE: dict[str, dict[str, Any]] = {
    "layer1": {"layer1.overrides": ["patch_size=32"], "layer1:patch_size": 32},
    "index": {"index.fractions": {"train": 0.5, "val": 0.5}, "index.seed": 0},
    "layer2": {"layer2.overrides": ["epochs=1"], "layer2:epochs": 1},
    "heatmap": {"heatmap.overrides": [], "heatmap:output.thumbnail_size": 128},
    "evaluate": {"evaluate.overrides": [], "evaluate:froc.fp_rates": [1, 2]},
    "explain": {"explain.overrides": [], "explain:select.k": 2},
    "report": {},
}


def current(changes: dict[str, dict[str, Any]] | None = None, version: str = "0.1.0") -> dict[str, stamps.Stamp]:
    made: dict[str, stamps.Stamp] = {}
    for stage in STAGES:
        config = {**BASE[stage], **(changes or {}).get(stage, {})}
        made[stage] = stamps.make_stamp(stage, {"command": [stage], "config": config, "version": version}, made)
    return made


def rerun(now: dict[str, stamps.Stamp], recorded: dict[str, stamps.Stamp | None] | None = None,
          finished: frozenset[str] = frozenset(STAGES), forced: frozenset[str] = frozenset()) -> list[str]:
    old = current() if recorded is None else recorded
    states = {s: stamps.StageState(s in finished, old.get(s)) for s in STAGES}
    todo = stamps.plan(states, now, forced)
    return [s for s in STAGES if todo.runs(s)]


def test_one_changed_key_per_stage_reruns_that_stage_and_those_below_it() -> None:
    expected = {
        "layer1": ("layer1.overrides", ["patch_size=64"], list(STAGES)),
        "index": ("index.fractions", {"train": 0.7, "val": 0.3}, list(STAGES[1:])),
        "layer2": ("layer2.overrides", ["epochs=2"], ["layer2", "heatmap", "evaluate", "explain", "report"]),
        "heatmap": ("heatmap.overrides", ["reader.threads=1"], ["heatmap", "evaluate", "report"]),
        "evaluate": ("evaluate.overrides", ["froc.fp_rates=[1]"], ["evaluate", "report"]),
        "explain": ("explain.overrides", ["select.k=3"], ["explain", "report"]),
    }
    for stage, (key, value, runs) in expected.items():
        assert rerun(current({stage: {key: value}})) == runs, stage
    assert rerun(current()) == ["report"]  # nothing changed: only the report, always rewritten


def test_changed_index_fractions_rerun_the_index_not_layer1() -> None:
    # issue 16: "index finished before, skipped" after index.fractions changed, and --force redid Layer 1 too
    now = current({"index": {"index.fractions": {"train": 0.7, "val": 0.3}}})
    todo = stamps.plan({s: stamps.StageState(True, current()[s]) for s in STAGES}, now, frozenset())
    assert not todo.runs("layer1") and todo.why["index"] == "index.fractions changed"
    assert todo.clears("index") and todo.clears("layer2")


def test_stale_reasons_name_the_key_or_the_stage_where_the_change_began() -> None:
    old = current()
    reasons = stamps.stale_reasons(old, current({"index": {"index.fractions": {"train": 1.0}}}))
    assert reasons == {s: "upstream index changed" for s in STAGES[2:]} | {"index": "index.fractions changed"}
    resolved = stamps.stale_reasons(old, current({"layer2": {"layer2.overrides": ["epochs=3"], "layer2:epochs": 3}}))
    assert resolved["layer2"] == "layer2.overrides changed (epochs)"
    assert resolved["explain"] == resolved["heatmap"] == resolved["report"] == "upstream layer2 changed"
    # an edit of the layer's YAML file changes the resolved config alone
    edited = stamps.stale_reasons(old, current({"layer2": {"layer2:epochs": 5}}))
    assert edited["layer2"] == "layer2 config epochs changed"
    assert set(stamps.stale_reasons(old, current(version="0.2.0")).values()) == {"CamNet version changed"}


def test_a_finished_stage_without_stamp_is_current_and_an_unfinished_one_reruns_with_those_below() -> None:
    # experiments finished by an earlier CamNet (no stamps) stay resumable
    unstamped: dict[str, stamps.Stamp | None] = dict.fromkeys(STAGES)
    assert rerun(current(), unstamped) == ["report"]
    assert rerun(current(), unstamped, frozenset(STAGES) - {"heatmap"}) == ["heatmap", "evaluate", "report"]


def test_new_slides_are_added_without_clearing_the_finished_ones() -> None:
    old = current()
    now = dict(old)
    now["layer1"] = stamps.Stamp("layer1", {**old["layer1"].parts, "cohort": [["a.tif", ""], ["b.tif", ""]]})
    todo = stamps.plan({s: stamps.StageState(s != "layer1", old[s]) for s in STAGES}, now, frozenset())
    assert todo.runs("layer1") and not todo.clears("layer1")  # extract skips the slides already finished
    finished = stamps.plan({s: stamps.StageState(True, old[s]) for s in STAGES}, now, frozenset())
    assert finished.why["layer1"] == stamps.COHORT_CHANGED and not finished.clears("layer1")


def test_force_stage_redoes_it_and_its_dependants_and_plain_force_everything() -> None:
    assert rerun(current(), forced=stamps.forced_stages(["heatmap"], STAGES)) == ["heatmap", "evaluate", "report"]
    assert rerun(current(), forced=stamps.forced_stages(["all"], STAGES)) == list(STAGES)
    assert rerun(current(), forced=stamps.forced_stages(True, STAGES)) == list(STAGES)
    assert stamps.forced_stages(None, STAGES) == frozenset()


def test_stamps_and_pending_stamps_round_trip(tmp_path: Path) -> None:
    stamp = current()["index"]
    stamps.write_stamp(tmp_path, stamp)
    read = stamps.read_stamp(tmp_path, "index")
    assert read is not None and read.hash == stamp.hash
    stamps.write_pending(tmp_path, stamp, "42")
    pending = stamps.read_pending(tmp_path, "index")
    assert pending is not None and pending[0].hash == stamp.hash and pending[1] == "42"
    stamps.remove_stamp(tmp_path, "index")
    assert stamps.read_stamp(tmp_path, "index") is None and stamps.read_pending(tmp_path, "index") is None
    (tmp_path / "stamps" / "layer1.json").write_text("{not json")
    assert stamps.read_stamp(tmp_path, "layer1") is None  # unreadable: treated as unstamped, not a crash


def test_an_unfinished_stage_recorded_under_another_config_is_cleared_not_resumed() -> None:
    # review of issue 16: "not finished" came before "stale", so a partial output of another config was resumed
    old = current({"layer2": {"layer2.overrides": ["epochs=2"]}})
    states = {s: stamps.StageState(s != "layer2", old[s] if s == "layer2" else current()[s]) for s in STAGES}
    todo = stamps.plan(states, current(), frozenset())
    assert todo.why["layer2"] == "layer2.overrides changed" and todo.clears("layer2")
    same = stamps.plan({**states, "layer2": stamps.StageState(False, current()["layer2"])}, current(), frozenset())
    assert same.why["layer2"] == stamps.NOT_FINISHED and not same.clears("layer2")  # its own partial: resumed


def test_a_changed_annotation_clears_that_slide_alone() -> None:
    # review of issue 16: a cohort change never cleared, and extract refused a store made with another annotation
    def cohort(pairs: list[list[str]]) -> dict[str, stamps.Stamp]:
        made = current()
        made["layer1"] = stamps.Stamp("layer1", {**made["layer1"].parts, "cohort": pairs})
        return made

    old = cohort([["a.tif", ""], ["b.tif", "b.xml"], ["c.tif", "c.xml"]])
    now = cohort([["a.tif", "a.xml"], ["b.tif", "B.geojson"], ["d.tif", ""]])  # added, renamed; c left, d new
    todo = stamps.plan({s: stamps.StageState(s != "layer1", old[s]) for s in STAGES}, now, frozenset())
    assert todo.why["layer1"] == stamps.COHORT_CHANGED and not todo.clears("layer1")
    assert todo.slides == {"layer1": ["a.tif", "b.tif"]}
    assert stamps.changed_slides(None, now["layer1"].parts) == []


def test_a_pending_stamp_names_unfinished_outputs_and_those_completed_after_it() -> None:
    old, new = current()["index"], current({"index": {"index.seed": 1}})["index"]
    assert stamps.recorded(None, new, finished=False, made_after_pending=False) is new  # running or interrupted
    assert stamps.recorded(None, new, finished=True, made_after_pending=True) is new  # its job finished
    assert stamps.recorded(old, new, finished=True, made_after_pending=False) is old  # an earlier run's outputs
    assert stamps.recorded(None, None, finished=True, made_after_pending=False) is None


def test_a_version_bump_reruns_array_stages_without_clearing_them() -> None:
    # review of issue 16: a version bump deleted every store, though extract keeps each one still valid
    def made(version: str) -> dict[str, stamps.Stamp]:
        out: dict[str, stamps.Stamp] = {}
        for stage in STAGES:
            cohort = {"cohort": [["a.tif", ""]]} if stage in ("layer1", "heatmap") else {}
            out[stage] = stamps.make_stamp(stage, {"config": BASE[stage], "version": version, **cohort}, out)
        return out

    old, now = made("0.1.0"), made("0.2.0")
    todo = stamps.plan({s: stamps.StageState(True, old[s]) for s in STAGES}, now, frozenset())
    assert todo.why["layer1"] == "CamNet version changed" and not todo.clears("layer1")
    assert todo.clears("layer2") and todo.clears("heatmap")  # the heatmap's model changed: it is redone
    forced = stamps.plan({s: stamps.StageState(True, old[s]) for s in STAGES}, now, frozenset({"layer1"}))
    assert forced.clears("layer1")
