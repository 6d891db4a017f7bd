"""Convert YOLO txt and Pascal VOC XML annotations into one COCO JSON file.

Conventions of the output (the same for every source format):

- category ids start at 1 and are stable: YOLO class ``k`` becomes id ``k + 1``; VOC classes are
  numbered in ``names`` order, or alphabetically over *every* XML file of the dataset (not just
  the converted split), so the train and val files of one dataset always agree;
- image ids are ``1..N`` in sorted ``file_name`` order, annotation ids ``1..M`` in image order;
- ``file_name`` is relative to the image folder (reported in the summary), widths and heights
  come from the image files themselves;
- boxes are COCO ``[x, y, w, h]`` in pixels, rounded to 3 decimals. VOC corners are used as
  continuous coordinates (``w = xmax - xmin``, as torchvision and mmdetection ≥ 2 read them), so a
  box whose corners coincide stays a zero-area box for ``dfine data validate`` to report.

Whatever cannot be converted (a malformed line, an unknown class, a missing image, a YOLO label
file without an image, a box with a negative size or entirely outside its image) is skipped,
counted by reason, logged as a warning and listed by example in the returned summary; nothing is
skipped silently. YOLO boxes that reach past the image border are clipped to it (as Ultralytics
does), counted and logged as a warning too.
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfine_cli.errors import DataError, UsageError
from dfine_cli.fileio import read_yaml, write_json

logger = logging.getLogger("dfine.data.convert")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_MAX_EXAMPLES = 5
CLIPPED_NOTE = "box(es) reaching outside the image, clipped to it"


@dataclass(frozen=True)
class ConvertSummary:
    output: Path
    images_dir: Path
    """The folder ``file_name`` is relative to (the ``img_folder`` to train with)."""
    images: int
    annotations: int
    negatives: int
    """Images without any box (kept: they are background examples)."""
    categories: tuple[str, ...]
    skipped: dict[str, int]
    """Reason → how many images, label lines or objects were left out."""
    examples: dict[str, list[str]]
    """Reason → a few of the skipped items."""
    notes: dict[str, int]
    """Things converted but worth knowing (polygons turned into boxes, zero-area boxes kept...)."""


@dataclass
class _Report:
    skipped: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    notes: Counter[str] = field(default_factory=Counter)

    def skip(self, reason: str, example: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples[reason]) < _MAX_EXAMPLES:
            self.examples[reason].append(example)

    def warn(self, note: str, example: str) -> None:
        """Converted, but changed: counted in ``notes`` and logged as a warning."""
        self.notes[note] += 1
        if len(self.examples[note]) < _MAX_EXAMPLES:
            self.examples[note].append(example)


@dataclass(frozen=True)
class _Image:
    path: Path
    boxes: list[tuple[int, list[float]]]
    """(category id, xywh) pairs."""
    width: int
    height: int


_NAMES_FILE_SUFFIXES = (".txt", ".names", ".yaml", ".yml", ".json", ".csv")


def _looks_like_a_file(value: str) -> bool:
    """True for what can only be meant as a file name (``dir/x``, ``classes.txt``)."""
    if "," in value:
        return False
    return "/" in value or os.sep in value or Path(value).suffix.lower() in _NAMES_FILE_SUFFIXES


def parse_names(value: str | Path | None) -> list[str] | None:
    """``--names``: a comma-separated list, a text file with one class name per line, or a
    YAML/JSON file (a list, an ``{id: name}`` map, or a mapping with ``names``).

    A value that names a file (has a folder part or a file suffix) but does not exist is a
    :class:`DataError`, never a class named after the missing file.
    """
    if value is None:
        return None
    if not str(value).strip():  # Path("") is the current folder
        raise UsageError("--names is empty: give class names ('a,b,c') or a names file")
    path = Path(value)
    if path.is_file() and path.suffix.lower() in (".yaml", ".yml", ".json"):
        names = _names_from_yaml(path)
    elif path.is_file():
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    elif path.exists():
        raise DataError(f"--names {value}: not a file")
    elif _looks_like_a_file(str(value)):
        raise DataError(f"--names file not found: {value}")
    else:
        names = [name.strip() for name in str(value).split(",")]
    names = [n for n in names if n]
    if not names:
        raise UsageError(f"--names gives no class names: {value}")
    if len(set(names)) != len(names):
        raise UsageError(
            f"--names has duplicates: {', '.join(sorted(n for n, c in Counter(names).items() if c > 1))}"
        )
    return names


def _coord(value: float) -> float:
    return round(value, 3) + 0.0  # + 0.0 turns -0.0 into 0.0


def _image_size(path: Path, exif_upright: bool, report: _Report) -> tuple[int, int] | None:
    """(width, height) from the file header; None (and a skip) if it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            width, height = img.size
            if exif_upright and img.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                return height, width
            return width, height
    except Exception as exc:  # whatever PIL raises on a bad file
        report.skip("unreadable image", f"{path} ({type(exc).__name__})")
        return None


def _write_coco(
    output: Path,
    images: list[_Image],
    images_dir: Path,
    names: Sequence[str],
    source_format: str,
    report: _Report,
    info: dict[str, Any] | None = None,
) -> ConvertSummary:
    if not images:
        reasons = "; ".join(f"{r}: {n}" for r, n in report.skipped.items()) or "no images found"
        raise DataError(f"nothing to convert ({reasons})")
    images = sorted(images, key=lambda im: im.path.relative_to(images_dir).as_posix())
    coco_images: list[dict[str, Any]] = []
    coco_annotations: list[dict[str, Any]] = []
    for image_id, image in enumerate(images, start=1):
        coco_images.append(
            {
                "id": image_id,
                "file_name": image.path.relative_to(images_dir).as_posix(),
                "width": image.width,
                "height": image.height,
            }
        )
        for category_id, box in image.boxes:
            coco_annotations.append(
                {
                    "id": len(coco_annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [_coord(v) for v in box],
                    "area": _coord(box[2] * box[3]),
                    "iscrowd": 0,
                }
            )
    coco = {
        "info": {"description": f"converted from {source_format} by dfine", **(info or {})},
        "licenses": [],
        "images": coco_images,
        "annotations": coco_annotations,
        "categories": [
            {"id": index, "name": name, "supercategory": "none"}
            for index, name in enumerate(names, start=1)
        ],
    }
    write_json(output, coco)
    for reason, count in report.skipped.items():
        logger.warning("skipped %d: %s (e.g. %s)", count, reason, report.examples[reason][0])
    for note, count in report.notes.items():
        if report.examples.get(note):
            logger.warning("%d %s (e.g. %s)", count, note, report.examples[note][0])
    return ConvertSummary(
        output=output,
        images_dir=images_dir,
        images=len(coco_images),
        annotations=len(coco_annotations),
        negatives=sum(1 for im in images if not im.boxes),
        categories=tuple(names),
        skipped=dict(report.skipped),
        examples={k: list(v) for k, v in report.examples.items()},
        notes=dict(report.notes),
    )


# --------------------------------------------------------------------------- YOLO


def _load_yaml(path: Path) -> dict[str, Any]:
    spec = read_yaml(path)
    if not isinstance(spec, dict):
        raise DataError(f"{path}: expected a mapping (a YOLO data.yaml)")
    return spec


def _yaml_names(spec: dict[str, Any], path: Path) -> list[str]:
    names = spec.get("names")
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return names
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            keys = []
        if keys == list(range(len(keys))):
            return [str(names[k] if k in names else names[str(k)]) for k in keys]
    raise DataError(f"{path}: 'names' must be a list or a mapping 0..n-1 → name")


def _names_from_yaml(path: Path) -> list[str]:
    data = read_yaml(path)
    if isinstance(data, list):
        return [str(n) for n in data]
    if isinstance(data, dict):
        return _yaml_names(data if "names" in data else {"names": data}, path)
    raise DataError(f"{path}: expected a list of names or an {{id: name}} mapping")


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )


def yolo_label_path(image: Path) -> Path:
    """``.../images/a/x.jpg`` → ``.../labels/a/x.txt`` (Ultralytics rule); else ``x.txt`` beside it."""
    parts = image.parts
    if "images" in parts[:-1]:
        at = len(parts) - 2 - parts[:-1][::-1].index("images")
        candidate = Path(*parts[:at], "labels", *parts[at + 1 :]).with_suffix(".txt")
        if candidate.is_file():
            return candidate
    return image.with_suffix(".txt")


def _yolo_sources(
    source: Path, split: str, images_dir: Path | None
) -> tuple[list[Path], Path, list[str] | None]:
    """Image folders, the root ``file_name`` is relative to, and names found beside the data."""
    if source.is_file():
        if source.suffix.lower() not in (".yaml", ".yml"):
            raise UsageError(f"{source}: give a YOLO data.yaml or a dataset folder")
        spec = _load_yaml(source)
        root = Path(str(spec.get("path") or "."))
        root = root if root.is_absolute() else source.parent / root
        entry = spec.get(split)
        if entry is None:
            raise DataError(f"{source}: no '{split}' entry")
        entries = entry if isinstance(entry, list) else [entry]
        folders = [root / str(e) for e in entries]
        for folder in folders:
            if not folder.is_dir():
                raise DataError(
                    f"{source}: '{split}' folder not found: {folder} (image-list .txt files are not supported)"
                )
        base = images_dir or (folders[0] if len(folders) == 1 else root)
        return folders, base, _yaml_names(spec, source) if "names" in spec else None
    if not source.is_dir():
        raise DataError(f"YOLO dataset not found: {source}")
    if images_dir is None:
        candidates = [source / "images" / split, source / "images", source]
        images_dir = next(c for c in candidates if c.is_dir())
    names = None
    for yaml_name in ("data.yaml", "dataset.yaml"):
        if (source / yaml_name).is_file():
            names = _yaml_names(_load_yaml(source / yaml_name), source / yaml_name)
            break
    else:
        for classes in (
            source / "classes.txt",
            source / "labels" / "classes.txt",
            images_dir / "classes.txt",
        ):
            if classes.is_file():
                names = [
                    n.strip() for n in classes.read_text(encoding="utf-8").splitlines() if n.strip()
                ]
                break
    return [images_dir], images_dir, names


def _yolo_boxes(
    label: Path, width: int, height: int, num_classes: int, report: _Report
) -> list[tuple[int, list[float]]]:
    boxes = []
    for line_number, line in enumerate(label.read_text(encoding="utf-8").splitlines(), start=1):
        where = f"{label}:{line_number}"
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            report.skip("malformed label line", where)
            continue
        if not all(math.isfinite(v) for v in values):
            report.skip("malformed label line", where)
            continue
        class_index, coords = values[0], values[1:]
        if class_index != int(class_index) or not 0 <= class_index < num_classes:
            report.skip("class index outside the class names", where)
            continue
        if len(coords) == 4:
            cx, cy, w, h = coords
            if w < 0 or h < 0:
                report.skip("negative box size", where)
                continue
            x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        elif len(coords) >= 6 and len(coords) % 2 == 0:
            xs, ys = coords[0::2], coords[1::2]
            x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
            report.notes["polygon label converted to its bounding box"] += 1
        else:
            report.skip("malformed label line", where)
            continue
        if min(x0, y0, x1, y1) < 0 or max(x0, y0, x1, y1) > 1:
            clipped = [min(max(v, 0.0), 1.0) for v in (x0, y0, x1, y1)]
            if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
                report.skip("box entirely outside the image", where)
                continue
            report.warn(CLIPPED_NOTE, where)
            x0, y0, x1, y1 = clipped
        box = [x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height]
        boxes.append((int(class_index) + 1, box))
    return boxes


def convert_yolo(
    source: str | Path,
    output: str | Path,
    images_dir: str | Path | None = None,
    split: str = "train",
    names: Sequence[str] | None = None,
) -> ConvertSummary:
    """YOLO (Ultralytics) labels → COCO JSON.

    ``source`` is a ``data.yaml`` (``path``, ``train``/``val``/``test`` folders, ``names``) whose
    ``split`` entry is converted, or a dataset folder with ``images/[split/]`` and the label
    files beside it (``labels/`` mirroring ``images/``, or ``x.txt`` next to ``x.jpg``) and its
    names in ``data.yaml`` or ``classes.txt``. ``names`` overrides the names found. An image
    without a label file is a negative (background) image, as in YOLO.
    """
    source, output = Path(source), Path(output)
    folders, base, found_names = _yolo_sources(
        source, split, Path(images_dir) if images_dir else None
    )
    class_names = list(names) if names is not None else found_names
    if not class_names:
        raise DataError(
            f"no class names for {source}: add data.yaml or classes.txt, or pass --names"
        )
    report = _Report()
    paths = [path for folder in folders for path in _image_files(folder)]
    images = _read_yolo_images(paths, base, class_names, report)
    labels_used = {yolo_label_path(path).absolute() for path in paths}
    for label in _orphan_labels(folders, labels_used):
        report.skip("label file without an image", str(label))
    return _write_coco(output, images, base, class_names, "YOLO", report)


def convert_yolo_images(
    paths: Sequence[Path],
    images_dir: Path,
    names: Sequence[str],
    output: str | Path,
    info: dict[str, Any] | None = None,
) -> ConvertSummary:
    """The YOLO labels of these image files → COCO JSON (``file_name`` relative to ``images_dir``).

    Each image's label file is found by :func:`yolo_label_path`; ``info`` is merged into the
    file's ``info`` member. Used for the splits of a ``data.yaml`` (:mod:`dfine_cli.data.yolo`),
    whose entries may be image lists rather than folders.
    """
    report = _Report()
    images = _read_yolo_images(paths, images_dir, list(names), report)
    return _write_coco(Path(output), images, images_dir, list(names), "YOLO", report, info)


def _read_yolo_images(paths: Iterable[Path], base: Path, class_names: Sequence[str],
                      report: _Report) -> list[_Image]:
    """Size and boxes of every image (skips, with a reason, what cannot be read)."""
    images: list[_Image] = []
    for path in paths:
        try:
            path.relative_to(base)
        except ValueError:
            report.skip("image outside the image folder", str(path))
            continue
        size = _image_size(path, exif_upright=True, report=report)
        if size is None:
            continue
        width, height = size
        label = yolo_label_path(path)
        if label.is_file():
            boxes = _yolo_boxes(label, width, height, len(class_names), report)
        else:
            boxes = []
            report.notes["image without a label file (kept as a negative)"] += 1
        images.append(_Image(path, boxes, width, height))
    return images


def _label_folder(images_folder: Path) -> Path | None:
    """``.../images/train`` → ``.../labels/train`` (the last ``images`` part replaced)."""
    parts = images_folder.parts
    if "images" not in parts:
        return None
    at = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:at], "labels", *parts[at + 1 :])


def _orphan_labels(folders: Sequence[Path], labels_used: set[Path]) -> list[Path]:
    """YOLO label files of these image folders that belong to no image (``classes.txt`` aside)."""
    orphans: set[Path] = set()
    for folder in folders:
        for where in (_label_folder(folder), folder):
            if where is None or not where.is_dir():
                continue
            for label in where.rglob("*.txt"):
                if label.name != "classes.txt" and label.absolute() not in labels_used:
                    orphans.add(label)
    return sorted(orphans)


# --------------------------------------------------------------------------- Pascal VOC


def _parse_xml(path: Path) -> ET.Element | None:
    try:
        return ET.parse(path).getroot()
    except (ET.ParseError, OSError):
        return None


def _voc_image(root: ET.Element, xml_path: Path, images_dir: Path) -> Path | None:
    file_name = (root.findtext("filename") or "").strip()
    candidates = [images_dir / file_name] if file_name else []
    candidates += [images_dir / (xml_path.stem + suffix) for suffix in IMAGE_SUFFIXES]
    return next((c for c in candidates if c.is_file()), None)


def _voc_box(obj: ET.Element) -> list[float] | None:
    try:
        xmin, ymin, xmax, ymax = (
            float(obj.findtext(f"bndbox/{k}") or "") for k in ("xmin", "ymin", "xmax", "ymax")
        )
    except ValueError:
        return None
    if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)) or xmax < xmin or ymax < ymin:
        return None
    return [xmin, ymin, xmax - xmin, ymax - ymin]


def _voc_class_names(xml_roots: Iterable[ET.Element | None]) -> list[str]:
    found = {
        (obj.findtext("name") or "").strip()
        for root in xml_roots
        if root is not None
        for obj in root.iter("object")
    }
    return sorted(n for n in found if n)


def convert_voc(
    source: str | Path,
    output: str | Path,
    images_dir: str | Path | None = None,
    split: str | None = None,
    names: Sequence[str] | None = None,
) -> ConvertSummary:
    """Pascal VOC XML → COCO JSON.

    ``source`` is a VOC root (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/{split}.txt``)
    or a folder of XML files. With ``split`` only the ids listed in ``ImageSets/Main/{split}.txt``
    are converted. Class ids follow ``names`` or, by default, the sorted class names of every
    XML file in the dataset. Image sizes are read from the image files.
    """
    source, output = Path(source), Path(output)
    if not source.is_dir():
        raise DataError(f"VOC dataset not found: {source}")
    annotations_dir = source / "Annotations" if (source / "Annotations").is_dir() else source
    images_root = (
        Path(images_dir)
        if images_dir
        else (source / "JPEGImages" if (source / "JPEGImages").is_dir() else annotations_dir)
    )
    if not images_root.is_dir():
        raise DataError(f"image folder not found: {images_root}")
    all_xml = sorted(annotations_dir.glob("*.xml"))
    if not all_xml:
        raise DataError(f"no .xml annotation files in {annotations_dir}")
    roots = {path.stem: _parse_xml(path) for path in all_xml}
    report = _Report()
    if split is None:
        wanted = list(roots)
    else:
        list_file = source / "ImageSets" / "Main" / f"{split}.txt"
        if not list_file.is_file():
            raise DataError(f"split list not found: {list_file}")
        wanted = [
            line.split()[0]
            for line in list_file.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    class_names = list(names) if names is not None else _voc_class_names(roots.values())
    category_of = {name: index for index, name in enumerate(class_names, start=1)}

    images: list[_Image] = []
    for stem in wanted:
        xml_path = annotations_dir / f"{stem}.xml"
        if stem not in roots:
            report.skip("listed in the split but no XML file", str(xml_path))
            continue
        root = roots[stem]
        if root is None:
            report.skip("malformed XML", str(xml_path))
            continue
        image_path = _voc_image(root, xml_path, images_root)
        if image_path is None:
            report.skip("image not found", str(xml_path))
            continue
        size = _image_size(image_path, exif_upright=False, report=report)
        if size is None:
            continue
        width, height = size
        xml_size = (root.findtext("size/width"), root.findtext("size/height"))
        if xml_size != (None, None) and xml_size != (str(width), str(height)):
            report.notes["XML size differs from the image (image size used)"] += 1
        boxes = []
        for number, obj in enumerate(root.iter("object"), start=1):
            name = (obj.findtext("name") or "").strip()
            if name not in category_of:
                report.skip("class not in --names", f"{xml_path} object {number} ({name})")
                continue
            box = _voc_box(obj)
            if box is None:
                report.skip("object without a valid bndbox", f"{xml_path} object {number}")
                continue
            if box[2] == 0 or box[3] == 0:
                report.notes["zero-area box kept (dfine data validate reports it)"] += 1
            boxes.append((category_of[name], box))
        images.append(_Image(image_path, boxes, width, height))
    return _write_coco(output, images, images_root, class_names, "Pascal VOC", report)


CONVERTERS: dict[str, Callable[..., ConvertSummary]] = {"yolo": convert_yolo, "voc": convert_voc}
"""Source format name (``--from``) → converter."""
