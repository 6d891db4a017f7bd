"""benchmarks/bench_learning.py: the data it trains on, with and without the unused class."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dfine_cli.data.dataset import parse_coco_annotations
from tests.conftest import write_jpeg
from tests.helpers import load_benchmark


def _tiny_voc(root: Path) -> None:
    """Two images, classes 'cell' and 'rbc'; 'a' in train, 'b' in val."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for stem, name in (("a", "rbc"), ("b", "cell")):
        write_jpeg(root / "JPEGImages" / f"{stem}.jpg", h=48, w=64)
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>64</width>"
            f"<height>48</height></size><object><name>{name}</name><bndbox><xmin>4</xmin>"
            "<ymin>5</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object></annotation>"
        )
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("b\n")


@pytest.fixture
def voc_and_work(tmp_path: Path) -> tuple[Path, Path]:
    """The tiny VOC folder and an empty work folder beside it."""
    voc, work = tmp_path / "VOC", tmp_path / "work"
    _tiny_voc(voc)
    work.mkdir()
    return voc, work


def test_with_unused_class_puts_a_class_zero_in_front_and_keeps_the_rest() -> None:
    bench = load_benchmark("bench_learning")
    coco = {"images": [{"id": 1}], "annotations": [{"id": 1, "category_id": 2}],
            "categories": [{"id": 1, "name": "cell"}, {"id": 2, "name": "rbc"}]}
    out = bench.with_unused_class(coco)
    assert [(c["id"], c["name"]) for c in out["categories"]] == [
        (0, "background"), (1, "cell"), (2, "rbc")]
    assert out["annotations"] == coco["annotations"] and out["images"] == coco["images"]
    assert len(coco["categories"]) == 2  # the input is not changed
    with pytest.raises(ValueError, match="already used"):
        bench.with_unused_class(out)


@pytest.mark.parametrize("unused_class", [False, True])
def test_prepare_bccd_gives_the_model_one_class_more_only_when_asked(
    voc_and_work: tuple[Path, Path], unused_class: bool
) -> None:
    bench = load_benchmark("bench_learning")
    voc, work = voc_and_work
    spec = bench.prepare_bccd(voc, work, unused_class=unused_class)
    splits = json.loads(spec.read_text())
    for split, (label, name) in (("train", ("rbc", "a.jpg")), ("val", ("cell", "b.jpg"))):
        index = parse_coco_annotations(splits[split]["annotations"])
        names = ["background", "cell", "rbc"] if unused_class else ["cell", "rbc"]
        assert list(index.category_names) == names
        # the one box keeps its class; with the unused class every label moves up by one
        assert index.file_names.tolist() == [name]
        assert index.ann_labels.tolist() == [names.index(label)]
    assert not list(work.glob(".*.tmp"))  # written by rename, nothing half-written left
    # the plain conversion is shared, so both configurations train on the same boxes
    assert (work / "train.json").is_file() and (work / "val.json").is_file()


def test_a_damaged_converted_file_is_named_and_nothing_is_trained(
    voc_and_work: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_benchmark("bench_learning")
    voc, work = voc_and_work
    (work / "train.json").write_text('{"images": [')  # a conversion cut short by hand
    argv = ["--voc-root", str(voc), "--work-dir", str(work), "--unused-class", "--seeds", "0"]
    assert bench.main(argv) == 3
    err = capsys.readouterr().err
    assert f"{work / 'train.json'}: invalid JSON" in err and "delete it" in err
    assert sorted(p.name for p in work.iterdir()) == ["train.json"]  # no run folder, no spec
