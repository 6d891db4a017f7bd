"""Builders of tiny Objects365 layouts, the official procedure as two oracles, and helpers to
interrupt a command and compare its outputs with an uninterrupted run.

The official procedure (D-FINE README "Objects365 Dataset", tools/remap_obj365.py and
tools/resize_obj365.py) is encoded here as two small oracles, ``official_remap`` and
``official_resize``, each listing the rules it implements. Our outputs must equal what those rules
produce; where dfine deliberately differs (info/licenses kept, EXIF, failures) the test says so.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from dfine_cli.data import obj365

MAX_SIZE = 48  # stands in for the official 640 so the fixture images stay tiny
NEW_VAL_SIZE = 4  # stands in for the official 5000
CATEGORIES = [
    {"name": "person", "id": 1},
    {"name": "sneakers", "id": 2},
    {"name": "chair", "id": 3},
]


def noise_image(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)


def annotation(ann_id: int, image_id: int, box: list[float], category: int) -> dict[str, Any]:
    # The official Objects365 field layout.
    return {
        "id": ann_id,
        "iscrowd": 0,
        "isfake": 0,
        "area": box[2] * box[3],
        "isreflected": 0,
        "bbox": box,
        "image_id": image_id,
        "category_id": category,
    }


def add_image(
    split_dir: Path,
    data: dict[str, Any],
    image_id: int,
    file_name: str,
    size: tuple[int, int],
    boxes: int,
) -> None:
    width, height = size
    path = split_dir / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    noise_image(image_id, width, height).save(path)
    data["images"].append(
        {"height": height, "id": image_id, "license": 1, "width": width, "file_name": file_name}
    )
    for k in range(boxes):
        ann_id = 10 * image_id + k
        box = [1.5 + k, 2.0 + k, width / 3 + 0.25, height / 4 + 0.5]
        data["annotations"].append(annotation(ann_id, image_id, box, 1 + (ann_id % 3)))


def coco(description: str) -> dict[str, Any]:
    return {
        "images": [],
        "annotations": [],
        "categories": copy.deepcopy(CATEGORIES),
        "licenses": [{"name": "CC BY 4.0", "id": 1}],
        "info": {"description": description},
    }


def build_obj365(base: Path, train_images: int = 6, val_images: int = 9) -> Path:
    """A few dozen tiny images in the README layout with the official JSON field layout."""
    sizes = [
        (64, 40),
        (30, 20),
        (47, 48),
        (50, 80),
        (20, 49),
        (48, 30),
        (100, 25),
        (33, 33),
        (49, 10),
    ]
    train, val = coco("train"), coco("val")
    for i in range(train_images):
        name = f"images/v{1 + i % 2}/patch{i % 3}/objects365_v1_{i:08d}.jpg"
        add_image(base / "train", train, 1 + i, name, sizes[i % len(sizes)], boxes=i % 3)
    for i in range(val_images):
        name = f"images/v{1 + i % 2}/patch{i % 2}/objects365_v2_{i:08d}.jpg"
        add_image(base / "val", val, 1000 + i, name, sizes[(i + 3) % len(sizes)], boxes=1 + i % 2)
    val["annotations"].append(annotation(99999, 424242, [0, 0, 1, 1], 1))  # refers to no image
    (base / "train" / obj365.TRAIN_JSON).write_text(json.dumps(train))
    (base / "val" / obj365.VAL_JSON).write_text(json.dumps(val))
    return base


def load_json(path: Path) -> Any:
    return json.loads(path.read_text())


def file_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def official_remap(
    train: dict[str, Any], val: dict[str, Any], new_val_size: int
) -> tuple[dict, dict]:
    """The official remap rules (tools/remap_obj365.py, README step 5).

    R1  the new validation set is the first ``new_val_size`` validation images in JSON order,
        their annotations (in JSON order), the validation categories; file names unchanged.
    R2  the new training set lists the other validation images (JSON order) and then every
        training image; annotations: those of the moved images, then every training annotation;
        categories: the training categories.
    R3  a moved image's file_name drops its first path component and gains ``images_from_val/``.
    R4  no id changes; annotations of no validation image are dropped.
    dfine keeps the other top-level members (info, licenses) — the only intended difference.
    """
    keep = {im["id"] for im in val["images"][:new_val_size]}
    moved = {im["id"] for im in val["images"][new_val_size:]}
    new_val = {
        "images": [im for im in val["images"] if im["id"] in keep],
        "annotations": [a for a in val["annotations"] if a["image_id"] in keep],
        "categories": val["categories"],
    }
    moved_images = []
    for im in val["images"]:
        if im["id"] in moved:
            moved_images.append(
                {**im, "file_name": "images_from_val/" + im["file_name"].split("/", 1)[1]}
            )
    new_train = {
        "images": moved_images + train["images"],
        "annotations": [a for a in val["annotations"] if a["image_id"] in moved]
        + train["annotations"],
        "categories": train["categories"],
    }
    return new_val, new_train


def official_resize(data: dict[str, Any], images_dir: Path, max_size: int) -> dict[str, Any]:
    """The official resize rules (tools/resize_obj365.py) for images without EXIF orientation.

    S1  (w, h) are read from the image file; if max(w, h) > max_size the image is scaled by
        s = max_size / max(w, h) to int(w*s) × int(h*s) with Lanczos, saved beside the original
        as ``<stem>_resized.jpg`` (PIL's default JPEG settings), and the JSON points to it.
    S2  the boxes of a resized image are multiplied by s, their area by s**2.
    S3  other images keep their file; their JSON width/height are the file's.
    The official script emits annotations grouped by image; dfine keeps the input order, so the
    comparison is per annotation id (and the order is checked against the input separately).
    """
    out = copy.deepcopy(data)
    scale_of = {}
    for image in out["images"]:
        with Image.open(images_dir / image["file_name"]) as img:
            w, h = img.size
        scale = max_size / max(w, h) if max(w, h) > max_size else None
        scale_of[image["id"]] = scale
        if scale is None:
            image["width"], image["height"] = w, h
        else:
            image["width"], image["height"] = int(w * scale), int(h * scale)
            image["file_name"] = image["file_name"].replace(".jpg", "_resized.jpg")
    for ann in out["annotations"]:
        scale = scale_of[ann["image_id"]]
        if scale is not None:
            ann["area"] = ann["area"] * (scale**2)
            ann["bbox"] = [c * scale for c in ann["bbox"]]
    return out


def data_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dfine_cli", "data", *args]


def run_ok(args: list[str]) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def kill_when(args: list[str], ready: Any, timeout: float = 60.0) -> None:
    """Start ``args`` in its own process group and SIGKILL the group once ``ready()`` is true."""
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, "the command finished before it could be interrupted"
            assert time.monotonic() < deadline, "timed out waiting for the command to make progress"
            time.sleep(0.002)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def assert_same_outputs(reference: Path, resumed: Path) -> None:
    ref, got = file_tree(reference), file_tree(resumed)
    assert sorted(got) == sorted(ref)  # same files, no temporary leftovers
    for name in ref:
        if name.endswith(".json"):
            assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name
        else:
            a, b = np.asarray(Image.open(reference / name)), np.asarray(Image.open(resumed / name))
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert got == ref  # and in fact byte for byte everywhere
