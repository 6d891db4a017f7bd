"""Objects365 preparation as the D-FINE README describes it: remap the splits, then resize.

Both steps are idempotent and resumable. Every output is written to a temporary file and renamed
into place (:mod:`dfine_cli.fileio`), so killing a run at any moment leaves either the previous
state or a finished file, never a half-written one; running again finishes the job with the same
bytes as one uninterrupted run. Temporary files left by a killed run are removed by the next run.

- :mod:`dfine_cli.data.obj365.remap`: the validation images beyond ``new_val_size`` join the
  training set (official ``tools/remap_obj365.py``).
- :mod:`dfine_cli.data.obj365.resize`: images larger than ``max_size`` are scaled down, boxes
  with them (official ``tools/resize_obj365.py``).

This module holds what both steps share: the file names of the layout and the checks and
streaming helpers for COCO-style JSON members.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from dfine_cli.data.cocofile import StreamedArray, iter_members
from dfine_cli.errors import DataError

logger = logging.getLogger("dfine.data.obj365")

TRAIN_JSON = "zhiyuan_objv2_train.json"
VAL_JSON = "zhiyuan_objv2_val.json"
MOVED_PREFIX = "images_from_val"
RESIZED_SUFFIX = "_resized.jpg"


def new_json_name(split: str) -> str:
    """The remapped annotation file of ``split`` (``"train"``/``"val"``)."""
    return f"new_zhiyuan_objv2_{split}.json"


def resized_json_name(split: str) -> str:
    """The resized annotation file of ``split``."""
    return f"new_zhiyuan_objv2_{split}_resized.json"


def check_relative(file_name: Any, source: Path) -> str:
    """A JSON ``file_name`` that stays inside its image folder."""
    if not isinstance(file_name, str) or not file_name:
        raise DataError(f"{source}: image with a missing or non-string file_name: {file_name!r}")
    parts = PurePosixPath(file_name).parts
    if file_name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        raise DataError(f"{source}: unsafe image file_name (absolute or with '..'): {file_name}")
    return file_name


def image_key(image: Any, source: Path) -> tuple[int | str, str]:
    if not isinstance(image, dict) or "id" not in image:
        raise DataError(f"{source}: an image entry has no 'id': {str(image)[:80]}")
    image_id = image["id"]
    if isinstance(image_id, bool) or not isinstance(image_id, int | str):
        raise DataError(f"{source}: image id must be an integer or string, got {image_id!r}")
    return image_id, check_relative(image.get("file_name"), source)


def annotation_image(annotation: Any, source: Path) -> Any:
    if not isinstance(annotation, dict) or "image_id" not in annotation:
        raise DataError(f"{source}: an annotation has no 'image_id': {str(annotation)[:80]}")
    return annotation["image_id"]


def remove_stale_temps(directories: Iterable[Path], name_glob: str) -> None:
    """Delete temporary files a killed run left (named ``.<target>.<random>.tmp<suffix>``)."""
    for directory in directories:
        if directory.is_dir():
            for stale in directory.glob(f".{name_glob}.*.tmp*"):
                logger.debug("removing leftover temporary file %s", stale)
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()


def require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DataError(f"{what} not found: {path}")


def require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")


def rewrite_members(
    source: Path,
    images: Callable[[Iterable[Any]], Iterable[Any]],
    annotations: Callable[[Iterable[Any]], Iterable[Any]],
) -> Iterator[tuple[str, Any]]:
    """``source``'s members in file order, its images and annotations streamed through the
    given functions, for :func:`write_streamed_json`. Raises :class:`DataError` at the end if
    ``images``, ``annotations`` or ``categories`` was missing."""
    seen = set()
    for key, value in iter_members(source):
        seen.add(key)
        if key == "images":
            yield key, StreamedArray(images(value))
        elif key == "annotations":
            yield key, StreamedArray(annotations(value))
        else:
            yield key, value
    missing = {"images", "annotations", "categories"} - seen
    if missing:
        raise DataError(
            f"{source}: missing {', '.join(sorted(missing))} (not a COCO annotation file?)"
        )
