"""Resize Objects365 images (official ``tools/resize_obj365.py`` geometry).

An image whose longer side exceeds
``max_size`` is scaled by ``s = max_size / max(w, h)`` to ``int(w*s) × int(h*s)`` with Lanczos and
saved beside the original as ``<stem>_resized.jpg``; its boxes (xywh) are multiplied by ``s`` and
its ``area`` by ``s**2``. Other images keep their file, and their JSON width/height are taken from
the file.

EXIF orientation: an image carrying an orientation tag other than 1 is always rewritten as an
upright ``_resized.jpg`` without the tag (even when small), so every loader, EXIF-aware or not,
sees the same pixels. Its boxes are mapped into the upright frame. They are taken to be in the
stored-pixel frame (the one the official loader, which ignores EXIF, uses) unless the JSON
width/height equal the rotated size and not the stored one, in which case they already are
upright. Idempotent and resumable (see :mod:`dfine_cli.data.obj365`).
"""

from __future__ import annotations

import signal
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from dfine_cli.data.cocofile import iter_array, write_streamed_json
from dfine_cli.data.obj365 import (
    RESIZED_SUFFIX,
    annotation_image,
    image_key,
    logger,
    new_json_name,
    remove_stale_temps,
    require_dir,
    require_file,
    resized_json_name,
    rewrite_members,
)
from dfine_cli.errors import DataError, UsageError
from dfine_cli.fileio import atomic_path
from dfine_cli.progress import Progress, no_progress

# --------------------------------------------------------------------------- resize: geometry

_AXES_SWAPPED = frozenset({5, 6, 7, 8})


def orient_point(
    x: float, y: float, orientation: int, width: float, height: float
) -> tuple[float, float]:
    """Map a point from the stored pixels (``width × height``) to the EXIF-upright image.

    Continuous pixel coordinates; ``orientation`` is the EXIF tag 0x0112 (1–8) as applied by
    ``PIL.ImageOps.exif_transpose``.
    """
    if orientation == 2:
        return width - x, y
    if orientation == 3:
        return width - x, height - y
    if orientation == 4:
        return x, height - y
    if orientation == 5:
        return y, x
    if orientation == 6:
        return height - y, x
    if orientation == 7:
        return height - y, width - x
    if orientation == 8:
        return y, width - x
    return x, y


def orient_box(box: list[float], orientation: int, width: float, height: float) -> list[float]:
    """Map an xywh box (COCO, pixels) on the stored image into the EXIF-upright image."""
    x, y, w, h = box
    x1, y1 = orient_point(x, y, orientation, width, height)
    x2, y2 = orient_point(x + w, y + h, orientation, width, height)
    return [min(x1, x2), min(y1, y2), abs(x2 - x1), abs(y2 - y1)]


def resized_file_name(file_name: str) -> str:
    """``dir/x.jpg`` → ``dir/x_resized.jpg``; any other suffix is replaced too (output is JPEG)."""
    path = PurePosixPath(file_name)
    return str(path.with_name(path.stem + RESIZED_SUFFIX))


class ImageOutcome(NamedTuple):
    """What resizing did to one image (picklable, returned by the worker processes)."""

    error: str | None
    width: int
    """Width and height of the image the output JSON points to."""
    height: int
    scale: float
    orientation: int
    """EXIF orientation applied (1: none)."""
    stored_width: int
    stored_height: int
    boxes_upright: bool
    """The JSON boxes were already in the upright frame."""
    action: str
    """"unchanged" (original kept), "written" (new _resized.jpg) or "reused" (from an earlier run)."""


def _failed(reason: str) -> ImageOutcome:
    return ImageOutcome(reason, 0, 0, 1.0, 1, 0, 0, False, "failed")


def _exif_orientation(img: Any) -> int:
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not fail the image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _is_finished(target: Path, width: int, height: int) -> bool:
    """Whether ``target`` is a complete resized copy that a rerun may reuse.

    Its header must match and the whole image must decode: a file cut short (copied while
    being written, a disk that filled up, an older dfine that wrote in place) fails here and
    is written again. The decode costs about as much as reading the copy once (a few ms for
    a 640-pixel JPEG), far less than resizing the original again.
    """
    from PIL import Image

    if not target.is_file():
        return False
    try:
        with Image.open(target) as done:
            if done.format != "JPEG" or done.size != (width, height):
                return False
            done.load()  # raises on truncated data (LOAD_TRUNCATED_IMAGES stays off)
            return True
    except Exception:
        return False


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _resize_one(images_dir: str, max_size: int, task: tuple[str, Any, Any]) -> ImageOutcome:
    """Resize (or check) one image; never raises, failures come back as ``error``."""
    from PIL import Image, ImageOps

    file_name, json_width, json_height = task
    source = Path(images_dir, file_name)
    try:
        with Image.open(source) as img:
            stored_w, stored_h = img.size
            orientation = _exif_orientation(img)
            upright_w, upright_h = (
                (stored_h, stored_w) if orientation in _AXES_SWAPPED else (stored_w, stored_h)
            )
            boxes_upright = (
                orientation in _AXES_SWAPPED
                and (json_width, json_height) == (upright_w, upright_h)
                and (json_width, json_height) != (stored_w, stored_h)
            )
            longest = max(stored_w, stored_h)
            scale = max_size / longest if longest > max_size else 1.0
            new_w, new_h = (
                (int(upright_w * scale), int(upright_h * scale))
                if scale != 1.0
                else (upright_w, upright_h)
            )
            if scale == 1.0 and orientation == 1:
                img.load()  # decode: a corrupt file fails here rather than in training
                return ImageOutcome(
                    None, new_w, new_h, 1.0, 1, stored_w, stored_h, False, "unchanged"
                )
            outcome = ImageOutcome(
                None, new_w, new_h, scale, orientation, stored_w, stored_h, boxes_upright, "written"
            )
            target = Path(images_dir, resized_file_name(file_name))
            if _is_finished(target, new_w, new_h):
                return outcome._replace(action="reused")
            out = ImageOps.exif_transpose(img) if orientation != 1 else img
            if scale != 1.0:
                out = out.resize((new_w, new_h), Image.Resampling.LANCZOS)
            if out.mode not in ("RGB", "L", "CMYK"):
                out = out.convert("RGB")
            with atomic_path(target) as tmp:
                out.save(tmp, format="JPEG")
            return outcome
    except Exception as exc:  # any unreadable image is reported, never fatal
        return _failed(_describe(exc))


def _resize_batch(
    images_dir: str, max_size: int, batch: list[tuple[str, Any, Any]]
) -> list[ImageOutcome]:
    return [_resize_one(images_dir, max_size, task) for task in batch]


def _ignore_sigint() -> None:
    # Ctrl-C is handled by the parent, which stops the pool after the batches in flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_resize(
    tasks: list[tuple[str, Any, Any]],
    images_dir: Path,
    max_size: int,
    workers: int,
    batch_size: int = 16,
) -> Iterator[tuple[int, ImageOutcome]]:
    """Yield ``(task index, outcome)`` as images finish (not in order)."""
    if workers <= 1:
        for index, task in enumerate(tasks):
            yield index, _resize_one(str(images_dir), max_size, task)
        return
    starts = iter(range(0, len(tasks), batch_size))
    with ProcessPoolExecutor(max_workers=workers, initializer=_ignore_sigint) as pool:
        pending: dict[Future[list[ImageOutcome]], int] = {}

        def submit_next() -> None:
            start = next(starts, None)
            if start is not None:
                batch = tasks[start : start + batch_size]
                pending[pool.submit(_resize_batch, str(images_dir), max_size, batch)] = start

        try:
            for _ in range(4 * workers):
                submit_next()
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    start = pending.pop(future)
                    for offset, outcome in enumerate(future.result()):
                        yield start + offset, outcome
                    submit_next()
        finally:
            for future in pending:
                future.cancel()


# --------------------------------------------------------------------------- resize: JSON


@dataclass(frozen=True)
class ImageFailure:
    image_id: Any
    file_name: str
    reason: str


@dataclass(frozen=True)
class ResizeSummary:
    source_json: Path
    output_json: Path
    written: bool
    """False when failures stopped the output JSON from being written (see ``skip_bad``)."""
    images: int
    resized: int
    """Images resized (or rotated upright) by this run."""
    reused: int
    """Images whose ``_resized.jpg`` an earlier run had already finished."""
    unchanged: int
    annotations: int
    failures: list[ImageFailure]
    dropped_annotations: int
    """Annotations left out: those of failed images (with ``skip_bad``) or of no listed image."""


def _update_annotation(
    annotation: dict[str, Any], outcome: ImageOutcome, source: Path
) -> dict[str, Any]:
    bbox = annotation.get("bbox")
    if not (
        isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(c, int | float) for c in bbox)
    ):
        raise DataError(
            f"{source}: annotation {annotation.get('id')} has no valid xywh 'bbox': {bbox!r}"
        )
    updated = dict(annotation)
    segmentation: Any = annotation.get("segmentation")
    polygons = isinstance(segmentation, list) and all(isinstance(p, list) for p in segmentation)
    if outcome.orientation != 1 and not outcome.boxes_upright:
        args = (outcome.orientation, outcome.stored_width, outcome.stored_height)
        bbox = orient_box(bbox, *args)
        if polygons:
            segmentation = [
                [
                    c
                    for x, y in zip(p[0::2], p[1::2], strict=True)
                    for c in orient_point(x, y, *args)
                ]
                for p in segmentation
            ]
    scale = outcome.scale
    if scale != 1.0:
        bbox = [coord * scale for coord in bbox]
        if "area" in updated:
            updated["area"] = updated["area"] * (scale**2)
        if polygons:
            segmentation = [[c * scale for c in p] for p in segmentation]
        for key in ("orig_size", "size"):
            if key in updated:
                updated[key] = [outcome.width, outcome.height]
    updated["bbox"] = bbox
    if polygons:
        updated["segmentation"] = segmentation
    return updated


def _resized_members(
    source: Path, outcomes: list[ImageOutcome], index_of: dict[Any, int], counts: dict[str, int]
) -> Iterator[tuple[str, Any]]:
    def images(elements: Iterable[Any]) -> Iterator[Any]:
        for image, outcome in zip(elements, outcomes, strict=True):
            if outcome.error is not None:
                continue
            updated = {**image, "width": outcome.width, "height": outcome.height}
            if outcome.action != "unchanged":
                updated["file_name"] = resized_file_name(image["file_name"])
            yield updated

    def annotations(elements: Iterable[Any]) -> Iterator[Any]:
        for annotation in elements:
            index = index_of.get(annotation_image(annotation, source))
            if index is None or outcomes[index].error is not None:
                counts["dropped"] += 1
                continue
            counts["annotations"] += 1
            outcome = outcomes[index]
            yield (
                annotation
                if outcome.action == "unchanged"
                else _update_annotation(annotation, outcome, source)
            )

    return rewrite_members(source, images, annotations)


def resize_coco_images(
    source_json: str | Path,
    images_dir: str | Path,
    output_json: str | Path,
    max_size: int = 640,
    workers: int = 1,
    skip_bad: bool = False,
    track: Progress = no_progress,
    description: str = "resize",
) -> ResizeSummary:
    """Shrink a COCO dataset's large images and write the matching annotation file.

    See the module docstring for the geometry and EXIF rules. ``source_json`` is only read;
    images are never overwritten. If any image fails (missing, unreadable) the output JSON is
    written only with ``skip_bad`` (failed images and their annotations left out); otherwise
    the summary has ``written=False`` and lists the failures. Finished ``_resized.jpg`` files
    are reused, so a rerun after an interruption only does the remaining work.
    """
    if max_size < 1:
        raise UsageError(f"--max-size must be >= 1, got {max_size}")
    if workers < 1:
        raise UsageError(f"--workers must be >= 1, got {workers}")
    source, images_root, output = Path(source_json), Path(images_dir), Path(output_json)
    require_file(source, "annotation file")
    require_dir(images_root, "image folder")

    tasks: list[tuple[str, Any, Any]] = []
    index_of: dict[Any, int] = {}
    originals_named_resized: set[str] = set()
    for image in iter_array(source, "images"):
        image_id, file_name = image_key(image, source)
        if image_id in index_of:
            raise DataError(f"{source}: duplicate image id {image_id}")
        index_of[image_id] = len(tasks)
        tasks.append((file_name, image.get("width"), image.get("height")))
        if file_name.endswith(RESIZED_SUFFIX):
            originals_named_resized.add(file_name)

    image_dirs = {file_name.rpartition("/")[0] for file_name, _, _ in tasks}
    remove_stale_temps({images_root / d for d in image_dirs}, f"*{RESIZED_SUFFIX}")
    remove_stale_temps([output.parent], output.name)

    outcomes: list[ImageOutcome] = [_failed("not processed")] * len(tasks)
    clobbering = (
        {i for i, t in enumerate(tasks) if resized_file_name(t[0]) in originals_named_resized}
        if originals_named_resized
        else set()
    )
    for index in clobbering:
        outcomes[index] = _failed(
            f"its output {resized_file_name(tasks[index][0])} would overwrite an original image"
        )
    todo = [i for i in range(len(tasks)) if i not in clobbering]
    work = _run_resize([tasks[i] for i in todo], images_root, max_size, workers)
    for position, outcome in track(work, description, total=len(todo)):
        outcomes[todo[position]] = outcome

    failures = [
        ImageFailure(image_id, tasks[index][0], outcomes[index].error or "")
        for image_id, index in index_of.items()
        if outcomes[index].error is not None
    ]
    actions = [o.action for o in outcomes]
    counts = {"annotations": 0, "dropped": 0}
    written = not failures or skip_bad
    if written:
        with atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            write_streamed_json(fh, _resized_members(source, outcomes, index_of, counts))
    for failure in failures[:10]:
        logger.warning("failed: %s (%s)", failure.file_name, failure.reason)
    return ResizeSummary(
        source_json=source,
        output_json=output,
        written=written,
        images=len(tasks) - len(failures),
        resized=actions.count("written"),
        reused=actions.count("reused"),
        unchanged=actions.count("unchanged"),
        annotations=counts["annotations"],
        failures=failures,
        dropped_annotations=counts["dropped"],
    )


def resize_obj365(
    base_dir: str | Path,
    splits: Iterable[str] = ("train", "val"),
    max_size: int = 640,
    workers: int = 1,
    skip_bad: bool = False,
    track: Progress = no_progress,
) -> list[ResizeSummary]:
    """Resize each split's ``new_zhiyuan_objv2_{split}.json`` into ``..._{split}_resized.json``.

    Images are read from ``base_dir/{split}/`` (the folder the official configs use as
    ``img_folder``). All inputs are checked before any work starts.
    """
    base = Path(base_dir)
    require_dir(base, "Objects365 base directory")
    splits = list(splits)
    for split in splits:
        if split not in ("train", "val"):
            raise UsageError(f"unknown split '{split}'; expected train or val")
        require_file(
            base / split / new_json_name(split), f"{split} annotations (run remap-obj365 first)"
        )
    return [
        resize_coco_images(
            base / split / new_json_name(split),
            base / split,
            base / split / resized_json_name(split),
            max_size=max_size,
            workers=workers,
            skip_bad=skip_bad,
            track=track,
            description=f"resize {split}",
        )
        for split in splits
    ]
