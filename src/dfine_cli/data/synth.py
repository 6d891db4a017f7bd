"""A deterministic toy detection dataset: coloured shapes on noisy, textured backgrounds.

Each class is one shape drawn in one colour, objects never overlap and are at least ~12% of the
image side, so a small model learns the task on a CPU in minutes. The same arguments give
byte-identical files (one random generator per image, seeded by ``(seed, image index)``).

Layout (the D-FINE README's COCO layout)::

    OUT/images/train/000000.jpg ...   OUT/annotations/instances_train.json
    OUT/images/val/000160.jpg ...     OUT/annotations/instances_val.json
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dfine_cli.errors import UsageError
from dfine_cli.fileio import atomic_path, write_json


@dataclass(frozen=True)
class ShapeKind:
    name: str
    color: tuple[int, int, int]


SHAPE_KINDS: tuple[ShapeKind, ...] = (
    ShapeKind("square", (220, 40, 40)),
    ShapeKind("circle", (40, 190, 60)),
    ShapeKind("triangle", (40, 80, 230)),
    ShapeKind("diamond", (235, 200, 30)),
    ShapeKind("cross", (200, 50, 210)),
    ShapeKind("ring", (30, 200, 210)),
)
"""Class ``k`` (category id ``k + 1``) is ``SHAPE_KINDS[k]``."""

VAL_FRACTION = 0.2
NEGATIVE_FRACTION = 0.1
MAX_OBJECTS = 6
JPEG_QUALITY = 95


@dataclass(frozen=True)
class SynthSummary:
    root: Path
    class_names: tuple[str, ...]
    train_images: int
    val_images: int
    train_boxes: int
    val_boxes: int
    negatives: int
    """Images without any object, over both splits."""

    def images_dir(self, split: str) -> Path:
        return self.root / "images" / split

    def annotations(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{split}.json"


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour gradient with low-contrast blotches and pixel noise, uint8 HxWx3."""
    from PIL import Image

    corners = rng.uniform(70, 185, size=(2, 2, 3)).astype(np.float32)
    t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    s = np.linspace(0.0, 1.0, size, dtype=np.float32)[None, :, None]
    top = corners[0, 0] * (1 - s) + corners[0, 1] * s
    bottom = corners[1, 0] * (1 - s) + corners[1, 1] * s
    image = top * (1 - t) + bottom * t
    blotches = rng.integers(0, 256, size=(8, 8), dtype=np.uint8)
    smooth = Image.fromarray(blotches).resize((size, size), Image.Resampling.BICUBIC)
    image += (np.asarray(smooth, dtype=np.float32)[:, :, None] - 128.0) * 0.2
    image += rng.integers(-14, 15, size=(size, size, 3), dtype=np.int8)
    return np.clip(image, 0, 255).astype(np.uint8)


def _draw_shape(
    draw: Any, kind: str, box: tuple[int, int, int, int], fill: tuple[int, int, int]
) -> None:
    """Draw ``kind`` so that it touches all four sides of the inclusive pixel box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    side = x1 - x0
    if kind == "square":
        draw.rectangle(box, fill=fill)
    elif kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif kind == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif kind == "cross":
        arm = max(2, side // 6)
        draw.rectangle((x0, round(cy) - arm, x1, round(cy) + arm), fill=fill)
        draw.rectangle((round(cx) - arm, y0, round(cx) + arm, y1), fill=fill)
    elif kind == "ring":
        draw.ellipse(box, outline=fill, width=max(3, side // 6))
    else:
        raise ValueError(f"unknown shape kind {kind!r}")


def _place(rng: np.random.Generator, size: int, count: int) -> list[tuple[int, int, int, int]]:
    """Up to ``count`` non-overlapping square boxes (inclusive pixel corners) with a 4 px gap."""
    placed: list[tuple[int, int, int, int]] = []
    low, high = max(12, round(0.12 * size)), max(13, round(0.35 * size))
    for _ in range(count * 30):
        if len(placed) == count:
            break
        side = int(rng.integers(low, high + 1))
        x0 = int(rng.integers(2, max(3, size - side - 2)))
        y0 = int(rng.integers(2, max(3, size - side - 2)))
        box = (x0, y0, x0 + side - 1, y0 + side - 1)
        if all(
            box[0] > b[2] + 4 or b[0] > box[2] + 4 or box[1] > b[3] + 4 or b[1] > box[3] + 4
            for b in placed
        ):
            placed.append(box)
    return placed


def _render(
    index: int, seed: int, num_classes: int, img_size: int
) -> tuple[Any, list[tuple[int, list[int]]]]:
    """Image ``index``: a PIL image and its (class index, xywh box) list."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng([seed, index])
    image = Image.fromarray(_background(rng, img_size))
    if rng.random() < NEGATIVE_FRACTION:
        return image, []
    draw = ImageDraw.Draw(image)
    objects = []
    for box in _place(rng, img_size, int(rng.integers(1, MAX_OBJECTS + 1))):
        class_index = int(rng.integers(0, num_classes))
        kind = SHAPE_KINDS[class_index]
        jitter = rng.integers(-20, 21, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(kind.color, jitter, strict=True))
        _draw_shape(draw, kind.name, box, fill)  # type: ignore[arg-type]
        x0, y0, x1, y1 = box
        objects.append((class_index, [x0, y0, x1 - x0 + 1, y1 - y0 + 1]))
    return image, objects


def make_synthetic_dataset(
    out: str | Path,
    num_images: int = 200,
    num_classes: int = 3,
    seed: int = 0,
    img_size: int = 320,
    *,
    overwrite: bool = True,
) -> SynthSummary:
    """Write the dataset under ``out`` and return what was written.

    The first ``num_images - round(0.2 * num_images)`` images are the training split, the rest
    the validation split; about 10% of the images have no object. Files that already exist with
    these names are replaced; nothing else under ``out`` is touched. Category ids start at 1.
    ``overwrite=False`` refuses a folder that already holds files (a usage error).
    """
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise UsageError(f"{out} exists and is not a folder")
    if not overwrite and root.is_dir() and any(root.iterdir()):
        raise UsageError(f"{out} is not empty; pass --overwrite to write into it")
    if not 1 <= num_classes <= len(SHAPE_KINDS):
        raise UsageError(f"--classes must be between 1 and {len(SHAPE_KINDS)}, got {num_classes}")
    if num_images < 2:
        raise UsageError(f"--images must be at least 2 (one per split), got {num_images}")
    if img_size < 64:
        raise UsageError(f"--img-size must be at least 64, got {img_size}")
    num_val = max(1, round(VAL_FRACTION * num_images))
    splits = {
        "train": range(0, num_images - num_val),
        "val": range(num_images - num_val, num_images),
    }
    categories: list[dict[str, Any]] = [
        {"id": k + 1, "name": SHAPE_KINDS[k].name, "supercategory": "shape"}
        for k in range(num_classes)
    ]
    boxes: dict[str, int] = {}
    negatives = 0
    annotation_id = 0
    for split, indices in splits.items():
        images_dir = root / "images" / split
        images, annotations = [], []
        for index in indices:
            image, objects = _render(index, seed, num_classes, img_size)
            file_name = f"{index:06d}.jpg"
            with atomic_path(images_dir / file_name) as tmp:
                image.save(tmp, format="JPEG", quality=JPEG_QUALITY)
            images.append(
                {"id": index + 1, "file_name": file_name, "width": img_size, "height": img_size}
            )
            negatives += not objects
            for class_index, bbox in objects:
                annotation_id += 1
                annotations.append(
                    {
                        "id": annotation_id,
                        "image_id": index + 1,
                        "category_id": class_index + 1,
                        "bbox": bbox,
                        "area": bbox[2] * bbox[3],
                        "iscrowd": 0,
                    }
                )
        boxes[split] = len(annotations)
        coco = {
            "info": {"description": f"dfine synthetic shapes (seed {seed})", "version": "1"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        write_json(root / "annotations" / f"instances_{split}.json", coco)
    return SynthSummary(
        root=root,
        class_names=tuple(c["name"] for c in categories),
        train_images=len(splits["train"]),
        val_images=len(splits["val"]),
        train_boxes=boxes["train"],
        val_boxes=boxes["val"],
        negatives=negatives,
    )
