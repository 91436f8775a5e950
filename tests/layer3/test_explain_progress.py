"""explain's progress lines (issue 16, point 4): per method, per patch and per sanity depth, in the log file of a
running explain (the pipeline's `explain.log` stayed empty until explain had finished)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from tests.helpers import cli_env
from tests.layer3.test_explain_cli import CONFIG, REPO, SMALL

# explain as the pipeline runs it (stdout and stderr into one file), held before its completion marker
# `summary.json` until the test has read the progress lines from the file.
HELD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from layer3_inference.cli import main
    from layer3_inference.explain import report

    write_json, sentinel = report.write_json, Path(sys.argv[1])

    def held(path, doc):
        if Path(path).name == "summary.json":
            deadline = time.monotonic() + 90
            while not sentinel.exists():
                if time.monotonic() > deadline:
                    sys.exit(3)
                time.sleep(0.05)
        return write_json(path, doc)

    report.write_json = held
    sys.exit(main(sys.argv[2:]))
""")


def test_explain_log_shows_each_method_and_depth_while_explain_runs(explain_toy: Any, tmp_path: Path) -> None:
    script, sentinel, log = tmp_path / "held.py", tmp_path / "go", tmp_path / "explain.log"
    script.write_text(HELD)
    args = ["explain", "--config", str(CONFIG), "--model", str(explain_toy.run_dir), "--store",
            *map(str, explain_toy.stores), "--out", str(tmp_path / "out"), *SMALL, "--set", "sanity.depths=2",
            "--set", "rcv.concepts=[nuclei_area]"]
    with log.open("w") as out:
        proc: subprocess.Popen[Any] = subprocess.Popen([sys.executable, str(script), str(sentinel), *args],
                                                       cwd=REPO, env=cli_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while "concept 1/1" not in log.read_text():
            assert proc.poll() is None, f"explain ended before its progress lines were in the log:\n{log.read_text()}"
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert proc.poll() is None  # held before summary.json: the lines were written while it ran
        sentinel.touch()
        assert proc.wait(timeout=120) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = [line.split(" INFO ", 1)[1] for line in log.read_text().splitlines() if " INFO explain: " in line]
    expected = [r"explain: maps of 2 patches, sanity check at 2 depths",
                r"explain: gradcam and gradcam_pp 2/2 patches",
                r"explain: lime 2/2 patches \(60 samples\)",
                r"explain: sanity depth 1/2: \d+ layers randomised",
                r"explain: sanity depth 1/2: gradcam and gradcam_pp 2/2 patches",
                r"explain: sanity depth 2/2: lime 2/2 patches \(60 samples\)",
                r"explain: rcv: 2 layers x 1 concepts",
                r"explain: rcv: concept measures 50/50 patches",
                r"explain: rcv: activations 50/50 patches",
                r"explain: rcv: layer \S+ \(2/2\) concept 1/1"]
    for pattern in expected:
        assert any(re.fullmatch(pattern, line) for line in lines), (pattern, lines)
    # in order: the trained model's maps, then the cascade, then the RCV
    first = [next(i for i, line in enumerate(lines) if re.fullmatch(p, line)) for p in expected]
    assert first == sorted(first), lines
