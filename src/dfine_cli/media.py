"""Image and video sources for prediction: files, folders, globs and videos (OpenCV)."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfine_cli.errors import DataError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})


def cv2_module():
    """OpenCV, with FFmpeg's own console messages silenced (errors are ours to report)."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    import cv2

    return cv2


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file as an ``HxWx3`` uint8 RGB array (EXIF orientation applied)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    cv2 = cv2_module()
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:  # permission denied, I/O error: this input fails, not the run
        reason = (exc.strerror or type(exc).__name__).lower()
        raise DataError(f"cannot read image ({reason}): {path}") from exc
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DataError(f"cannot decode image (corrupt or unsupported format): {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


@dataclass(frozen=True)
class SourceList:
    """The resolved inputs of a prediction: image files and video files."""

    images: list[Path]
    videos: list[Path]


def resolve_sources(source: str | Path) -> SourceList:
    """Resolve ``source`` (an image, a video, a folder, or a glob pattern) into files.

    An existing file or folder is taken literally even if its name contains glob characters
    (``photo [1].jpg``); only a path that does not exist is treated as a pattern.
    """
    text = str(source)
    path = Path(text)
    if not path.exists() and any(ch in text for ch in "*?["):
        matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
        files = [p for p in matches if p.is_file()]
        if not files:
            raise DataError(f"no files match {text!r}")
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        files = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES]
        if not files:
            raise DataError(f"no images or videos in folder {path}")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"source not found: {text}")
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    videos = [p for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
    unknown = [p for p in files if p not in images and p not in videos]
    if unknown and len(files) == 1:
        raise DataError(f"unsupported file type: {unknown[0]} (expected an image or a video)")
    return SourceList(images=images, videos=videos)


@dataclass
class VideoInfo:
    fps: float
    width: int
    height: int
    frames: int
