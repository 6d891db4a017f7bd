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


__all__ = ["BACKENDS", "Backend", "BackendMeta", "backend_for_file"]
