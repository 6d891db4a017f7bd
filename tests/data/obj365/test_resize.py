"""Objects365 resize against the official rules (``official_resize``), EXIF, failures, crash safety."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dfine_cli.data.obj365.remap import remap_obj365
from dfine_cli.data.obj365.resize import orient_box, resize_coco_images, resize_obj365
from tests.data.obj365.official import (
    CATEGORIES,
    MAX_SIZE,
    NEW_VAL_SIZE,
    annotation,
    assert_same_outputs,
    coco,
    data_cli,
    file_tree,
    kill_when,
    load_json,
    noise_image,
    official_resize,
    run_ok,
)


def test_resize_matches_official_rules(dataset: Path) -> None:
    remap_obj365(dataset, new_val_size=NEW_VAL_SIZE)
    originals = file_tree(dataset)
    summaries = resize_obj365(dataset, max_size=MAX_SIZE, workers=1)
    assert all(s.written and not s.failures for s in summaries)
    for split in ("train", "val"):
        source = load_json(dataset / split / f"new_zhiyuan_objv2_{split}.json")
        got = load_json(dataset / split / f"new_zhiyuan_objv2_{split}_resized.json")
        expected = official_resize(source, dataset / split, MAX_SIZE)
        assert got["images"] == expected["images"]
        assert {a["id"]: a for a in got["annotations"]} == {
            a["id"]: a for a in expected["annotations"]
        }
        assert [a["id"] for a in got["annotations"]] == [a["id"] for a in source["annotations"]]
        assert {k: got[k] for k in ("categories", "licenses", "info")} == {
            k: source[k] for k in ("categories", "licenses", "info")
        }
        # S1: pixel for pixel what the official PIL calls produce.
        for image in got["images"]:
            if image["file_name"].endswith("_resized.jpg"):
                original = dataset / split / image["file_name"].replace("_resized.jpg", ".jpg")
                with Image.open(original) as img:
                    official = img.resize(
                        (image["width"], image["height"]), Image.Resampling.LANCZOS
                    )
                    official.save(dataset.parent / "official.jpg")
                ours = np.asarray(Image.open(dataset / split / image["file_name"]))
                np.testing.assert_array_equal(
                    ours, np.asarray(Image.open(dataset.parent / "official.jpg"))
                )
    # Originals are never modified.
    after = file_tree(dataset)
    assert {k: after[k] for k in originals} == originals


def test_resize_rerun_reuses_finished_images_and_is_identical(dataset: Path) -> None:
    remap_obj365(dataset, new_val_size=NEW_VAL_SIZE)
    first = resize_obj365(dataset, max_size=MAX_SIZE, workers=2)
    tree = file_tree(dataset)
    second = resize_obj365(dataset, max_size=MAX_SIZE, workers=1)
    assert file_tree(dataset) == tree
    assert [s.reused for s in second] == [s.resized for s in first]
    assert all(s.resized == 0 for s in second)


def test_resize_rerun_rewrites_a_truncated_output_it_would_reuse(dataset: Path) -> None:
    """A cut-short ``_resized.jpg`` (header intact) from an interrupted run is not reused."""
    remap_obj365(dataset, new_val_size=NEW_VAL_SIZE)
    first = resize_obj365(dataset, max_size=MAX_SIZE, workers=1)
    tree = file_tree(dataset)
    outputs = sorted(dataset.rglob("*_resized.jpg"))
    assert outputs and sum(s.resized for s in first) == len(outputs)
    victim = outputs[0]
    good = victim.read_bytes()
    with Image.open(victim) as whole:
        size = whole.size
    victim.write_bytes(good[: len(good) * 3 // 4])
    with Image.open(victim) as cut:
        assert cut.size == size  # the header alone looks finished
    second = resize_obj365(dataset, max_size=MAX_SIZE, workers=1)
    assert sum(s.resized for s in second) == 1
    assert sum(s.reused for s in second) == len(outputs) - 1
    assert victim.read_bytes() == good
    assert file_tree(dataset) == tree


def _exif_image(
    path: Path, stored: tuple[int, int], orientation: int, rect: tuple[int, int, int, int]
) -> None:
    """A black image with a white rectangle (x, y, w, h in stored pixels) and an orientation tag."""
    pixels = np.zeros((stored[1], stored[0], 3), np.uint8)
    x, y, w, h = rect
    pixels[y : y + h, x : x + w] = 255
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, exif=exif.tobytes(), quality=100)


def _white_box(path: Path) -> list[int]:
    pixels = np.asarray(Image.open(path).convert("L")) > 128
    ys, xs = np.nonzero(pixels)
    return [
        int(xs.min()),
        int(ys.min()),
        int(xs.max() - xs.min() + 1),
        int(ys.max() - ys.min() + 1),
    ]


@pytest.mark.parametrize(
    ("orientation", "json_frame"),
    # With orientations 2-4 both frames have the same size, so the JSON is read in the stored frame.
    [(3, "stored"), (6, "stored"), (6, "upright"), (8, "stored"), (8, "upright")],
)
def test_resize_applies_exif_orientation_and_keeps_boxes_on_the_object(
    tmp_path: Path, orientation: int, json_frame: str
) -> None:
    stored, rect = (64, 40), (6, 8, 24, 12)
    _exif_image(tmp_path / "images" / "rot.jpg", stored, orientation, rect)
    swapped = orientation in (5, 6, 7, 8)
    upright = (stored[1], stored[0]) if swapped else stored
    if json_frame == "upright":
        size, box = upright, orient_box(list(rect), orientation, *stored)
    else:
        size, box = stored, list(rect)
    data = {
        "images": [{"id": 1, "file_name": "images/rot.jpg", "width": size[0], "height": size[1]}],
        "annotations": [annotation(1, 1, [float(c) for c in box], 1)],
        "categories": CATEGORIES,
    }
    (tmp_path / "in.json").write_text(json.dumps(data))
    summary = resize_coco_images(
        tmp_path / "in.json", tmp_path, tmp_path / "out.json", max_size=MAX_SIZE
    )
    assert summary.written and summary.resized == 1
    out = load_json(tmp_path / "out.json")
    image = out["images"][0]
    written = tmp_path / image["file_name"]
    with Image.open(written) as img:
        assert img.getexif().get(0x0112, 1) == 1  # upright pixels, no tag left to disagree about
        assert img.size == (image["width"], image["height"])
    scale = MAX_SIZE / max(stored)
    assert (image["width"], image["height"]) == (int(upright[0] * scale), int(upright[1] * scale))
    # The box still covers the white rectangle (JPEG and Lanczos blur edges by about a pixel).
    np.testing.assert_allclose(out["annotations"][0]["bbox"], _white_box(written), atol=1.5)


def test_resize_never_overwrites_originals_with_other_names(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    noise_image(1, 90, 60).convert("RGBA").save(images / "a.png")
    noise_image(2, 90, 60).save(images / "b.jpeg")
    noise_image(3, 90, 60).save(images / "c.jpg")
    noise_image(4, 30, 20).save(
        images / "c_resized.jpg"
    )  # an original that merely looks like an output
    data = {
        "images": [
            {"id": i, "file_name": f"images/{n}", "width": 90, "height": 60}
            for i, n in enumerate(["a.png", "b.jpeg", "c.jpg", "c_resized.jpg"], start=1)
        ],
        "annotations": [annotation(i, i, [1, 1, 10, 10], 1) for i in range(1, 5)],
        "categories": CATEGORIES,
    }
    (tmp_path / "in.json").write_text(json.dumps(data))
    before = file_tree(images)
    summary = resize_coco_images(
        tmp_path / "in.json", tmp_path, tmp_path / "out.json", max_size=MAX_SIZE
    )
    assert not summary.written and not (tmp_path / "out.json").exists()
    assert [(f.file_name, "overwrite" in f.reason) for f in summary.failures] == [
        ("images/c.jpg", True)
    ]
    after = file_tree(images)
    assert {k: after[k] for k in before} == before
    assert {"a_resized.jpg", "b_resized.jpg"} <= set(after)

    summary = resize_coco_images(
        tmp_path / "in.json", tmp_path, tmp_path / "out.json", max_size=MAX_SIZE, skip_bad=True
    )
    out = load_json(tmp_path / "out.json")
    assert [im["file_name"] for im in out["images"]] == [
        "images/a_resized.jpg",
        "images/b_resized.jpg",
        "images/c_resized.jpg",  # the original c_resized.jpg, small, kept as it is
    ]
    assert [a["image_id"] for a in out["annotations"]] == [1, 2, 4]
    assert summary.dropped_annotations == 1


def test_resize_failures_are_listed_and_block_the_json(dataset: Path) -> None:
    remap_obj365(dataset, new_val_size=NEW_VAL_SIZE)
    victim = next((dataset / "train" / "images").rglob("objects365_v1_00000000.jpg"))
    victim.write_bytes(victim.read_bytes()[:200])  # truncated JPEG
    (dataset / "train" / "images" / "v2" / "patch1" / "objects365_v1_00000001.jpg").unlink()
    summaries = resize_obj365(dataset, splits=["train"], max_size=MAX_SIZE)
    assert not summaries[0].written
    assert not (dataset / "train" / "new_zhiyuan_objv2_train_resized.json").exists()
    reasons = {f.image_id: f.reason for f in summaries[0].failures}
    assert set(reasons) == {1, 2} and reasons[2] == "file not found"

    summaries = resize_obj365(dataset, splits=["train"], max_size=MAX_SIZE, skip_bad=True)
    out = load_json(dataset / "train" / "new_zhiyuan_objv2_train_resized.json")
    assert {1, 2}.isdisjoint(im["id"] for im in out["images"])
    assert {1, 2}.isdisjoint(a["image_id"] for a in out["annotations"])
    assert len(out["images"]) == summaries[0].images == 6 + 9 - NEW_VAL_SIZE - 2


def test_resize_killed_and_rerun_equals_uninterrupted(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    data = coco("train")
    for i in range(36):
        name = f"images/v1/patch{i % 2}/{i:04d}.jpg"
        (reference / "train" / name).parent.mkdir(parents=True, exist_ok=True)
        noise_image(i, 900, 700).save(reference / "train" / name)
        data["images"].append(
            {"height": 700, "id": i, "license": 1, "width": 900, "file_name": name}
        )
        data["annotations"].append(annotation(i, i, [10.0, 20.0, 300.5, 200.25], 1))
    (reference / "train" / "new_zhiyuan_objv2_train.json").write_text(json.dumps(data))
    resumed = tmp_path / "resumed"
    shutil.copytree(reference, resumed)
    originals = file_tree(resumed)

    args = ["resize-obj365", "--split", "train", "--max-size", "320"]
    run_ok(data_cli(*args, "--workers", "1", "--base-dir", str(reference)))

    def resized() -> int:
        return sum(1 for _ in (resumed / "train" / "images").rglob("*_resized.jpg"))

    kill_when(data_cli(*args, "--workers", "2", "--base-dir", str(resumed)), lambda: resized() >= 3)
    assert resized() < 36  # really interrupted midway
    for path in (resumed / "train" / "images").rglob("*_resized.jpg"):  # absent or complete
        assert path.read_bytes() == (reference / path.relative_to(resumed)).read_bytes()
    assert not (resumed / "train" / "new_zhiyuan_objv2_train_resized.json").exists()
    now = file_tree(resumed)
    assert {k: now[k] for k in originals} == originals
    run_ok(data_cli(*args, "--workers", "2", "--base-dir", str(resumed)))
    assert_same_outputs(reference, resumed)
