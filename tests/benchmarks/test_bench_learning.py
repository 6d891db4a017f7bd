"""benchmarks/bench_learning.py: the data it trains on, with and without the unused class."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from PIL import Image

from dfine_cli.data.dataset import parse_coco_annotations

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_learning.py"


def _load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_learning", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_learning"] = module
    spec.loader.exec_module(module)
    return module


def _tiny_voc(root: Path) -> None:
    """Two images, classes 'cell' and 'rbc'; 'a' in train, 'b' in val."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for stem, name in (("a", "rbc"), ("b", "cell")):
        Image.new("RGB", (64, 48), (120, 30, 30)).save(root / "JPEGImages" / f"{stem}.jpg")
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>64</width>"
            f"<height>48</height></size><object><name>{name}</name><bndbox><xmin>4</xmin>"
            "<ymin>5</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object></annotation>"
        )
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("b\n")


def test_with_unused_class_puts_a_class_zero_in_front_and_keeps_the_rest() -> None:
    bench = _load_script()
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
    tmp_path: Path, unused_class: bool
) -> None:
    bench = _load_script()
    voc = tmp_path / "VOC"
    _tiny_voc(voc)
    work = tmp_path / "work"
    work.mkdir()
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
