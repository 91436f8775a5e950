"""The report's interpretability section: a sanity check is shown as passed only when it could have failed."""

from __future__ import annotations

from layer3_inference.pipeline.report import render

from .conftest import parse_report, report_data

DEAD = 2e-12  # the randomised model: logits between -3.5e-12 and -1.1e-12


def sanity_file(random_std: float, status: str, depth_std: float) -> dict:
    """explain's sanity.json: two cascade depths, Grad-CAM per depth."""
    return {"random_logit_std": random_std, "trained_logit_std": 2.0, "min_logit_std": 1e-3, "status": status,
            "depths": [{"depth": 1, "randomised_from": "logit", "randomised_to": "block_3", "layers": 2,
                        "random_logit_std": depth_std},
                       {"depth": 2, "randomised_from": "logit", "randomised_to": "stem", "layers": 9,
                        "random_logit_std": random_std}],
            "methods": {"gradcam": {"status": status, "input_independent": False, "cross_patch_correlation": 0.4,
                                    "threshold": 0.5, "rank_correlation": [0.1],
                                    "by_depth": [{"depth": 1, "median": 0.6, "mean": 0.55, "status": "failed"},
                                                 {"depth": 2, "median": 0.1, "mean": 0.12, "status": status}]},
                        "lime": {"status": status, "input_independent": True, "cross_patch_correlation": 0.95,
                                 "threshold": 0.5, "by_depth": []}}}


def explain_summary(sanity: dict) -> dict:
    methods = {m: {"status": v["status"], "median": 0.1, "input_independent": v["input_independent"]}
               for m, v in sanity["methods"].items()}
    return {"sanity": {"status": sanity["status"], "random_logit_std": sanity["random_logit_std"], "methods": methods}}


def rendered(summary: dict, sanity: dict) -> tuple[dict, dict]:
    parsed = parse_report(render(report_data(explain_summary=summary, explain_sanity=sanity)))
    return parsed.tables, parsed.texts


def test_report_never_shows_a_pass_for_a_dead_randomised_model() -> None:
    # explain may itself call it inconclusive, or (the old bug) passed: with a dead randomised model the report
    # shows inconclusive either way, in the status line, the method table and at the dead depth
    for claimed in ("inconclusive", "passed"):
        sanity = sanity_file(DEAD, claimed, depth_std=DEAD)
        tables, texts = rendered(explain_summary(sanity), sanity)
        dead = "inconclusive: the randomised model's outputs do not vary (std 2e-12 of its logits across patches"
        assert texts["sanity-status"].startswith(dead)
        assert "the model may be too small to explain" in texts["sanity-status"]
        statuses = [r["status"] for r in tables["sanity"]] + [r["status"] for r in tables["sanity-depths"]]
        assert "passed" not in statuses and statuses.count("inconclusive") == 3, statuses


def test_a_dead_depth_is_inconclusive_even_when_the_deepest_one_varies() -> None:
    sanity = sanity_file(0.8, "passed", depth_std=DEAD)
    sanity["methods"]["gradcam"]["by_depth"][0]["status"] = "passed"
    tables, texts = rendered(explain_summary(sanity), sanity)
    assert texts["sanity-status"].startswith("passed:")
    depths = {(r["method"], r["depth"]): r for r in tables["sanity-depths"]}
    assert depths[("gradcam", "1")]["status"] == "inconclusive" and depths[("gradcam", "2")]["status"] == "passed"


def test_report_shows_sanity_by_depth_and_input_independent_maps() -> None:
    sanity = sanity_file(0.8, "passed", depth_std=0.3)
    tables, texts = rendered(explain_summary(sanity), sanity)
    assert texts["sanity-random-logit-std"] == "randomised model's logit std across patches: 0.8"
    methods = {r["method"]: r for r in tables["sanity"]}
    assert methods["gradcam"]["status"] == "passed" and methods["lime"]["input_independent"] == "yes"
    assert methods["lime"]["cross_patch_correlation"] == "0.9500"
    assert [(r["depth"], r["randomised_to"], r["median"], r["random_logit_std"]) for r in tables["sanity-depths"]] == [
        ("1", "block_3", "0.6000", "0.3000"), ("2", "stem", "0.1000", "0.8000")]
    assert texts["sanity-input-independent"].startswith("input-independent: lime:")


def test_report_never_shows_a_pass_from_an_older_sanity_output() -> None:
    old = {"sanity": {"gradcam": {"median": 0.05, "flagged": False}, "lime": {"median": 0.95, "flagged": True}}}
    old_file = {"gradcam": {"rank_correlation": [0.05], "median": 0.05, "flagged": False, "threshold": 0.5}}
    tables, texts = rendered(old, old_file)
    assert {r["method"]: r["status"] for r in tables["sanity"]} == {"gradcam": "unverified (older output)",
                                                                    "lime": "flagged (older output)"}
    assert texts["sanity-status"].startswith("unverified (older output)")
    # a new-format summary that lacks random_logit_std proves nothing either
    summary = {"sanity": {"status": "passed", "methods": {"gradcam": {"status": "passed", "median": 0.1}}}}
    tables, texts = rendered(summary, {})
    assert [r["status"] for r in tables["sanity"]] == ["unverified (older output)"]


def test_rcv_table_shows_the_label_baseline_and_status() -> None:
    rows = [{"layer": "block_3", "concept": "nuclei_count", "r2_heldout": 0.41, "r2_label_baseline": 0.39,
             "tcav": 0.7, "tcav_std": 0.05, "tcav_random_mean": 0.5, "tcav_random_std": 0.1, "p_value": 0.001,
             "p_adjusted": 0.016, "significant": False, "status": "restates class"},
            {"layer": "logit", "concept": "contrast", "r2_heldout": 0.2, "tcav": 1.0, "p_value": None,
             "significant": None, "status": "undefined"}]
    tables, _ = rendered({"rcv": rows}, {})
    got = {r["concept"]: r for r in tables["rcv"]}
    assert (got["nuclei_count"]["r2_label_baseline"], got["nuclei_count"]["p_adjusted"],
            got["nuclei_count"]["status"]) == ("0.3900", "0.0160", "restates class")
    # a small p that is still not significant says why, against the threshold actually used (1 test made)
    assert got["nuclei_count"]["significant"] == "no: p 0.001 < 0.05/1 = 0.05, but restates class"
    assert (got["contrast"]["p_value"], got["contrast"]["significant"], got["contrast"]["status"]) == (
        "-", "no test (undefined)", "undefined")
