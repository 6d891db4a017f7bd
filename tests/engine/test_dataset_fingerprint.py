"""Dataset fingerprints: what nodes of a multi-node job compare before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dfine_cli.data.cocofile import DatasetSplit
from dfine_cli.engine.dataset_fingerprint import (
    SplitFingerprint,
    check_same_dataset,
    count_images,
    find_mismatch,
    split_fingerprint,
)


def _split(root: Path, n_images: int, annotations: dict) -> DatasetSplit:
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    for i in range(n_images):
        (images / ("sub" if i % 2 else "") / f"{i}.JPG").write_bytes(b"x")
    (images / "notes.txt").write_text("not an image")
    ann = root / "instances.json"
    ann.write_text(json.dumps(annotations))
    return DatasetSplit(images_dir=images, annotations=ann)


def test_same_content_at_different_paths_has_the_same_fingerprint(tmp_path: Path) -> None:
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    a = split_fingerprint(_split(tmp_path / "a", 3, coco))
    b = split_fingerprint(_split(tmp_path / "elsewhere" / "b", 3, coco))
    assert a == b and a.images == 3


def test_image_count_includes_subfolders_and_ignores_other_files(tmp_path: Path) -> None:
    split = _split(tmp_path, 5, {})
    assert count_images(split.images_dir) == 5


def test_changed_annotations_change_the_fingerprint(tmp_path: Path) -> None:
    a = split_fingerprint(_split(tmp_path / "a", 2, {"annotations": [1]}))
    b = split_fingerprint(_split(tmp_path / "b", 2, {"annotations": []}))
    assert a.images == b.images and a.annotations_sha256 != b.annotations_sha256


def test_mismatch_names_the_split_and_both_nodes() -> None:
    same = {"train": SplitFingerprint(6, "a" * 64), "val": SplitFingerprint(2, "b" * 64)}
    other = {"train": SplitFingerprint(5, "a" * 64), "val": SplitFingerprint(2, "b" * 64)}
    # two processes per node: ranks 0,1 on node 0 and ranks 2,3 on node 1
    assert find_mismatch([(0, same), (0, same), (1, same), (1, same)]) is None
    problem = find_mismatch([(0, same), (0, same), (1, other), (1, other)])
    assert problem is not None
    assert problem.startswith("the train split differs between nodes: node 0 has 6 images")
    assert "node 1 has 5 images" in problem


def test_missing_split_on_a_node_is_a_mismatch() -> None:
    full = {"train": SplitFingerprint(6, "a" * 64), "val": SplitFingerprint(2, "b" * 64)}
    problem = find_mismatch([(0, full), (1, {"train": full["train"]})])
    assert problem is not None and "val split" in problem and "node 1 has missing" in problem


def test_check_is_a_no_op_without_a_process_group(tmp_path: Path) -> None:
    split = _split(tmp_path, 1, {})
    check_same_dataset({"train": split})  # one process: nothing to compare, no error


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_hash_does_not_depend_on_the_read_size(tmp_path: Path, chunk: int) -> None:
    import hashlib

    from dfine_cli.engine.dataset_fingerprint import file_sha256

    path = tmp_path / "f.json"
    path.write_bytes(b"0123456789" * 100)
    assert file_sha256(path, chunk) == hashlib.sha256(path.read_bytes()).hexdigest()
