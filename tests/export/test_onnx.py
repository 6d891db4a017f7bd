"""ONNX export: official contract, metadata, torch vs ONNX Runtime, static and dynamic batch."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from dfine_cli.checkpoints import read_checkpoint
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
    """The official-format N checkpoint exports with the check on and matches the official outputs."""
    ckpt = read_checkpoint(reference_dir / "dfine_n_keyed1234.pth")
    det = Detector.from_checkpoint(reference_dir / "dfine_n_keyed1234.pth")
    path = tmp_path / "n.onnx"
    report = export_onnx(det.model, ckpt.info, path)
    assert sorted(report.checks) == [1, 3]
    for batch, agreement in report.checks.items():
        assert agreement.matched_fraction == 1.0 and agreement.raw is not None
        assert agreement.raw.matched_fraction >= report.tolerances[batch].min_raw_fraction
    assert [o["name"] for o in onnx_summary(path)["outputs"]] == ["labels", "boxes", "scores"]
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
    tolerance = onnx_export.calibrate_tolerance({"score": 0.0, "logit": 0.0, "raw_box": 0.0}, 640)
    monkeypatch.setattr(onnx_export, "check_export",
                        lambda *a, **k: {1: (Agreement(1.0, 0.0, 0.5, 0.5, 300), tolerance)})
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


class _PassThrough(torch.nn.Module):
    """A decoder layer that returns its input: the layer is dropped from the graph."""

    def forward(self, output, *args):
        return output


def _wrong_graph(kind: str, checkpoint):
    if kind == "silu":  # the DEIM decoder: SiLU where D-FINE has ReLU, same weights
        return Detector.from_checkpoint(checkpoint, variant="deim").model
    model = Detector.from_checkpoint(checkpoint).model
    model.decoder.decoder.layers[1] = _PassThrough()
    return model


@pytest.mark.parametrize("kind", ["silu", "dropped-layer"])
def test_wrong_graph_fails_the_check(tmp_path, monkeypatch, reference_dir, kind):
    """The export of a subtly wrong graph is refused, with finite figures, and nothing written."""
    from dfine_cli.export import onnx as onnx_export

    checkpoint = reference_dir / "dfine_n_keyed1234.pth"
    det = Detector.from_checkpoint(checkpoint)
    wrong = onnx_export.DeployModel(_wrong_graph(kind, checkpoint).fuse())
    trace = onnx_export.trace_to_onnx

    def trace_wrong(module, *args, **kwargs):
        return trace(onnx_export.CheckedDeployModel(wrong), *args, **kwargs)

    monkeypatch.setattr(onnx_export, "trace_to_onnx", trace_wrong)
    path = tmp_path / "wrong.onnx"
    with pytest.raises(ExportError, match="disagrees") as info:
        export_onnx(det.model, det.info, path, img_size=(320, 320), dynamic_batch=False)
    message = str(info.value)
    assert "inf" not in message.replace("info", "") and "worst unmatched: label" in message
    assert list(tmp_path.iterdir()) == []


def test_wrong_graph_fails_both_measures(tmp_path, reference_dir):
    """Each measure on its own refuses a ReLU -> SiLU swap."""
    from dfine_cli.export import onnx as onnx_export

    checkpoint = reference_dir / "dfine_n_keyed1234.pth"
    right = Detector.from_checkpoint(checkpoint).model
    wrong = Detector.from_checkpoint(checkpoint, variant="deim").model
    path = tmp_path / "wrong.onnx"
    onnx_export.trace_to_onnx(onnx_export.CheckedDeployModel(onnx_export.DeployModel(wrong.fuse())),
                              path, (320, 320), 17, False,
                              output_names=onnx_export.OUTPUT_NAMES + onnx_export.RAW_OUTPUT_NAMES)
    module = onnx_export.DeployModel(copy.deepcopy(right).fuse())
    results = onnx_export.check_export(module, onnx_export.DeployModel(right), path, (1,), (320, 320))
    agreement, tolerance = results[1]
    assert not agreement.ok(tolerance.score, tolerance.box_px)
    assert agreement.raw is not None
    assert not agreement.raw.ok(tolerance.logit, tolerance.raw_box, tolerance.min_raw_fraction)
    assert agreement.matched_fraction < 0.9 and agreement.raw.matched_fraction < 0.5


def test_tolerance_follows_torch_noise_within_bounds():
    from dfine_cli.export.onnx import (
        NOISE_FACTOR,
        TOLERANCE_CEILING,
        TOLERANCE_FLOOR,
        calibrate_tolerance,
    )

    quiet = calibrate_tolerance({"score": 1e-8, "logit": 1e-7, "raw_box": 1e-9}, 1000)
    assert (quiet.score, quiet.box_px, quiet.logit, quiet.raw_box) == (
        TOLERANCE_FLOOR["score"], TOLERANCE_FLOOR["box_px"], TOLERANCE_FLOOR["logit"], TOLERANCE_FLOOR["raw_box"])
    deep = calibrate_tolerance({"score": 5e-5, "logit": 2e-3, "raw_box": 1e-4}, 1000)
    assert deep.score == pytest.approx(NOISE_FACTOR * 5e-5)
    assert deep.logit == pytest.approx(NOISE_FACTOR * 2e-3)
    assert deep.box_px == pytest.approx(NOISE_FACTOR * 1e-4 * 1000)
    wild = calibrate_tolerance({"score": 1.0, "logit": 10.0, "raw_box": 1.0}, 1000)
    assert wild.score == TOLERANCE_CEILING["score"] and wild.box_px == TOLERANCE_CEILING["box_px"]


@pytest.mark.slow
@pytest.mark.parametrize("size", ["s", "l", "x"])
def test_official_format_checkpoint_exports_with_the_check_on(tmp_path, reference_dir, size):
    """Keyed weights with calibrated BatchNorms (numerically sensitive): the check accepts them."""
    from tests.export.official_checkpoints import official_checkpoint

    checkpoint = official_checkpoint(reference_dir, size, tmp_path / f"{size}.pth")
    ckpt = read_checkpoint(checkpoint)
    det = Detector.from_checkpoint(checkpoint)
    path = tmp_path / f"{size}.onnx"
    report = export_onnx(det.model, ckpt.info, path)
    assert path.is_file() and sorted(report.checks) == [1, 3]
    for batch, agreement in report.checks.items():
        tolerance = report.tolerances[batch]
        assert onnx_export_passed(agreement, tolerance), agreement.describe()


def onnx_export_passed(agreement, tolerance) -> bool:
    from dfine_cli.export.onnx import check_passed

    return check_passed(agreement, tolerance)
