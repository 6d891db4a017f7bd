"""The synthetic shapes dataset: layout, determinism, and labels that match the pixels."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfine_cli.data.cocofile import resolve_dataset
from dfine_cli.data.synth import SHAPE_KINDS, make_synthetic_dataset
from dfine_cli.data.validate import validate_split
from dfine_cli.errors import UsageError


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "shapes"
    make_synthetic_dataset(root, num_images=40, num_classes=6, seed=7, img_size=128)
    return root


def test_layout_and_categories(synth: Path) -> None:
    for split, count in (("train", 32), ("val", 8)):
        coco = json.loads((synth / "annotations" / f"instances_{split}.json").read_text())
        assert len(coco["images"]) == count
        assert sorted(p.name for p in (synth / "images" / split).iterdir()) == sorted(
            im["file_name"] for im in coco["images"]
        )
        assert coco["categories"] == [
            {"id": k + 1, "name": kind.name, "supercategory": "shape"}
            for k, kind in enumerate(SHAPE_KINDS)
        ]
    train_ids = {
        im["id"]
        for im in json.loads((synth / "annotations" / "instances_train.json").read_text())["images"]
    }
    val_ids = {
        im["id"]
        for im in json.loads((synth / "annotations" / "instances_val.json").read_text())["images"]
    }
    assert train_ids.isdisjoint(val_ids)


def test_output_passes_validation(synth: Path) -> None:
    for split in ("train", "val"):
        report = validate_split(resolve_dataset(synth, split))
        assert report.issues == [] or all(i.check == "empty_category" for i in report.issues)


def test_same_seed_same_bytes_other_seed_other_bytes(synth: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    make_synthetic_dataset(again, num_images=40, num_classes=6, seed=7, img_size=128)
    assert _digests(again) == _digests(synth)
    other = tmp_path / "other"
    make_synthetic_dataset(other, num_images=40, num_classes=6, seed=8, img_size=128)
    assert _digests(other) != _digests(synth)


def test_objects_are_clear_separate_and_labelled_right(synth: Path) -> None:
    coco = json.loads((synth / "annotations" / "instances_train.json").read_text())
    per_image: dict[int, list[list[int]]] = {}
    counts = []
    for image in coco["images"]:
        pixels = np.asarray(
            Image.open(synth / "images" / "train" / image["file_name"]), dtype=np.int16
        )
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        counts.append(len(anns))
        for ann in anns:
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and x + w <= 128 and y + h <= 128
            assert min(w, h) >= 0.12 * 128 - 1  # not tiny
            kind = SHAPE_KINDS[ann["category_id"] - 1]
            if kind.name != "ring":  # a ring's centre is background
                centre = pixels[y + h // 2, x + w // 2]
                assert np.abs(centre - np.array(kind.color)).max() <= 45, (kind.name, centre)
            per_image.setdefault(image["id"], []).append(ann["bbox"])
    for boxes in per_image.values():
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                overlap_w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
                overlap_h = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
                assert overlap_w <= 0 or overlap_h <= 0
    assert 0 in counts and max(counts) <= 6  # some negative images, at most 6 objects


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_classes": 0}, "--classes"),
        ({"num_classes": 7}, "--classes"),
        ({"num_images": 1}, "--images"),
        ({"img_size": 32}, "--img-size"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        make_synthetic_dataset(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()
