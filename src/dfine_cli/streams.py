"""Frame sources for video prediction: video files, webcams and network streams (OpenCV).

A *stream* is a source without a file on disk: a webcam index (``0``), or a URL that
OpenCV's FFmpeg back-end opens (``rtsp://``, ``rtmp://``, ``http(s)://`` for a stream or a
video file on a web server, ``udp://``, ``tcp://``, ``srt://``). An existing local path
always wins: a file named ``0`` is a file.

Streams may have no known length and no natural end, so prediction on them shows
frames per second instead of a bar, and the first Ctrl-C ends them like the end of the
stream (:class:`StopOnInterrupt`): the annotated video and the predictions made so far are
kept. A second Ctrl-C interrupts at once.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from dfine_cli.errors import DataError
from dfine_cli.media import VideoInfo, cv2_module

log = logging.getLogger("dfine.predict")

STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt"})
"""URL schemes read as streams (through OpenCV's FFmpeg back-end)."""

OPEN_TIMEOUT_S = 10.0
"""Seconds to wait for a network stream to open, and for each frame of it."""

FALLBACK_FPS = 25.0
"""Frame rate assumed (for the written video) when a source does not report one."""


def is_stream(source: str | Path) -> bool:
    """True for a webcam index or a stream URL (see the module docstring); False for paths."""
    text = str(source)
    if Path(text).exists():
        return False
    if text.isdigit():
        return True
    return urlsplit(text).scheme.lower() in STREAM_SCHEMES


def redact(url: str) -> str:
    """``url`` without a password (``rtsp://user:***@host/...``), for logs and outputs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def stream_stem(source: str) -> str:
    """A file name stem for a stream's outputs: ``webcam0``, or the URL's last path part
    (``rtsp://cam/live/main`` → ``main``, ``http://host/clip.mp4`` → ``clip``), else its host."""
    if source.isdigit():
        return f"webcam{int(source)}"
    parts = urlsplit(source)
    name = Path(parts.path).stem or (parts.hostname or "stream")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "stream"


@dataclass
class FrameSource:
    """An opened video file or stream: its frames (RGB ``HxWx3`` uint8) and their format.

    ``label`` names the source in records and messages (a path, or a URL without password);
    ``stem`` is the file name stem of its outputs; ``live`` is true for streams;
    ``info.frames`` is 0 when the length is unknown.
    """

    label: str
    stem: str
    info: VideoInfo
    live: bool
    _capture: Any = field(repr=False)
    _first: np.ndarray | None = field(default=None, repr=False)

    def frames(self) -> Iterator[np.ndarray]:
        """RGB frames until the source ends (for a stream: until a frame cannot be read)."""
        cv2 = cv2_module()
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        while True:
            ok, frame = self._capture.read()
            if not ok:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    def release(self) -> None:
        self._capture.release()


def open_frame_source(source: str | Path) -> FrameSource:
    """Open a video file (a :class:`~pathlib.Path`) or a stream (text: see :func:`is_stream`).

    Raises :class:`~dfine_cli.errors.DataError` (one line naming the source) when it cannot
    be opened or gives no frame.
    """
    cv2 = cv2_module()
    if isinstance(source, Path):
        cap = cv2.VideoCapture(str(source))
        if not cap.isOpened():
            cap.release()
            raise DataError(f"cannot open video: {source}")
        # The first frame is kept rather than re-read after a seek: seeking back fails on
        # a one-frame video, and on streams.
        ok, frame = cap.read()
        if not ok:
            cap.release()
            raise DataError(f"cannot read frames from video (corrupt or unsupported codec): {source}")
        return _frame_source(cap, frame, label=str(source), stem=source.stem, live=False)
    return _open_stream(str(source))


def _frame_source(cap: Any, first_bgr: np.ndarray, label: str, stem: str, live: bool) -> FrameSource:
    cv2 = cv2_module()
    height, width = first_bgr.shape[:2]
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    info = VideoInfo(
        # Cameras report 0 frames/s, and some streams their clock rate (90000).
        fps=fps if fps > 0.0 and (fps <= 240.0 or not live) else FALLBACK_FPS,
        width=width, height=height, frames=max(frames, 0),
    )
    return FrameSource(label=label, stem=stem, info=info, live=live, _capture=cap,
                       _first=cv2.cvtColor(first_bgr, cv2.COLOR_BGR2RGB))


def _open_stream(source: str) -> FrameSource:
    cv2 = cv2_module()
    label = redact(source)
    if source.isdigit():
        cap = cv2.VideoCapture(int(source))
        what = f"webcam {source}"
    else:
        timeout_ms = int(OPEN_TIMEOUT_S * 1000)
        cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG, [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms,
        ])
        what = f"stream {label}"
    if not cap.isOpened():
        cap.release()
        reason = "no such camera, or it is busy" if source.isdigit() else "unreachable, refused, or not a video"
        raise DataError(f"cannot open {what} ({reason})")
    ok, frame = cap.read()
    if not ok:
        cap.release()
        raise DataError(f"cannot read a frame from {what}")
    return _frame_source(cap, frame, label=label, stem=stream_stem(source), live=True)


def log_frame_rate(frames: Iterable[np.ndarray], label: str, every_s: float = 5.0) -> Iterator[np.ndarray]:
    """Pass ``frames`` through, logging ``label: N frames, F frames/s`` every ``every_s``
    seconds and once at the end (the progress of a source of unknown length)."""
    start = last = time.perf_counter()
    count = 0
    for frame in frames:
        yield frame
        count += 1
        now = time.perf_counter()
        if now - last >= every_s:
            log.info("%s: %d frames, %.1f frames/s", label, count, count / (now - start))
            last = now
    elapsed = time.perf_counter() - start
    if count and elapsed > 0:
        log.info("%s: %d frames, %.1f frames/s", label, count, count / elapsed)


class StopOnInterrupt:
    """While active, the first Ctrl-C (SIGINT) or SIGTERM only sets :attr:`requested`, so a
    live stream ends like one that ran out and its output is kept; a second signal of
    either kind interrupts as usual (SIGINT raises :class:`KeyboardInterrupt`, SIGTERM goes
    to the handler installed before, which the CLI turns into exit 143). ``docker stop`` and
    service managers send SIGTERM, so a stream run under them keeps its video and records.
    Outside the main thread it does nothing (signals can only be handled there).
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}
        self._installed = False

    def __enter__(self) -> StopOnInterrupt:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._on_signal)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            self._previous.clear()
            self._installed = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            previous = self._previous.get(signum)
            if signum == signal.SIGTERM and callable(previous):
                previous(signum, frame)
                return
            if signum == signal.SIGTERM and previous != signal.SIG_IGN:
                raise SystemExit(128 + signum)  # the default action: end the process
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.requested = True
        if signum == signal.SIGINT:
            log.warning("stopping after this frame (Ctrl-C again to abort)")
        else:
            log.warning("SIGTERM: stopping after this frame (a second SIGTERM aborts)")
