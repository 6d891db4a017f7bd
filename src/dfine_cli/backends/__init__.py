"""Inference backends sharing one contract: ``(images, orig_sizes) -> (labels, boxes, scores)``.

``images`` is float32 ``[N, 3, H, W]`` RGB in 0..1 at the model's input size; ``orig_sizes``
int64 ``[N, 2]`` as (w, h); outputs are numpy arrays ``labels [N, K]``, ``boxes [N, K, 4]``
(xyxy, original pixels), ``scores [N, K]``.
"""

from __future__ import annotations

from pathlib import Path

from dfine_cli.backends.base import Backend, BackendMeta
from dfine_cli.errors import UsageError

BACKENDS: tuple[str, ...] = ("torch", "onnxruntime", "openvino", "tensorrt")

#: Inference precisions a command can ask for (``--fp16``, ``--bf16``; fp32 otherwise).
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16")
#: Which precisions each backend runs: torch through autocast (fp16 on CUDA only), OpenVINO
#: through its inference-precision hint (an INT8 IR runs its float parts at that precision).
#: ONNX Runtime runs the file's float32; an engine's precision is fixed when it is built.
BACKEND_PRECISIONS: dict[str, frozenset[str]] = {
    "torch": frozenset({"fp32", "bf16", "fp16"}),
    "onnxruntime": frozenset({"fp32"}),
    "openvino": frozenset({"fp32", "bf16", "fp16"}),
    "tensorrt": frozenset({"fp32"}),
}


def backend_for_file(path: Path, backend: str | None) -> str:
    """The backend to use for ``path`` (``auto`` by extension), checked for consistency."""
    suffix = path.suffix.lower()
    if backend in (None, "auto"):
        if suffix == ".onnx":
            return "onnxruntime"
        if suffix == ".xml":  # OpenVINO IR (dfine export --format openvino)
            return "openvino"
        if suffix in (".engine", ".trt", ".plan"):
            return "tensorrt"
        return "torch"
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "openvino" and suffix not in (".onnx", ".xml"):
        raise UsageError(f"--backend openvino needs an exported .onnx or OpenVINO IR .xml model, got {path.name}")
    if backend == "onnxruntime" and suffix != ".onnx":
        raise UsageError(f"--backend onnxruntime needs an exported .onnx model, got {path.name}")
    if backend == "torch" and suffix == ".onnx":
        raise UsageError(f"{path.name} is an ONNX model: use --backend onnxruntime")
    return backend


def check_precision(backend: str, precision: str, device: str) -> None:
    """Reject backend/precision/device combinations that cannot run (usage errors).

    ``device`` is the resolved device name (``cpu``, ``cuda:0``...).
    """
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; one of {', '.join(PRECISIONS)}")
    if precision not in BACKEND_PRECISIONS[backend]:
        hint = (" (an engine's precision is fixed when it is built: dfine export --format "
                "engine [--fp16])" if backend == "tensorrt" else "")
        raise UsageError(f"the {backend} backend does not run {precision}; it runs "
                         f"{', '.join(sorted(BACKEND_PRECISIONS[backend]))}{hint}")
    if backend == "torch" and precision == "fp16" and not device.startswith("cuda"):
        raise UsageError("torch fp16 needs --device cuda; on a CPU use --bf16")


def choose_backend(path: Path, backend: str | None, precision: str = "fp32",
                   device: str | None = None) -> str:
    """:func:`backend_for_file`, then checked against the precision and device asked for.

    Raises :class:`UsageError` for a combination that cannot run, and
    :class:`~dfine_cli.errors.HardwareError` for a backend that needs a GPU this machine lacks.
    """
    from dfine_cli.devices import resolve_backend_device

    chosen = backend_for_file(path, backend)
    check_precision(chosen, precision, str(resolve_backend_device(chosen, device)))
    return chosen


__all__ = ["BACKENDS", "BACKEND_PRECISIONS", "PRECISIONS", "Backend", "BackendMeta",
           "backend_for_file", "check_precision", "choose_backend"]
