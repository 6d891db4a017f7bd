"""Ultralytics data.yaml: parsing, the COCO cache of its YOLO labels, conversion of every split,
and ``dfine train --data data.yaml`` end to end on a tiny set."""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from dfine_cli.cli.main import app
from dfine_cli.data import yolo
from dfine_cli.data.cocofile import available_splits, resolve_dataset
from dfine_cli.data.synth import make_synthetic_dataset
from dfine_cli.errors import DataError, FileSystemError


def make_yolo_dataset(root: Path, num_images: int = 10) -> dict[str, Any]:
    """Synthetic shapes in the Ultralytics layout (images/<split>, labels/<split>, data.yaml).

    Returns the original COCO files by split, to compare conversions with.
    """
    summary = make_synthetic_dataset(root, num_images=num_images, num_classes=3, seed=2, img_size=320)
    coco = {}
    for split in ("train", "val"):
        data = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        coco[split] = data
        labels = root / "labels" / split
        labels.mkdir(parents=True)
        for image in data["images"]:
            lines = [f"{a['category_id'] - 1} {(a['bbox'][0] + a['bbox'][2] / 2) / 320:.6f} "
                     f"{(a['bbox'][1] + a['bbox'][3] / 2) / 320:.6f} {a['bbox'][2] / 320:.6f} "
                     f"{a['bbox'][3] / 320:.6f}"
                     for a in data["annotations"] if a["image_id"] == image["id"]]
            (labels / Path(image["file_name"]).with_suffix(".txt")).write_text("\n".join(lines))
    for path in (root / "annotations").iterdir():
        path.unlink()
    (root / "annotations").rmdir()
    spec = {"path": ".", "train": "images/train", "val": "images/val",
            "names": dict(enumerate(summary.class_names)), "nc": 3}
    (root / "data.yaml").write_text(yaml.safe_dump(spec))
    return coco


def _boxes(coco: dict[str, Any]) -> list[tuple[str, int, list[float]]]:
    names = {i["id"]: Path(i["file_name"]).name for i in coco["images"]}
    return sorted((names[a["image_id"]], a["category_id"], a["bbox"]) for a in coco["annotations"])


def _close(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(x[:2] == y[:2] and max(abs(p - q) for p, q in zip(x[2], y[2])) < 1e-3
                                    for x, y in zip(a, b))


@pytest.fixture()
def dataset(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    coco = make_yolo_dataset(tmp_path / "shapes")
    return tmp_path / "shapes" / "data.yaml", coco


def test_cache_is_built_once_beside_the_labels_and_rebuilt_when_a_label_changes(dataset, caplog):
    data_yaml, coco = dataset
    caplog.set_level(logging.INFO, logger="dfine")
    split = resolve_dataset(data_yaml, "train")
    cache = data_yaml.parent / "labels" / "train.dfine-train.json"
    assert split.annotations == cache and split.images_dir == data_yaml.parent / "images" / "train"
    assert split.names == ("square", "circle", "triangle")
    assert _close(_boxes(json.loads(cache.read_text())), _boxes(coco["train"]))
    assert [r.getMessage() for r in caplog.records if "converted the YOLO labels" in r.getMessage()] == [
        f"{data_yaml}: converted the YOLO labels of 'train' (8 images, {len(coco['train']['annotations'])} "
        f"boxes) once to {cache}; reused until an image or label changes"]
    caplog.clear()
    written = cache.stat().st_mtime_ns
    assert resolve_dataset(data_yaml, "train").annotations == cache  # reused, not rewritten
    assert cache.stat().st_mtime_ns == written and not caplog.records
    label = next((data_yaml.parent / "labels" / "train").glob("*.txt"))
    label.write_text("0 0.5 0.5 0.25 0.25\n")
    os.utime(label, ns=(written + 10**9, written + 10**9))
    resolve_dataset(data_yaml, "train")
    assert any("converted the YOLO labels" in r.getMessage() for r in caplog.records)
    assert [a["bbox"] for a in json.loads(cache.read_text())["annotations"]
            if a["image_id"] == 1 + sorted(p.stem for p in label.parent.glob("*.txt")).index(label.stem)] \
        == [[120.0, 120.0, 80.0, 80.0]]
    assert available_splits(data_yaml) == ["train", "val"]
    assert not list(data_yaml.parent.rglob("*.tmp*"))  # written atomically


def test_image_lists_folder_lists_roboflow_paths_and_names(tmp_path: Path):
    make_yolo_dataset(tmp_path / "d")
    root = tmp_path / "d"
    train = sorted((root / "images" / "train").glob("*.jpg"))
    (root / "train.txt").write_text("\n".join(f"./images/train/{p.name}" for p in train[:5]) + "\n")
    (root / "sub").mkdir()
    (root / "sub" / "data.yaml").write_text(yaml.safe_dump(
        {"train": ["../train.txt", "../images/val"], "val": "../images/val", "names": ["a", "b", "c"]}))
    ds = yolo.read_data_yaml(root / "sub" / "data.yaml")
    assert ds.names == ("a", "b", "c") and ds.root == root / "sub"
    images = yolo.split_images(ds, "train")
    assert len(images) == 5 + 2 and yolo.images_root(images) == (root / "images").absolute()
    split = resolve_dataset(root / "sub" / "data.yaml", "train")
    assert split.annotations == root / "labels.dfine-train.json"
    assert {i["file_name"] for i in json.loads(split.annotations.read_text())["images"]} \
        == {f"train/{p.name}" for p in train[:5]} | {f"val/{p.name}" for p in (root / "images" / "val").iterdir()}
    (root / "nc_only.yaml").write_text("train: images/train\nval: images/val\nnc: 2\n")
    assert yolo.read_data_yaml(root / "nc_only.yaml").names == ("class_0", "class_1")


@pytest.mark.parametrize(("spec", "message"), [
    ({"train": "images/train", "names": ["a"], "nc": 2}, "nc is 2 but 'names' lists 1 classes"),
    ({"train": "images/train"}, "no class names: add 'names'"),
    ({"train": "images/nope", "names": ["a"]}, "'train' images not found"),
    ({"path": "/no/such/root", "train": "x", "names": ["a"], "download": "https://x"},
     "dataset root 'path: /no/such/root' not found (dfine does not download datasets: fetch it first)"),
    ({"train": "images/train", "names": {1: "a", 2: "b"}}, "must have the keys 0..1"),
    ({"train": "data.yaml", "names": ["a"]}, "neither an image folder nor a .txt list"),
])
def test_bad_data_yaml_is_a_one_line_data_error(tmp_path: Path, spec, message):
    make_yolo_dataset(tmp_path)
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_dataset(tmp_path / "data.yaml", "train")


def test_relative_data_yaml_path_from_the_working_folder(dataset, monkeypatch):
    data_yaml, coco = dataset
    monkeypatch.chdir(data_yaml.parent.parent)
    split = resolve_dataset(Path(data_yaml.parent.name) / "data.yaml", "val")
    assert split.images_dir == data_yaml.parent / "images" / "val"
    assert _close(_boxes(json.loads(split.annotations.read_text())), _boxes(coco["val"]))


def test_split_without_images_and_missing_split(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "data.yaml").write_text("train: empty\nnames: [a]\n")
    with pytest.raises(DataError, match="no images in the 'train' split"):
        resolve_dataset(tmp_path / "data.yaml", "train")
    with pytest.raises(DataError, match="no 'val' entry"):
        resolve_dataset(tmp_path / "data.yaml", "val")


def test_read_only_dataset_caches_under_dfine_home(dataset, monkeypatch, tmp_path):
    data_yaml, _ = dataset
    real = yolo.convert_yolo_images
    calls = []

    def refuse_beside_labels(images, root, names, output, info=None):
        calls.append(Path(output))
        if len(calls) == 1:
            raise FileSystemError(f"cannot write {output}: read-only file system", errno.EROFS)
        return real(images, root, names, output, info)

    monkeypatch.setattr(yolo, "convert_yolo_images", refuse_beside_labels)
    monkeypatch.setenv("DFINE_HOME", str(tmp_path / "home"))
    split = resolve_dataset(data_yaml, "val")
    assert split.annotations.parent == tmp_path / "home" / "yolo-cache"
    assert resolve_dataset(data_yaml, "val").annotations == split.annotations and len(calls) == 2


def dfine(*args: str | Path) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_convert_every_split_writes_a_dataset_yaml_train_takes(dataset, tmp_path: Path):
    data_yaml, coco = dataset
    out = tmp_path / "coco"
    result = dfine("data", "convert", "--from", "yolo", data_yaml, out, "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["dataset_yaml"] == str(out / "data.yaml") and set(payload["splits"]) == {"train", "val"}
    assert "train on it with: dfine train --data" in result.stderr
    for split in ("train", "val"):
        resolved = resolve_dataset(out / "data.yaml", split)
        assert resolved.names == ("square", "circle", "triangle")
        assert resolved.images_dir == data_yaml.parent / "images" / split
        assert _close(_boxes(json.loads(resolved.annotations.read_text())), _boxes(coco[split]))
    assert not list(data_yaml.parent.glob("labels/*.json"))  # no cache: an explicit conversion


def test_convert_bad_inputs(dataset, tmp_path: Path):
    data_yaml, _ = dataset
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: images/train\nnames: [a]\nnc: 3\n")
    cases = [
        (("data", "convert", "--from", "yolo", bad, tmp_path / "o"), 3, "nc is 3 but 'names' lists 1"),
        (("data", "convert", "--from", "yolo", data_yaml, tmp_path / "o", "--out", tmp_path / "o.json"),
         2, "give either OUT/"),
        (("data", "convert", "--from", "voc", data_yaml, tmp_path / "o"), 2, "OUT/ converts the splits of a YOLO"),
        (("data", "convert", "--from", "yolo", data_yaml, tmp_path / "o", "--split", "val"), 2,
         "--images, --split and --names apply to --out"),
    ]
    for args, code, text in cases:
        result = dfine(*args)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.exit_code == code, (args, result.output)
        assert len(errors) == 1 and text in errors[0], errors
    assert not (tmp_path / "o").exists()


def test_train_on_a_yolo_data_yaml_end_to_end(dataset, tmp_path: Path):
    data_yaml, _ = dataset
    run = tmp_path / "run"
    result = dfine("train", "--data", data_yaml, "--model", "n", "--epochs", "1", "--img-size", "320",
                   "--batch-size", "4", "--workers", "0", "--device", "cpu", "--no-pretrained",
                   "--output", run, "--set", "num_denoising=10", "--set", "check_images=header", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[-1])["epochs_run"] == 1
    assert "converted the YOLO labels of 'train'" in result.stderr
    assert "converted the YOLO labels of 'val'" in result.stderr
    from dfine_cli.checkpoints import read_checkpoint

    info = read_checkpoint(run / "best.pth").info
    assert info.class_names == ["square", "circle", "triangle"] and info.category_ids == [1, 2, 3]
