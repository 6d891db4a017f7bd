"""Objects365 remap against the official rules (``official_remap``), plus crash safety."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from dfine_cli.data import obj365
from dfine_cli.data.obj365.remap import remap_obj365
from dfine_cli.errors import DataError
from tests.data.obj365.official import (
    NEW_VAL_SIZE,
    annotation,
    assert_same_outputs,
    coco,
    data_cli,
    file_tree,
    kill_when,
    load_json,
    noise_image,
    official_remap,
    run_ok,
)


def test_remap_matches_official_rules(dataset: Path) -> None:
    train = load_json(dataset / "train" / obj365.TRAIN_JSON)
    val = load_json(dataset / "val" / obj365.VAL_JSON)
    summary = remap_obj365(dataset, new_val_size=NEW_VAL_SIZE)
    new_val, new_train = official_remap(train, val, NEW_VAL_SIZE)

    got_val = load_json(dataset / "val" / "new_zhiyuan_objv2_val.json")
    got_train = load_json(dataset / "train" / "new_zhiyuan_objv2_train.json")
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
    train = load_json(path)
    reordered = {k: train[k] for k in ("info", "annotations", "categories", "images", "licenses")}
    path.write_text(json.dumps(reordered, indent=1))
    val = load_json(dataset / "val" / obj365.VAL_JSON)
    remap_obj365(dataset, new_val_size=NEW_VAL_SIZE)
    _, new_train = official_remap(train, val, NEW_VAL_SIZE)
    got = load_json(dataset / "train" / "new_zhiyuan_objv2_train.json")
    assert list(got) == list(reordered)  # members stay in the input's order
    assert got == {**new_train, "licenses": train["licenses"], "info": train["info"]}


def test_remap_twice_gives_identical_bytes(dataset: Path) -> None:
    remap_obj365(dataset, new_val_size=NEW_VAL_SIZE)
    first = file_tree(dataset)
    summary = remap_obj365(dataset, new_val_size=NEW_VAL_SIZE)
    assert file_tree(dataset) == first
    assert summary.copied_images == 0 and summary.reused_images == summary.moved_images


@pytest.mark.parametrize("kind", ["image", "annotation"])
def test_remap_refuses_colliding_ids(dataset: Path, kind: str) -> None:
    path = dataset / "train" / obj365.TRAIN_JSON
    train = load_json(path)
    val = load_json(dataset / "val" / obj365.VAL_JSON)
    moved_image = val["images"][-1]
    if kind == "image":
        train["images"][0]["id"] = moved_image["id"]
    else:
        moved_ann = next(a for a in val["annotations"] if a["image_id"] == moved_image["id"])
        train["annotations"][0]["id"] = moved_ann["id"]
    path.write_text(json.dumps(train))
    before = file_tree(dataset)
    with pytest.raises(DataError, match="collide"):
        remap_obj365(dataset, new_val_size=NEW_VAL_SIZE)
    assert file_tree(dataset) == before  # no partial output, no temporary files


def test_remap_malformed_json_leaves_nothing(dataset: Path) -> None:
    path = dataset / "train" / obj365.TRAIN_JSON
    path.write_text(path.read_text()[:-40])  # truncated download
    before = file_tree(dataset)
    with pytest.raises(DataError, match="invalid JSON"):
        remap_obj365(dataset, new_val_size=NEW_VAL_SIZE)
    assert file_tree(dataset) == before


def test_remap_missing_val_image_is_reported_before_writing(dataset: Path) -> None:
    victim = next((dataset / "val" / "images").rglob("objects365_v2_00000007.jpg"))
    victim.unlink()
    before = file_tree(dataset)
    with pytest.raises(DataError, match="not found"):
        remap_obj365(dataset, new_val_size=NEW_VAL_SIZE)
    assert file_tree(dataset) == before


def _build_big_remap_input(base: Path) -> Path:
    """Enough work that a remap run can be caught midway: many annotations and val images."""
    train, val = coco("train"), coco("val")
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
        annotation(i, 1 + i % 4000, [1.0, 2.0, 3.5, 4.25], 1 + i % 3) for i in range(1, 30001)
    ]
    val_dir = base / "val"
    for i in range(60):
        name = f"images/v{1 + i % 2}/patch{i % 5}/val_{i}.jpg"
        (val_dir / name).parent.mkdir(parents=True, exist_ok=True)
        noise_image(i, 8, 8).save(val_dir / name)
        val["images"].append(
            {"height": 8, "id": 10**6 + i, "license": 1, "width": 8, "file_name": name}
        )
        val["annotations"].append(annotation(10**7 + i, 10**6 + i, [0, 0, 4, 4], 2))
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
    run_ok(data_cli(*REMAP_ARGS, "--base-dir", str(reference)))
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

    kill_when(data_cli(*REMAP_ARGS, "--base-dir", str(resumed)), ready)
    # Nothing half-written in place: outputs are absent or complete.
    assert not (resumed / "train" / "new_zhiyuan_objv2_train.json").exists()
    for path in copied():
        assert path.read_bytes() == (reference / path.relative_to(resumed)).read_bytes()
    if phase == "copying images":
        assert len(copied()) < 40
    run_ok(data_cli(*REMAP_ARGS, "--base-dir", str(resumed)))
    assert_same_outputs(reference, resumed)
