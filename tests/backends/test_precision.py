"""Which inference precisions each backend runs (``dfine_cli.backends.check_precision``)."""

from __future__ import annotations

import pytest

from dfine_cli.backends import BACKEND_PRECISIONS, BACKENDS, PRECISIONS, check_precision
from dfine_cli.errors import UsageError


def test_every_backend_has_a_rule_and_runs_fp32():
    assert set(BACKEND_PRECISIONS) == set(BACKENDS)
    for backend in BACKENDS:
        assert BACKEND_PRECISIONS[backend] <= set(PRECISIONS)
        check_precision(backend, "fp32", "cpu")


@pytest.mark.parametrize(("backend", "precision", "device"), [
    ("openvino", "bf16", "cpu"), ("openvino", "fp16", "cpu"), ("torch", "bf16", "cpu"),
    ("torch", "fp16", "cuda:0"), ("torch", "bf16", "cuda"),
])
def test_runnable_combinations_pass(backend, precision, device):
    check_precision(backend, precision, device)


@pytest.mark.parametrize(("backend", "precision", "device", "says"), [
    ("onnxruntime", "bf16", "cpu", "onnxruntime backend does not run bf16"),
    ("torch", "fp16", "cpu", "needs --device cuda"),
    ("tensorrt", "fp16", "cuda", "fixed when it is built"),
    ("tflite", "fp32", "cpu", "unknown backend"),
    ("torch", "int4", "cpu", "unknown precision"),
])
def test_impossible_combinations_are_usage_errors_that_name_the_cause(backend, precision, device,
                                                                      says):
    with pytest.raises(UsageError, match=says):
        check_precision(backend, precision, device)


def test_choose_backend_picks_by_extension_then_checks_the_precision(tmp_path):
    from pathlib import Path

    from dfine_cli.backends import choose_backend

    assert choose_backend(Path("m.pth"), None, "bf16", "cpu") == "torch"
    assert choose_backend(Path("m.xml"), "auto", "bf16", "cpu") == "openvino"
    assert choose_backend(Path("m.onnx"), None) == "onnxruntime"
    with pytest.raises(UsageError, match="onnxruntime backend does not run bf16"):
        choose_backend(Path("m.onnx"), None, "bf16", "cpu")
    with pytest.raises(UsageError, match="needs --device cuda"):
        choose_backend(Path("m.pth"), "torch", "fp16", "cpu")
    with pytest.raises(UsageError, match=r"needs an exported \.onnx"):
        choose_backend(Path("m.xml"), "onnxruntime", "fp32", "cpu")
