"""INT8 post-training quantization (NNCF): calibration images, scopes, accuracy against FP32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dfine_cli.errors import DataError, UsageError
from dfine_cli.export.int8 import DEFAULT_SCOPE, IGNORED_SCOPES, calibration_images
from tests.conftest import write_jpeg


def test_calibration_images_prefer_the_train_split(tmp_path):
    for i in range(3):
        write_jpeg(tmp_path / "images" / "train" / f"t{i}.jpg", seed=i)
    write_jpeg(tmp_path / "images" / "val" / "v.jpg")
    found = calibration_images(tmp_path, 10)
    assert [p.name for p in found] == ["t0.jpg", "t1.jpg", "t2.jpg"]


def test_calibration_images_sample_deterministically(tmp_path):
    for i in range(12):
        write_jpeg(tmp_path / "any" / f"{i:02d}.jpg", seed=i)
    (tmp_path / "any" / "notes.txt").write_text("not an image")
    first = calibration_images(tmp_path / "any", 5)
    assert len(first) == 5 and first == calibration_images(tmp_path / "any", 5)
    assert len(calibration_images(tmp_path / "any", 100)) == 12


def test_calibration_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        calibration_images(tmp_path / "missing", 5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        calibration_images(tmp_path / "empty", 5)
    with pytest.raises(UsageError, match="at least 1"):
        calibration_images(tmp_path, 0)


def test_scopes():
    assert DEFAULT_SCOPE in IGNORED_SCOPES and IGNORED_SCOPES["none"] == []
    assert any("sampling_offsets" in p for p in IGNORED_SCOPES["heads"])


@pytest.mark.slow
def test_int8_ir_keeps_the_decoder_float_and_loads(tmp_path):
    """An INT8 IR (tiny model, 12 calibration images): quantized backbone/encoder, float decoder,
    metadata kept, runs through Detector.load. Takes minutes on 2 CPUs (NNCF graph analysis)."""
    ov = pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from dfine_cli.data.synth import make_synthetic_dataset
    from dfine_cli.detector import Detector
    from dfine_cli.export.openvino_ir import Int8Options, export_openvino
    from tests.helpers import tiny_checkpoint

    data = tmp_path / "data"
    make_synthetic_dataset(data, num_images=15, num_classes=3, img_size=256)
    det = Detector.from_checkpoint(tiny_checkpoint(tmp_path / "tiny.pth", img_size=256))
    assert det.model is not None and det.info is not None
    xml = tmp_path / "int8.xml"
    report = export_openvino(det.model, det.info, xml, img_size=(256, 256), dynamic_batch=False,
                             check=False, int8=Int8Options(calibration_images(data, 12), 12))
    summary = report.to_dict()["int8"]
    assert summary["scope"] == DEFAULT_SCOPE and summary["calibration_images"] == 12  # type: ignore[index]
    model = ov.Core().read_model(str(xml))
    quantized = [op.get_friendly_name() for op in model.get_ordered_ops()
                 if op.get_type_name() == "FakeQuantize"]
    assert len(quantized) > 20
    assert any("/backbone/" in name for name in quantized)
    assert not any("/model/decoder/" in name for name in quantized)
    int8 = Detector.load(xml)
    assert "int8" in int8.backend.meta.description and int8.class_names == det.class_names
    image = np.zeros((200, 240, 3), dtype=np.uint8)
    out = int8.predict(image, conf=0.0)[0]
    assert len(out) == 300 and np.isfinite(out.boxes).all()
    assert sorted(p.name for p in Path(tmp_path).glob("int8.*")) == ["int8.bin", "int8.xml"]
