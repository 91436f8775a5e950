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
    if args.what == "lines":  # more than a pipe buffer holds
        for i in range(200000):
            print(f"line {i}")
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


def test_status_piped_into_head_ended_with_a_broken_pipe_traceback(fake_package: str, tmp_path: Path) -> None:
    """Regression (issue 16 trial): `camnet pipeline status ... | head -4` printed a BrokenPipeError traceback.
    A reader that goes away is not an error: no traceback, exit 141 (128 + SIGPIPE)."""
    import os
    import subprocess
    import sys

    code = f"import sys; from layer1_patches.shared.cli import run; sys.exit(run({fake_package!r}, '', ('boom',), " \
           "['boom', 'lines']))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parents[3])])}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # the reader goes away, as `head` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err


@pytest.mark.parametrize(("entry", "argv", "expected"), [
    ("layer1_patches.cli", ["extract", "--help"], "1"),
    ("layer3_inference.cli.camnet", ["extract", "--help"], "1"),
    ("layer3_inference.cli.camnet", ["heatmap", "--help"], None),
], ids=["python-m-layer1", "camnet-layer1-command", "camnet-layer3-command"])
def test_layer1_commands_load_openblas_with_one_thread_unless_the_user_chose(entry: str, argv: list[str],
                                                                             expected: str | None) -> None:
    """Issue 17 (perf): numpy's and scipy's OpenBLAS each started a helper thread per core that spun about 0.1 CPU s
    after loading, in every Layer 1 task. A Layer 1 command (whose parser imports its module, numpy and scipy) now
    loads OpenBLAS with one thread, as threadpoolctl reads it from the loaded libraries; Layer 3's commands (and the
    jobs they start, which inherit the environment) are left alone (review); a value the user set stays."""
    import json
    import os
    import subprocess
    import sys

    code = ("import contextlib, io, json, os, threadpoolctl\n"
            f"from {entry} import main\n"
            "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            f"    main({argv!r})\n"
            "print(json.dumps([os.environ.get('OPENBLAS_NUM_THREADS'), [i['num_threads'] for i in "
            "threadpoolctl.threadpool_info() if i['internal_api'] == 'openblas']]))")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[3])

    def loaded(**extra: str) -> list:
        out = subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True,
                             check=True).stdout
        return json.loads(out)

    chosen, threads = loaded()
    assert chosen == expected and threads, threads
    if expected == "1":
        assert set(threads) == {1}, threads  # numpy's and scipy's
        assert loaded(OPENBLAS_NUM_THREADS="2")[0] == "2"
