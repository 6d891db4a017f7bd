"""Class-aware fine-tuning: matching by name, carried rows, and AP before the first step."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml

from dfine_cli.engine.finetune import (
    DENOISING_KEY,
    adapt_state_to_classes,
    carry_class_rows,
    match_classes,
    parse_class_map,
)
from dfine_cli.errors import UsageError
from dfine_cli.models.build import build_model_from_config
from dfine_cli.models.presets import preset
from dfine_cli.obj365_names import OBJ365_HEAD_NAMES


def test_parse_class_map():
    assert parse_class_map("car=Car, person = Person,") == {"car": "Car", "person": "Person"}
    for bad in ("car", "=Car", "car=", "a=b,a=c"):
        with pytest.raises(UsageError):
            parse_class_map(bad)


def test_match_by_name_ignoring_case_and_alternatives():
    match = match_classes(["CAR", "tv", "platelet", "person"], OBJ365_HEAD_NAMES)
    assert [OBJ365_HEAD_NAMES[r] if r is not None else None for r in match.rows] == [
        "Car", "Monitor/TV", None, "Person"]
    assert match.fresh == ["platelet"]
    assert "(3/4)" in match.describe() and "tv<-Monitor/TV" in match.describe()


def test_class_map_wins_and_is_checked():
    match = match_classes(["rbc", "car"], ["person", "car", "bus"], {"rbc": "Person", "car": "bus"})
    assert match.rows == (0, 2)
    with pytest.raises(UsageError, match="dataset has no class 'wbc'"):
        match_classes(["rbc"], ["person"], {"wbc": "person"})
    with pytest.raises(UsageError, match="checkpoint has no class 'persn'; closest: person"):
        match_classes(["rbc"], ["person"], {"rbc": "persn"})


def test_placeholder_names_keep_rows_in_order():
    assert match_classes(["a", "b"], ["class_0", "class_1"]).rows == (0, 1)
    assert match_classes(["a", "b"], ["class_0", "class_1", "class_2"]).rows == (None, None)


def _states(num_ckpt: int, num_data: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    ckpt = build_model_from_config(preset("n", num_classes=num_ckpt, num_layers=2)).state_dict()
    torch.manual_seed(1)
    fresh = build_model_from_config(preset("n", num_classes=num_data, num_layers=2)).state_dict()
    return dict(ckpt), fresh


def test_rows_are_carried_in_every_classification_head():
    ckpt, fresh = _states(5, 3)
    match = match_classes(["d", "x", "b"], ["a", "b", "c", "d", "e"])
    original = {k: v.clone() for k, v in ckpt.items()}
    keys = carry_class_rows(ckpt, fresh, match)
    assert set(keys) == {"decoder.enc_score_head.weight", "decoder.enc_score_head.bias", DENOISING_KEY,
                         *(f"decoder.dec_score_head.{i}.{p}" for i in range(2) for p in ("weight", "bias"))}
    for key in keys:
        assert ckpt[key].shape == fresh[key].shape
        torch.testing.assert_close(ckpt[key][0], original[key][3])  # d
        torch.testing.assert_close(ckpt[key][2], original[key][1])  # b
        torch.testing.assert_close(ckpt[key][1], fresh[key][1])  # x: fresh
    torch.testing.assert_close(ckpt[DENOISING_KEY][-1], fresh[DENOISING_KEY][-1])  # padding row
    model = build_model_from_config(preset("n", num_classes=3, num_layers=2))
    model.load_state_dict(ckpt, strict=True)


def test_adapt_logs_and_keeps_identical_classes(caplog):
    ckpt, fresh = _states(3, 3)
    before = {k: v.clone() for k, v in ckpt.items()}
    adapt_state_to_classes(ckpt, fresh, ["a", "b", "c"], ["A", "b", "C"])
    for key in before:
        assert torch.equal(before[key], ckpt[key]), key
    ckpt, fresh = _states(5, 2)
    with caplog.at_level(logging.INFO, logger="dfine.train"):
        adapt_state_to_classes(ckpt, fresh, ["b", "z"], ["a", "b", "c", "d", "e"])
    assert "classes carried over from the checkpoint (1/2): b; re-initialised: z" in caplog.text
    assert "re-initialised" in caplog.text and "enc_score_head" in caplog.text


# -- tuned on two of a model's classes, it scores before its first optimizer step ------------


def _step0_ap(spec: Path, checkpoint: Path, out: Path, class_map: dict[str, str] | None = None) -> float:
    """mAP50:95 of a ``--tune`` run right after setup, before any optimizer step."""
    from dfine_cli.engine.config import TrainConfig
    from dfine_cli.engine.trainer import Trainer

    cfg = TrainConfig(data=str(spec), model="n", epochs=1, batch_size=4, img_size=320, workers=0,
                      device="cpu", output=str(out), seed=0, num_denoising=20, tune=str(checkpoint),
                      class_map=class_map or {})
    trainer = Trainer(cfg)
    trainer.setup()
    return float(trainer.evaluate().stats["AP"])


def _spec(tmp_path: Path, name: str, images: Path, data: dict) -> Path:
    (tmp_path / f"{name}.json").write_text(json.dumps(data))
    split = {"images": str(images), "annotations": str(tmp_path / f"{name}.json")}
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"train": split, "val": split}))
    return tmp_path / f"{name}.yaml"


def test_tuning_on_two_of_three_classes_scores_before_the_first_step(tmp_path, caplog):
    """The dataset is the base model's own best detection of two of its classes per image
    (renamed in other cases): with the rows carried over, the tuned model finds them before
    any training; with the rows swapped between the classes, or re-initialised, it does not.

    The base model uses as many queries as the 320-pixel input has anchors (500), so that the
    encoder's query selection does not depend on which classes the head has.
    """
    from dfine_cli.checkpoints import ModelInfo, save_checkpoint
    from dfine_cli.data.synth import make_synthetic_dataset
    from dfine_cli.detector import preprocess
    from dfine_cli.media import read_image_rgb
    from dfine_cli.models.dfine import DeployModel

    root = tmp_path / "shapes"
    make_synthetic_dataset(root, num_images=10, num_classes=3, seed=0, img_size=320)
    torch.manual_seed(0)
    cfg = preset("n", num_classes=3, num_layers=2, num_queries=500)
    model = build_model_from_config(cfg).eval()
    info = ModelInfo(cfg, ["square", "circle", "triangle"], [1, 2, 3], img_size=(320, 320))
    base = save_checkpoint(tmp_path / "base.pth", model, info)

    deploy = DeployModel(model, top_k=500 * 3).eval()
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    annotations = []
    for image in coco["images"]:
        rgb = read_image_rgb(root / "images" / "train" / image["file_name"])
        h, w = rgb.shape[:2]
        with torch.no_grad():
            labels, boxes, _ = deploy(torch.from_numpy(preprocess([rgb], (320, 320))), torch.tensor([[w, h]]))
        for label, category in ((1, 1), (2, 2)):  # circle -> "Circle", triangle -> "TRIANGLE"
            best = int(torch.nonzero(labels[0] == label)[0, 0])  # outputs are sorted by score
            x1, y1, x2, y2 = boxes[0, best].tolist()
            x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, w), min(y2, h)
            assert x2 - x1 > 1 and y2 - y1 > 1
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": category,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    subset = {"images": coco["images"], "annotations": annotations,
              "categories": [{"id": 1, "name": "Circle"}, {"id": 2, "name": "TRIANGLE"}]}
    spec = _spec(tmp_path, "subset", root / "images" / "train", subset)

    with caplog.at_level(logging.INFO, logger="dfine.train"):
        carried = _step0_ap(spec, base, tmp_path / "tune")
    assert "carried over from the checkpoint (2/2): Circle<-circle, TRIANGLE<-triangle" in caplog.text
    swapped = _step0_ap(spec, base, tmp_path / "swapped", {"Circle": "triangle", "TRIANGLE": "circle"})
    renamed = {**subset, "categories": [{"id": 1, "name": "ring"}, {"id": 2, "name": "wedge"}]}
    fresh = _step0_ap(_spec(tmp_path, "renamed", root / "images" / "train", renamed), base, tmp_path / "fresh")
    assert carried >= 0.3 and swapped < 0.05 and fresh < 0.05, (carried, swapped, fresh)


@pytest.mark.slow
def test_demo_model_tuned_on_two_classes_scores_before_the_first_step(tmp_path):
    """The demo's run (120 shapes at 320 px, 8 epochs from scratch), then ``--tune`` on a
    two-class subset of the same data, evaluated before the first optimizer step."""
    from dfine_cli.data.synth import make_synthetic_dataset
    from dfine_cli.engine.config import TrainConfig
    from dfine_cli.engine.trainer import train

    root = tmp_path / "shapes"
    make_synthetic_dataset(root, num_images=120, num_classes=3, seed=0, img_size=320)
    base = train(TrainConfig(data=str(root), model="n", epochs=8, batch_size=8, img_size=320,
                             workers=0, device="cpu", output=str(tmp_path / "base"), seed=0,
                             pretrained=False))
    keep = {2: "Circle", 3: "TRIANGLE"}
    splits = {}
    for split in ("train", "val"):
        data = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        ids = {old: new for new, old in enumerate(sorted(keep), start=1)}
        data["categories"] = [{"id": ids[c["id"]], "name": keep[c["id"]]} for c in data["categories"] if c["id"] in keep]
        data["annotations"] = [a | {"category_id": ids[a["category_id"]]} for a in data["annotations"]
                               if a["category_id"] in keep]
        (tmp_path / f"{split}.json").write_text(json.dumps(data))
        splits[split] = {"images": str(root / "images" / split), "annotations": str(tmp_path / f"{split}.json")}
    spec = tmp_path / "subset.yaml"
    spec.write_text(yaml.safe_dump(splits))
    carried = _step0_ap(spec, base.best_checkpoint or base.last_checkpoint, tmp_path / "tune")
    print(f"step-0 mAP50:95 on the two-class subset: {carried:.4f} (base run {base.best_metric:.4f})")
    assert carried > 0
