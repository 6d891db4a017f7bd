"""Prediction over files, folders, globs and videos, writing annotated outputs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dfine_cli.detector import Detections, Detector
from dfine_cli.draw import draw_detections
from dfine_cli.errors import DataError
from dfine_cli.fileio import atomic_path, write_json
from dfine_cli.media import iter_video_frames, open_video, read_image_rgb, resolve_sources

log = logging.getLogger("dfine.predict")


@dataclass
class PredictSummary:
    output_dir: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    images: int = 0
    videos: int = 0
    frames: int = 0
    detections: int = 0


def _write_image(path: Path, bgr: np.ndarray) -> None:
    from dfine_cli.media import cv2_module

    cv2 = cv2_module()

    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), bgr):
            raise DataError(f"cannot write image {path}")


def predict_images(
    detector: Detector,
    paths: list[Path],
    output_dir: Path,
    conf: float,
    batch_size: int,
    save: bool = True,
    progress: Callable[[Iterable[Any], str, int], Iterator[Any]] | None = None,
) -> Iterator[Detections]:
    """Predict on image files batch by batch; annotated copies go to ``output_dir``."""
    batches = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    iterator: Iterable[list[Path]] = progress(batches, "predict", len(batches)) if progress else batches
    used: set[str] = set()
    for batch in iterator:
        arrays = [read_image_rgb(p) for p in batch]
        results = detector.predict(arrays, conf=conf, batch_size=len(arrays))
        for path, image, det in zip(batch, arrays, results):
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
        with atomic_path(target) as tmp:
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
    """Resolve ``source``, predict everything, write annotated files and predictions.json."""
    sources = resolve_sources(source)
    if not sources.images and not sources.videos:
        raise DataError(f"no images or videos found in {source}")
    summary = PredictSummary(output_dir=output_dir)
    for det in predict_images(detector, sources.images, output_dir, conf, batch_size, save, progress):
        summary.records.append(det.to_dict())
        summary.images += 1
        summary.detections += len(det)
    for video in sources.videos:
        summary.videos += 1
        for index, det in predict_video(detector, video, output_dir, conf, save):
            record = det.to_dict()
            record["frame"] = index
            summary.records.append(record)
            summary.frames += 1
            summary.detections += len(det)
    write_json(output_dir / "predictions.json", {"schema_version": 1, "results": summary.records})
    return summary


def _unique_name(path: Path, used: set[str], suffix: str) -> str:
    name = f"{path.stem}{suffix}"
    n = 2
    while name in used:
        name = f"{path.stem}_{n}{suffix}"
        n += 1
    used.add(name)
    return name
