"""`layer1_patches/shared/units.py`: durations as the logs, `pipeline status` and the report spell them."""

from __future__ import annotations

from layer1_patches.shared.units import duration


def test_durations_read_at_a_glance() -> None:
    # under 10 s a tenth still matters; above, whole seconds, then minutes, then hours and minutes
    assert [duration(v) for v in (0.31, 9.94, 42.4, 59.6, 60, 185, 3599, 3600, 7384, 7620)] == [
        "0.3 s", "9.9 s", "42 s", "1 min 0 s", "1 min 0 s", "3 min 5 s", "59 min 59 s", "1 h 0 min", "2 h 3 min",
        "2 h 7 min"]


def test_unknown_durations_are_a_dash() -> None:
    assert [duration(v) for v in (None, "x", float("nan"), -1)] == ["-", "-", "-", "-"]
