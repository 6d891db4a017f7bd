"""ONNX export: official contract, metadata, torch vs ONNX Runtime, static and dynamic batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from dfine_cli.checkpoint import read_checkpoint
from dfine_cli.detector import Detector
from dfine_cli.errors import ExportError
from dfine_cli.export.compare import compare_detections
from dfine_cli.export.onnx import check_inputs, export_onnx, onnx_summary


def _ort_run(path, images, sizes):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["labels", "boxes", "scores"],
                    {"images": images.numpy(), "orig_target_sizes": sizes.numpy()})


@pytest.mark.parametrize(
    ("size", "img", "dynamic"),
    [("n", 640, True), ("n", 320, False), ("s", 320, True), ("s", 320, False)],
    ids=["n-640-dynamic", "n-320-static", "s-320-dynamic", "s-320-static"],
)
def test_round_trip(tmp_path, size, img, dynamic):
    det = Detector.from_preset(size, num_classes=80, img_size=img, seed=3)
    path = tmp_path / "model.onnx"
    report = export_onnx(det.model, det.info, path, img_size=(img, img), dynamic_batch=dynamic)
    assert path.is_file()
    assert sorted(report.checks) == ([1, 3] if dynamic else [1])
    summary = onnx_summary(path)
    inputs = {v["name"]: v for v in summary["inputs"]}
    outputs = [v["name"] for v in summary["outputs"]]
    assert list(inputs) == ["images", "orig_target_sizes"]
    assert outputs == ["labels", "boxes", "scores"]
    assert inputs["images"]["dtype"] == "float" and inputs["orig_target_sizes"]["dtype"] == "int64"
    batch_dim = inputs["images"]["shape"][0]
    assert (batch_dim == "N") if dynamic else (batch_dim == 1)
    assert inputs["images"]["shape"][1:] == [3, img, img]
    assert summary["opset"] == 17
    meta = summary["metadata"]
    assert json.loads(meta["class_names"])[0] == "person"
    # independent check through ONNX Runtime against torch
    images, sizes = check_inputs(3 if dynamic else 1, (img, img), seed=11)
    with torch.inference_mode():
        expected = tuple(t.numpy() for t in det.deploy_module()(images, sizes))
    actual = _ort_run(path, images, sizes)
    assert actual[0].dtype == np.int64 and actual[1].dtype == np.float32
    agreement = compare_detections(expected, tuple(actual), score_tol=1e-4, box_tol=0.5)
    assert agreement.ok(1e-4, 0.5), agreement.describe()


def test_reference_checkpoint_through_onnx_matches_official(tmp_path, reference_dir):
    ckpt = read_checkpoint(reference_dir / "dfine_n_keyed1234.pth")
    det = Detector.from_checkpoint(reference_dir / "dfine_n_keyed1234.pth")
    path = tmp_path / "n.onnx"
    export_onnx(det.model, ckpt.info, path, check=False)
    inputs = torch.load(reference_dir / "inputs_n.pt", weights_only=True)
    expected = torch.load(reference_dir / "expected_n.pt", weights_only=True)
    actual = _ort_run(path, inputs["images"], inputs["orig_target_sizes"])
    agreement = compare_detections(
        (expected["labels"].numpy(), expected["boxes"].numpy(), expected["scores"].numpy()),
        tuple(actual), score_tol=5e-5, box_tol=0.05,
    )
    # The exported graph has every BatchNorm folded and runs in ONNX Runtime: its scores sit
    # within 5e-5 of the official torch outputs (torch-vs-torch parity uses 1e-5).
    assert agreement.ok(5e-5, 0.05), agreement.describe()


def test_check_failure_leaves_no_file(tmp_path, monkeypatch):
    from dfine_cli.export import onnx as onnx_export
    from dfine_cli.export.compare import Agreement

    det = Detector.from_preset("n", num_classes=2, img_size=320)
    monkeypatch.setattr(onnx_export, "verify_onnx", lambda *a, **k: Agreement(1.0, 99.0, 0.5, 0.5))
    path = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="disagrees"):
        export_onnx(det.model, det.info, path, img_size=(320, 320))
    assert list(tmp_path.iterdir()) == []


def test_bad_img_size_and_opset(tmp_path):
    det = Detector.from_preset("n", num_classes=2, img_size=320)
    with pytest.raises(ExportError):
        export_onnx(det.model, det.info, tmp_path / "x.onnx", img_size=(300, 300))
    with pytest.raises(ExportError):
        export_onnx(det.model, det.info, tmp_path / "x.onnx", opset=11)


def test_onnxruntime_detector_matches_torch(tmp_path, rgb_image):
    det = Detector.from_preset("n", num_classes=3, img_size=320, seed=5)
    path = tmp_path / "m.onnx"
    export_onnx(det.model, det.info, path, img_size=(320, 320), check=False)
    ort_det = Detector.load(path)
    assert ort_det.img_size == (320, 320)
    assert ort_det.class_names == det.class_names
    a = det.predict(rgb_image, conf=0.0)[0]
    b = ort_det.predict(rgb_image, conf=0.0)[0]
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
