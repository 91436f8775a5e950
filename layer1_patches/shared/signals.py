"""SIGTERM and SIGINT as an exception in the main thread, and a flag for when that exception is lost.

`scancel` and SLURM time limits send SIGTERM; without a handler Python dies on the spot and a writer's partial
output stays. `Terminated` (a `KeyboardInterrupt`, so `except Exception` does not swallow it) unwinds the command
instead, running every writer's cleanup. Python drops exceptions raised in `__del__` and weakref callbacks
(h5py runs both while it frees objects), so a signal that lands there would be lost: the flag remembers it,
writers call `check()` at their safe points (every batch, before the final rename), and the CLI frame after the
command returns.
"""

from __future__ import annotations

import signal
import sys
import threading

_received: list[int] = []  # signals received since `stop_on_signals`


class Terminated(KeyboardInterrupt):
    """SIGTERM (scancel, a SLURM time limit) or SIGINT, raised in the main thread like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    def __reduce__(self) -> tuple[type[Terminated], tuple[int]]:
        # A worker process hands its exception back pickled; the default reduce re-calls __init__ with the name.
        return Terminated, (self.signum,)


def raise_terminated(signum: int, _frame: object) -> None:
    _received.append(signum)
    raise Terminated(signum)


def _unraisable(info: sys.UnraisableHookArgs) -> None:
    if isinstance(info.exc_value, Terminated):
        return  # remembered in `_received`; `check()` raises it again where it can unwind
    sys.__unraisablehook__(info)


def stop_on_signals() -> dict[int, object]:
    """Turn SIGTERM and SIGINT into `Terminated`; a command with its own handler (training) installs it later.

    Returns the handlers replaced, for a caller running commands in-process (tests) to put back.
    """
    _received.clear()
    sys.unraisablehook = _unraisable  # no "Exception ignored" traceback for a signal a library swallowed
    if threading.current_thread() is not threading.main_thread():
        return {}  # signal handlers can only be set from the main thread (commands called from a test's thread)
    return {sig: signal.signal(sig, raise_terminated) for sig in (signal.SIGTERM, signal.SIGINT)}


def restore(previous: dict[int, object]) -> None:
    """End of the command: the handlers it replaced, and the record of its signals cleared (a signal it handled
    must not stop the next in-process writer's `check()`)."""
    for sig, handler in previous.items():
        signal.signal(sig, handler)  # type: ignore[arg-type]
    sys.unraisablehook = sys.__unraisablehook__
    _received.clear()


def received() -> int | None:
    """The first signal received since `stop_on_signals`, even if its exception was swallowed; else None."""
    return _received[0] if _received else None


def check() -> None:
    """Raise `Terminated` again if a signal arrived whose exception was lost (see the module docstring)."""
    if _received:
        raise Terminated(_received[0])
