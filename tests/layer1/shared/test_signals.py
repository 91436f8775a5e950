"""`layer1_patches/shared/signals.py`: SIGTERM as an exception, remembered until the command's scope ends."""

from __future__ import annotations

import os
import signal

import pytest

from layer1_patches.shared import signals


def test_a_signal_is_remembered_inside_the_command_and_forgotten_after_it() -> None:
    """Regression (issue 19): `restore` left the signal in the record, so the next in-process writer's `check()`
    (a later test's, here the multi-node tests' cohort) raised a SIGTERM that had been handled long before."""
    previous = signals.stop_on_signals()
    try:
        with pytest.raises(signals.Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0)  # let the handler run here, inside the `raises` block
        assert signals.received() == signal.SIGTERM
        with pytest.raises(signals.Terminated):
            signals.check()  # within the command, a lost exception is raised again
    finally:
        signals.restore(previous)
    assert signals.received() is None
    signals.check()  # after it, nothing to raise
