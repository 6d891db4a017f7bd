"""dfine predict: --track, --classes, per-class --conf, and stream sources.

In-process (CliRunner: the model loads once), except where the real process's stderr is the
point (FFmpeg writes straight to file descriptor 2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import tiny_checkpoint
from tests.test_streams import http_folder, write_mp4  # noqa: F401  (fixture)


class Result:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run(*args: str) -> Result:
    """``dfine ARGS`` in this process."""
    from typer.testing import CliRunner

    from dfine_cli.cli.main import app

    res = CliRunner().invoke(app, list(args), env={"NO_COLOR": "1"})
    return Result(res.exit_code, res.stdout, res.stderr)


def run_process(*args: str) -> subprocess.CompletedProcess[str]:
    """``dfine ARGS`` as its own process."""
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "dfine_cli", *args], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("c") / "tiny.pth", names=["a", "b", "c"])


def error_line(res: Result | subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


def test_track_writes_track_ids(ckpt, tmp_path):
    pytest.importorskip("supervision")
    video = write_mp4(tmp_path / "clip.mp4", frames=3)
    res = run("predict", str(ckpt), str(video), "--track", "--json", "-o", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr
    results = json.loads(res.stdout)["results"]
    assert [r["frame"] for r in results] == [0, 1, 2]
    detections = [d for r in results for d in r["detections"]]
    assert detections and all("track_id" in d for d in detections)
    # The first frame starts a track for every detection strong enough to be reported.
    assert all(isinstance(d["track_id"], int) and d["track_id"] > 0 for d in results[0]["detections"])
    saved = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert saved["results"] == results
    assert (tmp_path / "o" / "clip.mp4").is_file()


def test_track_without_supervision_exits_6_naming_the_extra(ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "supervision", None)  # as if not installed
    video = write_mp4(tmp_path / "clip.mp4", frames=2)
    res = run("predict", str(ckpt), str(video), "--track", "-o", str(tmp_path / "o"))
    assert res.returncode == 6, res.stderr
    assert "pip install 'dfine[track]'" in error_line(res)
    assert not (tmp_path / "o").exists()


def test_unopenable_stream_exits_3_with_one_line(ckpt, tmp_path):
    res = run_process("predict", str(ckpt), "rtsp://127.0.0.1:9/x", "-o", str(tmp_path / "o"))
    assert res.returncode == 3, res.stderr
    assert res.stderr.count("\n") == 1  # FFmpeg's own messages are silenced
    assert error_line(res) == ("error: data error: cannot open stream rtsp://127.0.0.1:9/x "
                               "(unreachable, refused, or not a video)")
    assert not (tmp_path / "o").exists()


def test_http_video_url_is_predicted(ckpt, tmp_path, http_folder):  # noqa: F811
    base, folder = http_folder
    write_mp4(folder / "clip.mp4", frames=4)
    res = run("predict", str(ckpt), f"{base}/clip.mp4", "--json", "-o", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr
    payload = json.loads(res.stdout)
    assert (payload["videos"], payload["frames"]) == (1, 4)
    assert payload["streams"] == [{"source": f"{base}/clip.mp4", "records": "clip.jsonl", "frames": 4}]
    records = [json.loads(line) for line in (tmp_path / "o" / "clip.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == [0, 1, 2, 3] and records[0]["path"] == f"{base}/clip.mp4"
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "clip.jsonl", "clip.mp4", "predictions.json"]


def test_classes_and_per_class_conf(ckpt, tmp_path):
    video = write_mp4(tmp_path / "clip.mp4", frames=1)  # one frame: it is not lost either
    res = run("predict", str(ckpt), str(video), "--json", "--conf", "0", "--no-save", "-o", str(tmp_path / "o1"))
    every = [d for r in json.loads(res.stdout)["results"] for d in r["detections"]]
    assert res.returncode == 0 and every
    res = run("predict", str(ckpt), str(video), "--json", "--conf", "0", "--classes", "b,2", "--no-save",
              "-o", str(tmp_path / "o2"))
    assert res.returncode == 0, res.stderr
    kept = [d for r in json.loads(res.stdout)["results"] for d in r["detections"]]
    assert kept == [d for d in every if d["name"] in ("b", "c")]
    distinct = sorted({d["score"] for d in every})
    assert len(distinct) > 1
    cut = (distinct[len(distinct) // 2 - 1] + distinct[len(distinct) // 2]) / 2  # no score near it
    res = run("predict", str(ckpt), str(video), "--json", "--conf", f"1,a={cut}", "--no-save",
              "-o", str(tmp_path / "o3"))
    assert res.returncode == 0, res.stderr
    kept = [d for r in json.loads(res.stdout)["results"] for d in r["detections"]]
    assert kept == [d for d in every if d["name"] == "a" and d["score"] >= cut]


def test_unknown_class_exits_2_naming_it(ckpt, tmp_path):
    res = run("predict", str(ckpt), str(write_mp4(tmp_path / "clip.mp4", frames=1)),
              "--classes", "a,person", "-o", str(tmp_path / "o"))
    assert res.returncode == 2, res.stderr
    assert error_line(res) == ("error: usage error: classes: unknown class 'person'; valid "
                               "names: a, b, c, or ids 0..2")
    assert not (tmp_path / "o").exists()


def test_bad_conf_fails_before_the_model_loads(tmp_path):
    res = run("predict", str(tmp_path / "missing.pth"), "x.jpg", "--conf", "person=high",
              "-o", str(tmp_path / "o"))
    assert res.returncode == 2, res.stderr
    assert error_line(res) == "error: usage error: conf: 'person=high' is not a number (expected a score in 0..1)"
