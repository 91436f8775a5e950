"""`layer1_patches/shared/cli.py`: the frame every command runs in: one error line, signals, exit statuses."""

from __future__ import annotations

import signal
import textwrap
from pathlib import Path

import pytest

from layer1_patches.shared.cli import run

COMMAND = '''
import errno, os, signal, time

def register(sub):
    p = sub.add_parser("boom")
    p.add_argument("what")
    p.set_defaults(func=run)

def run(args):
    if args.what == "full":
        raise OSError(errno.ENOSPC, "No space left on device", "/out/x.h5")
    if args.what == "bug":
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/code/bug")
    if args.what == "term":
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    return 0
'''


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "fakelayer" / "cli").mkdir(parents=True)
    (tmp_path / "fakelayer" / "__init__.py").write_text("")
    (tmp_path / "fakelayer" / "cli" / "__init__.py").write_text("")
    (tmp_path / "fakelayer" / "cli" / "boom.py").write_text(textwrap.dedent(COMMAND))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "fakelayer"


def test_full_disk_in_a_writer_without_its_own_handler_is_one_error_line(fake_package: str,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert run(fake_package, "", ("boom",), ["boom", "full"]) == 2
    assert capsys.readouterr().err.splitlines() == ["error: /out/x.h5: No space left on device"]


def test_other_os_errors_are_bugs_and_keep_their_traceback(fake_package: str) -> None:
    with pytest.raises(FileNotFoundError):
        run(fake_package, "", ("boom",), ["boom", "bug"])


def test_sigterm_unwinds_the_command_and_exits_143(fake_package: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Regression (issue 13): SIGTERM (scancel, time limit) had no handler, so partial output stayed until a rerun;
    # now it raises in the command, whose `with` blocks clean up.
    before = signal.getsignal(signal.SIGTERM)
    assert run(fake_package, "", ("boom",), ["boom", "term"]) == 143
    assert capsys.readouterr().err.splitlines() == [
        "error: interrupted by SIGTERM; partial output removed, finished outputs kept (rerun to continue)"]
    assert signal.getsignal(signal.SIGTERM) is before  # in-process callers (tests) get their handler back
