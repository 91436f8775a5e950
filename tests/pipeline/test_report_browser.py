"""The report opened in a real browser, as users open it: headless Chromium (Debian's `chromium-headless-shell`
or `chromium`; CAMNET_CHROMIUM names another binary). Screenshots of the key sections are kept in
$CAMNET_ARTEFACTS/report_browser (else the test's tmp_path) for a person to look at.

Chromium is driven through its DevTools protocol over `--remote-debugging-pipe` (JSON messages ending in NUL on
file descriptors 3 and 4) rather than `--dump-dom`: the pipe reports console errors and uncaught exceptions as
events, can ask each <img> whether it decoded, and can screenshot one element at a time; and unlike a DevTools
port it needs no websocket package and no free TCP port on a shared CI machine.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from layer3_inference.pipeline.config import load_experiment
from layer3_inference.pipeline.layout import Layout

from .conftest import run_pipeline
from .test_report import computed  # noqa: F401 (computed: a pytest fixture, used by name)
from .test_report_slides import png

BROWSERS = ("chromium-headless-shell", "chromium", "chrome-headless-shell", "google-chrome")
SECTIONS = ("stages", "cohort", "training", "slide-patient_000_node_0", "interpretability", "configs")


def chromium() -> str | None:
    named = os.environ.get("CAMNET_CHROMIUM")
    if named:
        return named
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


class DevTools:
    """A minimal DevTools-protocol client over Chromium's pipe: send a command, wait for its answer, keep the
    events that arrived meanwhile."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_chrome, self._cmd = os.pipe()
        self._resp, from_chrome = os.pipe()

        def wire() -> None:  # in the child: Chromium reads commands on fd 3 and answers on fd 4
            a, b = os.dup(to_chrome), os.dup(from_chrome)  # out of the way first: either may already be 3 or 4
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [binary, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
                "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}", "about:blank"]
        self.proc = subprocess.Popen(args, preexec_fn=wire, close_fds=False, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self.events: list[dict[str, Any]] = []
        self._buf = b""
        self._next = 0

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._resp], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(self._resp, 1 << 20) if ready else b""
            if not chunk:
                raise AssertionError("Chromium stopped answering (closed its pipe or timed out)")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def send(self, method: str, session: str | None = None, timeout: float = 60, **params: Any) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._cmd, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next:
                assert "error" not in reply, (method, reply["error"])
                result: dict[str, Any] = reply.get("result", {})
                return result
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read_message(deadline))

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError):  # it may already be gone; the kill below makes sure
            self.send("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._cmd)
        os.close(self._resp)


def console_errors(events: list[dict[str, Any]]) -> list[str]:
    out = []
    for e in events:
        method, params = e.get("method"), e.get("params", {})
        if method == "Runtime.exceptionThrown":
            out.append(str(params.get("exceptionDetails")))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.append(str(params.get("args")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            out.append(str(params["entry"].get("text")) + " " + str(params["entry"].get("url", "")))
    return out


# runs in the page: what the browser made of it (everything a user would see missing or wrong)
CHECKS = """JSON.stringify({
  images: [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth})),
  states: [...document.querySelectorAll('#stages td[data-col="state"]')].map(td => td.textContent),
  sections: Object.fromEntries(%s.map(id => [id, !!document.getElementById(id)])),
})"""
BOX = "JSON.stringify((e => {const r = e.getBoundingClientRect(); return [r.x, r.y + scrollY, r.width, r.height]})(%s))"


def finished_experiment(cfg: Path) -> Path:
    """`computed`'s experiment with the pictures a finished run has: overlays, the ROC plot, an explain panel
    and its concept table. Returns the report's path as `pipeline report` writes it."""
    layout = Layout(load_experiment(cfg).out)
    prob = np.zeros((60, 90, 4), np.uint8)
    prob[10:50, 10:80] = (253, 231, 37, 128)  # viridis' 1, half opaque
    for slide in ("patient_000_node_0", "patient_001_node_0", "normal_9"):
        (layout.heatmaps / slide / "overlay.png").write_bytes(png(prob))
        (layout.heatmaps / slide / "heatmap.png").write_bytes(png(prob[..., :3]))
        (layout.heatmaps / slide / f"{slide}.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    (layout.run_dir / "roc.png").write_bytes(png(np.full((40, 40, 3), 90, np.uint8)))
    (layout.explain / "panels").mkdir(parents=True)
    (layout.explain / "panels" / "patch_0.png").write_bytes(png(np.full((50, 200, 3), 140, np.uint8)))
    rcv = [{"layer": "block", "concept": "contrast", "p_value": 0.0053, "p_adjusted": 0.0106, "significant": False,
            "status": "not significant"}, {"layer": "head", "concept": "contrast", "p_value": 0.4,
                                           "p_adjusted": 0.8, "significant": False, "status": "not significant"}]
    (layout.explain / "summary.json").write_text(json.dumps({"rcv": rcv, "warnings": []}))
    proc = run_pipeline(["report", "--config", str(cfg)], timeout=180)
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.split("report: ")[1].strip())


def artefacts(tmp_path: Path) -> Path:
    root = os.environ.get("CAMNET_ARTEFACTS")
    folder = Path(root) / "report_browser" if root else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.skipif(chromium() is None, reason="no Chromium installed (apt-get install chromium-headless-shell)")
def test_the_report_opens_in_a_browser_without_errors(computed: Path, tmp_path: Path) -> None:  # noqa: F811
    report = finished_experiment(computed)
    browser = DevTools(str(chromium()), tmp_path / "profile")
    try:
        target = browser.send("Target.createTarget", url="about:blank")["targetId"]
        page = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            browser.send(f"{domain}.enable", page)
        browser.send("Emulation.setDeviceMetricsOverride", page, width=1280, height=900, deviceScaleFactor=1,
                     mobile=False)
        browser.send("Page.navigate", page, url=report.as_uri())
        browser.wait_for("Page.loadEventFired")
        found = json.loads(browser.send("Runtime.evaluate", page, expression=CHECKS % json.dumps(SECTIONS),
                                        returnByValue=True)["result"]["value"])
        shots = artefacts(tmp_path)
        for section in SECTIONS:
            if not found["sections"][section]:
                continue
            element = f"document.getElementById({json.dumps(section)})"
            x, y, w, h = json.loads(browser.send("Runtime.evaluate", page, expression=BOX % element,
                                                 returnByValue=True)["result"]["value"])
            clip = {"x": x, "y": y, "width": max(w, 1), "height": max(min(h, 3000), 1), "scale": 1}
            data = browser.send("Page.captureScreenshot", page, clip=clip, captureBeyondViewport=True)["data"]
            (shots / f"{section}.png").write_bytes(base64.b64decode(data))
        errors = console_errors(browser.events)
    finally:
        browser.close()
    assert not errors, errors
    assert found["images"] and all(i["complete"] and i["width"] > 0 for i in found["images"]), found["images"]
    assert found["sections"] == dict.fromkeys(SECTIONS, True)
    assert "running" not in found["states"] and found["states"][-1] == "finished"  # the report's own row, last
    assert all((shots / f"{s}.png").stat().st_size > 1000 for s in SECTIONS)
