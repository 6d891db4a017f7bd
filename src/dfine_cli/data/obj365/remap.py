"""Remap Objects365 (official ``tools/remap_obj365.py`` rules).

The first ``new_val_size`` validation images in JSON order stay validation images; the others,
with their annotations, move to the front of the training set, their ``file_name`` losing its
first path component in favour of ``images_from_val/`` (``images/v1/patch0/x.jpg`` →
``images_from_val/v1/patch0/x.jpg``). No id changes. Unlike the official script this streams
both files (memory is bounded by the validation image ids, not the ~10 GB training file), keeps
every other top-level member (``info``, ``licenses``), copies the moved images, and refuses ids
that would collide after the merge. Idempotent and resumable (see :mod:`dfine_cli.data.obj365`).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from dfine_cli.data.cocofile import iter_array, write_streamed_json
from dfine_cli.data.obj365 import (
    MOVED_PREFIX,
    TRAIN_JSON,
    VAL_JSON,
    annotation_image,
    image_key,
    logger,
    new_json_name,
    remove_stale_temps,
    require_dir,
    require_file,
    rewrite_members,
)
from dfine_cli.errors import DataError, UsageError
from dfine_cli.fileio import atomic_path
from dfine_cli.progress import Progress, no_progress


@dataclass(frozen=True)
class RemapSummary:
    new_val_json: Path
    new_train_json: Path
    val_images: int
    val_annotations: int
    moved_images: int
    moved_annotations: int
    train_images: int
    """Images in the new training file (moved validation images included)."""
    train_annotations: int
    copied_images: int
    """Moved images copied by this run."""
    reused_images: int
    """Moved images already in ``images_from_val`` from an earlier (possibly killed) run."""
    dropped_annotations: int
    """Validation annotations whose image_id is no validation image (the official script drops them too)."""


@dataclass
class _RemapCounts:
    val_images: int = 0
    val_annotations: int = 0
    moved_images: int = 0
    moved_annotations: int = 0
    train_images: int = 0
    train_annotations: int = 0
    dropped: int = 0
    moved_annotation_ids: set[Any] = field(default_factory=set)


def moved_file_name(file_name: str) -> str:
    """``images/v1/patch0/x.jpg`` → ``images_from_val/v1/patch0/x.jpg`` (official rule)."""
    rest = file_name.split("/")[1:]
    if not rest or not all(rest):
        raise DataError(
            f"validation image file_name '{file_name}' has no leading folder to replace with "
            f"'{MOVED_PREFIX}/'"
        )
    return "/".join([MOVED_PREFIX, *rest])


def _val_members(
    val_json: Path, keep: set[Any], moved: set[Any], counts: _RemapCounts
) -> Iterator[tuple[str, Any]]:
    def images(elements: Iterable[Any]) -> Iterator[Any]:
        for image in elements:
            if image["id"] in keep:
                counts.val_images += 1
                yield image

    def annotations(elements: Iterable[Any]) -> Iterator[Any]:
        for annotation in elements:
            image_id = annotation_image(annotation, val_json)
            if image_id in keep:
                counts.val_annotations += 1
                yield annotation
            elif image_id not in moved:
                counts.dropped += 1

    return rewrite_members(val_json, images, annotations)


def _train_members(
    train_json: Path, val_json: Path, moved: set[Any], counts: _RemapCounts
) -> Iterator[tuple[str, Any]]:
    """The new training file: the original's members in its order, moved items prepended."""

    def moved_images() -> Iterator[Any]:
        for image in iter_array(val_json, "images"):
            if image["id"] in moved:
                counts.moved_images += 1
                yield {**image, "file_name": moved_file_name(image["file_name"])}

    def moved_annotations() -> Iterator[Any]:
        for annotation in iter_array(val_json, "annotations"):
            if annotation_image(annotation, val_json) in moved:
                annotation_id = annotation.get("id")
                if annotation_id in counts.moved_annotation_ids:
                    raise DataError(f"{val_json}: duplicate annotation id {annotation_id}")
                counts.moved_annotation_ids.add(annotation_id)
                counts.moved_annotations += 1
                yield annotation

    def train_images(elements: Iterable[Any]) -> Iterator[Any]:
        for image in elements:
            if not isinstance(image, dict) or "id" not in image:
                raise DataError(f"{train_json}: an image entry has no 'id': {str(image)[:80]}")
            image_id = image["id"]
            if image_id in moved:
                raise DataError(
                    f"image id {image_id} is used in both {train_json.name} and {val_json.name}; "
                    "merging them would make ids collide"
                )
            counts.train_images += 1
            yield image

    def train_annotations(elements: Iterable[Any]) -> Iterator[Any]:
        for annotation in elements:
            if isinstance(annotation, dict) and annotation.get("id") in counts.moved_annotation_ids:
                raise DataError(
                    f"annotation id {annotation['id']} is used in both {train_json.name} and "
                    f"{val_json.name}; merging them would make ids collide"
                )
            counts.train_annotations += 1
            yield annotation

    return rewrite_members(
        train_json,
        lambda elements: chain(moved_images(), train_images(elements)),
        lambda elements: chain(moved_annotations(), train_annotations(elements)),
    )


def _copy_moved_images(
    val_dir: Path, train_dir: Path, moved_files: list[str], track: Progress
) -> tuple[int, int]:
    copied = reused = 0
    for file_name in track(moved_files, "copy moved val images", total=len(moved_files)):
        source = val_dir / file_name
        target = train_dir / moved_file_name(file_name)
        # A target that exists is complete: copies are renamed into place only when finished.
        if target.is_file() and target.stat().st_size == source.stat().st_size:
            reused += 1
            continue
        with atomic_path(target) as tmp:
            shutil.copy(source, tmp)  # content and permission bits, like cp
        copied += 1
    return copied, reused


def remap_obj365(
    base_dir: str | Path,
    new_val_size: int = 5000,
    copy_images: bool = True,
    track: Progress = no_progress,
) -> RemapSummary:
    """Split Objects365 validation into a new validation set and extra training data.

    Reads ``train/zhiyuan_objv2_train.json`` and ``val/zhiyuan_objv2_val.json`` under
    ``base_dir`` and writes ``val/new_zhiyuan_objv2_val.json`` and
    ``train/new_zhiyuan_objv2_train.json``; with ``copy_images`` the moved images are copied to
    ``train/images_from_val/`` (the README's ``cp -r`` step). Time is linear in the input size;
    memory holds the validation image ids and moved annotation ids, plus one element at a time
    of everything else. Raises :class:`DataError` before renaming any output into place on
    malformed input, missing images or colliding ids.
    """
    if new_val_size < 0:
        raise UsageError(f"--new-val-size must be >= 0, got {new_val_size}")
    base = Path(base_dir)
    train_dir, val_dir = base / "train", base / "val"
    require_dir(base, "Objects365 base directory")
    require_dir(train_dir, "Objects365 train folder")
    require_dir(val_dir, "Objects365 val folder")
    train_json, val_json = train_dir / TRAIN_JSON, val_dir / VAL_JSON
    require_file(train_json, "training annotations")
    require_file(val_json, "validation annotations")
    new_val_json, new_train_json = (
        val_dir / new_json_name("val"),
        train_dir / new_json_name("train"),
    )

    # Pass 1 over the (small) validation file: image ids in JSON order decide the split.
    keep: set[Any] = set()
    moved: set[Any] = set()
    moved_files: list[str] = []
    for image in iter_array(val_json, "images"):
        image_id, file_name = image_key(image, val_json)
        if image_id in keep or image_id in moved:
            raise DataError(f"{val_json}: duplicate image id {image_id}")
        if len(keep) < new_val_size:
            keep.add(image_id)
        else:
            moved.add(image_id)
            moved_file_name(file_name)  # fail now, not halfway through the output
            moved_files.append(file_name)
    if len(keep) < new_val_size:
        logger.warning("only %d validation images; all of them stay validation images", len(keep))
    logger.info("remap: %d validation images kept, %d moved to training", len(keep), len(moved))

    if copy_images:
        missing = [f for f in moved_files if not (val_dir / f).is_file()]
        if missing:
            raise DataError(
                f"{len(missing)} moved validation image(s) not found under {val_dir}, e.g. {missing[0]} "
                "(use --no-copy-images if they are already in train/images_from_val)"
            )

    remove_stale_temps([val_dir], new_val_json.name)
    remove_stale_temps([train_dir], new_train_json.name)
    target_dirs = {(train_dir / moved_file_name(f)).parent for f in moved_files}
    remove_stale_temps(target_dirs, "*")

    counts = _RemapCounts()
    with contextlib.ExitStack() as outputs:
        tmp_val = outputs.enter_context(atomic_path(new_val_json))
        tmp_train = outputs.enter_context(atomic_path(new_train_json))
        with open(tmp_val, "w", encoding="utf-8") as fh:
            write_streamed_json(fh, _val_members(val_json, keep, moved, counts))
        with open(tmp_train, "w", encoding="utf-8") as fh:
            write_streamed_json(fh, _train_members(train_json, val_json, moved, counts))
        copied, reused = (
            _copy_moved_images(val_dir, train_dir, moved_files, track) if copy_images else (0, 0)
        )
        # Leaving the block renames both files into place, the training file first.
    if counts.dropped:
        logger.warning(
            "%d validation annotations refer to no validation image and were dropped",
            counts.dropped,
        )
    return RemapSummary(
        new_val_json=new_val_json,
        new_train_json=new_train_json,
        val_images=counts.val_images,
        val_annotations=counts.val_annotations,
        moved_images=counts.moved_images,
        moved_annotations=counts.moved_annotations,
        train_images=counts.train_images + counts.moved_images,
        train_annotations=counts.train_annotations + counts.moved_annotations,
        copied_images=copied,
        reused_images=reused,
        dropped_annotations=counts.dropped,
    )
