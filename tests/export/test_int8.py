"""INT8 post-training quantization (NNCF): calibration images, scopes, accuracy against FP32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dfine_cli.errors import DataError, UsageError
from dfine_cli.export.int8 import (
    DEFAULT_SCOPE,
    IGNORED_SCOPES,
    INT8_AP_TOLERANCE,
    calibration_images,
    kept_float,
)
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
    assert set(IGNORED_SCOPES["sampling+heads"]) == {*IGNORED_SCOPES["sampling"],
                                                     *IGNORED_SCOPES["heads"]}


# OpenVINO friendly names of a D-FINE-N IR (they keep the torch module path)
SAMPLING_NODES = ["/model/decoder/layers.0/cross_attn/sampling_offsets/MatMul",
                  "/model/decoder/layers.2/cross_attn/attention_weights/MatMul",
                  "/model/decoder/layers.1/cross_attn/GridSample_1"]
HEAD_NODES = ["/model/decoder/dec_score_head.2/MatMul", "/model/decoder/dec_bbox_head.0/layers.1/MatMul",
              "/model/decoder/pre_bbox_head/layers.0/MatMul", "/model/decoder/enc_score_head/MatMul",
              "/model/decoder/enc_bbox_head/layers.2/MatMul", "/model/decoder/lqe_layers.2/reg_conf/layers.0/MatMul",
              "/model/decoder/MatMul", "/model/decoder/MatMul_2"]
OTHER_DECODER_NODES = ["/model/decoder/layers.0/self_attn/MatMul", "/model/decoder/layers.1/linear1/MatMul",
                       "/model/decoder/query_pos_head/layers.0/MatMul", "/model/decoder/MatMul_2/extra"]
FPN_NODES = ["/model/encoder/lateral_convs.0/fused/Conv", "/model/encoder/fpn_blocks.0/cv1_lateral.1/Conv",
             "/model/encoder/fpn_blocks.1/cv4/fused/Conv/WithoutBiases", "/model/encoder/fpn_blocks.0/Resize"]
ENCODER_NODES = ["/model/backbone/stages.0/blocks.0/layers.0/conv/Conv", "/model/encoder/input_proj.0/conv/Conv",
                 "/model/encoder/encoder.0/layers.0/self_attn/MatMul",
                 "/model/encoder/pan_blocks.0/cv4/fused/Conv", "/model/encoder/downsample_convs.0/cv1/Conv"]


@pytest.mark.parametrize(
    ("scope", "kept"),
    [
        ("none", []),
        ("fpn", FPN_NODES),
        ("sampling", SAMPLING_NODES),
        ("heads", HEAD_NODES),
        ("sampling+heads", SAMPLING_NODES + HEAD_NODES),
        ("decoder", SAMPLING_NODES + HEAD_NODES + OTHER_DECODER_NODES),
    ],
)
def test_each_scope_keeps_exactly_its_nodes_float(scope, kept):
    every = SAMPLING_NODES + HEAD_NODES + OTHER_DECODER_NODES + FPN_NODES + ENCODER_NODES
    assert [n for n in every if kept_float(n, scope)] == kept


def test_kept_float_rejects_an_unknown_scope():
    with pytest.raises(UsageError, match="unknown INT8 scope"):
        kept_float("/model/decoder/MatMul", "everything")


@pytest.mark.slow
def test_int8_ir_keeps_the_default_scope_float_and_loads(tmp_path):
    """An INT8 IR (tiny model, 12 calibration images): quantized backbone/encoder and decoder
    layers, float sampling and heads, metadata kept, runs through Detector.load. Takes minutes
    on 2 CPUs (NNCF graph analysis)."""
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
    assert any("/model/decoder/layers." in name and "/cross_attn/" not in name for name in quantized)
    assert not any(kept_float(name, DEFAULT_SCOPE) for name in quantized)
    int8 = Detector.load(xml)
    assert "int8" in int8.backend.meta.description and int8.class_names == det.class_names
    image = np.zeros((200, 240, 3), dtype=np.uint8)
    out = int8.predict(image, conf=0.0)[0]
    assert len(out) == 300 and np.isfinite(out.boxes).all()
    assert sorted(p.name for p in Path(tmp_path).glob("int8.*")) == ["int8.bin", "int8.xml"]


@pytest.mark.slow
def test_int8_demo_model_stays_within_tolerance_of_fp32(tmp_path):
    """The demo's model (D-FINE-N trained from scratch as ``dfine demo`` does: 120 synthetic
    320x320 images, 8 epochs; about 12 minutes on 2 CPUs), quantized with the default scope
    and calibrated on its train split, loses at most INT8_AP_TOLERANCE AP against the float32
    IR on the val split."""
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from dfine_cli.bench.compare import RunSpec, compare
    from dfine_cli.data.synth import make_synthetic_dataset
    from dfine_cli.engine.config import TrainConfig
    from dfine_cli.engine.trainer import train

    data = tmp_path / "data"
    make_synthetic_dataset(data, num_images=120, num_classes=3, seed=0, img_size=320)
    result = train(TrainConfig(data=str(data), model="n", epochs=8, batch_size=8, img_size=320,
                               workers=0, device="cpu", output=str(tmp_path / "train"), seed=0,
                               pretrained=False))
    checkpoint = str(result.best_checkpoint or result.last_checkpoint)
    rows = compare([checkpoint], [RunSpec("openvino"), RunSpec("openvino", "int8")], data=data,
                   threads=2, warmup=1, iters=2, work_dir=tmp_path)
    fp32, int8 = rows
    assert int8.run.precision == "int8" and fp32.ap is not None and int8.delta_ap is not None
    assert fp32.ap > 0.05  # the model has learned enough for the comparison to mean something
    assert int8.delta_ap >= -INT8_AP_TOLERANCE, (fp32.ap, int8.ap)
