"""Device names: one parser and one resolution for every command, the trainer and every backend.

A device is written as text: ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``. ``auto`` means
the same everywhere: a CUDA GPU when one is usable, else the CPU. What "usable" means depends
on the inference backend, and :func:`resolve_backend_device` is the one place that knows it:

==============  ==========================  ==============================================
backend         ``auto``                    explicit devices
==============  ==========================  ==============================================
torch           CUDA if present, else CPU   ``cpu``, ``mps``, ``cuda[:N]`` (must exist)
onnxruntime     CUDA if present and ONNX    ``cpu``, ``cuda[:N]``
                Runtime has its CUDA
                provider, else CPU
openvino        CPU                         ``cpu`` only
tensorrt        CUDA (error without a GPU)  ``cuda[:N]`` only; ``cpu`` is an error
==============  ==========================  ==============================================
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from dfine_cli.errors import HardwareError, UsageError

if TYPE_CHECKING:  # torch is imported where a device is resolved: the CLI starts without it
    import torch

#: The device every command uses unless told otherwise.
DEFAULT_DEVICE = "auto"
#: The accepted spellings, for error messages.
DEVICE_HELP = "auto, cpu, mps, cuda or cuda:N"
#: What the ``--device`` option says in ``--help``.
DEVICE_OPTION_HELP = "auto (a CUDA GPU if present, else the CPU), cpu, mps, cuda or cuda:N."

_DEVICE_NAME = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def is_device_name(text: str) -> bool:
    """Whether ``text`` is a device spelling we accept (syntax only; no hardware check)."""
    return bool(_DEVICE_NAME.fullmatch(text))


def parse_device(text: str | None) -> str:
    """A user's ``--device`` value, checked and normalised (``None``/empty → ``"auto"``).

    Only the spelling is checked here; whether the hardware exists is checked when the
    device is resolved (:func:`resolve_device`), so a config can be validated on a machine
    without the GPU it names.
    """
    if text is None or not text.strip():
        return DEFAULT_DEVICE
    name = text.strip().lower()
    if not is_device_name(name):
        raise UsageError(f"invalid device {text!r} (use {DEVICE_HELP})")
    return name


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` → CUDA if present else CPU; ``"cuda[:N]"`` must exist.

    Raises :class:`UsageError` for an unknown spelling and :class:`HardwareError` when the
    named GPU is absent.
    """
    import torch

    if device is None or str(device).strip() in ("", "auto"):
        return torch.device("cuda" if _cuda_available() else "cpu")
    if isinstance(device, str):
        device = parse_device(device)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UsageError(f"invalid device {device!r} (use {DEVICE_HELP})") from exc
    if dev.type == "cuda":
        if not _cuda_available():
            raise HardwareError(
                f"device {str(device)!r} requested but no CUDA GPU is available on this machine "
                "(use --device cpu)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise HardwareError(
                f"device {str(device)!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
    elif dev.type == "mps":
        if not _mps_available():
            raise HardwareError(
                f"device {str(device)!r} requested but this machine has no Apple GPU (MPS) that "
                "PyTorch can use (use --device cpu)"
            )
    elif dev.type != "cpu":
        raise UsageError(f"unsupported device {str(device)!r} (use {DEVICE_HELP})")
    return dev


def _mps_available() -> bool:
    import torch

    return bool(torch.backends.mps.is_available())


def wants_cuda(device: str | torch.device | None) -> bool:
    """Whether ``device`` means a CUDA GPU on this machine, without raising for absent ones.

    ``"auto"`` wants CUDA exactly when :func:`resolve_device` would pick it; used to choose
    the distributed backend (NCCL for GPUs, Gloo otherwise).
    """
    if device is None or str(device).strip() in ("", "auto"):
        return _cuda_available()
    return str(device).strip().lower().startswith("cuda")


def _onnxruntime_has_cuda() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


def resolve_backend_device(backend: str, device: str | torch.device | None) -> torch.device:
    """The device an inference ``backend`` runs on for the user's ``device`` (table above).

    Raises :class:`UsageError` when the backend cannot run on the device that was asked for
    (``--backend tensorrt --device cpu``, ``--backend openvino --device cuda``), and
    :class:`HardwareError` when the backend needs a GPU this machine lacks.
    """
    import torch

    name = DEFAULT_DEVICE if device is None else parse_device(str(device))
    kind = name.split(":")[0]
    if backend == "tensorrt":
        if kind in ("cpu", "mps"):
            raise UsageError(f"the TensorRT backend runs on a CUDA GPU, not --device {name} "
                             "(use --device cuda, or --backend onnxruntime or openvino on the CPU)")
        if not _cuda_available():
            raise HardwareError("the TensorRT backend needs a CUDA GPU and none is available "
                                "(use --backend onnxruntime or openvino on the CPU)")
        return resolve_device("cuda" if kind == "auto" else name)
    if backend == "openvino":
        if kind not in ("auto", "cpu"):
            raise UsageError(f"the OpenVINO backend runs on the CPU, not --device {name} "
                             "(use --backend onnxruntime or tensorrt for CUDA)")
        return torch.device("cpu")
    if backend == "onnxruntime":
        if kind == "mps":
            raise UsageError(f"the ONNX Runtime backend runs on the CPU or CUDA, not --device {name}")
        if kind == "auto":
            return torch.device("cuda" if _cuda_available() and _onnxruntime_has_cuda() else "cpu")
    return resolve_device(device)


# --------------------------------------------------------------------------- CPU features


def cpu_flags(cpuinfo: str) -> set[str]:
    """The ``flags`` of the first processor in a ``/proc/cpuinfo`` text (x86 Linux)."""
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_supports_bf16(flags: set[str]) -> bool:
    """bf16 arithmetic in hardware: AVX-512 BF16 or AMX-BF16 (x86)."""
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def cpu_bf16_native(cpuinfo_path: str = "/proc/cpuinfo") -> bool | None:
    """Whether this x86 CPU computes bf16 in hardware; ``None`` where its flags are unknown
    (no ``/proc/cpuinfo``, or a CPU that lists no x86 ``flags``, such as ARM)."""
    try:
        with open(cpuinfo_path, encoding="utf-8", errors="replace") as handle:
            flags = cpu_flags(handle.read())
    except OSError:
        return None
    return cpu_supports_bf16(flags) if flags else None


def slow_bf16_note(device: str, cpuinfo_path: str = "/proc/cpuinfo") -> str | None:
    """A warning for bf16 work on a CPU without bf16 arithmetic, else ``None``.

    Such a CPU converts to float32 around every operation: the results stay right but the work
    runs several times slower than in float32 (D-FINE-N inference 5.7x slower on an AVX2 AMD
    EPYC, ``docs/bench.md``).
    """
    if device != "cpu" or cpu_bf16_native(cpuinfo_path) is not False:
        return None
    return ("this CPU has no bf16 arithmetic (AVX-512 BF16 or AMX): bf16 runs emulated, "
            "several times slower than float32 here")


__all__ = [
    "DEFAULT_DEVICE",
    "DEVICE_HELP",
    "DEVICE_OPTION_HELP",
    "cpu_bf16_native",
    "cpu_flags",
    "cpu_supports_bf16",
    "is_device_name",
    "parse_device",
    "resolve_backend_device",
    "resolve_device",
    "slow_bf16_note",
    "wants_cuda",
]
