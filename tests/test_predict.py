"""Prediction over many inputs: bad ones are reported and skipped, good ones always saved."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from dfine_cli.detector import Detector
from dfine_cli.errors import DataError
from dfine_cli.predict import run_prediction
from tests.conftest import write_jpeg
from tests.helpers import tiny_checkpoint


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Detector:
    path = tiny_checkpoint(tmp_path_factory.mktemp("w") / "tiny.pth")
    return Detector.from_checkpoint(path)


def _write_video(path: Path, frames: int = 2) -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), 40 * i, dtype=np.uint8))
    writer.release()
    return path


@pytest.mark.parametrize("batch_size", [1, 2])
def test_bad_inputs_are_skipped_and_listed(detector, tmp_path, caplog, batch_size):
    src = tmp_path / "imgs"
    write_jpeg(src / "a.jpg", h=48, w=64, seed=1)
    (src / "b.jpg").write_bytes(b"not an image")
    write_jpeg(src / "c.jpg", h=48, w=64, seed=2)
    (src / "d.mp4").write_bytes(b"not a video")
    _write_video(src / "e.avi")
    out = tmp_path / "out"
    out.mkdir()
    with caplog.at_level(logging.WARNING, logger="dfine"):
        summary = run_prediction(detector, src, out, conf=0.0, batch_size=batch_size)
    assert (summary.images, summary.videos, summary.frames) == (2, 1, 2)
    assert [e.path for e in summary.errors] == [str(src / "b.jpg"), str(src / "d.mp4")]
    assert "cannot decode image" in summary.errors[0].error
    assert "video" in summary.errors[1].error
    assert summary.inputs == 5
    saved = json.loads((out / "predictions.json").read_text())
    assert [r["path"] for r in saved["results"][:2]] == [str(src / "a.jpg"), str(src / "c.jpg")]
    assert saved["errors"] == [e.to_dict() for e in summary.errors]
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "c.jpg", "e.mp4", "predictions.json"]
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 2 and str(src / "b.jpg") in skipped[0]


def test_results_equal_those_without_the_bad_input(detector, tmp_path):
    clean, dirty = tmp_path / "clean", tmp_path / "dirty"
    for folder in (clean, dirty):
        for i in range(3):
            write_jpeg(folder / f"im{i}.jpg", h=48, w=64, seed=i)
    (dirty / "im1b.jpg").write_bytes(b"\xff\xd8 truncated")
    a = run_prediction(detector, clean, tmp_path / "o1", conf=0.0, batch_size=2, save=False)
    b = run_prediction(detector, dirty, tmp_path / "o2", conf=0.0, batch_size=2, save=False)
    strip = [{k: v for k, v in r.items() if k != "path"} for r in a.records]
    assert strip == [{k: v for k, v in r.items() if k != "path"} for r in b.records]
    assert len(b.errors) == 1 and not a.errors


def test_nothing_readable_writes_nothing(detector, tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    (src / "a.jpg").write_bytes(b"x")
    (src / "b.png").write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError, match="none of the 2 inputs could be read"):
        run_prediction(detector, src, out)
    assert list(out.iterdir()) == []


def test_a_single_bad_input_is_the_error(detector, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"cannot decode image .*bad\.jpg"):
        run_prediction(detector, bad, tmp_path)


def test_no_save_writes_no_video_file(detector, tmp_path):
    video = _write_video(tmp_path / "clip.avi")
    out = tmp_path / "out"
    out.mkdir()
    summary = run_prediction(detector, video, out, save=False)
    assert summary.frames == 2
    assert sorted(p.name for p in out.iterdir()) == ["predictions.json"]


def test_an_unreadable_file_is_skipped_like_a_corrupt_one(detector, tmp_path, monkeypatch):
    import errno

    from dfine_cli import media

    src = tmp_path / "imgs"
    write_jpeg(src / "a.jpg", h=48, w=64)
    write_jpeg(src / "locked.jpg", h=48, w=64)
    real = np.fromfile

    def fromfile(path, *args, **kwargs):
        if Path(path).name == "locked.jpg":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(media.np, "fromfile", fromfile)
    summary = run_prediction(detector, src, tmp_path / "out", save=False)
    assert summary.images == 1
    assert [e.error for e in summary.errors] == [
        f"cannot read image (permission denied): {src / 'locked.jpg'}"
    ]


def test_inputs_with_the_same_name_keep_separate_outputs(detector, tmp_path):
    """``a/clip.avi`` and ``b/clip.avi`` (or ``a/x.jpg`` and ``b/x.jpg``) must not overwrite
    each other's annotated copy."""
    src = tmp_path / "src"
    for folder, frames in (("a", 2), ("b", 3)):
        (src / folder).mkdir(parents=True)
        _write_video(src / folder / "clip.avi", frames=frames)
        write_jpeg(src / folder / "x.jpg", h=48, w=64)
    out = tmp_path / "out"
    summary = run_prediction(detector, src, out)
    assert (summary.images, summary.videos, summary.frames) == (2, 2, 5)
    assert sorted(p.name for p in out.iterdir()) == [
        "clip.mp4", "clip_2.mp4", "predictions.json", "x.jpg", "x_2.jpg"]
    import cv2

    counts = []
    for name in ("clip.mp4", "clip_2.mp4"):
        cap = cv2.VideoCapture(str(out / name))
        counts.append(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))
        cap.release()
    assert sorted(counts) == [2, 3]
