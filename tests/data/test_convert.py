"""YOLO and Pascal VOC → COCO conversion: round trips, names and ids, skip reports, real VOC data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dfine_cli.data.cocofile import load_coco
from dfine_cli.data.convert import convert_voc, convert_yolo, parse_names, yolo_label_path
from dfine_cli.data.validate import validate_coco
from dfine_cli.errors import DataError, UsageError

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
BCCD = SHARED / "data" / "bccd" / "BCCD"


def _image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (90, 120, 150)).save(path)


def _yolo_dataset(root: Path, rng: np.random.Generator) -> dict[str, list[tuple[int, list[float]]]]:
    """images/train + labels/train with random boxes; returns file → [(class, pixel xywh)]."""
    truth: dict[str, list[tuple[int, list[float]]]] = {}
    for i in range(12):
        width, height = int(rng.integers(40, 400)), int(rng.integers(40, 400))
        name = f"sub{i % 2}/img_{i:02d}.{'png' if i % 3 == 0 else 'jpg'}"
        _image(root / "images" / "train" / name, width, height)
        if i == 11:
            truth[name] = []  # no label file: a negative image
            continue
        lines, boxes = [], []
        for _ in range(int(rng.integers(0, 5))):
            w, h = rng.uniform(0.05, 0.5) * width, rng.uniform(0.05, 0.5) * height
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            cls = int(rng.integers(0, 3))
            boxes.append((cls, [x, y, w, h]))
            lines.append(
                f"{cls} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} {w / width:.6f} {h / height:.6f}"
            )
        label = root / "labels" / "train" / Path(name).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(lines) + "\n")
        truth[name] = boxes
    return truth


def _boxes_by_file(coco: dict[str, Any]) -> dict[str, list[tuple[int, list[float]]]]:
    names = {im["id"]: im["file_name"] for im in coco["images"]}
    out: dict[str, list[tuple[int, list[float]]]] = {name: [] for name in names.values()}
    for ann in coco["annotations"]:
        out[names[ann["image_id"]]].append((ann["category_id"] - 1, ann["bbox"]))
    return out


def test_yolo_round_trip_within_a_pixel(tmp_path: Path) -> None:
    root = tmp_path / "yolo"
    truth = _yolo_dataset(root, np.random.default_rng(0))
    (root / "data.yaml").write_text("names:\n  0: cat\n  1: dog\n  2: bird\n")
    summary = convert_yolo(root, tmp_path / "out.json", split="train")
    coco = load_coco(tmp_path / "out.json")

    assert [c["name"] for c in coco["categories"]] == ["cat", "dog", "bird"]
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
    assert summary.images_dir == root / "images" / "train"
    assert [im["id"] for im in coco["images"]] == list(range(1, 13))
    assert [im["file_name"] for im in coco["images"]] == sorted(truth)
    got = _boxes_by_file(coco)
    assert set(got) == set(truth)
    for name, boxes in truth.items():
        assert [c for c, _ in got[name]] == [c for c, _ in boxes], name
        for (_, a), (_, b) in zip(got[name], boxes, strict=True):
            np.testing.assert_allclose(a, b, atol=1.0)
    assert summary.negatives == sum(1 for b in truth.values() if not b)
    assert summary.skipped == {}


def test_yolo_reports_what_it_skips(tmp_path: Path) -> None:
    root = tmp_path / "yolo"
    _image(root / "images" / "a.jpg", 100, 50)
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.2\n"  # kept
        "7 0.5 0.5 0.2 0.2\n"  # class index outside the names
        "1 0.5 abc 0.2 0.2\n"  # malformed
        "1 0.5 0.5 0.2\n"  # malformed (too few numbers)
        "1 0.1 0.2 0.3 0.2 0.3 0.6\n"  # a polygon: converted to its box
    )
    (root / "images" / "broken.jpg").write_bytes(b"not an image")
    (root / "classes.txt").write_text("a\nb\n")
    summary = convert_yolo(root, tmp_path / "out.json")
    assert summary.skipped == {
        "class index outside the class names": 1,
        "malformed label line": 2,
        "unreadable image": 1,
    }
    assert summary.notes == {"polygon label converted to its bounding box": 1}
    assert summary.examples["malformed label line"][0].endswith("a.txt:3")
    coco = load_coco(tmp_path / "out.json")
    assert [a["bbox"] for a in coco["annotations"]] == [
        [40.0, 20.0, 20.0, 10.0],
        [10.0, 10.0, 20.0, 20.0],
    ]


def test_yolo_data_yaml_split_entries(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _image(root / "images" / "val" / "v.jpg", 64, 32)
    (root / "labels" / "val").mkdir(parents=True)
    (root / "labels" / "val" / "v.txt").write_text("1 0.5 0.5 1 1\n")
    (tmp_path / "data.yaml").write_text(
        "path: ds\ntrain: images/train\nval: images/val\nnames: [person, car]\n"
    )
    summary = convert_yolo(tmp_path / "data.yaml", tmp_path / "val.json", split="val")
    coco = load_coco(tmp_path / "val.json")
    assert summary.images_dir == root / "images" / "val"
    assert coco["images"] == [{"id": 1, "file_name": "v.jpg", "width": 64, "height": 32}]
    assert coco["annotations"][0]["bbox"] == [0.0, 0.0, 64.0, 32.0]
    assert coco["annotations"][0]["category_id"] == 2
    with pytest.raises(DataError, match="folder not found"):
        convert_yolo(tmp_path / "data.yaml", tmp_path / "train.json", split="train")
    assert not (tmp_path / "train.json").exists()


def test_yolo_without_names_is_a_clear_error(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.jpg", 10, 10)
    with pytest.raises(DataError, match="--names"):
        convert_yolo(tmp_path, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_yolo_label_path_follows_the_ultralytics_rule(tmp_path: Path) -> None:
    image = tmp_path / "images" / "train" / "images" / "x.jpg"
    label = tmp_path / "images" / "train" / "labels" / "x.txt"
    label.parent.mkdir(parents=True)
    label.write_text("")
    assert yolo_label_path(image) == label  # the last 'images' component is replaced
    assert yolo_label_path(tmp_path / "flat" / "y.png") == tmp_path / "flat" / "y.txt"


def test_parse_names(tmp_path: Path) -> None:
    assert parse_names("a, b,c") == ["a", "b", "c"]
    (tmp_path / "names.txt").write_text("x\n\ny\n")
    assert parse_names(tmp_path / "names.txt") == ["x", "y"]
    with pytest.raises(UsageError, match="duplicates"):
        parse_names("a,b,a")
    for empty in ("", "  "):
        with pytest.raises(UsageError, match="--names is empty"):
            parse_names(empty)
    with pytest.raises(UsageError, match="gives no class names"):
        parse_names(" , ")


def _voc_xml(
    path: Path, file_name: str, size: tuple[int, int], objects: list[tuple[str, list[str]]]
) -> None:
    parts = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b in objects
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<annotation><filename>{file_name}</filename><size><width>{size[0]}</width>"
        f"<height>{size[1]}</height></size>{parts}</annotation>"
    )


def test_voc_conversion_ids_splits_and_skips(tmp_path: Path) -> None:
    root = tmp_path / "VOC"
    _image(root / "JPEGImages" / "a.jpg", 60, 40)
    _image(root / "JPEGImages" / "b.jpg", 60, 40)
    _voc_xml(
        root / "Annotations" / "a.xml",
        "a.jpg",
        (60, 40),
        [("dog", ["1", "2", "31", "22"]), ("dog", ["5", "5", "5", "5"])],
    )
    # b's <filename> is wrong; the image is found by the XML's name. Its size in the XML is stale.
    _voc_xml(
        root / "Annotations" / "b.xml",
        "wrong.png",
        (0, 0),
        [("cat", ["0", "0", "10", "10"]), ("cat", ["9", "9", "3", "3"])],
    )
    _voc_xml(
        root / "Annotations" / "c.xml", "c.jpg", (60, 40), [("zebra", ["0", "0", "1", "1"])]
    )  # no image
    (root / "Annotations" / "d.xml").write_text("<annotation><object>")  # malformed
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nb\nc\nd\ne\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("b\n")

    summary = convert_voc(root, tmp_path / "train.json", split="train")
    coco = load_coco(tmp_path / "train.json")
    # Ids come from every XML of the dataset, sorted, so all splits agree.
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [
        (1, "cat"),
        (2, "dog"),
        (3, "zebra"),
    ]
    assert [im["file_name"] for im in coco["images"]] == ["a.jpg", "b.jpg"]
    assert [(a["image_id"], a["category_id"], a["bbox"]) for a in coco["annotations"]] == [
        (1, 2, [1.0, 2.0, 30.0, 20.0]),
        (1, 2, [5.0, 5.0, 0.0, 0.0]),  # degenerate: kept, for validate to report
        (2, 1, [0.0, 0.0, 10.0, 10.0]),
    ]
    assert summary.skipped == {
        "object without a valid bndbox": 1,
        "image not found": 1,
        "malformed XML": 1,
        "listed in the split but no XML file": 1,
    }
    assert summary.notes["zero-area box kept (dfine data validate reports it)"] == 1
    assert summary.notes["XML size differs from the image (image size used)"] == 1

    convert_voc(root, tmp_path / "val.json", split="val")
    assert load_coco(tmp_path / "val.json")["categories"] == coco["categories"]

    summary = convert_voc(root, tmp_path / "named.json", split="train", names=["dog"])
    assert summary.categories == ("dog",) and summary.skipped["class not in --names"] == 2


def test_voc_nothing_to_convert_writes_nothing(tmp_path: Path) -> None:
    _voc_xml(tmp_path / "VOC" / "Annotations" / "a.xml", "a.jpg", (1, 1), [])
    (tmp_path / "VOC" / "JPEGImages").mkdir()
    with pytest.raises(DataError, match="nothing to convert"):
        convert_voc(tmp_path / "VOC", tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()
    with pytest.raises(DataError, match="not found"):
        convert_voc(tmp_path / "missing", tmp_path / "out.json")


@pytest.fixture(scope="module")
def bccd_splits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not BCCD.is_dir():
        pytest.skip(f"shared BCCD data not found at {BCCD}")
    out = tmp_path_factory.mktemp("bccd")
    results = {}
    for split in ("train", "val", "test"):
        summary = convert_voc(BCCD, out / f"{split}.json", split=split)
        results[split] = (summary, json.loads((out / f"{split}.json").read_text()))
    return results


def test_bccd_converts_with_its_official_splits(bccd_splits: dict[str, Any]) -> None:
    counts = {split: (s.images, s.annotations) for split, (s, _) in bccd_splits.items()}
    assert {split: n for split, (n, _) in counts.items()} == {"train": 205, "val": 87, "test": 72}
    assert sum(boxes for _, boxes in counts.values()) == 4888
    for summary, coco in bccd_splits.values():
        assert summary.categories == ("Platelets", "RBC", "WBC")
        assert summary.skipped == {}
        assert {(im["width"], im["height"]) for im in coco["images"]} == {(640, 480)}
    train_names = {im["file_name"] for im in bccd_splits["train"][1]["images"]}
    listed = (BCCD / "ImageSets" / "Main" / "train.txt").read_text().split()
    assert train_names == {f"{stem}.jpg" for stem in listed}


def test_validate_reports_the_bccd_degenerate_boxes(bccd_splits: dict[str, Any]) -> None:
    degenerate = []
    for summary, coco in bccd_splits.values():
        report = validate_coco(coco, summary.images_dir, decode=False)
        assert report.ok, report.issues  # warnings only
        for issue in report.issues:
            assert issue.check == "zero_area_box"
            degenerate.append((issue.count, issue.examples))
    assert sum(count for count, _ in degenerate) == 2


def test_yolo_boxes_outside_the_image_are_clipped_or_skipped_with_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "yolo"
    _image(root / "images" / "a.jpg", 100, 50)
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.2\n"  # inside: kept as is
        "0 0.95 0.5 0.2 0.2\n"  # reaches past the right border: clipped to x 0.85..1
        "1 -0.05 -0.1 0.3 0.4\n"  # negative centre, reaches into the image: clipped
        "1 1.5 0.5 0.2 0.2\n"  # entirely outside: skipped
        "0 0.5 0.5 -0.2 0.2\n"  # negative width: skipped
        "0 0.5 0.5 0.2 -0.1\n"  # negative height: skipped
    )
    (root / "classes.txt").write_text("a\nb\n")
    with caplog.at_level("WARNING", logger="dfine"):
        summary = convert_yolo(root, tmp_path / "out.json")
    assert summary.skipped == {"box entirely outside the image": 1, "negative box size": 2}
    assert summary.notes == {"box(es) reaching outside the image, clipped to it": 2}
    assert summary.examples["box(es) reaching outside the image, clipped to it"][0].endswith("a.txt:2")
    coco = load_coco(tmp_path / "out.json")
    assert [a["bbox"] for a in coco["annotations"]] == [
        [40.0, 20.0, 20.0, 10.0],
        [85.0, 20.0, 15.0, 10.0],
        [0.0, 0.0, 10.0, 5.0],
    ]
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "2 box(es) reaching outside the image, clipped to it (e.g." in messages
    assert "skipped 1: box entirely outside the image" in messages
    assert "skipped 2: negative box size" in messages


def test_yolo_label_files_without_an_image_are_reported(tmp_path: Path) -> None:
    root = tmp_path / "yolo"
    _image(root / "images" / "train" / "a.jpg", 20, 20)
    (root / "labels" / "train" / "sub").mkdir(parents=True)
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "labels" / "train" / "ghost.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (root / "labels" / "train" / "sub" / "ghost2.txt").write_text("")
    (root / "labels" / "train" / "classes.txt").write_text("a\n")
    summary = convert_yolo(root, tmp_path / "out.json", names=["a"])
    assert summary.skipped == {"label file without an image": 2}
    assert sorted(Path(p).name for p in summary.examples["label file without an image"]) == [
        "ghost.txt", "ghost2.txt",
    ]
    flat = tmp_path / "flat"
    _image(flat / "b.png", 20, 20)
    (flat / "b.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (flat / "orphan.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    summary = convert_yolo(flat, tmp_path / "flat.json", names=["a"])
    assert summary.skipped == {"label file without an image": 1}
    assert summary.annotations == 1


def test_names_that_name_a_missing_file_are_an_error(tmp_path: Path) -> None:
    for value in ("classes.txt", "data/names", str(tmp_path / "names.yaml"), "x.names"):
        with pytest.raises(DataError, match=f"--names file not found: {value}"):
            parse_names(value)
    assert parse_names("person") == ["person"]
    assert parse_names("car,bus.stop") == ["car", "bus.stop"]
    (tmp_path / "names.yaml").write_text("names:\n  0: cat\n  1: dog\n")
    assert parse_names(tmp_path / "names.yaml") == ["cat", "dog"]
    (tmp_path / "list.yaml").write_text("[x, y]\n")
    assert parse_names(tmp_path / "list.yaml") == ["x", "y"]
    (tmp_path / "evil.yaml").write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(DataError, match="unsafe YAML"):
        parse_names(tmp_path / "evil.yaml")
    with pytest.raises(DataError, match="not a file"):
        parse_names(tmp_path)
