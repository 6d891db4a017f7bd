"""The OpenVINO backend gives the torch model's detections, on its own and through Detector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dfine_cli.backends.openvino_backend import check_precision_supported, openvino_device
from dfine_cli.errors import CheckpointError, HardwareError, UsageError
from dfine_cli.export.compare import compare_detections
from tests.helpers import tiny_checkpoint

IMG = 256


def test_precision_check_is_pure():
    check_precision_supported("fp32", [])
    check_precision_supported("bf16", ["FP32", "BF16"])
    with pytest.raises(HardwareError, match="cannot run bf16"):
        check_precision_supported("bf16", ["FP32", "INT8"])
    with pytest.raises(UsageError):
        check_precision_supported("int4", ["FP32"])


def test_device_mapping():
    assert openvino_device("cpu") == "CPU" and openvino_device(None) == "CPU"
    with pytest.raises(UsageError, match="CPU"):
        openvino_device("cuda")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    pytest.importorskip("openvino")
    pytest.importorskip("onnx")
    from dfine_cli.detector import Detector
    from dfine_cli.export.onnx import export_onnx

    folder = tmp_path_factory.mktemp("ov")
    ckpt = tiny_checkpoint(folder / "tiny.pth", img_size=IMG, names=["a", "b", "c"])
    det = Detector.from_checkpoint(ckpt)
    assert det.model is not None and det.info is not None
    onnx_path = export_onnx(det.model, det.info, folder / "tiny.onnx", img_size=(IMG, IMG),
                            check=False).path
    return ckpt, onnx_path


def _batch(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from dfine_cli.export.onnx import check_inputs

    images, sizes = check_inputs(n, (IMG, IMG), seed=seed)
    return images.numpy(), sizes.numpy()


@pytest.mark.parametrize("batch", [1, 3])
def test_openvino_matches_torch(exported, batch):
    from dfine_cli.backends.openvino_backend import OpenVINOBackend
    from dfine_cli.detector import Detector

    ckpt, onnx_path = exported
    reference = Detector.from_checkpoint(ckpt)
    backend = OpenVINOBackend(onnx_path, threads=2)
    images, sizes = _batch(batch, seed=batch)
    expected = reference.backend(images, sizes)
    actual = backend(images, sizes)
    assert [a.dtype for a in actual] == [np.int64, np.float32, np.float32]
    agreement = compare_detections(expected, actual, score_tol=1e-4, box_tol=0.5)
    assert agreement.ok(1e-4, 0.5), agreement.describe()
    assert backend.meta.class_names == ["a", "b", "c"] and backend.meta.img_size == (IMG, IMG)
    assert backend.runtime_precision() == "fp32"


def test_bf16_where_the_cpu_has_it(exported):
    openvino = pytest.importorskip("openvino")
    from dfine_cli.backends.openvino_backend import OpenVINOBackend
    from dfine_cli.detector import Detector

    capabilities = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    ckpt, onnx_path = exported
    if "BF16" not in capabilities:
        with pytest.raises(HardwareError):
            OpenVINOBackend(onnx_path, precision="bf16")
        return
    backend = OpenVINOBackend(onnx_path, threads=2, precision="bf16")
    assert backend.runtime_precision() == "bf16"
    images, sizes = _batch(1)
    expected = Detector.from_checkpoint(ckpt).backend(images, sizes)
    actual = backend(images, sizes)
    # bf16 keeps 8 bits of mantissa: same detections, scores within a few hundredths
    assert np.abs(expected[2] - actual[2]).max() < 0.05


def test_detector_load_passes_the_precision_to_openvino(exported):
    openvino = pytest.importorskip("openvino")
    from dfine_cli.detector import Detector

    _, onnx_path = exported
    assert Detector.load(onnx_path, backend="openvino").backend.runtime_precision() == "fp32"
    if "BF16" not in openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        with pytest.raises(HardwareError, match="cannot run bf16"):
            Detector.load(onnx_path, backend="openvino", precision="bf16")
        return
    det = Detector.load(onnx_path, backend="openvino", threads=2, precision="bf16")
    assert det.backend.runtime_precision() == "bf16"


def test_detector_load_refuses_a_precision_the_backend_cannot_run(exported):
    from dfine_cli.detector import Detector

    _, onnx_path = exported
    with pytest.raises(UsageError, match="onnxruntime backend does not run bf16"):
        Detector.load(onnx_path, precision="bf16")
    det = Detector.load(onnx_path)
    with pytest.raises(UsageError, match="set when it is loaded"):
        det.set_precision("bf16")


def test_detector_load_with_openvino(exported, rgb_image):
    pytest.importorskip("openvino")
    from dfine_cli.detector import Detector

    ckpt, onnx_path = exported
    det = Detector.load(onnx_path, backend="openvino", threads=2)
    ours = det.predict([rgb_image, rgb_image], conf=0.0, batch_size=2)
    ref = Detector.from_checkpoint(ckpt).predict([rgb_image], conf=0.0)
    assert len(ours) == 2 and ours[0].names[0] in {"a", "b", "c"}
    assert np.abs(ours[0].scores - ref[0].scores).max() < 1e-4
    assert "openvino" in det.backend.meta.description


def test_openvino_rejects_bad_inputs(exported, tmp_path):
    pytest.importorskip("openvino")
    from dfine_cli.backends.openvino_backend import OpenVINOBackend

    ckpt, _ = exported
    with pytest.raises(UsageError):
        OpenVINOBackend(ckpt)
    with pytest.raises(CheckpointError):
        OpenVINOBackend(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    with pytest.raises(CheckpointError):
        OpenVINOBackend(broken)


def test_predict_cli_accepts_openvino(exported, tmp_path):
    pytest.importorskip("openvino")
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import write_jpeg

    _, onnx_path = exported
    image = write_jpeg(tmp_path / "a.jpg")
    res = subprocess.run(
        [sys.executable, "-m", "dfine_cli", "predict", str(onnx_path), str(image), "--backend",
         "openvino", "--json", "--conf", "0.0", "--no-save", "--output", str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"}, timeout=600,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["results"][0]["detections"]
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def exported_ir(exported, tmp_path_factory) -> Path:
    """The same tiny model as an OpenVINO IR written by ``dfine export --format openvino``."""
    pytest.importorskip("openvino")
    from dfine_cli.detector import Detector
    from dfine_cli.export.openvino_ir import export_openvino

    ckpt, _ = exported
    det = Detector.from_checkpoint(ckpt)
    assert det.model is not None and det.info is not None
    xml = tmp_path_factory.mktemp("ir") / "tiny.xml"
    report = export_openvino(det.model, det.info, xml, img_size=(IMG, IMG), check=False)
    assert report.path == xml and report.format == "openvino"
    return xml


def test_ir_loads_by_suffix_with_class_names(exported, exported_ir, rgb_image):
    from dfine_cli.backends import backend_for_file
    from dfine_cli.detector import Detector

    assert backend_for_file(exported_ir, None) == "openvino"
    assert backend_for_file(exported_ir, "auto") == "openvino"
    with pytest.raises(UsageError, match=r"onnxruntime needs an exported \.onnx"):
        backend_for_file(exported_ir, "onnxruntime")
    det = Detector.load(exported_ir, threads=2)
    assert det.class_names == ["a", "b", "c"] and det.img_size == (IMG, IMG)
    assert det.backend.meta.dynamic_batch
    ckpt, _ = exported
    ours = det.predict([rgb_image, rgb_image], conf=0.0, batch_size=2)
    ref = Detector.from_checkpoint(ckpt).predict([rgb_image], conf=0.0)
    assert np.abs(ours[0].scores - ref[0].scores).max() < 1e-4
    assert ours[0].category_ids == ref[0].category_ids


def test_ir_without_its_weights_is_a_checkpoint_error(exported_ir, tmp_path):
    import shutil

    from dfine_cli.backends.openvino_backend import OpenVINOBackend

    lonely = tmp_path / "lonely.xml"
    shutil.copy(exported_ir, lonely)
    with pytest.raises(CheckpointError, match=r"lonely\.bin is missing"):
        OpenVINOBackend(lonely)
    with pytest.raises(CheckpointError, match="not found"):
        OpenVINOBackend(tmp_path / "missing.xml")
