"""COCO-format dataset: label mapping, target format, negatives, bad data, pre-training check."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from dfine_cli.data.dataset import CocoDetectionDataset, check_dataset, read_image
from dfine_cli.data.transforms import EvalTransforms
from dfine_cli.errors import DataError

# Category ids with gaps, listed out of order in the file: labels follow the sorted ids.
CATEGORIES = [{"id": 42, "name": "cat42"}, {"id": 3, "name": "cat3"}, {"id": 7, "name": "cat7"}]


def _write_image(path: Path, width: int, height: int, seed: int, mode: str = "RGB") -> None:
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode=mode).save(path)


def _write_dataset(
    root: Path, annotations: list[dict[str, Any]] | None = None
) -> tuple[Path, Path]:
    """Images 10 (80×60 JPEG), 11 (64×48 grayscale PNG, no annotations), 12 (50×40 JPEG)."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    _write_image(images_dir / "a.jpg", 80, 60, seed=0)
    _write_image(images_dir / "b.png", 64, 48, seed=1, mode="L")
    (images_dir / "sub").mkdir()
    _write_image(images_dir / "sub" / "c.jpg", 50, 40, seed=2)
    if annotations is None:
        annotations = [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [10, 5, 20, 30], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 42, "bbox": [40.5, 10, 30, 20], "iscrowd": 0},
            {"id": 3, "image_id": 10, "category_id": 7, "bbox": [0, 0, 80, 60], "iscrowd": 1},
            {
                "id": 4,
                "image_id": 12,
                "category_id": 7,
                "bbox": [30, 20, 40, 40],
            },  # runs off the image
            {"id": 5, "image_id": 12, "category_id": 3, "bbox": [5, 5, 0, 10]},  # zero width
        ]
    ann_file = root / "instances.json"
    ann_file.write_text(
        json.dumps(
            {
                "images": [
                    {"id": 10, "file_name": "a.jpg", "width": 80, "height": 60},
                    {"id": 11, "file_name": "b.png", "width": 64, "height": 48},
                    {"id": 12, "file_name": "sub/c.jpg", "width": 50, "height": 40},
                ],
                "annotations": annotations,
                "categories": CATEGORIES,
            }
        )
    )
    return images_dir, ann_file


@pytest.fixture
def dataset_files(tmp_path: Path) -> tuple[Path, Path]:
    return _write_dataset(tmp_path)


def test_category_ids_with_gaps_map_to_contiguous_labels(dataset_files: tuple[Path, Path]) -> None:
    dataset = CocoDetectionDataset(*dataset_files)
    assert dataset.label_to_category == [3, 7, 42]
    assert dataset.class_names == ["cat3", "cat7", "cat42"]
    assert dataset.category_to_label == {3: 0, 7: 1, 42: 2}
    assert dataset.num_classes == 3
    _, target = dataset[0]
    assert target["labels"].tolist() == [0, 2]  # categories 3 and 42; the crowd box is dropped


def test_sample_format(dataset_files: tuple[Path, Path]) -> None:
    dataset = CocoDetectionDataset(*dataset_files)
    assert len(dataset) == 3 and dataset.image_ids == [10, 11, 12]
    image, target = dataset[0]
    assert isinstance(image, tv_tensors.Image)
    assert image.dtype == torch.uint8 and image.shape == (3, 60, 80)
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes)
    assert boxes.format == tv_tensors.BoundingBoxFormat.XYXY and boxes.canvas_size == (60, 80)
    torch.testing.assert_close(
        boxes.as_subclass(torch.Tensor),
        torch.tensor([[10.0, 5.0, 30.0, 35.0], [40.5, 10.0, 70.5, 30.0]]),
    )
    assert target["labels"].dtype == torch.int64
    assert target["image_id"].item() == 10 and target["idx"].item() == 0
    assert target["orig_size"].tolist() == [80, 60]  # (width, height)
    assert target["orig_size"].dtype == torch.int64


def test_negative_image_is_kept_and_grayscale_becomes_rgb(dataset_files: tuple[Path, Path]) -> None:
    dataset = CocoDetectionDataset(*dataset_files)
    image, target = dataset[1]
    assert image.shape == (3, 48, 64)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["image_id"].item() == 11


def test_boxes_are_clipped_and_degenerate_boxes_dropped(dataset_files: tuple[Path, Path]) -> None:
    _, target = CocoDetectionDataset(*dataset_files)[2]
    assert target["boxes"].as_subclass(torch.Tensor).tolist() == [[30.0, 20.0, 50.0, 40.0]]
    assert target["labels"].tolist() == [1]


def test_transforms_receive_the_dataset_and_the_epoch(dataset_files: tuple[Path, Path]) -> None:
    pipeline = EvalTransforms(img_size=32)
    dataset = CocoDetectionDataset(*dataset_files, transforms=pipeline)
    dataset.set_epoch(7)
    assert pipeline.epoch == 7 and dataset.epoch == 7
    image, target = dataset[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
    assert ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()

    seen = []

    def plain_callable(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        seen.append(int(target["idx"]))
        return image, target

    CocoDetectionDataset(*dataset_files, transforms=plain_callable)[2]
    assert seen == [2]


def test_missing_image_raises_data_error_naming_the_file(dataset_files: tuple[Path, Path]) -> None:
    images_dir, ann_file = dataset_files
    (images_dir / "a.jpg").unlink()
    dataset = CocoDetectionDataset(images_dir, ann_file)  # construction does not touch images
    with pytest.raises(DataError, match=r"image not found: .*a\.jpg"):
        dataset[0]


def test_corrupt_image_raises_data_error(dataset_files: tuple[Path, Path]) -> None:
    images_dir, ann_file = dataset_files
    (images_dir / "sub" / "c.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(DataError, match=r"cannot decode image .*c\.jpg"):
        CocoDetectionDataset(images_dir, ann_file)[2]


def test_read_image_falls_back_to_pillow_for_other_formats(tmp_path: Path) -> None:
    _write_image(tmp_path / "x.bmp", 20, 10, seed=3)
    image = read_image(tmp_path / "x.bmp")
    assert image.shape == (3, 10, 20) and image.dtype == torch.uint8
    expected = np.asarray(Image.open(tmp_path / "x.bmp").convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(image.numpy(), expected)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"images": []}', "no 'categories'"),
        ('{"categories": [{"id": 1}]}', "no 'images' list"),
    ],
)
def test_malformed_annotation_file(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "ann.json").write_text(content)
    with pytest.raises(DataError, match=message):
        CocoDetectionDataset(tmp_path, tmp_path / "ann.json")


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        ({"id": 9, "image_id": 10, "category_id": 5, "bbox": [0, 0, 1, 1]}, "category id 5"),
        ({"id": 9, "image_id": 99, "category_id": 3, "bbox": [0, 0, 1, 1]}, "unknown image id 99"),
        ({"id": 9, "image_id": 10, "category_id": 3, "bbox": [0, 0, 1]}, "malformed bbox"),
        ({"id": 9, "image_id": 10, "category_id": 3}, "malformed annotation"),
    ],
)
def test_bad_annotations_raise(tmp_path: Path, annotation: dict[str, Any], message: str) -> None:
    images_dir, ann_file = _write_dataset(tmp_path, annotations=[annotation])
    with pytest.raises(DataError, match=message):
        CocoDetectionDataset(images_dir, ann_file)
    with pytest.raises(DataError, match=message):
        check_dataset(images_dir, ann_file)


def test_missing_annotation_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="annotation file not found"):
        CocoDetectionDataset(tmp_path, tmp_path / "nope.json")


def test_check_dataset_counts_and_warns_about_bad_boxes(
    dataset_files: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="dfine.data.dataset"):
        report = check_dataset(*dataset_files, verify_images=True)
    assert report.num_images == 3 and report.num_negative_images == 1
    assert report.num_annotations == 5 and report.num_crowd == 1
    assert report.num_zero_area == 1 and report.num_outside == 1
    assert report.num_size_mismatch == 0
    assert report.class_names == ("cat3", "cat7", "cat42")
    assert report.boxes_per_class == (2, 1, 1)
    messages = [r.getMessage() for r in caplog.records]
    assert any("1 boxes" in m and "zero or negative" in m and "annotation 5" in m for m in messages)
    assert any("outside their image" in m and "annotation 4" in m for m in messages)


def test_check_dataset_raises_for_missing_and_unreadable_images(
    dataset_files: tuple[Path, Path],
) -> None:
    images_dir, ann_file = dataset_files
    (images_dir / "a.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"cannot read image .*a\.jpg"):
        check_dataset(images_dir, ann_file, verify_images=True)
    (images_dir / "b.png").unlink()
    with pytest.raises(DataError, match=r"1 of 3 images .* missing .* e\.g\. b\.png"):
        check_dataset(images_dir, ann_file)
    with pytest.raises(DataError, match="images folder not found"):
        check_dataset(images_dir / "nope", ann_file)


def test_check_dataset_reports_size_mismatch(tmp_path: Path) -> None:
    images_dir, ann_file = _write_dataset(tmp_path)
    _write_image(images_dir / "a.jpg", 81, 60, seed=0)
    assert check_dataset(images_dir, ann_file, verify_images=True).num_size_mismatch == 1
