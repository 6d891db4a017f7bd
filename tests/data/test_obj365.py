"""Objects365 remap and resize against the official procedure's rules, plus crash safety.

The official procedure (D-FINE README "Objects365 Dataset", tools/remap_obj365.py and
tools/resize_obj365.py) is encoded below as two small oracles, ``official_remap`` and
``official_resize``, each listing the rules it implements. Our outputs must equal what those rules
produce; where dfine deliberately differs (info/licenses kept, EXIF, failures) the test says so.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dfine_cli.data import obj365
from dfine_cli.data.cocofile import (
    ArrayElements,
    StreamedArray,
    iter_array,
    iter_members,
    write_streamed_json,
)
from dfine_cli.data.obj365 import orient_box, remap_obj365, resize_coco_images, resize_obj365
from dfine_cli.errors import DataError

MAX_SIZE = 48  # stands in for the official 640 so the fixture images stay tiny
NEW_VAL_SIZE = 4  # stands in for the official 5000
CATEGORIES = [
    {"name": "person", "id": 1},
    {"name": "sneakers", "id": 2},
    {"name": "chair", "id": 3},
]


# --------------------------------------------------------------------------- fixture


def _noise_image(seed: int, width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)


def _annotation(ann_id: int, image_id: int, box: list[float], category: int) -> dict[str, Any]:
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


def _add_image(
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
    _noise_image(image_id, width, height).save(path)
    data["images"].append(
        {"height": height, "id": image_id, "license": 1, "width": width, "file_name": file_name}
    )
    for k in range(boxes):
        ann_id = 10 * image_id + k
        box = [1.5 + k, 2.0 + k, width / 3 + 0.25, height / 4 + 0.5]
        data["annotations"].append(_annotation(ann_id, image_id, box, 1 + (ann_id % 3)))


def _coco(description: str) -> dict[str, Any]:
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
    train, val = _coco("train"), _coco("val")
    for i in range(train_images):
        name = f"images/v{1 + i % 2}/patch{i % 3}/objects365_v1_{i:08d}.jpg"
        _add_image(base / "train", train, 1 + i, name, sizes[i % len(sizes)], boxes=i % 3)
    for i in range(val_images):
        name = f"images/v{1 + i % 2}/patch{i % 2}/objects365_v2_{i:08d}.jpg"
        _add_image(base / "val", val, 1000 + i, name, sizes[(i + 3) % len(sizes)], boxes=1 + i % 2)
    val["annotations"].append(_annotation(99999, 424242, [0, 0, 1, 1], 1))  # refers to no image
    (base / "train" / obj365.TRAIN_JSON).write_text(json.dumps(train))
    (base / "val" / obj365.VAL_JSON).write_text(json.dumps(val))
    return base


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return build_obj365(tmp_path / "Objects365" / "data")


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------- oracles


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


# --------------------------------------------------------------------------- streaming JSON


@pytest.mark.parametrize("indent", [None, 2])
@pytest.mark.parametrize("chunk_chars", [1, 5, 1 << 20])
def test_streaming_reader_matches_json_load(
    tmp_path: Path, indent: int | None, chunk_chars: int
) -> None:
    data = {
        "info": {"x": [1, 2.5, None, True]},
        "annotations": [
            {"id": i, "bbox": [i / 3, -1e-7, 12345678901234567890, 0]} for i in range(50)
        ],
        "images": [{"id": i, "file_name": f"é/{i}.jpg"} for i in range(20)],
        "empty": [],
        "n": 1234567,
    }
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data, indent=indent))
    read = {
        k: list(v) if isinstance(v, ArrayElements) else v
        for k, v in iter_members(path, chunk_chars=chunk_chars)
    }
    assert read == data
    assert list(iter_array(path, "images", chunk_chars=chunk_chars)) == data["images"]


def test_streaming_writer_is_byte_identical_to_json_dump(tmp_path: Path) -> None:
    data = {
        "images": [{"id": i, "s": "ü"} for i in range(5000)],
        "categories": [{"id": 1}],
        "empty": [],
    }
    path = tmp_path / "a.json"
    with open(path, "w") as fh:
        write_streamed_json(
            fh, [(k, StreamedArray(iter(v)) if k != "categories" else v) for k, v in data.items()]
        )
    assert path.read_text() == json.dumps(data)


@pytest.mark.parametrize(
    "text", ['{"images": [1, 2', '{"images": [1,, 2]}', "[1]", '{"a": 1} x', ""]
)
def test_streaming_reader_rejects_malformed_json(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DataError, match="invalid JSON"):
        for _, value in iter_members(path, chunk_chars=4):
            if isinstance(value, ArrayElements):
                list(value)


# --------------------------------------------------------------------------- remap


def test_remap_matches_official_rules(dataset: Path) -> None:
    train = _load(dataset / "train" / obj365.TRAIN_JSON)
    val = _load(dataset / "val" / obj365.VAL_JSON)
    summary = remap_obj365(dataset, new_val_size=NEW_VAL_SIZE)
    new_val, new_train = official_remap(train, val, NEW_VAL_SIZE)

    got_val = _load(dataset / "val" / "new_zhiyuan_objv2_val.json")
    got_train = _load(dataset / "train" / "new_zhiyuan_objv2_train.json")
    assert got_val == {**new_val, "licenses": val["licenses"], "info": val["info"]}
    assert got_train == {**new_train, "licenses": train["licenses"], "info": train["info"]}
    assert (
        got_train["images"][0]["file_name"]
        == "images_from_val/v1/patch0/objects365_v2_00000004.jpg"
    )
    assert summary.moved_images == 9 - NEW_VAL_SIZE
    assert summary.dropped_annotations == 1
    # The README's `cp -r` step: every moved image is in train/images_from_val, bytes unchanged.
    for image in new_train["images"][: summary.moved_images]:
        original = "images/" + image["file_name"].split("/", 1)[1]
        copied = dataset / "train" / image["file_name"]
        assert copied.read_bytes() == (dataset / "val" / original).read_bytes()
    assert summary.copied_images == summary.moved_images


def test_remap_streams_instead_of_loading_whole_files(
    dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("remap must not json.load whole annotation files")

    monkeypatch.setattr(json, "load", refuse)
    monkeypatch.setattr(json, "loads", refuse)
    remap_obj365(dataset, new_val_size=NEW_VAL_SIZE)


def test_remap_accepts_any_member_order(dataset: Path) -> None:
    path = dataset / "train" / obj365.TRAIN_JSON
    train = _load(path)
    reordered = {k: train[k] for k in ("info", "annotations", "categories", "images", "licenses")}
    path.write_text(json.dumps(reordered, indent=1))
    val = _load(dataset / "val" / obj365.VAL_JSON)
    remap_obj365(dataset, new_val_size=NEW_VAL_SIZE)
    _, new_train = official_remap(train, val, NEW_VAL_SIZE)
    got = _load(dataset / "train" / "new_zhiyuan_objv2_train.json")
    assert list(got) == list(reordered)  # members stay in the input's order
    assert got == {**new_train, "licenses": train["licenses"], "info": train["info"]}


def test_remap_twice_gives_identical_bytes(dataset: Path) -> None:
    remap_obj365(dataset, new_val_size=NEW_VAL_SIZE)
    first = _tree(dataset)
    summary = remap_obj365(dataset, new_val_size=NEW_VAL_SIZE)
    assert _tree(dataset) == first
    assert summary.copied_images == 0 and summary.reused_images == summary.moved_images


@pytest.mark.parametrize("kind", ["image", "annotation"])
def test_remap_refuses_colliding_ids(dataset: Path, kind: str) -> None:
    path = dataset / "train" / obj365.TRAIN_JSON
    train = _load(path)
    val = _load(dataset / "val" / obj365.VAL_JSON)
    moved_image = val["images"][-1]
    if kind == "image":
        train["images"][0]["id"] = moved_image["id"]
    else:
        moved_ann = next(a for a in val["annotations"] if a["image_id"] == moved_image["id"])
        train["annotations"][0]["id"] = moved_ann["id"]
    path.write_text(json.dumps(train))
    before = _tree(dataset)
    with pytest.raises(DataError, match="collide"):
        remap_obj365(dataset, new_val_size=NEW_VAL_SIZE)
    assert _tree(dataset) == before  # no partial output, no temporary files


def test_remap_malformed_json_leaves_nothing(dataset: Path) -> None:
    path = dataset / "train" / obj365.TRAIN_JSON
    path.write_text(path.read_text()[:-40])  # truncated download
    before = _tree(dataset)
    with pytest.raises(DataError, match="invalid JSON"):
        remap_obj365(dataset, new_val_size=NEW_VAL_SIZE)
    assert _tree(dataset) == before


def test_remap_missing_val_image_is_reported_before_writing(dataset: Path) -> None:
    victim = next((dataset / "val" / "images").rglob("objects365_v2_00000007.jpg"))
    victim.unlink()
    before = _tree(dataset)
    with pytest.raises(DataError, match="not found"):
        remap_obj365(dataset, new_val_size=NEW_VAL_SIZE)
    assert _tree(dataset) == before


# --------------------------------------------------------------------------- resize


def test_resize_matches_official_rules(dataset: Path) -> None:
    remap_obj365(dataset, new_val_size=NEW_VAL_SIZE)
    originals = _tree(dataset)
    summaries = resize_obj365(dataset, max_size=MAX_SIZE, workers=1)
    assert all(s.written and not s.failures for s in summaries)
    for split in ("train", "val"):
        source = _load(dataset / split / f"new_zhiyuan_objv2_{split}.json")
        got = _load(dataset / split / f"new_zhiyuan_objv2_{split}_resized.json")
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
    after = _tree(dataset)
    assert {k: after[k] for k in originals} == originals


def test_resize_rerun_reuses_finished_images_and_is_identical(dataset: Path) -> None:
    remap_obj365(dataset, new_val_size=NEW_VAL_SIZE)
    first = resize_obj365(dataset, max_size=MAX_SIZE, workers=2)
    tree = _tree(dataset)
    second = resize_obj365(dataset, max_size=MAX_SIZE, workers=1)
    assert _tree(dataset) == tree
    assert [s.reused for s in second] == [s.resized for s in first]
    assert all(s.resized == 0 for s in second)


def test_resize_rerun_rewrites_a_truncated_output_it_would_reuse(dataset: Path) -> None:
    """A cut-short ``_resized.jpg`` (header intact) from an interrupted run is not reused."""
    remap_obj365(dataset, new_val_size=NEW_VAL_SIZE)
    first = resize_obj365(dataset, max_size=MAX_SIZE, workers=1)
    tree = _tree(dataset)
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
    assert _tree(dataset) == tree


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
        "annotations": [_annotation(1, 1, [float(c) for c in box], 1)],
        "categories": CATEGORIES,
    }
    (tmp_path / "in.json").write_text(json.dumps(data))
    summary = resize_coco_images(
        tmp_path / "in.json", tmp_path, tmp_path / "out.json", max_size=MAX_SIZE
    )
    assert summary.written and summary.resized == 1
    out = _load(tmp_path / "out.json")
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
    _noise_image(1, 90, 60).convert("RGBA").save(images / "a.png")
    _noise_image(2, 90, 60).save(images / "b.jpeg")
    _noise_image(3, 90, 60).save(images / "c.jpg")
    _noise_image(4, 30, 20).save(
        images / "c_resized.jpg"
    )  # an original that merely looks like an output
    data = {
        "images": [
            {"id": i, "file_name": f"images/{n}", "width": 90, "height": 60}
            for i, n in enumerate(["a.png", "b.jpeg", "c.jpg", "c_resized.jpg"], start=1)
        ],
        "annotations": [_annotation(i, i, [1, 1, 10, 10], 1) for i in range(1, 5)],
        "categories": CATEGORIES,
    }
    (tmp_path / "in.json").write_text(json.dumps(data))
    before = _tree(images)
    summary = resize_coco_images(
        tmp_path / "in.json", tmp_path, tmp_path / "out.json", max_size=MAX_SIZE
    )
    assert not summary.written and not (tmp_path / "out.json").exists()
    assert [(f.file_name, "overwrite" in f.reason) for f in summary.failures] == [
        ("images/c.jpg", True)
    ]
    after = _tree(images)
    assert {k: after[k] for k in before} == before
    assert {"a_resized.jpg", "b_resized.jpg"} <= set(after)

    summary = resize_coco_images(
        tmp_path / "in.json", tmp_path, tmp_path / "out.json", max_size=MAX_SIZE, skip_bad=True
    )
    out = _load(tmp_path / "out.json")
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
    out = _load(dataset / "train" / "new_zhiyuan_objv2_train_resized.json")
    assert {1, 2}.isdisjoint(im["id"] for im in out["images"])
    assert {1, 2}.isdisjoint(a["image_id"] for a in out["annotations"])
    assert len(out["images"]) == summaries[0].images == 6 + 9 - NEW_VAL_SIZE - 2


# --------------------------------------------------------------------------- interrupt and rerun


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "dfine_cli", "data", *args]


def _run(args: list[str]) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def _kill_when(args: list[str], ready: Any, timeout: float = 60.0) -> None:
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


def _assert_same_outputs(reference: Path, resumed: Path) -> None:
    ref, got = _tree(reference), _tree(resumed)
    assert sorted(got) == sorted(ref)  # same files, no temporary leftovers
    for name in ref:
        if name.endswith(".json"):
            assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name
        else:
            a, b = np.asarray(Image.open(reference / name)), np.asarray(Image.open(resumed / name))
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert got == ref  # and in fact byte for byte everywhere


def _build_big_remap_input(base: Path) -> Path:
    """Enough work that a remap run can be caught midway: many annotations and val images."""
    train, val = _coco("train"), _coco("val")
    train["images"] = [
        {
            "height": 480,
            "id": i,
            "license": 1,
            "width": 640,
            "file_name": f"images/v1/patch0/{i}.jpg",
        }
        for i in range(1, 4001)
    ]
    train["annotations"] = [
        _annotation(i, 1 + i % 4000, [1.0, 2.0, 3.5, 4.25], 1 + i % 3) for i in range(1, 30001)
    ]
    val_dir = base / "val"
    for i in range(60):
        name = f"images/v{1 + i % 2}/patch{i % 5}/val_{i}.jpg"
        (val_dir / name).parent.mkdir(parents=True, exist_ok=True)
        _noise_image(i, 8, 8).save(val_dir / name)
        val["images"].append(
            {"height": 8, "id": 10**6 + i, "license": 1, "width": 8, "file_name": name}
        )
        val["annotations"].append(_annotation(10**7 + i, 10**6 + i, [0, 0, 4, 4], 2))
    (base / "train").mkdir(parents=True)
    (base / "train" / obj365.TRAIN_JSON).write_text(json.dumps(train))
    (val_dir / obj365.VAL_JSON).write_text(json.dumps(val))
    return base


REMAP_ARGS = ("remap-obj365", "--new-val-size", "20")


@pytest.fixture(scope="module")
def big_remap(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(pristine input, output of one uninterrupted run), built once for the module."""
    root = tmp_path_factory.mktemp("big_remap")
    pristine = _build_big_remap_input(root / "pristine")
    reference = root / "reference"
    shutil.copytree(pristine, reference)
    _run(_cli(*REMAP_ARGS, "--base-dir", str(reference)))
    return pristine, reference


@pytest.mark.parametrize("phase", ["writing json", "copying images"])
def test_remap_killed_and_rerun_equals_uninterrupted(
    tmp_path: Path, big_remap: tuple[Path, Path], phase: str
) -> None:
    pristine, reference = big_remap
    resumed = tmp_path / "resumed"
    shutil.copytree(pristine, resumed)
    copied_dir = resumed / "train" / "images_from_val"

    def copied() -> list[Path]:  # finished copies (temporary files start with a dot)
        return [p for p in copied_dir.rglob("*.jpg") if not p.name.startswith(".")]

    def ready() -> bool:
        if phase == "writing json":
            temps = list((resumed / "train").glob(".new_zhiyuan_objv2_train.json.*.tmp*"))
            return any(t.exists() and t.stat().st_size > 100_000 for t in temps)
        return len(copied()) >= 3

    _kill_when(_cli(*REMAP_ARGS, "--base-dir", str(resumed)), ready)
    # Nothing half-written in place: outputs are absent or complete.
    assert not (resumed / "train" / "new_zhiyuan_objv2_train.json").exists()
    for path in copied():
        assert path.read_bytes() == (reference / path.relative_to(resumed)).read_bytes()
    if phase == "copying images":
        assert len(copied()) < 40
    _run(_cli(*REMAP_ARGS, "--base-dir", str(resumed)))
    _assert_same_outputs(reference, resumed)


def test_resize_killed_and_rerun_equals_uninterrupted(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    data = _coco("train")
    for i in range(36):
        name = f"images/v1/patch{i % 2}/{i:04d}.jpg"
        (reference / "train" / name).parent.mkdir(parents=True, exist_ok=True)
        _noise_image(i, 900, 700).save(reference / "train" / name)
        data["images"].append(
            {"height": 700, "id": i, "license": 1, "width": 900, "file_name": name}
        )
        data["annotations"].append(_annotation(i, i, [10.0, 20.0, 300.5, 200.25], 1))
    (reference / "train" / "new_zhiyuan_objv2_train.json").write_text(json.dumps(data))
    resumed = tmp_path / "resumed"
    shutil.copytree(reference, resumed)
    originals = _tree(resumed)

    args = ["resize-obj365", "--split", "train", "--max-size", "320"]
    _run(_cli(*args, "--workers", "1", "--base-dir", str(reference)))

    def resized() -> int:
        return sum(1 for _ in (resumed / "train" / "images").rglob("*_resized.jpg"))

    _kill_when(_cli(*args, "--workers", "2", "--base-dir", str(resumed)), lambda: resized() >= 3)
    assert resized() < 36  # really interrupted midway
    for path in (resumed / "train" / "images").rglob("*_resized.jpg"):  # absent or complete
        assert path.read_bytes() == (reference / path.relative_to(resumed)).read_bytes()
    assert not (resumed / "train" / "new_zhiyuan_objv2_train_resized.json").exists()
    now = _tree(resumed)
    assert {k: now[k] for k in originals} == originals
    _run(_cli(*args, "--workers", "2", "--base-dir", str(resumed)))
    _assert_same_outputs(reference, resumed)
