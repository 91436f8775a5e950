from __future__ import annotations

import pytest

from layer2_training.config import ScheduleConfig
from layer2_training.schedule import lr_at, make_schedule


@pytest.mark.parametrize("cfg", [
    ScheduleConfig(lr=0.1, warmup_epochs=2, kind="cosine", min_lr_factor=0.1),
    ScheduleConfig(lr=0.1, warmup_epochs=1, kind="step", step_epochs=[3, 5]),
    ScheduleConfig(lr=0.1, kind="constant", scale_by_ranks=False),
])
def test_schedule_matches_its_python_twin(cfg: ScheduleConfig) -> None:
    schedule = make_schedule(cfg, ranks=4, steps_per_epoch=10, total_epochs=8, switch_epoch=4,
                             switch_factor=0.5)
    for step in (0, 5, 10, 25, 39, 40, 55, 79):
        assert float(schedule(step)) == pytest.approx(lr_at(step, cfg, 4, 10, 8, (4, 0.5)), rel=1e-5)


def test_warmup_scales_by_ranks() -> None:
    cfg = ScheduleConfig(lr=0.1, warmup_epochs=2)
    assert lr_at(0, cfg, 4, 10, 5) == pytest.approx(0.1)
    assert lr_at(10, cfg, 4, 10, 5) == pytest.approx(0.25)
    assert lr_at(20, cfg, 4, 10, 5) == pytest.approx(0.4)
