"""Per-epoch throughput figures: the meter, and the columns a training run writes."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
import torch

from dfine_cli.data.synth import make_synthetic_dataset
from dfine_cli.engine.config import TrainConfig
from dfine_cli.engine.throughput import THROUGHPUT_KEYS, ThroughputMeter, last_epoch_throughput
from dfine_cli.engine.trainer import train


def _slow_batches(count: int, batch: int, delay_s: float):
    for _ in range(count):
        time.sleep(delay_s)
        yield torch.zeros(batch, 3, 2, 2), [{}] * batch


def test_meter_splits_data_wait_from_step_time():
    meter = ThroughputMeter()
    for _images, _targets in meter.timed(_slow_batches(3, batch=4, delay_s=0.02)):
        pass  # no work: nearly all the time is data wait
    assert meter.steps == 3 and meter.images == 12
    assert meter.data_seconds >= 0.06
    summary = meter.summary()
    assert set(summary) == set(THROUGHPUT_KEYS)
    assert 0.5 < summary["data_wait_frac"] <= 1.0
    assert summary["images_per_s"] > 0 and summary["step_time_s"] >= 0
    # two processes each seeing as many images deliver twice the images per second
    assert meter.summary(processes=2)["images_per_s"] == pytest.approx(
        2 * summary["images_per_s"], rel=1e-3
    )


def test_meter_of_an_empty_epoch_reports_zeros():
    meter = ThroughputMeter()
    assert list(meter.timed([])) == []
    assert meter.summary() == {"images_per_s": 0.0, "data_wait_frac": 0.0, "step_time_s": 0.0}


def test_last_epoch_throughput_needs_all_columns():
    assert last_epoch_throughput([]) is None
    assert last_epoch_throughput([{"epoch": 1, "images_per_s": 3.0}]) is None
    row = {"epoch": 2, "images_per_s": 3.0, "data_wait_frac": 0.25, "step_time_s": 0.5}
    assert last_epoch_throughput([{"epoch": 1}, row]) == {
        "images_per_s": 3.0,
        "data_wait_frac": 0.25,
        "step_time_s": 0.5,
    }


def test_training_writes_throughput_columns(tmp_path: Path):
    data = tmp_path / "data"
    make_synthetic_dataset(data, num_images=4, num_classes=2, seed=0, img_size=256)
    cfg = TrainConfig(
        data=str(data),
        model="n",
        epochs=1,
        batch_size=2,
        img_size=256,
        workers=0,
        device="cpu",
        output=str(tmp_path / "run"),
        seed=0,
        num_denoising=10,
        pretrained=False,
    )
    result = train(cfg)
    row = result.history[-1]
    for key in THROUGHPUT_KEYS:
        assert key in row, key
    assert row["images_per_s"] > 0 and 0 <= row["data_wait_frac"] <= 1 and row["step_time_s"] > 0
    with open(result.run_dir / "metrics.csv", newline="") as fh:
        columns = next(csv.reader(fh))
    assert set(THROUGHPUT_KEYS) <= set(columns)
    epochs = json.loads((result.run_dir / "metrics.json").read_text())["epochs"]
    assert last_epoch_throughput(epochs) == {k: float(row[k]) for k in THROUGHPUT_KEYS}
