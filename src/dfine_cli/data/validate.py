"""Check a COCO-format dataset before training, and describe it.

:func:`validate_coco` runs every check and returns a :class:`ValidationReport`: one
:class:`Issue` per check that found something, with a count and a few examples. Errors are
problems that break training or evaluation (missing images, wrong sizes, unknown ids); warnings
are things loaders work around (zero-area boxes are dropped, boxes are clipped to the image) but
that usually point at a labelling mistake.
"""

from __future__ import annotations

import math
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from dfine_cli.data.cocofile import DatasetSplit, load_json
from dfine_cli.errors import DataError
from dfine_cli.progress import Progress, no_progress

ERROR, WARNING = "error", "warning"

CHECKS: dict[str, tuple[str, str]] = {
    # name: (severity, what it means)
    "bad_image_entry": (
        ERROR,
        "image entry without an id, file_name, or positive integer width/height",
    ),
    "duplicate_image_id": (ERROR, "two image entries share an id"),
    "missing_image": (ERROR, "image file not found"),
    "unreadable_image": (ERROR, "image file cannot be opened or decoded"),
    "size_mismatch": (ERROR, "image file size differs from the JSON width/height"),
    "bad_category": (ERROR, "category without an integer id or a name"),
    "duplicate_category_id": (ERROR, "two categories share an id"),
    "bad_annotation": (
        ERROR,
        "annotation without id/image_id/category_id or a bbox of 4 finite numbers ≥ 0 in size",
    ),
    "duplicate_annotation_id": (ERROR, "two annotations share an id"),
    "unknown_image_id": (ERROR, "annotation refers to an image id that is not listed"),
    "unknown_category_id": (ERROR, "annotation refers to a category id that is not listed"),
    "zero_area_box": (WARNING, "box with zero width or height (training drops it)"),
    "box_outside_image": (
        WARNING,
        "box extends more than 1 px outside its image (training clips it)",
    ),
    "empty_category": (WARNING, "category without any box"),
    "duplicate_file_name": (WARNING, "two image entries point to the same file"),
    "exif_rotated": (
        WARNING,
        "image has an EXIF orientation tag: loaders that apply it and loaders that ignore it see different pixels",
    ),
    "names_mismatch": (WARNING, "class names in the dataset YAML differ from the JSON categories"),
    "no_annotations_key": (
        WARNING,
        "the file has no 'annotations' list: every image is a negative sample (no boxes)",
    ),
    "no_boxes": (WARNING, "the split has no box at all"),
}
_OUTSIDE_TOLERANCE = 1.0
_MAX_EXAMPLES = 5


@dataclass(frozen=True)
class Issue:
    check: str
    severity: str
    count: int
    examples: tuple[str, ...]

    @property
    def description(self) -> str:
        return CHECKS[self.check][1]


@dataclass(frozen=True)
class ValidationReport:
    annotations: Path | None
    images_dir: Path
    images: int
    boxes: int
    categories: int
    issues: list[Issue]

    @property
    def errors(self) -> int:
        return sum(i.count for i in self.issues if i.severity == ERROR)

    @property
    def warnings(self) -> int:
        return sum(i.count for i in self.issues if i.severity == WARNING)

    @property
    def ok(self) -> bool:
        return self.errors == 0


@dataclass
class _Findings:
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, check: str, example: str) -> None:
        self.counts[check] += 1
        shown = self.examples.setdefault(check, [])
        if len(shown) < _MAX_EXAMPLES:
            shown.append(example)

    def issues(self) -> list[Issue]:
        return [
            Issue(check, CHECKS[check][0], self.counts[check], tuple(self.examples[check]))
            for check in CHECKS
            if self.counts[check]
        ]


class ImageProbe(NamedTuple):
    """What opening one image file found (picklable, computed in worker processes)."""

    error: str | None
    width: int
    height: int
    orientation: int


def probe_image(path: str, decode: bool = True) -> ImageProbe:
    """Open an image, read its stored size and EXIF orientation, and (by default) decode it."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            try:
                orientation = int(img.getexif().get(0x0112, 1))
            except Exception:
                orientation = 1
            if decode:
                img.load()
            return ImageProbe(None, img.size[0], img.size[1], orientation)
    except FileNotFoundError:
        return ImageProbe("missing", 0, 0, 1)
    except Exception as exc:
        return ImageProbe(f"{type(exc).__name__}: {' '.join(str(exc).split())}", 0, 0, 1)


def _probe_decoded(path: str) -> ImageProbe:
    return probe_image(path, decode=True)


def _probe_header(path: str) -> ImageProbe:
    return probe_image(path, decode=False)


def _probe_all(paths: list[str], decode: bool, workers: int, track: Progress) -> list[ImageProbe]:
    probe = _probe_decoded if decode else _probe_header
    if workers <= 1 or len(paths) < 64:
        return list(track(map(probe, paths), "check images", total=len(paths)))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        chunk = max(1, min(256, len(paths) // (workers * 8)))
        return list(
            track(pool.map(probe, paths, chunksize=chunk), "check images", total=len(paths))
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _valid_bbox(bbox: Any) -> bool:
    return (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in bbox
        )
        and bbox[2] >= 0
        and bbox[3] >= 0
    )


def validate_coco(
    data: dict[str, Any],
    images_dir: str | Path,
    *,
    annotations: Path | None = None,
    names: tuple[str, ...] | None = None,
    decode: bool = True,
    workers: int = 1,
    track: Progress = no_progress,
) -> ValidationReport:
    """Run every check on a loaded COCO dict whose images live under ``images_dir``.

    ``decode=False`` only reads image headers (fast, but misses truncated files). A dict
    without an ``annotations`` key is checked as one without boxes (a warning).
    """
    images_dir = Path(images_dir)
    found = _Findings()
    if "annotations" not in data:
        found.add("no_annotations_key", f"{len(data['images'])} images, all negative samples")

    # Categories.
    category_ids: set[Any] = set()
    category_names: dict[Any, str] = {}
    for category in data["categories"]:
        if (
            not isinstance(category, dict)
            or not _is_int(category.get("id"))
            or not isinstance(category.get("name"), str)
        ):
            found.add("bad_category", str(category)[:80])
            continue
        if category["id"] in category_ids:
            found.add("duplicate_category_id", f"category id {category['id']}")
        category_ids.add(category["id"])
        category_names[category["id"]] = category["name"]
    if names is not None and tuple(category_names[k] for k in sorted(category_names)) != tuple(
        names
    ):
        found.add(
            "names_mismatch",
            f"YAML {list(names)} vs JSON {[category_names[k] for k in sorted(category_names)]}",
        )

    # Image entries.
    sizes: dict[Any, tuple[int, int]] = {}
    file_of: dict[Any, str] = {}
    seen_files: set[str] = set()
    for image in data["images"]:
        if (
            not isinstance(image, dict)
            or "id" not in image
            or not isinstance(image.get("file_name"), str)
        ):
            found.add("bad_image_entry", str(image)[:80])
            continue
        image_id, file_name = image["id"], image["file_name"]
        if image_id in file_of:
            found.add("duplicate_image_id", f"image id {image_id}")
            continue
        width: Any = image.get("width")
        height: Any = image.get("height")
        if not (_is_int(width) and _is_int(height) and width > 0 and height > 0):
            found.add(
                "bad_image_entry",
                f"image {image_id} ({file_name}): width={width!r} height={height!r}",
            )
            width = height = 0
        if file_name in seen_files:
            found.add("duplicate_file_name", file_name)
        seen_files.add(file_name)
        file_of[image_id] = file_name
        sizes[image_id] = (width, height)

    # Image files.
    ids = list(file_of)
    probes = _probe_all([str(images_dir / file_of[i]) for i in ids], decode, workers, track)
    for image_id, probe in zip(ids, probes, strict=True):
        label = f"image {image_id} ({file_of[image_id]})"
        if probe.error == "missing":
            found.add("missing_image", f"{label}: {images_dir / file_of[image_id]}")
            continue
        if probe.error is not None:
            found.add("unreadable_image", f"{label}: {probe.error}")
            continue
        if probe.orientation not in (0, 1):
            found.add("exif_rotated", f"{label}: orientation {probe.orientation}")
        expected = sizes[image_id]
        stored = (probe.width, probe.height)
        rotated = (probe.height, probe.width) if probe.orientation in (5, 6, 7, 8) else stored
        if expected != (0, 0) and expected not in (stored, rotated):
            found.add(
                "size_mismatch",
                f"{label}: JSON {expected[0]}x{expected[1]}, file {stored[0]}x{stored[1]}",
            )

    # Annotations.
    annotation_ids: set[Any] = set()
    used_categories: Counter[Any] = Counter()
    boxes = 0
    for annotation in data.get("annotations", []):
        if not isinstance(annotation, dict) or not all(
            k in annotation for k in ("id", "image_id", "category_id")
        ):
            found.add("bad_annotation", str(annotation)[:80])
            continue
        label = f"annotation {annotation['id']} (image {annotation['image_id']})"
        if annotation["id"] in annotation_ids:
            found.add("duplicate_annotation_id", label)
        annotation_ids.add(annotation["id"])
        if annotation["category_id"] not in category_ids:
            found.add("unknown_category_id", f"{label}: category {annotation['category_id']}")
        else:
            used_categories[annotation["category_id"]] += 1
        if annotation["image_id"] not in sizes:
            found.add("unknown_image_id", label)
        bbox: Any = annotation.get("bbox")
        if not _valid_bbox(bbox):
            found.add("bad_annotation", f"{label}: bbox {bbox!r}")
            continue
        boxes += 1
        x, y, w, h = bbox
        if w == 0 or h == 0:
            found.add("zero_area_box", f"{label}: bbox {bbox}")
        width, height = sizes.get(annotation["image_id"], (0, 0))
        if width and (
            x < -_OUTSIDE_TOLERANCE
            or y < -_OUTSIDE_TOLERANCE
            or x + w > width + _OUTSIDE_TOLERANCE
            or y + h > height + _OUTSIDE_TOLERANCE
        ):
            found.add("box_outside_image", f"{label}: bbox {bbox} in {width}x{height}")
    for category_id in sorted(category_ids - set(used_categories)):
        found.add("empty_category", f"category {category_id} ({category_names[category_id]})")
    if boxes == 0:
        found.add("no_boxes", f"{len(file_of)} images, 0 boxes")

    return ValidationReport(
        annotations=annotations,
        images_dir=images_dir,
        images=len(file_of),
        boxes=boxes,
        categories=len(category_ids),
        issues=found.issues(),
    )


def validate_split(
    split: DatasetSplit, *, decode: bool = True, workers: int = 1, track: Progress = no_progress
) -> ValidationReport:
    """Load ``split``'s annotation file (a :class:`DataError` if unreadable) and check it."""
    data = _load_split(split.annotations)
    return validate_coco(
        data,
        split.images_dir,
        annotations=split.annotations,
        names=split.names,
        decode=decode,
        workers=workers,
        track=track,
    )


def _load_split(path: Path) -> dict[str, Any]:
    """:func:`~dfine_cli.data.cocofile.load_coco`'s shape check, except that a missing ``annotations`` key is allowed
    (reported as ``no_annotations_key``): a split of images without boxes."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if key == "annotations" and key not in data:
            continue
        if key not in data:
            raise DataError(f"{path}: missing '{key}' (not a COCO annotation file?)")
        if not isinstance(data[key], list):
            raise DataError(f"{path}: '{key}' must be a list, got {type(data[key]).__name__}")
    return data


# --------------------------------------------------------------------------- before training


def check_before_training(
    splits: dict[str, DatasetSplit],
    *,
    decode: bool = True,
    workers: int = 1,
    track: Progress = no_progress,
) -> list[str]:
    """The check ``dfine train`` runs on every split before its first step.

    The same checks as ``dfine data validate`` (:func:`validate_split`), on every image of
    every split. Returns one warning line per issue that training works around.

    Raises:
        DataError: any split has an error (the count and the first few files), or no split
            has a single box.
    """
    reports = {name: validate_split(split, decode=decode, workers=workers, track=track)
               for name, split in splits.items()}
    problems: list[str] = []
    warnings: list[str] = []
    for name, report in reports.items():
        where = report.annotations or report.images_dir
        for issue in report.issues:
            shown = "; ".join(issue.examples[:3]) + ("; ..." if issue.count > 3 else "")
            line = f"{issue.count} × {issue.description}: {shown}"
            (problems if issue.severity == ERROR else warnings).append(f"{name} split ({where}): {line}")
    if problems:
        total = sum(r.errors for r in reports.values())
        raise DataError(f"{total} dataset error(s), found before training: {' | '.join(problems)} "
                        f"(full report: dfine data validate)")
    if not any(r.boxes for r in reports.values()):
        why = {name: "no 'annotations' key" if any(i.check == "no_annotations_key" for i in r.issues)
               else f"{r.images} images, 0 boxes" for name, r in reports.items()}
        raise DataError("no split has a single box, nothing to learn from: "
                        + "; ".join(f"{n} ({r.annotations}): {why[n]}" for n, r in reports.items()))
    return warnings


# --------------------------------------------------------------------------- stats


@dataclass(frozen=True)
class ClassStats:
    id: int
    name: str
    boxes: int
    images: int


@dataclass(frozen=True)
class DatasetStats:
    images: int
    boxes: int
    negatives: int
    """Images without any box."""
    boxes_per_image_mean: float
    boxes_per_image_max: int
    classes: list[ClassStats]
    box_sizes: dict[str, int]
    """COCO size ranges on box area: small < 32², medium < 96², large."""
    box_side_quantiles: dict[str, float]
    """sqrt(box area) in pixels at min, p25, p50, p75, max."""
    image_sizes: list[tuple[str, int]]
    """The most common ``WxH`` sizes with their counts (at most 5)."""


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def coco_stats(data: dict[str, Any]) -> DatasetStats:
    """Counts and distributions of a loaded COCO dict (malformed entries are ignored: see validate)."""
    images = [im for im in data["images"] if isinstance(im, dict)]
    boxes_per_image: Counter[Any] = Counter()
    boxes_per_class: Counter[Any] = Counter()
    images_per_class: dict[Any, set[Any]] = {}
    sides: list[float] = []
    box_sizes = {"small": 0, "medium": 0, "large": 0}
    for annotation in data.get("annotations", []):
        if not isinstance(annotation, dict) or not _valid_bbox(annotation.get("bbox")):
            continue
        boxes_per_image[annotation.get("image_id")] += 1
        boxes_per_class[annotation.get("category_id")] += 1
        images_per_class.setdefault(annotation.get("category_id"), set()).add(
            annotation.get("image_id")
        )
        area = annotation["bbox"][2] * annotation["bbox"][3]
        sides.append(math.sqrt(area))
        box_sizes["small" if area < 32**2 else "medium" if area < 96**2 else "large"] += 1
    sides.sort()
    image_ids = {im.get("id") for im in images}
    classes = [
        ClassStats(
            c["id"], c["name"], boxes_per_class[c["id"]], len(images_per_class.get(c["id"], ()))
        )
        for c in sorted(
            (c for c in data["categories"] if isinstance(c, dict) and _is_int(c.get("id"))),
            key=lambda c: c["id"],
        )
    ]
    size_counts = Counter(f"{im.get('width')}x{im.get('height')}" for im in images)
    per_image = [boxes_per_image[i] for i in image_ids]
    return DatasetStats(
        images=len(images),
        boxes=len(sides),
        negatives=sum(1 for n in per_image if n == 0),
        boxes_per_image_mean=(sum(per_image) / len(per_image)) if per_image else 0.0,
        boxes_per_image_max=max(per_image, default=0),
        classes=classes,
        box_sizes=box_sizes,
        box_side_quantiles={
            name: _quantile(sides, q)
            for name, q in (("min", 0.0), ("p25", 0.25), ("p50", 0.5), ("p75", 0.75), ("max", 1.0))
        },
        image_sizes=size_counts.most_common(5),
    )


def split_stats(split: DatasetSplit) -> DatasetStats:
    return coco_stats(_load_split(split.annotations))


def dataset_splits(
    data: str | Path, split: str | None = None, images: str | Path | None = None
) -> list[tuple[str, DatasetSplit]]:
    """The (name, split) pairs ``dfine data validate/stats`` check in ``data``.

    ``data`` is a dataset folder or YAML (every split found, or only ``split``), or one COCO
    annotation ``.json`` whose images are in the folder ``images`` (named after the file).
    """
    from dfine_cli.data.cocofile import available_splits, resolve_dataset
    from dfine_cli.errors import UsageError

    data = Path(data)
    if data.suffix.lower() == ".json":
        if images is None:
            raise UsageError("--images is required when DATA is an annotation .json file")
        if not data.is_file():
            raise DataError(f"annotation file not found: {data}")
        if not Path(images).is_dir():
            raise DataError(f"image folder not found: {images}")
        return [(data.stem, DatasetSplit(images_dir=Path(images), annotations=data))]
    if images is not None:
        raise UsageError("--images only applies when DATA is an annotation .json file")
    names = [split] if split else available_splits(data)
    if not names:
        raise DataError(f"no annotations/instances_{{train,val,test}}.json found in {data}")
    return [(name, resolve_dataset(data, name)) for name in names]
