"""Prediction over files, folders, globs and videos, writing annotated outputs.

One bad input never costs the others: an image that does not decode, or a video that cannot
be opened, is logged (one line), listed in :attr:`PredictSummary.errors` and in the
``errors`` list of ``predictions.json``, and prediction goes on with the next input. Failures
of the output itself (disk full, read-only folder) stop the run: they would hit every input.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dfine_cli.detection_filter import (
    ClassesInput,
    ConfInput,
    DetectionFilter,
    FilterSpec,
    detection_filter,
)
from dfine_cli.detector import Detections, Detector
from dfine_cli.detector_options import DEFAULT_CONF
from dfine_cli.draw import draw_detections
from dfine_cli.errors import DataError
from dfine_cli.fileio import atomic_open, atomic_path, write_json
from dfine_cli.media import SourceList, read_image_rgb, resolve_sources
from dfine_cli.progress import Progress
from dfine_cli.streams import StopOnInterrupt, is_stream, log_frame_rate, open_frame_source

if TYPE_CHECKING:
    from dfine_cli.detector_options import DetectorOptions

log = logging.getLogger("dfine.predict")


@dataclass(frozen=True)
class InputError:
    """An input that could not be processed, and why (one line)."""

    path: str
    error: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "error": self.error}


@dataclass
class StreamRecords:
    """Where a stream's per-frame records went: appended to ``path`` (JSON Lines) as frames
    arrived, so an endless stream holds nothing in memory and a crash loses at most the
    frame being processed."""

    source: str
    path: Path
    frames: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "records": self.path.name, "frames": self.frames}


@dataclass
class PredictSummary:
    output_dir: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    """Records of images and video files; a stream's are in its :attr:`streams` file."""
    streams: list[StreamRecords] = field(default_factory=list)
    images: int = 0
    videos: int = 0
    frames: int = 0
    detections: int = 0
    errors: list[InputError] = field(default_factory=list)
    """Inputs skipped because they could not be read (the others were processed)."""

    @property
    def inputs(self) -> int:
        """Images and videos attempted, failed ones included."""
        return self.images + self.videos + len(self.errors)


def _write_image(path: Path, bgr: np.ndarray) -> None:
    """Encode in memory, then write with Python's I/O so that OS failures (disk full,
    read-only) surface as such rather than as OpenCV's bare ``False``."""
    from dfine_cli.media import cv2_module

    cv2 = cv2_module()
    ok, encoded = cv2.imencode(path.suffix or ".jpg", bgr)
    if not ok:
        raise DataError(f"cannot encode image {path}")
    with atomic_open(path, "wb") as fh:
        fh.write(encoded.tobytes())


def _report(errors: list[InputError] | None, path: Path | str, exc: DataError) -> None:
    """Log one line for a skipped input and remember it; re-raise when not collecting."""
    if errors is None:
        raise exc
    reason = " ".join(str(exc).split())
    log.warning("skipped: %s", reason if str(path) in reason else f"{path}: {reason}")
    errors.append(InputError(str(path), reason))


def predict_images(
    detector: Detector,
    paths: list[Path],
    output_dir: Path,
    conf: float | DetectionFilter,
    batch_size: int,
    save: bool = True,
    progress: Progress | None = None,
    errors: list[InputError] | None = None,
    used: set[str] | None = None,
) -> Iterator[Detections]:
    """Predict on image files batch by batch; annotated copies go to ``output_dir``.

    With ``errors`` (a list), images that cannot be read are logged, appended to it and
    skipped; without it the first one raises :class:`DataError`. ``used``: output names
    already taken in this run (shared with the videos); two inputs with the same file name
    get ``name.jpg`` and ``name_2.jpg``.
    """
    batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    iterator: Iterable[list[Path]] = progress(batches, "predict", len(batches)) if progress else batches
    used = set() if used is None else used
    for batch in iterator:
        readable: list[tuple[Path, np.ndarray]] = []
        for path in batch:
            try:
                readable.append((path, read_image_rgb(path)))
            except DataError as exc:
                _report(errors, path, exc)
        if not readable:
            continue
        arrays = [image for _, image in readable]
        results = detector.predict(arrays, conf=conf, batch_size=len(arrays))
        for (path, image), det in zip(readable, results):
            det.path = str(path)
            if save:
                _write_image(output_dir / _unique_name(path, used, ".jpg"), draw_detections(image, det))
            yield det


def predict_video(
    detector: Detector,
    path: Path | str,
    output_dir: Path,
    conf: float | DetectionFilter,
    save: bool = True,
    *,
    track: bool = False,
    progress: Progress | None = None,
    name: str | None = None,
) -> Iterator[tuple[int, Detections]]:
    """Predict frame by frame; the annotated video is written atomically (mp4v).

    ``path``: a video file, or a stream as text (a webcam index or a URL, see
    :mod:`dfine_cli.streams`). ``name``: the annotated video's file stem (default: the
    source's). ``track``: give detections ByteTrack ids
    (:mod:`dfine_cli.tracking`); the tracker also sees detections below ``conf``, down to
    :data:`~dfine_cli.tracking.TRACK_LOW_SCORE`, but only those passing ``conf`` are
    yielded. On a stream the first Ctrl-C ends it like its end: the video written so far is
    kept, as for a source that ends.
    """
    from dfine_cli.media import cv2_module

    cv2 = cv2_module()
    keep = conf if isinstance(conf, DetectionFilter) else DetectionFilter(default_conf=conf)
    tracker = None
    if track:
        from dfine_cli.tracking import TRACK_LOW_SCORE, ByteTracker, check_tracking_available

        check_tracking_available()
    source = open_frame_source(path)
    if track:
        tracker = ByteTracker(frame_rate=source.info.fps, new_track_conf=keep.min_conf)
    seen = keep.with_floor(TRACK_LOW_SCORE) if tracker is not None else keep
    target = output_dir / f"{name or source.stem}.mp4"
    try:
        # Without --save nothing is written (not even an empty video file).
        with (atomic_path(target) if save else contextlib.nullcontext(target)) as tmp, \
                (StopOnInterrupt() if source.live else contextlib.nullcontext()) as stop:
            writer = None
            if save:
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), source.info.fps,
                                         (source.info.width, source.info.height))
                if not writer.isOpened():
                    raise DataError(f"cannot create video writer for {target}")
            frames: Iterable[np.ndarray] = source.frames()
            if source.info.frames > 0 and progress is not None:
                frames = progress(frames, source.stem, source.info.frames)
            elif source.live or source.info.frames <= 0:  # no length to show progress against
                frames = log_frame_rate(frames, source.label)
            try:
                for index, frame in enumerate(frames):
                    det = detector.predict(frame, conf=seen)[0]
                    if tracker is not None:
                        det = tracker.update(det)
                        det = det.select(keep.keep(det.labels, det.scores))
                    det.path = source.label
                    if writer is not None:
                        writer.write(draw_detections(frame, det))
                    yield index, det
                    if stop is not None and stop.requested:
                        log.info("%s: stopped after %d frames", source.label, index + 1)
                        break
            finally:
                if writer is not None:
                    writer.release()
    finally:
        source.release()


def run_prediction(
    detector: Detector,
    source: str | Path,
    output_dir: Path,
    conf: ConfInput | FilterSpec | DetectionFilter = DEFAULT_CONF,
    batch_size: int = 1,
    save: bool = True,
    progress: Progress | None = None,
    *,
    classes: ClassesInput | None = None,
    track: bool = False,
) -> PredictSummary:
    """Resolve ``source``, predict everything, write annotated files and predictions.json.

    ``source`` may also be a stream (a webcam index or URL, see :mod:`dfine_cli.streams`).
    ``conf`` and ``classes`` choose the detections kept (:mod:`dfine_cli.detection_filter`:
    ``conf="0.3,person=0.5"``, ``classes="person,car"``). ``track``: ByteTrack ids on the
    detections of videos and streams (``track_id`` in the records; images are not tracked).

    Unreadable images and videos are skipped and listed in ``summary.errors`` (and in the
    ``errors`` list of predictions.json); check it: the caller decides the exit status.
    """
    keep = detection_filter(conf, classes, detector.class_names, DEFAULT_CONF)
    if track:
        from dfine_cli.tracking import check_tracking_available

        check_tracking_available()
    streams = [str(source)] if is_stream(source) else []
    sources = SourceList(images=[], videos=[]) if streams else resolve_sources(source)
    videos: list[Path | str] = [*sources.videos, *streams]
    total = len(sources.images) + len(videos)
    if not total:
        raise DataError(f"no images or videos found in {source}")
    summary = PredictSummary(output_dir=output_dir)
    # One input: its failure is the command's failure. Several: skip and list the bad ones.
    errors = summary.errors if total > 1 else None
    if track and sources.images:
        log.info("tracking applies to videos and streams; %d image(s) get no track ids",
                 len(sources.images))
    used: set[str] = set()  # output names taken in this run: no input overwrites another's
    for det in predict_images(detector, sources.images, output_dir, keep, batch_size, save,
                              progress, errors=errors, used=used):
        summary.records.append(det.to_dict())
        summary.images += 1
        summary.detections += len(det)
    for video in videos:
        sink = _StreamSink(output_dir, str(video)) if video in streams else None
        stem = sink.stem if sink is not None else Path(_unique_name(Path(video), used, ".mp4")).stem
        try:
            for index, det in predict_video(detector, video, output_dir, keep, save,
                                            track=track, progress=progress, name=stem):
                record = det.to_dict()
                record["frame"] = index
                if sink is not None:
                    sink.write(record)
                else:
                    summary.records.append(record)
                summary.frames += 1
                summary.detections += len(det)
        except DataError as exc:
            _report(errors, video, exc)
            continue
        finally:
            if sink is not None:
                sink.close()
                if sink.written.frames:
                    summary.streams.append(sink.written)
        summary.videos += 1
    if not summary.images and not summary.videos:
        raise DataError(f"none of the {total} inputs could be read (each listed above)")
    write_json(output_dir / "predictions.json", {
        "schema_version": 2, "results": summary.records,
        "streams": [s.to_dict() for s in summary.streams],
        "errors": [e.to_dict() for e in summary.errors],
    })
    return summary


class _StreamSink:
    """Appends a stream's records to ``<stem>.jsonl``, one line per frame, flushed at once.

    The file is opened at the first record (a stream that cannot be opened leaves none)
    and never rewritten. ``stem`` is the first of ``name``, ``name_2``, ... for which
    neither ``.jsonl`` nor ``.mp4`` exists, so an earlier stream's records and video in the
    same folder are kept, and the annotated video (``<stem>.mp4``) pairs with its records.
    """

    def __init__(self, output_dir: Path, source: str) -> None:
        from dfine_cli.streams import redact, stream_stem

        base = stream_stem(source)
        stem, n = base, 2
        while any((output_dir / f"{stem}{suffix}").exists() for suffix in (".jsonl", ".mp4")):
            stem, n = f"{base}_{n}", n + 1
        self.stem = stem
        self.written = StreamRecords(source=redact(source), path=output_dir / f"{stem}.jsonl")
        self._fh: Any = None

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            self._fh = open(self.written.path, "x", encoding="utf-8")  # noqa: SIM115
        self._fh.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._fh.flush()
        self.written.frames += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def _unique_name(path: Path, used: set[str], suffix: str) -> str:
    name = f"{path.stem}{suffix}"
    n = 2
    while name in used:
        name = f"{path.stem}_{n}{suffix}"
        n += 1
    used.add(name)
    return name


def predict_to_run_folder(
    weights: str | Path,
    source: str | Path,
    *,
    options: DetectorOptions | None = None,
    output: Path | None = None,
    conf: ConfInput | FilterSpec = DEFAULT_CONF,
    batch_size: int = 1,
    save: bool = True,
    progress: Progress | None = None,
    classes: ClassesInput | None = None,
    track: bool = False,
) -> PredictSummary:
    """``dfine predict``: open ``weights`` (see :func:`~dfine_cli.detector_options.open_detector`)
    and run :func:`run_prediction` into ``output`` or the next ``runs/predict/exp{N}``.

    A folder created here is removed again if nothing could be written into it.
    """
    from dfine_cli.detector_options import open_detector
    from dfine_cli.fileio import run_dir

    if track:  # a missing extra fails before the model loads
        from dfine_cli.tracking import check_tracking_available

        check_tracking_available()
    detector = open_detector(weights, options)
    with run_dir("predict", output) as out_dir:
        return run_prediction(detector, source, out_dir, conf=conf, batch_size=batch_size,
                              save=save, progress=progress, classes=classes, track=track)
