"""Opening the detector a command runs: the input size and class names applied in one place."""

from __future__ import annotations

import numpy as np
import pytest

from dfine_cli.detector_options import DEFAULT_CONF, DetectorOptions, open_detector
from dfine_cli.errors import DataError, UsageError
from dfine_cli.image_size import ImageSize
from tests.helpers import tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("c") / "tiny.pth", names=["a", "b", "c"])


def test_size_and_names_are_applied(ckpt, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("red\ngreen\nblue\n")
    det = open_detector(ckpt, DetectorOptions(device="cpu", img_size=ImageSize(256, 256), names=names))
    assert det.img_size == (256, 256) and det.class_names == ["red", "green", "blue"]
    assert open_detector(ckpt, DetectorOptions(device="cpu", names="x,y,z")).class_names == ["x", "y", "z"]


def test_too_few_names_is_a_data_error(ckpt):
    with pytest.raises(DataError, match="has 2 names; the model has 3 classes"):
        open_detector(ckpt, DetectorOptions(device="cpu", names="x,y"))


def test_precision_is_applied_to_a_torch_model(ckpt):
    import torch

    assert open_detector(ckpt, DetectorOptions(device="cpu")).backend.dtype == torch.float32
    det = open_detector(ckpt, DetectorOptions(device="cpu", precision="bf16"))
    assert det.backend.dtype == torch.bfloat16
    out = det.predict(np.zeros((96, 128, 3), dtype=np.uint8), conf=0.0)[0]
    assert len(out) > 0 and np.isfinite(out.boxes).all() and out.scores.dtype == np.float32
    with pytest.raises(UsageError, match="torch fp16 needs --device cuda"):
        open_detector(ckpt, DetectorOptions(device="cpu", precision="fp16"))


def test_the_default_threshold_is_the_one_the_detector_uses():
    import inspect

    from dfine_cli.detector import Detector
    from dfine_cli.predict import run_prediction

    assert inspect.signature(Detector.predict).parameters["conf"].default == DEFAULT_CONF
    assert inspect.signature(run_prediction).parameters["conf"].default == DEFAULT_CONF
