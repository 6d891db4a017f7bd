"""Streams: webcam indices and URLs opened by OpenCV, clear errors, Ctrl-C keeps the output."""

from __future__ import annotations

import functools
import http.server
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dfine_cli.detection_filter import DetectionFilter
from dfine_cli.detector import Detections
from dfine_cli.errors import DataError
from dfine_cli.streams import (
    StopOnInterrupt,
    is_stream,
    open_frame_source,
    redact,
    stream_stem,
)


def write_mp4(path: Path, frames: int = 6, size: tuple[int, int] = (64, 48)) -> Path:
    """A small mp4v video whose frames get brighter (10 frames/s)."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), (30 * i) % 250, dtype=np.uint8))
    writer.release()
    return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(autouse=True)
def _default_sigint() -> Iterator[None]:
    """Python's own Ctrl-C handler, whatever this process inherited: a test run started in
    the background (``nohup``, ``&`` without job control) begins with SIGINT ignored."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def http_folder(tmp_path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server serving a folder: (base URL, folder)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("source", "expected"),
    [("0", True), ("12", True), ("rtsp://cam/live", True), ("RTSP://cam/live", True),
     ("http://host/clip.mp4", True), ("https://host/x", True), ("rtmp://h/app", True),
     ("udp://@:1234", True), ("clip.mp4", False), ("-1", False), ("ftp://host/x.mp4", False),
     ("c:/videos/x.mp4", False)],
)
def test_what_counts_as_a_stream(source, expected):
    assert is_stream(source) is expected


def test_an_existing_file_named_like_a_webcam_is_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "0").write_bytes(b"")
    assert not is_stream("0")


@pytest.mark.parametrize(
    ("url", "expected"),
    [("rtsp://admin:secret@10.0.0.5:554/live", "rtsp://admin:***@10.0.0.5:554/live"),
     ("rtsp://10.0.0.5/live", "rtsp://10.0.0.5/live"),
     ("http://u:p@host/a.mp4?x=1", "http://u:***@host/a.mp4?x=1")],
)
def test_passwords_never_reach_outputs(url, expected):
    assert redact(url) == expected


@pytest.mark.parametrize(
    ("source", "stem"),
    [("0", "webcam0"), ("rtsp://cam/live/main", "main"), ("http://host/clip.mp4", "clip"),
     ("rtsp://10.0.0.5:554", "10.0.0.5"), ("http://h/we ird%20name.mp4", "we_ird_20name")],
)
def test_stream_output_names(source, stem):
    assert stream_stem(source) == stem


def test_an_unopenable_stream_is_a_data_error_naming_it():
    with pytest.raises(DataError, match=r"^cannot open stream rtsp://127\.0\.0\.1:9/x \(unreachable"):
        open_frame_source("rtsp://127.0.0.1:9/x")


def test_the_error_for_a_stream_with_a_password_does_not_show_it():
    with pytest.raises(DataError) as caught:
        open_frame_source("rtsp://admin:hunter2@127.0.0.1:9/x")
    assert "rtsp://admin:***@127.0.0.1:9/x" in str(caught.value) and "hunter2" not in str(caught.value)


def test_a_missing_http_video_is_a_data_error(http_folder):
    base, _ = http_folder
    with pytest.raises(DataError, match=f"cannot open stream {base}/missing.mp4"):
        open_frame_source(f"{base}/missing.mp4")


def test_a_missing_webcam_is_a_data_error():
    with pytest.raises(DataError, match=r"cannot open webcam 99 \(no such camera"):
        open_frame_source("99")


def test_http_video_gives_every_frame(http_folder):
    base, folder = http_folder
    write_mp4(folder / "clip.mp4", frames=6)
    source = open_frame_source(f"{base}/clip.mp4")
    try:
        frames = list(source.frames())
    finally:
        source.release()
    assert source.live and source.stem == "clip" and source.label == f"{base}/clip.mp4"
    assert (source.info.width, source.info.height) == (64, 48)
    assert len(frames) == 6 and frames[0].shape == (48, 64, 3)
    assert [round(f.mean() / 30) for f in frames[:3]] == [0, 1, 2]  # the first frame is not lost


class CountingDetector:
    """A stand-in model: one box per frame; sends Ctrl-C to this process at ``interrupt_at``."""

    def __init__(self, interrupt_at: int | None = None, signum: int = signal.SIGINT) -> None:
        self.class_names = ["thing"]
        self.calls = 0
        self.interrupt_at = interrupt_at
        self.signum = signum

    def predict(self, frame: np.ndarray, conf: DetectionFilter) -> list[Detections]:
        self.calls += 1
        if self.calls == self.interrupt_at:
            os.kill(os.getpid(), self.signum)
        return [Detections(boxes=np.array([[1, 2, 20, 30]], np.float32), scores=np.array([0.9], np.float32),
                           labels=np.array([0]), names=["thing"], width=frame.shape[1], height=frame.shape[0])]


def test_predictions_on_an_http_video(http_folder, tmp_path):
    from dfine_cli.predict import run_prediction

    base, folder = http_folder
    write_mp4(folder / "clip.mp4", frames=5)
    out = tmp_path / "out"
    out.mkdir()
    summary = run_prediction(CountingDetector(), f"{base}/clip.mp4", out)  # type: ignore[arg-type]
    assert (summary.videos, summary.frames, summary.detections) == (1, 5, 5)
    assert summary.records == []  # a stream's records are not held in memory
    saved = json.loads((out / "predictions.json").read_text())
    assert saved["schema_version"] == 2 and saved["results"] == []
    assert saved["streams"] == [{"source": f"{base}/clip.mp4", "records": "clip.jsonl", "frames": 5}]
    lines = _jsonl(out / "clip.jsonl")
    assert [r["frame"] for r in lines] == [0, 1, 2, 3, 4]
    assert lines[0]["path"] == f"{base}/clip.mp4"
    assert sorted(p.name for p in out.iterdir()) == ["clip.jsonl", "clip.mp4", "predictions.json"]


def test_a_stream_never_overwrites_an_earlier_streams_video(http_folder, tmp_path):
    """The annotated video takes the stem of its records: ``cam_2.mp4`` beside ``cam_2.jsonl``."""
    from dfine_cli.predict import run_prediction

    base, folder = http_folder
    write_mp4(folder / "cam.mp4", frames=3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "cam.mp4").write_bytes(b"an earlier run's video")
    run_prediction(CountingDetector(), f"{base}/cam.mp4", out)  # type: ignore[arg-type]
    assert (out / "cam.mp4").read_bytes() == b"an earlier run's video"
    assert sorted(p.name for p in out.iterdir()) == ["cam.mp4", "cam_2.jsonl", "cam_2.mp4", "predictions.json"]
    assert len(_jsonl(out / "cam_2.jsonl")) == 3


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_stream_records_are_on_disk_as_each_frame_is_done(http_folder, tmp_path):
    """A crash (or SIGKILL) in the middle of a stream loses at most the current frame."""
    from dfine_cli.predict import run_prediction

    base, folder = http_folder
    write_mp4(folder / "cam.mp4", frames=6)
    out = tmp_path / "out"
    out.mkdir()
    (out / "cam.jsonl").write_text("earlier run\n")  # never overwritten
    seen: list[int] = []

    class Crashing(CountingDetector):
        def predict(self, frame, conf):
            if self.calls == 4:
                seen.append(len(_jsonl(out / "cam_2.jsonl")))  # before the fifth frame
                raise RuntimeError("simulated crash")
            return super().predict(frame, conf)

    with pytest.raises(RuntimeError):
        run_prediction(Crashing(), f"{base}/cam.mp4", out)  # type: ignore[arg-type]
    assert seen == [4]
    assert [r["frame"] for r in _jsonl(out / "cam_2.jsonl")] == [0, 1, 2, 3]
    assert (out / "cam.jsonl").read_text() == "earlier run\n"


def test_ctrl_c_ends_a_stream_and_keeps_what_was_written(http_folder, tmp_path):
    import cv2

    from dfine_cli.predict import run_prediction

    base, folder = http_folder
    write_mp4(folder / "live.mp4", frames=20)
    out = tmp_path / "out"
    out.mkdir()
    detector = CountingDetector(interrupt_at=3)
    summary = run_prediction(detector, f"{base}/live.mp4", out)  # type: ignore[arg-type]
    assert summary.frames == 3 and detector.calls == 3
    assert len(_jsonl(out / "live.jsonl")) == 3
    assert sorted(p.name for p in out.iterdir()) == ["live.jsonl", "live.mp4", "predictions.json"]  # no temp
    written = cv2.VideoCapture(str(out / "live.mp4"))
    assert int(written.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    written.release()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_sigterm_ends_a_stream_like_ctrl_c_and_a_second_one_aborts(http_folder, tmp_path):
    """``docker stop`` sends SIGTERM: the stream's video and records are kept."""
    from dfine_cli.errors import Terminated
    from dfine_cli.predict import run_prediction

    def raise_terminated(signum, frame):
        raise Terminated()

    base, folder = http_folder
    write_mp4(folder / "live.mp4", frames=20)
    out = tmp_path / "out"
    out.mkdir()
    previous = signal.signal(signal.SIGTERM, raise_terminated)  # what the CLI installs
    try:
        detector = CountingDetector(interrupt_at=4, signum=signal.SIGTERM)
        summary = run_prediction(detector, f"{base}/live.mp4", out)  # type: ignore[arg-type]
        assert summary.frames == 4
        assert len(_jsonl(out / "live.jsonl")) == 4
        assert sorted(p.name for p in out.iterdir()) == ["live.jsonl", "live.mp4", "predictions.json"]
        assert signal.getsignal(signal.SIGTERM) is raise_terminated  # handler restored
        with StopOnInterrupt() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.requested
            with pytest.raises(Terminated):
                os.kill(os.getpid(), signal.SIGTERM)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_ctrl_c_on_a_video_file_still_interrupts(tmp_path):
    from dfine_cli.predict import run_prediction

    video = write_mp4(tmp_path / "clip.mp4", frames=10)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        run_prediction(CountingDetector(interrupt_at=2), video, out)  # type: ignore[arg-type]
    assert list(out.iterdir()) == []  # the half-written video was removed


def test_a_second_ctrl_c_interrupts_at_once():
    with StopOnInterrupt() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_outside_the_main_thread_ctrl_c_is_left_alone():
    result = {}

    def run() -> None:
        with StopOnInterrupt() as stop:
            result["installed"] = stop._installed

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert result == {"installed": False}


@pytest.mark.parametrize("frames", [1, 2])
def test_a_short_video_file_gives_every_frame(tmp_path, frames):
    video = write_mp4(tmp_path / "clip.mp4", frames=frames)
    source = open_frame_source(video)
    try:
        assert not source.live and source.stem == "clip" and source.info.fps == 10
        assert len(list(source.frames())) == frames
    finally:
        source.release()


def test_a_video_that_is_not_one_is_a_data_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(DataError, match=r"video.*bad\.mp4"):
        open_frame_source(bad)


def test_sources_of_unknown_length_log_their_frame_rate(caplog):
    import logging

    from dfine_cli.streams import log_frame_rate

    frames = [np.zeros((2, 2, 3), np.uint8)] * 3
    with caplog.at_level(logging.INFO, logger="dfine"):
        assert len(list(log_frame_rate(frames, "webcam 0", every_s=0.0))) == 3
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4  # one per frame (every 0 s), and the total at the end
    assert lines[0].startswith("webcam 0: 1 frames, ") and lines[-1].startswith("webcam 0: 3 frames, ")
    assert all(line.endswith(" frames/s") for line in lines)
