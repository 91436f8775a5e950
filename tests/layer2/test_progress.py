"""Progress lines of long steps (issue 16, point 4): ETA arithmetic, epoch lines across a resume, throttled loop
lines, and a training writing to a log file shows its epoch lines while it runs."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from layer2_training import progress
from tests.helpers import cli_env
from tests.layer2.conftest import REPO, base_config, write_config


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_eta_is_the_mean_epoch_time_times_the_epochs_left() -> None:
    # 10 s and 14 s: 12 s an epoch, 3 left
    assert progress.eta([10.0, 14.0], [1.0, 1.0], 3) == pytest.approx(36.0)
    # a resumed half epoch of 6 s runs at 12 s a full epoch
    assert progress.eta([6.0], [0.5], 4) == pytest.approx(48.0)
    assert progress.eta([6.0, 12.0], [0.5, 1.0], 2) == pytest.approx(24.0)
    assert progress.eta([5.0], [1.0], 0) == 0.0
    assert progress.eta([], [], 5) is None


def test_epoch_line_shows_metrics_training_first_then_validation() -> None:
    logs = {"val_loss": 0.5, "loss": 0.43215, "auc": 0.8, "val_auc": 0.75, "lr": 0.001}
    line = progress.epoch_line(2, 10, logs, 12.34, 86.0)
    assert line == "epoch 3/10: loss 0.4321 auc 0.8000 val_loss 0.5000 val_auc 0.7500 | 12.3 s/epoch, ETA 1 min 26 s"
    assert progress.epoch_line(9, 10, {}, 3.0, 0.0) == "epoch 10/10: 3.0 s/epoch, last epoch"


def run_epochs(clock: progress.EpochClock, fake: FakeClock, epochs: range, steps: int, seconds: float) -> None:
    clock.params = {"steps": steps}
    for epoch in epochs:
        clock.on_epoch_begin(epoch)
        fake.now += seconds
        clock.on_epoch_end(epoch, {"loss": 0.5})


def test_a_resumed_run_times_only_its_own_epochs(caplog: pytest.LogCaptureFixture) -> None:
    """Resumed mid-epoch 4 (of 10; 100 steps an epoch, 50 left): the partial epoch counts as half an epoch, and
    the 3 epochs of the earlier process are neither timed nor left to do."""
    fake = FakeClock()
    clock = progress.EpochClock(10, 100, bar=False, clock=fake)
    with caplog.at_level(logging.INFO, logger="camnet.progress"):
        run_epochs(clock, fake, range(3, 4), steps=50, seconds=10.0)  # the rest of epoch 4: 20 s a full epoch
        run_epochs(clock, fake, range(4, 6), steps=100, seconds=20.0)  # a new fit: full epochs
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["epoch 4/10: loss 0.5000 | 10.0 s/epoch, ETA 2 min 0 s",  # 6 epochs x 20 s
                     "epoch 5/10: loss 0.5000 | 20.0 s/epoch, ETA 1 min 40 s",
                     "epoch 6/10: loss 0.5000 | 20.0 s/epoch, ETA 1 min 20 s"]


def test_loop_lines_at_start_end_and_every_few_seconds(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeClock()
    with caplog.at_level(logging.INFO, logger="camnet.progress"), progress.scope("sanity depth 2/4"):
        ticker = progress.Ticker("lime", 8, "patches", "60 samples", clock=fake)
        for done in range(1, 9):
            fake.now += 2.0  # a line at most every EVERY (5) seconds: after patches 3 and 6, then the last
            ticker.tick(done)
    assert [r.getMessage() for r in caplog.records] == [
        f"explain: sanity depth 2/4: lime {n}/8 patches (60 samples)" for n in (0, 3, 6, 8)]


def test_other_ranks_write_no_loop_lines(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="camnet.progress"), progress.enabled(False):
        list(progress.ticking([1, 2], "gradcam", "patches"))
        progress.note("rcv: 2 layers")
    assert caplog.records == []


def test_tqdm_bar_on_a_terminal_only(capsys: pytest.CaptureFixture[str]) -> None:
    for bar in (True, False):
        fake = FakeClock()
        clock = progress.EpochClock(2, 4, bar=bar, clock=fake)
        clock.params = {"steps": 4}
        clock.on_epoch_begin(0)
        for batch in range(4):
            clock.on_train_batch_end(batch, {"loss": 0.1})
        clock.on_epoch_end(0, {"loss": 0.1})
        err = capsys.readouterr().err
        assert ("epoch 1/2" in err and "batch" in err) if bar else err == ""


# Trains the tiny model for 2 epochs as the pipeline runs a stage (stdout and stderr into one file), but holds the
# export until the test has seen both epoch lines in the file: lines buffered until the process ends never show.
HELD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from layer2_training import train
    from layer2_training.cli import main

    finish, sentinel = train.finish, Path(sys.argv[1])

    def held(*args, **kwargs):
        deadline = time.monotonic() + 90
        while not sentinel.exists():
            if time.monotonic() > deadline:
                sys.exit(3)
            time.sleep(0.05)
        return finish(*args, **kwargs)

    train.finish = held
    sys.exit(main(sys.argv[2:]))
""")


def test_epoch_lines_reach_the_log_file_while_training_runs(tmp_path: Path, tiny_index: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", base_config(tiny_index, tmp_path / "run", epochs=2, batch_size=8))
    script, sentinel, log = tmp_path / "held.py", tmp_path / "go", tmp_path / "train.log"
    script.write_text(HELD)
    with log.open("w") as out:
        proc: subprocess.Popen[Any] = subprocess.Popen(
            [sys.executable, str(script), str(sentinel), "train", "--config", str(cfg)], cwd=REPO, env=cli_env(),
            stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while "epoch 2/2:" not in log.read_text():
            assert proc.poll() is None, f"training ended before its epoch lines were in the log:\n{log.read_text()}"
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert proc.poll() is None  # still held before the export: the lines were written while it ran
        sentinel.touch()
        assert proc.wait(timeout=240) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    lines = [line for line in text.splitlines() if re.search(r"\bepoch \d/2:", line)]
    assert len(lines) == 2, text  # one line an epoch: no Keras `Epoch 1/2` lines beside ours
    assert "val_loss" in lines[0] and "s/epoch, ETA" in lines[0] and "last epoch" in lines[1]
    assert "\b" not in text and "Epoch 1/2" not in text and "ms/step" not in text
