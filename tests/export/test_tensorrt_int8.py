"""INT8 engines by explicit quantization: calibration feeds and the Q/DQ ONNX run on a CPU here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from dfine_cli.errors import UsageError
from dfine_cli.export.engine_check import TOLERANCES, check_outputs
from dfine_cli.export.tensorrt_int8 import (
    CalibrationFeeds,
    Int8EngineReport,
    calibration_batches,
    check_int8_engine_options,
    chunk_size,
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


def test_calibration_feeds_read_lazily_in_ranges(tmp_path):
    from tests.conftest import write_jpeg

    paths = [write_jpeg(tmp_path / f"{i}.jpg", h=60 + i, w=80, seed=i) for i in range(3)]
    feeds = CalibrationFeeds([*paths, _images(1)[0]], (64, 96))
    assert len(feeds) == 4
    served = list(iter(feeds.get_next, None))
    assert [f["orig_target_sizes"].tolist() for f in served] == [[[80, 60]], [[80, 61]],
                                                                 [[80, 62]], [[320, 240]]]
    assert served[0]["images"].shape == (1, 3, 64, 96) and served[0]["images"].dtype == np.float32
    assert feeds.get_next() is None  # exhausted until a new range
    feeds.set_range(1, 3)
    assert [f["orig_target_sizes"][0, 1] for f in iter(feeds.get_next, None)] == [61, 62]
    feeds.set_range(2, 99)  # clipped to the images there are
    assert len(list(iter(feeds.get_next, None))) == 2
    feeds.rewind()
    assert len(list(iter(feeds.get_next, None))) == 4
    with pytest.raises(UsageError, match="at least one image"):
        CalibrationFeeds([], (64, 64))


def test_calibration_feeds_name_an_unreadable_image(tmp_path):
    from dfine_cli.errors import DfineError

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    feeds = CalibrationFeeds([bad], (64, 64))
    with pytest.raises(DfineError, match=r"broken\.jpg"):
        feeds.get_next()


@pytest.mark.parametrize(("count", "expected"), [(1, 1), (7, 7), (8, 8), (9, 3), (12, 6),
                                                 (13, 1), (300, 6), (96, 8)])
def test_chunk_size_divides_the_feeds(count, expected):
    assert chunk_size(count) == expected and count % chunk_size(count) == 0


def test_chunk_size_rejects_nothing():
    with pytest.raises(UsageError):
        chunk_size(0)


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    pytest.importorskip("onnxruntime")
    from dfine_cli.checkpoints import load_weights, read_checkpoint
    from dfine_cli.export.onnx import export_onnx
    from dfine_cli.models.build import build_model_from_config
    from dfine_cli.models.dfine import DeployModel

    root = tmp_path_factory.mktemp("int8")
    loaded = read_checkpoint(tiny_checkpoint(root / "tiny.pth"))
    model = build_model_from_config(loaded.info.config)
    load_weights(model, loaded.state_dict)
    path = export_onnx(model, loaded.info, root / "fp32.onnx", img_size=(256, 256), check=False).path
    return path, DeployModel(model.eval()).eval()


@pytest.mark.parametrize("count", [5, 9])  # one ONNX Runtime pass; three passes of 3 feeds
def test_quantized_onnx_has_qdq_pairs_and_stays_close(fp32_onnx, tmp_path, count):
    import onnxruntime as ort

    source, reference = fp32_onnx
    feeds = CalibrationFeeds(_images(count), (256, 256))
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
    feeds = CalibrationFeeds(_images(1), (256, 256))
    with pytest.raises(UsageError, match="calibration method"):
        quantize_onnx_int8(source, tmp_path / "x.onnx", feeds, method="kl")
    feeds.images.clear()
    with pytest.raises(UsageError, match="at least one image"):
        quantize_onnx_int8(source, tmp_path / "x.onnx", feeds)
    assert not (tmp_path / "x.onnx").exists()


def test_engine_name_is_checked_before_anything_else(tmp_path):
    from dfine_cli.checkpoints import load_model

    model, info = load_model(tiny_checkpoint(tmp_path / "tiny.pth"))
    with pytest.raises(UsageError, match=r"\.engine"):
        export_int8_engine(model, info, tmp_path / "model.onnx", _images(1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"int8": False, "data": Path("d"), "calib_images": None}, "apply with --int8 only"),
        ({"int8": False, "data": None, "calib_images": 8}, "apply with --int8 only"),
        ({"int8": True, "data": None, "calib_images": None}, "needs calibration images"),
        ({"int8": True, "data": Path("d"), "calib_images": None, "fp16": True}, "--fp16 does not"),
        ({"int8": True, "data": Path("d"), "calib_images": None, "keep_fp32": ["decoder.*"]},
         "--keep-fp32 does not"),
    ],
)
def test_int8_engine_options_that_do_not_fit(kwargs, message):
    with pytest.raises(UsageError, match=message):
        check_int8_engine_options(Path("best.pth"), **kwargs)


def test_int8_engine_options_want_a_checkpoint_and_accept_a_plain_request():
    with pytest.raises(UsageError, match="built from a checkpoint"):
        check_int8_engine_options(Path("model.onnx"), int8=True, data=Path("d"), calib_images=8)
    check_int8_engine_options(Path("best.pth"), int8=True, data=Path("d"), calib_images=8)
    check_int8_engine_options(Path("best.pth"), int8=False, data=None, calib_images=None)


def test_export_int8_engine_options_are_checked_by_dfine_export(tmp_path):
    from dfine_cli.export.run import ExportOptions, export_weights

    ckpt = tiny_checkpoint(tmp_path / "tiny.pth")
    with pytest.raises(UsageError, match="--fp16 does not apply with --int8"):
        export_weights(ckpt, ExportOptions(format="engine", int8=True, fp16=True, data=tmp_path))
    with pytest.raises(UsageError, match="openvino or engine only"):
        export_weights(ckpt, ExportOptions(format="onnx", int8=True, data=tmp_path))
    assert not list(tmp_path.glob("tiny.engine*"))


@pytest.mark.skipif(HAS_GPU_TRT, reason="checks the message of a machine without TensorRT")
def test_int8_engine_without_gpu_or_tensorrt_is_a_hardware_error(tmp_path, monkeypatch):
    from dfine_cli.errors import EXIT_ENVIRONMENT, DependencyError
    from dfine_cli.export.run import ExportOptions, export_weights
    from tests.conftest import write_jpeg

    for i in range(2):
        write_jpeg(tmp_path / "calib" / f"{i}.jpg", seed=i)
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth")
    with pytest.raises(DependencyError, match=r"(?i)tensorrt") as info:
        export_weights(ckpt, ExportOptions(format="engine", int8=True, data=tmp_path / "calib",
                                           calib_images=2))
    assert info.value.exit_code == EXIT_ENVIRONMENT
    assert not list(tmp_path.glob("tiny.engine*"))


def test_report_dict():
    report = Int8EngineReport(Path("a.engine"), Path("a.pth"), (640, 640), 16, "entropy", ["Conv"],
                              {"QuantizeLinear": 3, "DequantizeLinear": 5}, "11.4.0")
    data = report.to_dict()
    assert data["precision"] == "int8" and data["img_size"] == [640, 640]
    assert data["format"] == "engine" and data["checks"] == [] and report.checks == []
    assert data["calibration_images"] == 16 and data["qdq_nodes"]["DequantizeLinear"] == 5


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU_TRT, reason="needs an NVIDIA GPU and TensorRT")
def test_int8_engine_builds_and_runs(tmp_path):
    from dfine_cli.backends.tensorrt_backend import read_engine_info
    from dfine_cli.checkpoints import load_model
    from dfine_cli.detector import Detector

    ckpt = tiny_checkpoint(tmp_path / "tiny.pth")
    out = tmp_path / "int8.engine"
    model, info = load_model(ckpt)
    report = export_int8_engine(model, info, out, _images(4), source=ckpt, max_batch=2)
    assert out.is_file() and report.qdq_nodes["QuantizeLinear"] > 0
    info = read_engine_info(out)
    assert info is not None and info.precision == "int8"
    det = Detector.load(out, backend="tensorrt", device="cuda")
    results = det.predict(_images(2, seed=3), conf=0.0, batch_size=2)
    assert len(results) == 2 and len(results[0]) == 300


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU_TRT, reason="needs an NVIDIA GPU and TensorRT")
def test_dfine_export_builds_an_int8_engine_from_calibration_images(tmp_path):
    """``dfine export W --format engine --int8 --data D --calib-images N`` end to end."""
    from dfine_cli.backends.tensorrt_backend import read_engine_info
    from dfine_cli.export.run import ExportOptions, export_weights
    from tests.conftest import write_jpeg

    for i in range(6):
        write_jpeg(tmp_path / "data" / "images" / "train" / f"{i}.jpg", h=240, w=320, seed=i)
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth")
    report = export_weights(ckpt, ExportOptions(format="engine", int8=True,
                                                data=tmp_path / "data", calib_images=4))
    assert isinstance(report, Int8EngineReport) and report.calibration_images == 4
    info = read_engine_info(tmp_path / "tiny.engine")
    assert info is not None and info.precision == "int8"
