"""`dfine export --format openvino`: IR files written atomically, metadata, check, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")

from dfine_cli.errors import ExportError, UsageError
from dfine_cli.export.openvino_ir import export_openvino
from tests.helpers import tiny_checkpoint

IMG = 256


def _cli(*args: str):
    from typer.testing import CliRunner

    from dfine_cli.cli.main import app

    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("irx") / "tiny.pth", img_size=IMG, names=["a", "b", "c"])


def test_cli_writes_checked_ir_with_metadata(ckpt, tmp_path):
    import openvino as ov

    out = tmp_path / "sub" / "m.xml"
    res = _cli("export", str(ckpt), "--format", "openvino", "--output", str(out), "--static-batch",
               "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["format"] == "openvino" and report["precision"] == "fp32"
    assert report["checks"]["1"]["matched_fraction"] == 1.0
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.bin", "m.xml"]  # no temporaries
    model = ov.Core().read_model(str(out))
    assert json.loads(model.get_rt_info(["dfine", "class_names"]).astype(str)) == ["a", "b", "c"]
    assert model.get_rt_info(["dfine", "precision"]).astype(str) == "fp32"
    assert [p.get_any_name() for p in model.outputs] == ["labels", "boxes", "scores"]
    assert model.input("images").get_partial_shape()[0].get_length() == 1


def test_failed_check_writes_nothing(ckpt, tmp_path, monkeypatch):
    from dfine_cli.detector import Detector
    from dfine_cli.export import openvino_ir

    det = Detector.from_checkpoint(ckpt)
    assert det.model is not None and det.info is not None
    real = openvino_ir._openvino_runner

    def shifted(xml):
        run = real(xml)

        def wrong(images, sizes):
            labels, boxes, scores = run(images, sizes)
            return labels, boxes + 5.0, scores

        return wrong

    monkeypatch.setattr(openvino_ir, "_openvino_runner", shifted)
    with pytest.raises(ExportError, match="OpenVINO disagrees with torch at batch 1"):
        export_openvino(det.model, det.info, tmp_path / "m.xml", img_size=(IMG, IMG), dynamic_batch=False)
    assert list(tmp_path.iterdir()) == []


def test_bad_options_are_usage_errors(ckpt, tmp_path):
    res = _cli("export", str(ckpt), "--format", "openvino", "--output", str(tmp_path / "m.onnx"))
    assert res.exit_code != 0 and ".xml" in res.output
    res = _cli("export", str(ckpt), "--format", "openvino", "--int8")
    assert res.exit_code != 0 and "--data" in res.output
    res = _cli("export", str(ckpt), "--int8", "--data", str(tmp_path))
    assert res.exit_code != 0 and "--format openvino or engine only" in res.output
    res = _cli("export", str(ckpt), "--format", "openvino", "--int8", "--data", str(tmp_path / "none"))
    assert res.exit_code != 0 and "not found" in res.output
    with pytest.raises(UsageError):
        from dfine_cli.detector import Detector

        det = Detector.from_checkpoint(ckpt)
        assert det.model is not None and det.info is not None
        export_openvino(det.model, det.info, tmp_path / "m.bin", img_size=(IMG, IMG))
