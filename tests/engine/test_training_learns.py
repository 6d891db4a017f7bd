"""Long runs (``-m slow``): the model demonstrably learns, on synthetic and on real images."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dfine_cli.data.synth import make_synthetic_dataset
from dfine_cli.engine.config import TrainConfig
from dfine_cli.engine.trainer import train
from tests.conftest import SHARED

pytestmark = pytest.mark.slow


def test_synthetic_shapes_reach_a_clear_map(tmp_path):
    """D-FINE-N from scratch on 120 synthetic images at 320 px for 8 epochs (the demo's run)."""
    data = tmp_path / "data"
    make_synthetic_dataset(data, num_images=120, num_classes=3, seed=0, img_size=320)
    result = train(TrainConfig(data=str(data), model="n", epochs=8, batch_size=8, img_size=320,
                               workers=0, device="cpu", output=str(tmp_path / "run"), seed=0,
                               pretrained=False))
    print(f"synthetic: best mAP50:95 {result.best_metric:.4f} at epoch {result.best_epoch}")
    assert result.best_metric > 0.10


def test_bccd_trains_and_evaluates(tmp_path):
    """Real blood-cell images (BCCD, official splits) through convert → train → eval."""
    bccd = SHARED / "data" / "bccd" / "BCCD"
    if not bccd.is_dir():
        pytest.skip("../shared/data/bccd is not available")
    from dfine_cli.data.convert import convert_voc

    for split in ("train", "val"):
        convert_voc(bccd, tmp_path / f"{split}.json", split=split)
    spec = tmp_path / "bccd.yaml"
    spec.write_text(json.dumps({
        "train": {"images": str(bccd / "JPEGImages"), "annotations": str(tmp_path / "train.json")},
        "val": {"images": str(bccd / "JPEGImages"), "annotations": str(tmp_path / "val.json")},
    }))
    epochs = int(os.environ.get("DFINE_BCCD_EPOCHS", "6"))
    result = train(TrainConfig(data=str(spec), model="n", epochs=epochs, batch_size=8, img_size=320,
                               workers=0, device="cpu", output=str(tmp_path / "run"), seed=0,
                               pretrained=False))
    print(f"BCCD: best mAP50:95 {result.best_metric:.4f}, history {result.history[-1]}")
    assert Path(result.last_checkpoint).is_file()
    assert result.best_metric > 0.01
