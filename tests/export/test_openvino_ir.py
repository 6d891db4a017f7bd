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
    # the INT8 scopes select nodes by these names: each finds convolutions or matrix products
    from dfine_cli.export.int8 import IGNORED_SCOPES, kept_float

    weighted = [op.get_friendly_name() for op in model.get_ordered_ops()
                if op.get_type_name() in ("Convolution", "MatMul")]
    for scope in IGNORED_SCOPES:
        if scope != "none":
            assert any(kept_float(name, scope) for name in weighted), scope
    fpn = [name for name in weighted if kept_float(name, "fpn")]
    assert any("/fpn_blocks.0/cv4/" in name for name in fpn), fpn
    assert not any("/pan_blocks." in name or "/backbone/" in name for name in fpn)


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


def test_int8_scope_option(ckpt, tmp_path, monkeypatch):
    from dfine_cli.export import openvino_ir

    images = tmp_path / "calib"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (40, 30)).save(images / "a.jpg")
    for args, message in [
        (["--int8-scope", "none"], "with --int8 only"),
        (["--int8", "--data", str(images), "--int8-scope", "everything"], "unknown --int8-scope"),
    ]:
        res = _cli("export", str(ckpt), "--format", "openvino", *args)
        assert res.exit_code == 2 and message in res.output, res.output
    res = _cli("export", str(ckpt), "--format", "onnx", "--int8-scope", "none")
    assert res.exit_code == 2 and "--format openvino only" in res.output

    seen = []

    def fake_export(model, info, out, **kwargs):
        seen.append(kwargs["int8"].scope)
        raise ExportError("stopped after the options")

    monkeypatch.setattr(openvino_ir, "export_openvino", fake_export)
    for args, scope in [([], "fpn"), (["--int8-scope", "sampling+heads"], "sampling+heads")]:
        res = _cli("export", str(ckpt), "--format", "openvino", "--int8", "--data", str(images),
                   "--output", str(tmp_path / "q.xml"), *args)
        assert res.exit_code == 5, res.output
        assert seen[-1] == scope
