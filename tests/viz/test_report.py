"""The HTML report: self-contained, complete, and rendered by a real browser without errors."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from dfine_cli.engine.evaluate import evaluate_predictions
from dfine_cli.viz.report import image_errors, worst_images, write_report
from tests.helpers import tiny_checkpoint

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(fake_predictions, tmp_path_factory) -> Path:
    dataset, predictions = fake_predictions
    result = evaluate_predictions(predictions, dataset)
    out = tmp_path_factory.mktemp("report") / "report.html"
    summary = write_report(out, predictions, dataset.class_names, result, title="shapes <test>",
                           conf=0.25, gallery=4)
    assert summary.gallery == 4 and summary.false_positives > 0 and summary.false_negatives > 0
    return out


def test_report_is_self_contained(report):
    text = report.read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    # nothing fetched from anywhere: every src/href is a data: URI or an in-page anchor
    for ref in re.findall(r'(?:src|href)="([^"]*)"', text):
        assert ref.startswith(("data:", "#")), ref
    assert "url(" not in text and "@import" not in text
    assert "shapes &lt;test&gt;" in text  # names are escaped


def test_report_has_every_section(report, fake_predictions):
    dataset, _ = fake_predictions
    text = report.read_text(encoding="utf-8")
    for heading in ("COCO metrics", "Per-class AP", "Precision-recall curves", "Confusion matrix",
                    "Images with the most errors"):
        assert heading in text
    per_class = text.split('id="per-class"')[1].split("</table>")[0]
    assert all(name in per_class for name in dataset.class_names)
    assert text.count("<polyline") == len(dataset.class_names)
    assert text.count('<img alt="image') == 4
    assert "background" in text


def test_worst_images_order(fake_predictions):
    _, predictions = fake_predictions
    errors = image_errors(predictions, conf=0.25, iou=0.5)
    worst = worst_images(errors, 3)
    totals = [e.total for e in worst]
    assert totals == sorted(totals, reverse=True) and totals[0] >= max(e.total for e in errors)


def test_viz_report_cli(shapes_dataset, tmp_path):
    from typer.testing import CliRunner

    from dfine_cli.cli.main import app

    ckpt = tiny_checkpoint(tmp_path / "tiny.pth", img_size=256)
    out = tmp_path / "r.html"
    res = CliRunner().invoke(app, ["viz", "report", str(ckpt), "--data", str(shapes_dataset),
                                   "--output", str(out), "--gallery", "2", "--json"])
    assert res.exit_code == 0, res.stderr
    payload = json.loads(res.stdout)
    assert payload["schema_version"] == 1 and payload["images"] == 6 and out.is_file()
    bad = CliRunner().invoke(app, ["viz", "report", str(ckpt), "--data", str(shapes_dataset),
                                   "--output", str(tmp_path / "r.pdf")])
    assert bad.exit_code == 2 and not (tmp_path / "r.pdf").exists()
    missing = CliRunner().invoke(app, ["viz", "report", str(ckpt), "--data",
                                       str(tmp_path / "nope"), "--output", str(tmp_path / "x.html")])
    assert missing.exit_code == 3 and not (tmp_path / "x.html").exists()


# --------------------------------------------------------------------------- headless Chromium


class DevTools:
    """Chromium's DevTools protocol over ``--remote-debugging-pipe`` (fds 3 and 4)."""

    def __init__(self, chromium: str, profile: str) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire_fds() -> None:
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--no-first-run",
             f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(3, 4),
            preexec_fn=wire_fds,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._from_chrome, 1 << 16)
            if not chunk:
                raise RuntimeError("Chromium closed the pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: str | None = None, timeout: float = 60, **params: Any):
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read_message(deadline))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call("Browser.close", timeout=10)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        os.close(self._to_chrome)
        os.close(self._from_chrome)


def _console_errors(events: list[dict[str, Any]]) -> list[str]:
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append(str(params.get("args")))
        elif method == "Runtime.exceptionThrown":
            errors.append(str(params.get("exceptionDetails")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            errors.append(params["entry"].get("text", ""))
    return errors


def _artifact_dir(tmp_path_factory) -> Path:
    configured = os.environ.get("DFINE_TEST_ARTIFACTS")
    folder = Path(configured) if configured else tmp_path_factory.getbasetemp() / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)")
def test_report_renders_in_chromium_without_console_errors(report, tmp_path_factory):
    with tempfile.TemporaryDirectory(prefix="dfine-chromium-") as profile:
        browser = DevTools(str(CHROMIUM), profile)
        try:
            target = browser.call("Target.createTarget", url="about:blank")["targetId"]
            session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Runtime.enable", "Log.enable", "Page.enable"):
                browser.call(domain, session)
            browser.call("Page.navigate", session, url=report.as_uri())
            browser.wait_for("Page.loadEventFired")
            state = browser.call("Runtime.evaluate", session, returnByValue=True, expression=(
                "JSON.stringify({images: Array.from(document.images).map(i => i.complete && "
                "i.naturalWidth > 0), svgs: document.querySelectorAll('svg polyline').length, "
                "rows: document.querySelectorAll('#per-class tbody tr').length, "
                "height: document.documentElement.scrollHeight})"))
            page = json.loads(state["result"]["value"])
            browser.call("Emulation.setDeviceMetricsOverride", session, width=1280,
                         height=min(int(page["height"]), 6000), deviceScaleFactor=1, mobile=False)
            shot = browser.call("Page.captureScreenshot", session, format="png")
            errors = _console_errors(browser.events)
        finally:
            browser.close()
    png = base64.b64decode(shot["data"])
    artifact = _artifact_dir(tmp_path_factory) / "viz_report.png"
    artifact.write_bytes(png)
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    assert errors == []
    assert page["images"] and all(page["images"])  # every gallery image decoded
    assert page["svgs"] == 3 and page["rows"] == 3
