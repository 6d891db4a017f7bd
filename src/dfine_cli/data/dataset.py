"""COCO-format detection dataset for training and validation, and a pre-training data check.

Labels: the annotation file's category ids, sorted, become contiguous labels ``0..K-1``;
``label_to_category[label]`` maps back (the evaluator needs it). Boxes: COCO ``xywh`` pixels
become ``xyxy`` ``BoundingBoxes`` in pixels of the decoded image, clipped to the image;
boxes with no area left and ``iscrowd=1`` boxes are not training targets. Images without
annotations are kept (negative samples).

The parsed annotations are held in flat numpy arrays rather than per-image Python lists:
DataLoader workers fork the dataset, and reading Python objects touches their reference
counts, which copies the memory pages into every worker over time.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image as PILImage
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import to_dtype

from dfine_cli.data.transforms import DetectionPipeline, Target
from dfine_cli.errors import DataError

logger = logging.getLogger("dfine.data.dataset")

#: Tolerance (pixels) before a box counts as extending outside its image in check_dataset.
OUTSIDE_TOLERANCE = 1.0


@dataclass(frozen=True)
class CocoIndex:
    """A parsed COCO annotation file; annotations sorted by image, in file order within one.

    ``ann_offsets[i]:ann_offsets[i + 1]`` are the annotations of image ``i``.
    """

    image_ids: np.ndarray  # int64 [N]
    file_names: np.ndarray  # str [N]
    widths: np.ndarray  # int64 [N], 0 when the file does not say
    heights: np.ndarray  # int64 [N]
    ann_offsets: np.ndarray  # int64 [N + 1]
    ann_ids: np.ndarray  # int64 [M]
    ann_boxes: np.ndarray  # float64 [M, 4], COCO xywh pixels as in the file
    ann_labels: np.ndarray  # int64 [M], contiguous labels
    ann_crowd: np.ndarray  # bool [M]
    category_ids: tuple[int, ...]  # sorted; index = label
    category_names: tuple[str, ...]


def parse_coco_annotations(annotation_file: str | os.PathLike[str]) -> CocoIndex:
    """Read and validate a COCO detection annotation file.

    Raises:
        DataError: missing/unreadable file, invalid JSON, missing keys, duplicate ids,
            annotations naming unknown images or categories, malformed boxes.
    """
    path = Path(annotation_file)
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise DataError(f"annotation file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read annotation file {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path}: not a COCO annotation file (no 'images' list)")
    if not isinstance(data.get("categories"), list) or not data["categories"]:
        raise DataError(f"{path}: no 'categories' list")

    try:
        categories = sorted((int(c["id"]), str(c.get("name", c["id"]))) for c in data["categories"])
        images = [
            (int(im["id"]), str(im["file_name"]), int(im.get("width", 0)), int(im.get("height", 0)))
            for im in data["images"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: malformed image or category entry ({exc!r})") from None
    category_ids = [c for c, _ in categories]
    if len(set(category_ids)) != len(category_ids):
        raise DataError(f"{path}: duplicate category ids")
    label_of = {cat: label for label, cat in enumerate(category_ids)}
    image_row = {image_id: row for row, (image_id, *_rest) in enumerate(images)}
    if len(image_row) != len(images):
        raise DataError(f"{path}: duplicate image ids")

    annotations = data.get("annotations", [])
    rows = np.empty(len(annotations), dtype=np.int64)
    ann_ids = np.empty(len(annotations), dtype=np.int64)
    boxes = np.empty((len(annotations), 4), dtype=np.float64)
    labels = np.empty(len(annotations), dtype=np.int64)
    crowd = np.empty(len(annotations), dtype=bool)
    for i, ann in enumerate(annotations):
        try:
            ann_ids[i] = int(ann.get("id", i))
            image_id, category_id = int(ann["image_id"]), int(ann["category_id"])
            bbox = [float(v) for v in ann["bbox"]]
            crowd[i] = bool(ann.get("iscrowd", 0))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: malformed annotation #{i} ({exc!r})") from None
        if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox):
            raise DataError(f"{path}: annotation {ann_ids[i]} has a malformed bbox {ann['bbox']!r}")
        if image_id not in image_row:
            raise DataError(
                f"{path}: annotation {ann_ids[i]} refers to unknown image id {image_id}"
            )
        if category_id not in label_of:
            raise DataError(
                f"{path}: annotation {ann_ids[i]} has category id {category_id}, "
                f"not in 'categories' {category_ids[:20]}"
            )
        rows[i], boxes[i], labels[i] = image_row[image_id], bbox, label_of[category_id]

    order = np.argsort(rows, kind="stable")
    counts = np.bincount(rows, minlength=len(images))
    return CocoIndex(
        image_ids=np.array([im[0] for im in images], dtype=np.int64),
        file_names=np.array([im[1] for im in images], dtype=np.str_),
        widths=np.array([im[2] for im in images], dtype=np.int64),
        heights=np.array([im[3] for im in images], dtype=np.int64),
        ann_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        ann_ids=ann_ids[order],
        ann_boxes=boxes[order],
        ann_labels=labels[order],
        ann_crowd=crowd[order],
        category_ids=tuple(category_ids),
        category_names=tuple(name for _, name in categories),
    )


_JPEG_MAGIC = b"\xff\xd8\xff"


def loader_worker_init(worker_id: int) -> None:
    """``DataLoader(worker_init_fn=...)``: one OpenCV thread per worker process, as torch
    uses one there (the workers are the parallelism; more threads would only contend)."""
    cv2.setNumThreads(1)


def _decode_jpeg_opencv(raw: bytes) -> np.ndarray | None:
    """RGB ``uint8 [H, W, 3]`` of a JPEG without applying EXIF orientation; ``None`` if
    OpenCV cannot decode it."""
    rgb_flag = getattr(cv2, "IMREAD_COLOR_RGB", None)  # OpenCV >= 4.10
    colour = cv2.IMREAD_COLOR if rgb_flag is None else rgb_flag
    image = cv2.imdecode(
        np.frombuffer(raw, dtype=np.uint8), colour | cv2.IMREAD_IGNORE_ORIENTATION
    )
    if image is None or image.ndim != 3 or image.shape[2] != 3:
        return None
    return image if rgb_flag is not None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(path: str | os.PathLike[str]) -> tv_tensors.Image:
    """Decode an image file to RGB ``uint8 [3, H, W]`` (EXIF orientation not applied, as COCO).

    JPEG goes through OpenCV (libjpeg-turbo, the fastest decoder measured here: the same pixels
    as torchvision's ``decode_jpeg``); then the image is an ``[H, W, 3]`` array seen as
    ``[3, H, W]`` (channels-last strides). PNG/GIF/WebP and JPEGs OpenCV rejects go through
    torchvision's decoders, anything else through Pillow.

    Raises:
        DataError: the file is missing or cannot be decoded.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc.strerror}") from None
    if raw[:3] == _JPEG_MAGIC:
        decoded_rgb = _decode_jpeg_opencv(raw)
        if decoded_rgb is not None:
            return tv_tensors.Image(torch.from_numpy(decoded_rgb).permute(2, 0, 1))
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
    try:
        decoded = decode_image(data, mode=ImageReadMode.RGB)
        if decoded.dtype != torch.uint8:  # 16-bit PNG
            decoded = to_dtype(decoded, torch.uint8, scale=True)
        return tv_tensors.Image(decoded)
    except RuntimeError:
        pass  # a format torchvision cannot decode (or a corrupt file): let Pillow decide
    try:
        with PILImage.open(path) as pil:
            array = np.asarray(pil.convert("RGB"))
    except (OSError, ValueError, PILImage.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from None
    return tv_tensors.Image(torch.from_numpy(array.copy()).permute(2, 0, 1))


class CocoDetectionDataset(Dataset[tuple[Any, Target]]):
    """Images and boxes of one COCO-format split.

    ``dataset[i]`` (before transforms, see :meth:`load_item`) is ``(image, target)``:

    - ``image``: ``tv_tensors.Image`` ``uint8 [3, H, W]``, RGB.
    - ``target["boxes"]``: ``BoundingBoxes`` ``float32 [N, 4]`` ``xyxy`` pixels, canvas ``(H, W)``.
    - ``target["labels"]``: ``int64 [N]`` contiguous labels.
    - ``target["image_id"]``: ``int64`` scalar, the file's image id.
    - ``target["orig_size"]``: ``int64 [2]`` ``(width, height)`` of the decoded image.
    - ``target["idx"]``: ``int64`` scalar, ``i`` (transforms use it to seed per sample).

    A :class:`~dfine_cli.data.transforms.DetectionPipeline` transform is called as
    ``transforms(image, target, source=self)`` (Mosaic draws other samples from the dataset);
    any other callable as ``transforms(image, target)``.

    Args:
        images_dir: folder the annotation file's ``file_name`` entries are relative to.
        annotation_file: COCO JSON.
        transforms: optional per-sample transform.

    Raises:
        DataError: the annotation file is missing or malformed (see
            :func:`parse_coco_annotations`); from ``dataset[i]``: the image is missing or
            unreadable.
    """

    def __init__(
        self,
        images_dir: str | os.PathLike[str],
        annotation_file: str | os.PathLike[str],
        transforms: Any = None,
    ) -> None:
        self.images_dir = Path(images_dir)
        self.annotation_file = Path(annotation_file)
        self.transforms = transforms
        self.index = parse_coco_annotations(annotation_file)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.index.image_ids)

    @property
    def num_classes(self) -> int:
        return len(self.index.category_ids)

    @property
    def class_names(self) -> list[str]:
        """Class names by contiguous label."""
        return list(self.index.category_names)

    @property
    def label_to_category(self) -> list[int]:
        """``label_to_category[label]`` is the annotation file's category id."""
        return list(self.index.category_ids)

    @property
    def category_to_label(self) -> dict[int, int]:
        return {cat: label for label, cat in enumerate(self.index.category_ids)}

    @property
    def image_ids(self) -> list[int]:
        return self.index.image_ids.tolist()

    def image_path(self, index: int) -> Path:
        return self.images_dir / str(self.index.file_names[index])

    def set_epoch(self, epoch: int) -> None:
        """Tell the dataset (and its transform pipeline) the 0-based epoch about to start."""
        self.epoch = int(epoch)
        if isinstance(self.transforms, DetectionPipeline):
            self.transforms.set_epoch(epoch)

    def load_item(self, index: int) -> tuple[tv_tensors.Image, Target]:
        """The untransformed sample ``index`` (see the class docstring)."""
        if not 0 <= index < len(self):
            raise IndexError(f"dataset index {index} out of range 0..{len(self) - 1}")
        path = self.image_path(index)
        image = read_image(path)
        height, width = int(image.shape[-2]), int(image.shape[-1])
        expected = (int(self.index.widths[index]), int(self.index.heights[index]))
        if expected != (0, 0) and expected != (width, height):
            logger.debug(
                "%s: annotation says %dx%d, image is %dx%d", path, *expected, width, height
            )

        start, end = self.index.ann_offsets[index], self.index.ann_offsets[index + 1]
        keep = ~self.index.ann_crowd[start:end]
        xywh = self.index.ann_boxes[start:end][keep]
        xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        xyxy = np.clip(xyxy, 0, [width, height, width, height])
        valid = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])
        target: Target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.as_tensor(xyxy[valid], dtype=torch.float32).reshape(-1, 4),
                format="XYXY",
                canvas_size=(height, width),
            ),
            "labels": torch.as_tensor(
                self.index.ann_labels[start:end][keep][valid], dtype=torch.int64
            ),
            "image_id": torch.tensor(int(self.index.image_ids[index]), dtype=torch.int64),
            "orig_size": torch.tensor([width, height], dtype=torch.int64),
            "idx": torch.tensor(index, dtype=torch.int64),
        }
        return image, target

    def __getitem__(self, index: int) -> tuple[Any, Target]:
        image, target = self.load_item(index)
        if self.transforms is None:
            return image, target
        if isinstance(self.transforms, DetectionPipeline):
            return self.transforms(image, target, source=self)
        return self.transforms(image, target)


# --------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class DatasetReport:
    """What :func:`check_dataset` found. Box counts exclude nothing (crowd boxes included)."""

    num_images: int
    num_negative_images: int  # images without any annotation
    num_annotations: int
    num_crowd: int
    num_zero_area: int  # width or height <= 0; dropped from training targets
    num_outside: int  # extends more than OUTSIDE_TOLERANCE px past the image; clipped
    num_size_mismatch: int  # decoded size differs from the file's width/height (verify_images)
    class_names: tuple[str, ...]
    boxes_per_class: tuple[int, ...]  # non-crowd boxes per contiguous label


def check_dataset(
    images_dir: str | os.PathLike[str],
    annotation_file: str | os.PathLike[str],
    *,
    verify_images: bool = False,
) -> DatasetReport:
    """Check a COCO-format split before training.

    Bad boxes (zero area, outside the image) are counted and logged as warnings: training
    works around them. Everything training cannot work around raises.

    Args:
        verify_images: also open every image header to check it is readable and that its
            size matches the annotation file (slower: one file open per image).

    Raises:
        DataError: malformed annotation file or unknown category/image ids (see
            :func:`parse_coco_annotations`), missing images, unreadable images.
    """
    images_dir = Path(images_dir)
    index = parse_coco_annotations(annotation_file)
    if not images_dir.is_dir():
        raise DataError(f"images folder not found: {images_dir}")
    missing = [name for name in index.file_names.tolist() if not (images_dir / name).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(index.file_names)} images listed in {annotation_file} "
            f"are missing from {images_dir}, e.g. {missing[0]}"
        )

    image_of_ann = np.repeat(np.arange(len(index.image_ids)), np.diff(index.ann_offsets))
    boxes = index.ann_boxes
    zero_area = (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0)
    widths, heights = index.widths[image_of_ann], index.heights[image_of_ann]
    known_size = (widths > 0) & (heights > 0)
    tol = OUTSIDE_TOLERANCE
    outside = known_size & (
        (boxes[:, 0] < -tol)
        | (boxes[:, 1] < -tol)
        | (boxes[:, 0] + boxes[:, 2] > widths + tol)
        | (boxes[:, 1] + boxes[:, 3] > heights + tol)
    )
    problems = [
        (zero_area, "have zero or negative width/height and are ignored"),
        (outside, "extend outside their image and are clipped"),
    ]
    for mask, consequence in problems:
        if mask.any():
            first = int(np.flatnonzero(mask)[0])
            logger.warning(
                "%d boxes in %s %s, e.g. annotation %d of %s",
                int(mask.sum()),
                annotation_file,
                consequence,
                int(index.ann_ids[first]),
                index.file_names[image_of_ann[first]],
            )

    size_mismatch = 0
    if verify_images:
        for name, width, height in zip(
            index.file_names.tolist(), index.widths.tolist(), index.heights.tolist(), strict=True
        ):
            try:
                with PILImage.open(images_dir / name) as pil:
                    actual = pil.size
            except (OSError, ValueError, PILImage.DecompressionBombError) as exc:
                raise DataError(f"cannot read image {images_dir / name}: {exc}") from None
            if (width, height) != (0, 0) and actual != (width, height):
                size_mismatch += 1
        if size_mismatch:
            logger.warning(
                "%d images differ in size from the width/height in %s",
                size_mismatch,
                annotation_file,
            )

    counts = np.diff(index.ann_offsets)
    per_class = np.bincount(index.ann_labels[~index.ann_crowd], minlength=len(index.category_ids))
    return DatasetReport(
        num_images=len(index.image_ids),
        num_negative_images=int((counts == 0).sum()),
        num_annotations=len(index.ann_ids),
        num_crowd=int(index.ann_crowd.sum()),
        num_zero_area=int(zero_area.sum()),
        num_outside=int(outside.sum()),
        num_size_mismatch=size_mismatch,
        class_names=index.category_names,
        boxes_per_class=tuple(int(c) for c in per_class),
    )
