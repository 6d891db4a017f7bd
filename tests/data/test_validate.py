"""Dataset checks, statistics, COCO loading and the DATA resolver."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dfine_cli.data.cocofile import DatasetSplit, available_splits, load_coco, resolve_dataset
from dfine_cli.data.synth import make_synthetic_dataset
from dfine_cli.data.validate import (
    CHECKS,
    ERROR,
    WARNING,
    check_before_training,
    coco_stats,
    validate_coco,
    validate_split,
)
from dfine_cli.errors import DataError, UsageError


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    root = tmp_path_factory.mktemp("clean")
    make_synthetic_dataset(root, num_images=10, num_classes=3, seed=3, img_size=64)
    return load_coco(root / "annotations" / "instances_train.json"), root / "images" / "train"


def _checks(report: Any) -> dict[str, tuple[str, int]]:
    return {issue.check: (issue.severity, issue.count) for issue in report.issues}


def test_clean_dataset_has_no_issues(clean: tuple[dict[str, Any], Path]) -> None:
    data, images = clean
    report = validate_coco(data, images)
    assert report.issues == [] and report.ok
    assert (report.images, report.categories) == (8, 3)


def _first_box_annotation(data: dict[str, Any]) -> dict[str, Any]:
    return data["annotations"][0]


def _unreadable(data: dict[str, Any], images: Path) -> None:
    (images / "bad.jpg").write_bytes(b"\xff\xd8garbage")
    data["images"][1]["file_name"] = "bad.jpg"


def _duplicate_file(data: dict[str, Any], images: Path) -> None:
    data["images"][3].update({k: data["images"][4][k] for k in ("file_name", "width", "height")})


DEFECTS = {
    # check name: a function that breaks a copy of the clean dataset (and may add files)
    "bad_image_entry": lambda d, p: d["images"][0].update(width=0),
    "duplicate_image_id": lambda d, p: d["images"].append(copy.deepcopy(d["images"][0])),
    "missing_image": lambda d, p: d["images"][1].update(file_name="nope.jpg"),
    "unreadable_image": _unreadable,
    "size_mismatch": lambda d, p: d["images"][2].update(width=65),
    "bad_category": lambda d, p: d["categories"].append({"id": "x", "name": 3}),
    "duplicate_category_id": lambda d, p: d["categories"].append({"id": 1, "name": "again"}),
    "bad_annotation": lambda d, p: _first_box_annotation(d).update(bbox=[1, 2, -3, 4]),
    "duplicate_annotation_id": lambda d, p: d["annotations"].append(
        {**_first_box_annotation(d), "bbox": [1, 1, 5, 5]}
    ),
    "unknown_image_id": lambda d, p: _first_box_annotation(d).update(image_id=999),
    "unknown_category_id": lambda d, p: _first_box_annotation(d).update(category_id=42),
    "zero_area_box": lambda d, p: _first_box_annotation(d).update(bbox=[3, 4, 0, 0]),
    "box_outside_image": lambda d, p: _first_box_annotation(d).update(bbox=[50, 50, 30, 10]),
    "empty_category": lambda d, p: d["categories"].append({"id": 9, "name": "unused"}),
    "duplicate_file_name": _duplicate_file,
}


@pytest.mark.parametrize("check", sorted(DEFECTS))
def test_each_defect_is_found(
    clean: tuple[dict[str, Any], Path], tmp_path: Path, check: str
) -> None:
    data, images = clean
    work = tmp_path / "images"
    work.mkdir()
    for image in images.iterdir():
        (work / image.name).write_bytes(image.read_bytes())
    broken = copy.deepcopy(data)
    DEFECTS[check](broken, work)
    report = validate_coco(broken, work)
    found = _checks(report)
    assert check in found, found
    severity = CHECKS[check][0]
    assert found[check] == (severity, 1)
    assert report.ok == (not any(sev == ERROR for sev, _ in found.values()))
    if severity == WARNING:
        assert report.ok


def test_exif_rotated_image_matching_the_rotated_size_is_a_warning(tmp_path: Path) -> None:
    img = Image.fromarray(np.zeros((20, 30, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(tmp_path / "r.jpg", exif=exif.tobytes())
    data = {
        "images": [{"id": 1, "file_name": "r.jpg", "width": 20, "height": 30}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}],
        "categories": [{"id": 1, "name": "a"}],
    }
    assert _checks(validate_coco(data, tmp_path)) == {"exif_rotated": (WARNING, 1)}
    data["images"][0].update(width=25)
    assert "size_mismatch" in _checks(validate_coco(data, tmp_path))


def test_truncated_image_needs_decoding_to_be_found(
    clean: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    data, images = clean
    for image in images.iterdir():
        (tmp_path / image.name).write_bytes(image.read_bytes())
    victim = tmp_path / data["images"][0]["file_name"]
    content = victim.read_bytes()
    victim.write_bytes(content[: len(content) * 2 // 3])  # header intact, image data cut
    assert "unreadable_image" in _checks(validate_coco(data, tmp_path, decode=True, workers=2))
    assert "unreadable_image" not in _checks(validate_coco(data, tmp_path, decode=False))


def test_stats_counts() -> None:
    data = {
        "images": [
            {"id": 1, "file_name": "a", "width": 100, "height": 50},
            {"id": 2, "file_name": "b", "width": 100, "height": 50},
            {"id": 3, "file_name": "c", "width": 640, "height": 480},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0, 0, 40, 40]},
            {"id": 3, "image_id": 3, "category_id": 1, "bbox": [0, 0, 100, 100]},
            {"id": 4, "image_id": 3, "category_id": 1, "bbox": "broken"},
        ],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}, {"id": 3, "name": "c"}],
    }
    stats = coco_stats(data)
    assert (stats.images, stats.boxes, stats.negatives) == (3, 3, 1)
    assert stats.boxes_per_image_max == 2 and stats.boxes_per_image_mean == pytest.approx(1.0)
    assert [(c.name, c.boxes, c.images) for c in stats.classes] == [
        ("a", 2, 2),
        ("b", 1, 1),
        ("c", 0, 0),
    ]
    assert stats.box_sizes == {"small": 1, "medium": 1, "large": 1}
    assert stats.box_side_quantiles["p50"] == 40.0 and stats.box_side_quantiles["max"] == 100.0
    assert stats.image_sizes == [("100x50", 2), ("640x480", 1)]


# --------------------------------------------------------------------------- loading and resolving


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"images": [}', "invalid JSON at line 1"),
        ("[]", "expected a JSON object"),
        ('{"images": [], "annotations": []}', "missing 'categories'"),
        ('{"images": {}, "annotations": [], "categories": []}', "'images' must be a list"),
    ],
)
def test_load_coco_errors(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "a.json").write_text(text)
    with pytest.raises(DataError, match=message):
        load_coco(tmp_path / "a.json")


def test_load_coco_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_coco(tmp_path / "nope.json")


def _layout(root: Path, splits: tuple[str, ...] = ("train", "val")) -> None:
    for split in splits:
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text("{}")


def test_resolve_dataset_folder(tmp_path: Path) -> None:
    _layout(tmp_path, ("train", "val"))
    assert resolve_dataset(tmp_path, "val") == DatasetSplit(
        images_dir=tmp_path / "images" / "val",
        annotations=tmp_path / "annotations" / "instances_val.json",
    )
    assert available_splits(tmp_path) == ["train", "val"]
    with pytest.raises(DataError, match="test annotations not found"):
        resolve_dataset(tmp_path, "test")
    with pytest.raises(UsageError, match="unknown split"):
        resolve_dataset(tmp_path, "training")
    with pytest.raises(DataError, match="dataset not found"):
        resolve_dataset(tmp_path / "nope", "train")


def test_resolve_dataset_yaml(tmp_path: Path) -> None:
    _layout(tmp_path / "ds", ("train",))
    spec = tmp_path / "ds.yaml"
    spec.write_text(
        "train:\n  images: ds/images/train\n  annotations: ds/annotations/instances_train.json\n"
        "val:\n  images: ds/images/val\n  annotations: ds/annotations/instances_val.json\n"
        "names: [cat, dog]\n"
    )
    assert resolve_dataset(spec, "train") == DatasetSplit(
        images_dir=tmp_path / "ds" / "images" / "train",
        annotations=tmp_path / "ds" / "annotations" / "instances_train.json",
        names=("cat", "dog"),
    )
    assert available_splits(spec) == ["train", "val"]
    with pytest.raises(DataError, match="val annotations not found"):
        resolve_dataset(spec, "val")
    spec.write_text("train: {images: a, annotations: b}\nepochs: 3\n")
    with pytest.raises(UsageError, match="unknown key"):
        resolve_dataset(spec, "train")
    spec.write_text("train: {images: a}\n")
    with pytest.raises(UsageError, match="exactly the keys"):
        resolve_dataset(spec, "train")
    spec.write_text("train: [unclosed\n")
    with pytest.raises(DataError, match="invalid YAML"):
        resolve_dataset(spec, "train")


def test_validate_split_uses_yaml_names(tmp_path: Path) -> None:
    make_synthetic_dataset(tmp_path / "ds", num_images=4, num_classes=2, seed=0, img_size=64)
    spec = tmp_path / "ds.yaml"
    spec.write_text(
        "train: {images: ds/images/train, annotations: ds/annotations/instances_train.json}\n"
        "names: [square, triangle]\n"
    )
    report = validate_split(resolve_dataset(spec, "train"))
    assert _checks(report).get("names_mismatch") == (WARNING, 1)
    spec.write_text(
        "train: {images: ds/images/train, annotations: ds/annotations/instances_train.json}\n"
        "names: {0: square, 1: circle}\n"
    )
    assert "names_mismatch" not in _checks(validate_split(resolve_dataset(spec, "train")))


def test_validate_split_unreadable_json(tmp_path: Path) -> None:
    _layout(tmp_path, ("train",))
    (tmp_path / "annotations" / "instances_train.json").write_text(json.dumps({"images": []})[:-1])
    with pytest.raises(DataError, match="invalid JSON"):
        validate_split(resolve_dataset(tmp_path, "train"))


# --------------------------------------------------------------------------- before training


@pytest.fixture
def two_splits(tmp_path: Path) -> dict[str, DatasetSplit]:
    make_synthetic_dataset(tmp_path / "ds", num_images=24, num_classes=3, seed=3, img_size=64)
    return {split: resolve_dataset(tmp_path / "ds", split) for split in ("train", "val")}


def test_file_without_annotations_key_is_a_warning_not_an_error(two_splits: dict[str, DatasetSplit]) -> None:
    path = two_splits["val"].annotations
    data = json.loads(path.read_text())
    del data["annotations"]
    path.write_text(json.dumps(data))
    report = validate_split(two_splits["val"])
    assert report.ok and report.boxes == 0
    checks = _checks(report)
    assert checks["no_annotations_key"] == (WARNING, 1) and checks["no_boxes"] == (WARNING, 1)
    warnings = check_before_training(two_splits)  # the train split still has boxes: train goes on
    assert any(w.startswith(f"val split ({path}): 1 × the file has no 'annotations' list") for w in warnings)
    assert not any(w.startswith("train split") for w in warnings)


def test_no_box_in_any_split_refuses_to_train(two_splits: dict[str, DatasetSplit]) -> None:
    for split in two_splits.values():
        data = json.loads(split.annotations.read_text())
        del data["annotations"]
        split.annotations.write_text(json.dumps(data))
    with pytest.raises(DataError, match="no split has a single box, nothing to learn from"):
        check_before_training(two_splits)


def test_check_before_training_lists_first_bad_files_and_the_count(two_splits: dict[str, DatasetSplit]) -> None:
    val = two_splits["val"]
    names = json.loads(val.annotations.read_text())["images"]
    for image in names:
        (val.images_dir / image["file_name"]).write_bytes(b"not an image")
    train_victim = sorted(two_splits["train"].images_dir.iterdir())[0]
    train_victim.unlink()
    with pytest.raises(DataError) as info:
        check_before_training(two_splits)
    message = str(info.value)
    assert message.startswith(f"{len(names) + 1} dataset error(s), found before training: ")
    assert f"train split ({two_splits['train'].annotations}): 1 × image file not found" in message
    assert f"val split ({val.annotations}): {len(names)} × image file cannot be opened or decoded" in message
    assert len(names) > 3 and names[0]["file_name"] in message and "; ..." in message
    assert names[-1]["file_name"] not in message  # the first 3 examples only
    assert message.endswith("(full report: dfine data validate)")


def test_check_before_training_decodes_unless_told_headers_only(two_splits: dict[str, DatasetSplit]) -> None:
    victim = sorted(two_splits["val"].images_dir.iterdir())[0]
    content = victim.read_bytes()
    victim.write_bytes(content[: len(content) * 2 // 3])  # header intact, image data cut
    with pytest.raises(DataError, match=f"cannot be opened or decoded: image .* \\({victim.name}\\)"):
        check_before_training(two_splits, workers=2)
    check_before_training(two_splits, decode=False)  # headers only: not found
