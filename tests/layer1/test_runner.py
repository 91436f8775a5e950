"""The worker's guard around one slide: failures become results, a SIGTERM stays a SIGTERM."""

from __future__ import annotations

import ctypes
import signal
from pathlib import Path

import pytest

from layer1_patches import runner
from layer1_patches.shared import signals


def _request(tmp_path: Path) -> runner.ExtractRequest:
    from layer1_patches.config import Layer1Config

    return runner.ExtractRequest(tmp_path / "a.tif", tmp_path, Layer1Config())


def test_a_sigterm_wrapped_by_ctypes_was_logged_as_an_unexpected_failure(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen in a loaded CI run: the signal arrived while ctypes converted OpenSlide's arguments, so the worker got
    ctypes.ArgumentError("argument 1: Terminated: SIGTERM"), logged a traceback and went on as if nothing stopped."""
    def interrupted(_req: runner.ExtractRequest) -> runner.ExtractResult:
        signals._received.append(signal.SIGTERM)  # what raise_terminated records before raising
        raise ctypes.ArgumentError("argument 1: Terminated: SIGTERM")

    monkeypatch.setattr(runner, "extract_slide", interrupted)
    monkeypatch.setattr(signals, "_received", [])
    with pytest.raises(signals.Terminated):
        runner._run_one(_request(tmp_path))


def test_an_unforeseen_failure_without_a_signal_is_a_failed_result(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(_req: runner.ExtractRequest) -> runner.ExtractResult:
        raise ValueError("a bug")

    monkeypatch.setattr(runner, "extract_slide", broken)
    monkeypatch.setattr(signals, "_received", [])
    result = runner._run_one(_request(tmp_path))
    assert (result.status, result.error) == ("failed", "ValueError: a bug")
