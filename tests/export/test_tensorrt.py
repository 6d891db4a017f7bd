"""TensorRT export: engine-independent parts here, the GPU path where CUDA and TensorRT exist."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dfine_cli.backends.tensorrt_backend import (
    EngineInfo,
    engine_sidecar,
    read_engine_info,
    require_tensorrt,
    tensorrt_missing,
    torch_dtype_name,
)
from dfine_cli.errors import CheckpointError, DependencyError, HardwareError, UsageError
from dfine_cli.export.tensorrt import BatchProfile, batch_profile
from tests.helpers import tiny_checkpoint

HAS_GPU_TRT = torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "dfine_cli", *args], capture_output=True,
                          text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("trt") / "tiny.pth")


# --------------------------------------------------------------------------- profile


def test_profile_defaults_to_batch_one():
    assert batch_profile(None, None, None, onnx_batch=None) == BatchProfile(1, 1, 1)


def test_profile_fills_missing_values():
    assert batch_profile(None, 4, None, None) == BatchProfile(1, 4, 4)
    assert batch_profile(2, None, 8, None) == BatchProfile(2, 2, 8)


def test_profile_shapes_cover_both_inputs():
    shapes = BatchProfile(1, 4, 8).shapes((320, 416))
    assert shapes["images"] == ((1, 3, 320, 416), (4, 3, 320, 416), (8, 3, 320, 416))
    assert shapes["orig_target_sizes"] == ((1, 2), (4, 2), (8, 2))


@pytest.mark.parametrize("sizes", [(4, 2, 8), (1, 9, 8), (0, 1, 1)])
def test_profile_rejects_unordered_or_zero(sizes):
    with pytest.raises(UsageError):
        batch_profile(*sizes, onnx_batch=None)


def test_static_onnx_admits_only_its_batch():
    assert batch_profile(None, None, None, onnx_batch=2) == BatchProfile(2, 2, 2)
    with pytest.raises(UsageError, match="fixed batch size 2"):
        batch_profile(1, 2, 4, onnx_batch=2)


# --------------------------------------------------------------------------- no GPU / no TensorRT


def test_missing_messages_name_what_is_missing():
    both = tensorrt_missing(False, "No module named 'tensorrt'")
    assert "neither" in both and "pip install 'dfine[trt]'" in both
    gpu = tensorrt_missing(False, None)
    assert gpu is not None and "NVIDIA GPU" in gpu and "pip install" not in gpu
    package = tensorrt_missing(True, "No module named 'tensorrt'")
    assert package is not None and "not installed" in package and "dfine[trt]" in package
    assert tensorrt_missing(True, None) is None


@pytest.mark.skipif(HAS_GPU_TRT, reason="this machine has CUDA and TensorRT")
def test_require_tensorrt_raises_environment_error():
    with pytest.raises(DependencyError) as info:
        require_tensorrt()
    assert info.value.exit_code == 6
    if not torch.cuda.is_available():
        assert isinstance(info.value, HardwareError)


@pytest.mark.skipif(HAS_GPU_TRT, reason="this machine has CUDA and TensorRT")
def test_export_engine_without_gpu_is_one_line_exit_6(ckpt, tmp_path):
    out = tmp_path / "model.engine"
    res = run("export", str(ckpt), "--format", "engine", "--output", str(out), "--fp16")
    assert res.returncode == 6, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "TensorRT" in lines[0]
    assert "Traceback" not in res.stderr and res.stdout == ""
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(HAS_GPU_TRT, reason="this machine has CUDA and TensorRT")
def test_predict_with_tensorrt_backend_without_gpu(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not an engine")
    image = tmp_path / "a.jpg"
    from tests.conftest import write_jpeg

    write_jpeg(image)
    res = run("predict", str(engine), str(image), "--output", str(tmp_path / "out"))
    assert res.returncode == 6 and "TensorRT" in res.stderr and "Traceback" not in res.stderr


def invoke(*args: str):
    """In-process CLI call (faster than a subprocess for usage errors)."""
    from typer.testing import CliRunner

    from dfine_cli.cli.main import app

    return CliRunner().invoke(app, list(args))


def test_engine_usage_errors(ckpt, tmp_path):
    res = invoke("export", str(ckpt), "--format", "engine", "--min-batch", "4", "--max-batch", "2")
    assert res.exit_code == 2 and "min <= opt <= max" in res.stderr
    res = invoke("export", str(ckpt), "--format", "engine", "--keep-fp32", "decoder")
    assert res.exit_code == 2 and "--fp16" in res.stderr
    res = invoke("export", str(ckpt), "--fp16")
    assert res.exit_code == 2 and "--format engine" in res.stderr
    res = invoke("export", str(ckpt), "--format", "engine", "--output", str(tmp_path / "x.onnx"))
    assert res.exit_code == 2 and ".engine" in res.stderr
    res = invoke("export", str(ckpt), "--format", "engine", "--opset", "18")
    assert res.exit_code == 2 and "--opset" in res.stderr


# --------------------------------------------------------------------------- sidecar and types


def test_engine_info_round_trip(tmp_path):
    info = EngineInfo(["a", "b"], [3, 7], (320, 320), "fp16", 1, 2, 4, "11.4.0")
    path = tmp_path / "m.engine"
    engine_sidecar(path).write_text(json.dumps(info.to_dict()))
    assert read_engine_info(path) == info
    assert read_engine_info(tmp_path / "other.engine") is None
    engine_sidecar(path).write_text("{not json")
    with pytest.raises(CheckpointError):
        read_engine_info(path)


def test_tensorrt_dtype_names():
    assert torch_dtype_name("FLOAT") == "float32" and torch_dtype_name("HALF") == "float16"
    assert torch_dtype_name("INT64") == "int64"
    with pytest.raises(CheckpointError):
        torch_dtype_name("FP4")


# --------------------------------------------------------------------------- GPU


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_GPU_TRT, reason="needs an NVIDIA GPU and TensorRT")
@pytest.mark.parametrize("fp16", [False, True])
def test_build_and_run_engine(ckpt, tmp_path, fp16):
    from dfine_cli.checkpoints import load_model
    from dfine_cli.detector import Detector
    from dfine_cli.export.tensorrt import export_engine

    out = tmp_path / ("fp16.engine" if fp16 else "fp32.engine")
    model, info = load_model(ckpt)
    report = export_engine(model, info, out, fp16=fp16, min_batch=1, opt_batch=2, max_batch=4,
                           keep_fp32=["decoder.dec_bbox_head"] if fp16 else ())
    assert out.is_file() and engine_sidecar(out).is_file()
    assert report.checks and all(c.passed for c in report.checks)
    det = Detector.load(out, backend="tensorrt", device="cuda")
    assert det.class_names == ["thing0", "thing1", "thing2"]
    results = det.predict([np.zeros((240, 320, 3), np.uint8)] * 3, conf=0.0, batch_size=3)
    assert len(results) == 3 and len(results[0]) == 300
