"""Prediction over files, folders, globs and videos, writing annotated outputs.

One bad input never costs the others: an image that does not decode, or a video that cannot
be opened, is logged (one line), listed in :attr:`PredictSummary.errors` and in the
``errors`` list of ``predictions.json``, and prediction goes on with the next input. Failures
of the output itself (disk full, read-only folder) stop the run: they would hit every input.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dfine_cli.detector import Detections, Detector
from dfine_cli.draw import draw_detections
from dfine_cli.errors import DataError
from dfine_cli.fileio import atomic_open, atomic_path, write_json
from dfine_cli.media import iter_video_frames, open_video, read_image_rgb, resolve_sources

log = logging.getLogger("dfine.predict")


@dataclass(frozen=True)
class InputError:
    """An input that could not be processed, and why (one line)."""

    path: str
    error: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "error": self.error}


@dataclass
class PredictSummary:
    output_dir: Path
    records: list[dict[str, Any]] = field(default_factory=list)
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


def _report(errors: list[InputError] | None, path: Path, exc: DataError) -> None:
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
    conf: float,
    batch_size: int,
    save: bool = True,
    progress: Callable[[Iterable[Any], str, int], Iterator[Any]] | None = None,
    errors: list[InputError] | None = None,
) -> Iterator[Detections]:
    """Predict on image files batch by batch; annotated copies go to ``output_dir``.

    With ``errors`` (a list), images that cannot be read are logged, appended to it and
    skipped; without it the first one raises :class:`DataError`.
    """
    batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    iterator: Iterable[list[Path]] = progress(batches, "predict", len(batches)) if progress else batches
    used: set[str] = set()
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
    detector: Detector, path: Path, output_dir: Path, conf: float, save: bool = True
) -> Iterator[tuple[int, Detections]]:
    """Predict frame by frame; the annotated video is written atomically (mp4v)."""
    from dfine_cli.media import cv2_module

    cv2 = cv2_module()

    cap, info = open_video(path)
    target = output_dir / f"{path.stem}.mp4"
    try:
        # Without --save nothing is written (not even an empty video file).
        with atomic_path(target) if save else contextlib.nullcontext(target) as tmp:
            writer = None
            if save:
                writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), info.fps,
                                         (info.width, info.height))
                if not writer.isOpened():
                    raise DataError(f"cannot create video writer for {target}")
            try:
                for index, frame in enumerate(iter_video_frames(cap)):
                    det = detector.predict(frame, conf=conf)[0]
                    det.path = str(path)
                    if writer is not None:
                        writer.write(draw_detections(frame, det))
                    yield index, det
            finally:
                if writer is not None:
                    writer.release()
    finally:
        cap.release()  # type: ignore[attr-defined]


def run_prediction(
    detector: Detector,
    source: str | Path,
    output_dir: Path,
    conf: float = 0.5,
    batch_size: int = 1,
    save: bool = True,
    progress: Callable[[Iterable[Any], str, int], Iterator[Any]] | None = None,
) -> PredictSummary:
    """Resolve ``source``, predict everything, write annotated files and predictions.json.

    Unreadable images and videos are skipped and listed in ``summary.errors`` (and in the
    ``errors`` list of predictions.json); check it: the caller decides the exit status.
    """
    sources = resolve_sources(source)
    total = len(sources.images) + len(sources.videos)
    if not total:
        raise DataError(f"no images or videos found in {source}")
    summary = PredictSummary(output_dir=output_dir)
    # One input: its failure is the command's failure. Several: skip and list the bad ones.
    errors = summary.errors if total > 1 else None
    for det in predict_images(detector, sources.images, output_dir, conf, batch_size, save,
                              progress, errors=errors):
        summary.records.append(det.to_dict())
        summary.images += 1
        summary.detections += len(det)
    for video in sources.videos:
        try:
            for index, det in predict_video(detector, video, output_dir, conf, save):
                record = det.to_dict()
                record["frame"] = index
                summary.records.append(record)
                summary.frames += 1
                summary.detections += len(det)
        except DataError as exc:
            _report(errors, video, exc)
            continue
        summary.videos += 1
    if not summary.images and not summary.videos:
        raise DataError(f"none of the {total} inputs could be read (each listed above)")
    write_json(output_dir / "predictions.json", {
        "schema_version": 1, "results": summary.records,
        "errors": [e.to_dict() for e in summary.errors],
    })
    return summary


def _unique_name(path: Path, used: set[str], suffix: str) -> str:
    name = f"{path.stem}{suffix}"
    n = 2
    while name in used:
        name = f"{path.stem}_{n}{suffix}"
        n += 1
    used.add(name)
    return name
