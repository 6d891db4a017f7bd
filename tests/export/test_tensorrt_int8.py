"""INT8 engines by explicit quantization: calibration feeds and the Q/DQ ONNX run on a CPU here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from dfine_cli.errors import UsageError
from dfine_cli.export.tensorrt import TOLERANCES, check_outputs
from dfine_cli.export.tensorrt_int8 import (
    Int8EngineReport,
    calibration_batches,
    count_qdq_nodes,
    export_int8_engine,
    quantize_onnx_int8,
)
from tests.helpers import tiny_checkpoint

HAS_GPU_TRT = torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None


def _images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        image = rng.integers(60, 190, (240, 320, 3), dtype=np.uint8)
        y, x = rng.integers(0, 120), rng.integers(0, 160)
        image[y : y + 80, x : x + 100] = rng.integers(0, 255, 3, dtype=np.uint8)
        images.append(image)
    return images


def test_calibration_batches_shapes_and_sizes():
    feeds = calibration_batches(_images(5), (256, 256), batch_size=2)
    assert [f["images"].shape for f in feeds] == [(2, 3, 256, 256), (2, 3, 256, 256), (1, 3, 256, 256)]
    assert feeds[0]["images"].dtype == np.float32 and feeds[0]["images"].min() >= 0.0
    assert feeds[0]["images"].max() <= 1.0
    assert feeds[0]["orig_target_sizes"].tolist() == [[320, 240], [320, 240]]  # (w, h)
    assert feeds[0]["orig_target_sizes"].dtype == np.int64


def test_calibration_batches_rejects_empty_and_bad_batch():
    with pytest.raises(UsageError, match="at least one image"):
        calibration_batches([], (256, 256))
    with pytest.raises(UsageError, match="batch size"):
        calibration_batches(_images(1), (256, 256), batch_size=0)


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    pytest.importorskip("onnxruntime")
    from dfine_cli.checkpoint import load_weights, read_checkpoint
    from dfine_cli.export.onnx import export_onnx
    from dfine_cli.models.build import build_model_from_config
    from dfine_cli.models.dfine import DeployModel

    root = tmp_path_factory.mktemp("int8")
    loaded = read_checkpoint(tiny_checkpoint(root / "tiny.pth"))
    model = build_model_from_config(loaded.info.config)
    load_weights(model, loaded.state_dict)
    path = export_onnx(model, loaded.info, root / "fp32.onnx", img_size=(256, 256), check=False).path
    return path, DeployModel(model.eval()).eval()


def test_quantized_onnx_has_qdq_pairs_and_stays_close(fp32_onnx, tmp_path):
    import onnxruntime as ort

    source, reference = fp32_onnx
    feeds = calibration_batches(_images(4), (256, 256))
    out = quantize_onnx_int8(source, tmp_path / "int8.onnx", feeds)
    counts = count_qdq_nodes(out)
    assert counts["QuantizeLinear"] > 10 and counts["DequantizeLinear"] > counts["QuantizeLinear"]
    assert count_qdq_nodes(source) == {"QuantizeLinear": 0, "DequantizeLinear": 0}
    assert not list(tmp_path.glob(".int8.onnx.*"))  # no temporary left behind

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    test = calibration_batches(_images(2, seed=7), (256, 256), batch_size=2)[0]
    with torch.inference_mode():
        expected = tuple(t.numpy() for t in reference(torch.from_numpy(test["images"]),
                                                       torch.from_numpy(test["orig_target_sizes"])))
    actual = tuple(session.run(["labels", "boxes", "scores"], test))
    check = check_outputs(expected, actual, TOLERANCES["fp16"])
    assert check.max_score_diff > 0  # really quantized
    assert check.max_score_diff < 0.2  # and still the same model
    assert actual[2].shape == expected[2].shape


def test_quantize_rejects_unknown_method_and_no_feeds(fp32_onnx, tmp_path):
    source, _ = fp32_onnx
    feeds = calibration_batches(_images(1), (256, 256))
    with pytest.raises(UsageError, match="calibration method"):
        quantize_onnx_int8(source, tmp_path / "x.onnx", feeds, method="kl")
    with pytest.raises(UsageError, match="at least one batch"):
        quantize_onnx_int8(source, tmp_path / "x.onnx", [])
    assert not (tmp_path / "x.onnx").exists()


def test_engine_name_is_checked_before_anything_else(tmp_path):
    with pytest.raises(UsageError, match=r"\.engine"):
        export_int8_engine(tmp_path / "missing.pth", tmp_path / "model.onnx", _images(1))


def test_report_dict():
    report = Int8EngineReport(Path("a.engine"), Path("a.pth"), (640, 640), 16, "entropy", ["Conv"],
                              {"QuantizeLinear": 3, "DequantizeLinear": 5}, "11.4.0")
    data = report.to_dict()
    assert data["precision"] == "int8" and data["img_size"] == [640, 640]
    assert data["calibration_images"] == 16 and data["qdq_nodes"]["DequantizeLinear"] == 5


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU_TRT, reason="needs an NVIDIA GPU and TensorRT")
def test_int8_engine_builds_and_runs(tmp_path):
    from dfine_cli.backends.tensorrt_backend import read_engine_info
    from dfine_cli.detector import Detector

    ckpt = tiny_checkpoint(tmp_path / "tiny.pth")
    out = tmp_path / "int8.engine"
    report = export_int8_engine(ckpt, out, _images(4), max_batch=2)
    assert out.is_file() and report.qdq_nodes["QuantizeLinear"] > 0
    info = read_engine_info(out)
    assert info is not None and info.precision == "int8"
    det = Detector.load(out, backend="tensorrt", device="cuda")
    results = det.predict(_images(2, seed=3), conf=0.0, batch_size=2)
    assert len(results) == 2 and len(results[0]) == 300
