"""`dfine export` as one library call: which options apply to which format, and where it writes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dfine_cli.errors import UsageError
from dfine_cli.export.run import ExportOptions, check_export_options, output_path

CKPT = Path("model.pth")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (ExportOptions(format="onnx", fp16=True), "--fp16 apply to --format engine only"),
        (ExportOptions(format="openvino", min_batch=2, keep_fp32=("decoder",)),
         "--min-batch, --keep-fp32 apply to --format engine only"),
        (ExportOptions(format="onnx", int8=True), "--int8 apply to --format openvino or engine only"),
        (ExportOptions(format="engine", opset=18, dynamic_batch=False),
         "--opset, --static-batch apply to --format onnx only"),
        (ExportOptions(format="openvino", simplify=False), "--no-simplify applies to --format onnx only"),
        (ExportOptions(format="openvino", calib_images=10), "apply with --int8 only"),
        (ExportOptions(format="openvino", int8=True), "--int8 needs calibration images"),
        (ExportOptions(format="tflite"), "unknown export format 'tflite'"),
    ],
)
def test_options_that_do_not_apply_are_named(options, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        check_export_options(CKPT, options)


def test_an_onnx_source_only_builds_engines():
    with pytest.raises(UsageError, match="already ONNX"):
        check_export_options(Path("m.onnx"), ExportOptions(format="onnx"))
    check_export_options(Path("m.onnx"), ExportOptions(format="engine"))


def test_the_output_defaults_to_the_source_with_the_format_suffix(tmp_path):
    source = tmp_path / "w" / "best.pth"
    assert output_path(source, ExportOptions()) == tmp_path / "w" / "best.onnx"
    assert output_path(source, ExportOptions(format="engine")) == tmp_path / "w" / "best.engine"
    assert output_path(source, ExportOptions(format="openvino")) == tmp_path / "w" / "best.xml"
    assert output_path(source, ExportOptions(output=tmp_path / "x.onnx")) == tmp_path / "x.onnx"
    with pytest.raises(UsageError, match=r"writes an \.xml"):
        output_path(source, ExportOptions(format="openvino", output=tmp_path / "x.onnx"))
