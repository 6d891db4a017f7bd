"""Latency over COCO val images with a TensorRT engine (the official ``trt_benchmark.py``).

The official script warms the engine up with 1000 runs on a constant blob, then times the
engine call alone on each of 1000 COCO val2017 images (decoding and preprocessing are not
timed) and reports the mean. :func:`coco_latency` does the same with any backend (so it is
tested on the CPU with ONNX Runtime); the decoding + preprocessing time is reported beside it.

Preprocessing is dfine's (a plain resize to the input size, as predict and eval do); the
official benchmark letterboxes instead, which does not change the engine's work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfine_cli.bench.latency import Stats
from dfine_cli.detector import Detector, preprocess
from dfine_cli.errors import DataError, UsageError
from dfine_cli.media import IMAGE_SUFFIXES, read_image_rgb
from dfine_cli.progress import Progress

#: The official script's figures: warm-up runs and images timed.
OFFICIAL_WARMUP = 1000
OFFICIAL_IMAGES = 1000


def list_images(coco_dir: str | Path, limit: int | None = None) -> list[Path]:
    """Image files directly in ``coco_dir`` (e.g. ``val2017/``), sorted by name.

    Raises:
        DataError: the folder does not exist or holds no image.
    """
    folder = Path(coco_dir)
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"no images (.jpg, .png, ...) in {folder}")
    if limit is not None:
        if limit < 1:
            raise UsageError(f"--max-images must be at least 1, got {limit}")
        files = files[:limit]
    return files


@dataclass
class CocoLatency:
    """Engine time per image over real images (batch 1), and the untimed work beside it."""

    images: int
    warmup: int
    model: Stats  # the backend call; its mean is the official figure
    preprocess: Stats  # decode + resize + to float, per image
    description: str  # backend, version, device, precision

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "warmup": self.warmup,
            "latency_ms_mean": round(self.model.mean_ms, 4),
            "model": self.model.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "backend": self.description,
        }


def coco_latency(
    detector: Detector,
    paths: Sequence[Path],
    *,
    warmup: int = OFFICIAL_WARMUP,
    clock: Callable[[], float] | None = None,
    progress: Progress | None = None,
) -> CocoLatency:
    """Time ``detector``'s backend on each image of ``paths`` after ``warmup`` runs."""
    import time

    tick = clock or time.perf_counter
    if not paths:
        raise DataError("no images to measure with")
    if warmup < 0:
        raise UsageError("--warmup must be >= 0")
    first = read_image_rgb(paths[0])
    blob = preprocess([first], detector.img_size)
    blob_size = np.array([[first.shape[1], first.shape[0]]], dtype=np.int64)
    for _ in range(warmup):
        detector.backend(blob, blob_size)
    model_ms: list[float] = []
    prep_ms: list[float] = []
    iterator: Iterable[Any] = paths
    if progress is not None:
        iterator = progress(paths, "timing", len(paths))
    for path in iterator:
        t0 = tick()
        image = read_image_rgb(path)
        tensor = preprocess([image], detector.img_size)
        size = np.array([[image.shape[1], image.shape[0]]], dtype=np.int64)
        t1 = tick()
        detector.backend(tensor, size)
        t2 = tick()
        prep_ms.append((t1 - t0) * 1000.0)
        model_ms.append((t2 - t1) * 1000.0)
    return CocoLatency(
        images=len(model_ms), warmup=warmup, model=Stats.from_samples(model_ms),
        preprocess=Stats.from_samples(prep_ms), description=detector.backend.meta.description,
    )


def engine_coco_latency(
    engine: str | Path,
    data: str | Path,
    *,
    max_images: int = OFFICIAL_IMAGES,
    warmup: int = OFFICIAL_WARMUP,
    device: str = "auto",
    progress: Progress | None = None,
) -> CocoLatency:
    """``dfine bench trt``: :func:`coco_latency` of a TensorRT ``engine`` on the first
    ``max_images`` images directly in the folder ``data`` (e.g. COCO ``val2017/``)."""
    from dfine_cli.backends.tensorrt_backend import TensorRTBackend

    paths = list_images(data, max_images)
    detector = Detector(TensorRTBackend(Path(engine), device=device))
    return coco_latency(detector, paths, warmup=warmup, progress=progress)
