"""One device resolution: ``auto`` means the same for every command and backend."""

from __future__ import annotations

import pytest
import torch

from dfine_cli import devices
from dfine_cli.devices import (
    DEFAULT_DEVICE,
    is_device_name,
    parse_device,
    resolve_backend_device,
    resolve_device,
    wants_cuda,
)
from dfine_cli.errors import HardwareError, UsageError


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "_cuda_available", lambda: False)


@pytest.fixture
def one_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "_cuda_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.mark.parametrize("name", ["auto", "cpu", "mps", "cuda", "cuda:0", "cuda:12"])
def test_accepted_spellings(name: str) -> None:
    assert is_device_name(name)
    assert parse_device(name) == name


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "tpu", "cpu:0"])
def test_unknown_spellings_are_usage_errors(name: str) -> None:
    assert not is_device_name(name)
    with pytest.raises(UsageError, match=rf"invalid device '{name}' \(use auto, cpu, mps, cuda or cuda:N\)"):
        parse_device(name)


def test_parse_normalises_and_defaults() -> None:
    assert parse_device(None) == DEFAULT_DEVICE == "auto"
    assert parse_device("  ") == "auto"
    assert parse_device(" CUDA:1 ") == "cuda:1"


def test_auto_is_cpu_without_a_gpu(no_gpu: None) -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert not wants_cuda("auto")
    with pytest.raises(HardwareError, match="no CUDA GPU is available"):
        resolve_device("cuda")


def test_auto_is_cuda_with_a_gpu(one_gpu: None) -> None:
    assert resolve_device("auto") == torch.device("cuda")
    assert wants_cuda("auto") and wants_cuda("cuda:0") and not wants_cuda("cpu")
    with pytest.raises(HardwareError, match="only 1 GPU"):
        resolve_device("cuda:3")


@pytest.mark.parametrize("available", [False, True])
def test_mps_must_exist(monkeypatch: pytest.MonkeyPatch, available: bool) -> None:
    monkeypatch.setattr(devices, "_mps_available", lambda: available)
    if available:
        assert resolve_device("mps") == torch.device("mps")
        return
    with pytest.raises(HardwareError, match="no Apple GPU"):
        resolve_device("mps")


def test_mps_answer_is_torchs(monkeypatch: pytest.MonkeyPatch) -> None:
    for answer in (False, True):
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda answer=answer: answer)
        assert devices._mps_available() is answer


def test_torch_device_objects_pass_through() -> None:
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_tensorrt_refuses_the_cpu(one_gpu: None) -> None:
    with pytest.raises(UsageError, match="TensorRT backend runs on a CUDA GPU, not --device cpu"):
        resolve_backend_device("tensorrt", "cpu")
    assert resolve_backend_device("tensorrt", "auto") == torch.device("cuda")
    assert resolve_backend_device("tensorrt", "cuda:0") == torch.device("cuda", 0)


def test_tensorrt_without_a_gpu_is_a_hardware_error(no_gpu: None) -> None:
    with pytest.raises(HardwareError, match="TensorRT backend needs a CUDA GPU"):
        resolve_backend_device("tensorrt", "auto")


def test_openvino_runs_on_the_cpu(one_gpu: None) -> None:
    assert resolve_backend_device("openvino", "auto") == torch.device("cpu")
    assert resolve_backend_device("openvino", "cpu") == torch.device("cpu")
    with pytest.raises(UsageError, match="OpenVINO backend runs on the CPU"):
        resolve_backend_device("openvino", "cuda")


def test_onnxruntime_auto_needs_its_cuda_provider(one_gpu: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "_onnxruntime_has_cuda", lambda: False)
    assert resolve_backend_device("onnxruntime", "auto") == torch.device("cpu")
    monkeypatch.setattr(devices, "_onnxruntime_has_cuda", lambda: True)
    assert resolve_backend_device("onnxruntime", "auto") == torch.device("cuda")
    with pytest.raises(UsageError, match="ONNX Runtime backend runs on the CPU or CUDA"):
        resolve_backend_device("onnxruntime", "mps")


def test_torch_backend_auto_matches_resolve_device(no_gpu: None) -> None:
    assert resolve_backend_device("torch", "auto") == resolve_device("auto") == torch.device("cpu")


# --------------------------------------------------------------------------- CPU features

_X86_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n"
_X86_BF16 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n"
_ARM = "processor\t: 0\nFeatures\t: fp asimd bf16\n"


@pytest.mark.parametrize(
    ("text", "native"), [(_X86_AVX2, False), (_X86_BF16, True), (_ARM, None)]
)
def test_cpu_bf16_native_reads_the_flags(tmp_path, text: str, native: bool | None) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    assert devices.cpu_bf16_native(str(cpuinfo)) is native


def test_cpu_bf16_native_is_unknown_without_cpuinfo(tmp_path) -> None:
    assert devices.cpu_bf16_native(str(tmp_path / "absent")) is None


def test_slow_bf16_note_only_for_a_cpu_without_bf16(tmp_path) -> None:
    avx2, bf16 = tmp_path / "avx2", tmp_path / "bf16"
    avx2.write_text(_X86_AVX2)
    bf16.write_text(_X86_BF16)
    note = devices.slow_bf16_note("cpu", str(avx2))
    assert note is not None and "no bf16 arithmetic" in note
    assert devices.slow_bf16_note("cuda", str(avx2)) is None
    assert devices.slow_bf16_note("cpu", str(bf16)) is None
    assert devices.slow_bf16_note("cpu", str(tmp_path / "absent")) is None
