"""`dfine info` as a library call: one record per weights file."""

from __future__ import annotations

import pytest

from dfine_cli.describe import describe_weights
from dfine_cli.errors import CheckpointError
from tests.helpers import tiny_checkpoint


def test_a_checkpoint_is_described(tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth", names=["a", "b", "c"])
    record = describe_weights(ckpt)
    assert record["size"] == "n" and record["num_classes"] == 3
    assert record["class_names"] == ["a", "b", "c"] and record["img_size"] == [320, 320]
    assert record["has_training_state"] is False and record["float_elements"] > 0
    assert record["backbone"] == "HGNetv2-B0" and record["variant"] == "dfine"


def test_a_missing_onnx_is_a_model_error(tmp_path):
    with pytest.raises(CheckpointError, match="ONNX model not found"):
        describe_weights(tmp_path / "nope.onnx")
