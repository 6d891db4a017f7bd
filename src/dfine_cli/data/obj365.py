"""Objects365 preparation as the D-FINE README describes it: remap the splits, then resize.

Both steps are idempotent and resumable. Every output is written to a temporary file and renamed
into place (:mod:`dfine_cli.fileio`), so killing a run at any moment leaves either the previous
state or a finished file, never a half-written one; running again finishes the job with the same
bytes as one uninterrupted run. Temporary files left by a killed run are removed by the next run.

Remap (official ``tools/remap_obj365.py`` rules): the first ``new_val_size`` validation images in
JSON order stay validation images; the others, with their annotations, move to the front of the
training set, their ``file_name`` losing its first path component in favour of
``images_from_val/`` (``images/v1/patch0/x.jpg`` → ``images_from_val/v1/patch0/x.jpg``). No id
changes. Unlike the official script this streams both files (memory is bounded by the validation
image ids, not the ~10 GB training file), keeps every other top-level member (``info``,
``licenses``), copies the moved images, and refuses ids that would collide after the merge.

Resize (official ``tools/resize_obj365.py`` geometry): an image whose longer side exceeds
``max_size`` is scaled by ``s = max_size / max(w, h)`` to ``int(w*s) × int(h*s)`` with Lanczos and
saved beside the original as ``<stem>_resized.jpg``; its boxes (xywh) are multiplied by ``s`` and
its ``area`` by ``s**2``. Other images keep their file, and their JSON width/height are taken from
the file.

EXIF orientation: an image carrying an orientation tag other than 1 is always rewritten as an
upright ``_resized.jpg`` without the tag (even when small), so every loader, EXIF-aware or not,
sees the same pixels. Its boxes are mapped into the upright frame. They are taken to be in the
stored-pixel frame (the one the official loader, which ignores EXIF, uses) unless the JSON
width/height equal the rotated size and not the stored one, in which case they already are
upright.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

from dfine_cli.data.cocofile import StreamedArray, iter_array, iter_members, write_streamed_json
from dfine_cli.errors import DataError, UsageError
from dfine_cli.fileio import atomic_path

logger = logging.getLogger("dfine.data.obj365")

TRAIN_JSON = "zhiyuan_objv2_train.json"
VAL_JSON = "zhiyuan_objv2_val.json"
MOVED_PREFIX = "images_from_val"
RESIZED_SUFFIX = "_resized.jpg"

Tracker = Callable[..., Iterable[Any]]
"""Progress wrapper with the signature of :func:`dfine_cli.cli._common.track`."""


def _no_progress(items: Iterable[Any], description: str, total: int | None = None) -> Iterable[Any]:
    return items


def new_json_name(split: str) -> str:
    return f"new_zhiyuan_objv2_{split}.json"


def resized_json_name(split: str) -> str:
    return f"new_zhiyuan_objv2_{split}_resized.json"


# --------------------------------------------------------------------------- shared helpers


def _check_relative(file_name: Any, source: Path) -> str:
    """A JSON ``file_name`` that stays inside its image folder."""
    if not isinstance(file_name, str) or not file_name:
        raise DataError(f"{source}: image with a missing or non-string file_name: {file_name!r}")
    parts = PurePosixPath(file_name).parts
    if file_name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        raise DataError(f"{source}: unsafe image file_name (absolute or with '..'): {file_name}")
    return file_name


def _image_key(image: Any, source: Path) -> tuple[int | str, str]:
    if not isinstance(image, dict) or "id" not in image:
        raise DataError(f"{source}: an image entry has no 'id': {str(image)[:80]}")
    image_id = image["id"]
    if isinstance(image_id, bool) or not isinstance(image_id, int | str):
        raise DataError(f"{source}: image id must be an integer or string, got {image_id!r}")
    return image_id, _check_relative(image.get("file_name"), source)


def _annotation_image(annotation: Any, source: Path) -> Any:
    if not isinstance(annotation, dict) or "image_id" not in annotation:
        raise DataError(f"{source}: an annotation has no 'image_id': {str(annotation)[:80]}")
    return annotation["image_id"]


def _remove_stale_temps(directories: Iterable[Path], name_glob: str) -> None:
    """Delete temporary files a killed run left (named ``.<target>.<random>.tmp<suffix>``)."""
    for directory in directories:
        if directory.is_dir():
            for stale in directory.glob(f".{name_glob}.*.tmp*"):
                logger.debug("removing leftover temporary file %s", stale)
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DataError(f"{what} not found: {path}")


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")


def _rewrite_members(
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


# --------------------------------------------------------------------------- remap


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
            image_id = _annotation_image(annotation, val_json)
            if image_id in keep:
                counts.val_annotations += 1
                yield annotation
            elif image_id not in moved:
                counts.dropped += 1

    return _rewrite_members(val_json, images, annotations)


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
            if _annotation_image(annotation, val_json) in moved:
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

    return _rewrite_members(
        train_json,
        lambda elements: chain(moved_images(), train_images(elements)),
        lambda elements: chain(moved_annotations(), train_annotations(elements)),
    )


def _copy_moved_images(
    val_dir: Path, train_dir: Path, moved_files: list[str], track: Tracker
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
    track: Tracker = _no_progress,
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
    _require_dir(base, "Objects365 base directory")
    _require_dir(train_dir, "Objects365 train folder")
    _require_dir(val_dir, "Objects365 val folder")
    train_json, val_json = train_dir / TRAIN_JSON, val_dir / VAL_JSON
    _require_file(train_json, "training annotations")
    _require_file(val_json, "validation annotations")
    new_val_json, new_train_json = (
        val_dir / new_json_name("val"),
        train_dir / new_json_name("train"),
    )

    # Pass 1 over the (small) validation file: image ids in JSON order decide the split.
    keep: set[Any] = set()
    moved: set[Any] = set()
    moved_files: list[str] = []
    for image in iter_array(val_json, "images"):
        image_id, file_name = _image_key(image, val_json)
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

    _remove_stale_temps([val_dir], new_val_json.name)
    _remove_stale_temps([train_dir], new_train_json.name)
    target_dirs = {(train_dir / moved_file_name(f)).parent for f in moved_files}
    _remove_stale_temps(target_dirs, "*")

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
            index = index_of.get(_annotation_image(annotation, source))
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

    return _rewrite_members(source, images, annotations)


def resize_coco_images(
    source_json: str | Path,
    images_dir: str | Path,
    output_json: str | Path,
    max_size: int = 640,
    workers: int = 1,
    skip_bad: bool = False,
    track: Tracker = _no_progress,
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
    _require_file(source, "annotation file")
    _require_dir(images_root, "image folder")

    tasks: list[tuple[str, Any, Any]] = []
    index_of: dict[Any, int] = {}
    originals_named_resized: set[str] = set()
    for image in iter_array(source, "images"):
        image_id, file_name = _image_key(image, source)
        if image_id in index_of:
            raise DataError(f"{source}: duplicate image id {image_id}")
        index_of[image_id] = len(tasks)
        tasks.append((file_name, image.get("width"), image.get("height")))
        if file_name.endswith(RESIZED_SUFFIX):
            originals_named_resized.add(file_name)

    image_dirs = {file_name.rpartition("/")[0] for file_name, _, _ in tasks}
    _remove_stale_temps({images_root / d for d in image_dirs}, f"*{RESIZED_SUFFIX}")
    _remove_stale_temps([output.parent], output.name)

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
    track: Tracker = _no_progress,
) -> list[ResizeSummary]:
    """Resize each split's ``new_zhiyuan_objv2_{split}.json`` into ``..._{split}_resized.json``.

    Images are read from ``base_dir/{split}/`` (the folder the official configs use as
    ``img_folder``). All inputs are checked before any work starts.
    """
    base = Path(base_dir)
    _require_dir(base, "Objects365 base directory")
    splits = list(splits)
    for split in splits:
        if split not in ("train", "val"):
            raise UsageError(f"unknown split '{split}'; expected train or val")
        _require_file(
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
