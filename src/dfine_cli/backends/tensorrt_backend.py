"""TensorRT backend: runs a serialized engine built by ``dfine export --format engine``.

Written against the TensorRT Python API of versions 10 and 11 (name-based I/O tensors:
``num_io_tensors``/``get_tensor_name``, ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``). Device buffers are torch CUDA tensors, so no other CUDA binding
(pycuda, cuda-python) is needed.

An engine file holds no class names: ``dfine export`` writes them beside the engine as
``<engine>.json`` (see :func:`engine_sidecar`); engines from elsewhere get COCO names.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dfine_cli.backends.base import BackendMeta
from dfine_cli.errors import CheckpointError, DependencyError, HardwareError, UsageError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("dfine.backends.tensorrt")

INPUT_NAMES = ("images", "orig_target_sizes")
OUTPUT_NAMES = ("labels", "boxes", "scores")
INSTALL_HINT = "pip install 'dfine[trt]' on a machine with an NVIDIA GPU and driver"


def tensorrt_missing(cuda_available: bool, tensorrt_error: str | None) -> str | None:
    """What is missing for TensorRT, as one line, or ``None`` if nothing is.

    Args:
        cuda_available: torch sees a CUDA GPU.
        tensorrt_error: why ``import tensorrt`` failed (``None``: it imported).
    """
    if not cuda_available and tensorrt_error is not None:
        return (
            "TensorRT needs an NVIDIA GPU and the 'tensorrt' package, and this machine has "
            f"neither (no CUDA GPU visible to torch; tensorrt not installed): {INSTALL_HINT}"
        )
    if not cuda_available:
        return (
            "TensorRT needs an NVIDIA GPU, and no CUDA GPU is visible to torch here (check the "
            "driver and that torch is a CUDA build: python -c 'import torch; print(torch.cuda."
            "is_available())')"
        )
    if tensorrt_error is not None:
        return f"the 'tensorrt' package is not installed ({tensorrt_error}): {INSTALL_HINT}"
    return None


def require_tensorrt() -> Any:
    """Import ``tensorrt`` after checking for a CUDA GPU; raise one clear error otherwise.

    Raises:
        HardwareError: no CUDA GPU (exit code 6).
        DependencyError: the ``tensorrt`` package is missing (exit code 6).
    """
    import importlib

    import torch

    cuda = bool(torch.cuda.is_available())
    error: str | None = None
    module: Any = None
    try:
        module = importlib.import_module("tensorrt")
    except ImportError as exc:
        error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    message = tensorrt_missing(cuda, error)
    if message is not None:
        raise (HardwareError if not cuda else DependencyError)(message)
    return module


def tensorrt_major(trt: Any) -> int:
    return int(str(getattr(trt, "__version__", "0")).split(".")[0] or 0)


def engine_sidecar(engine_path: Path) -> Path:
    """The JSON file beside an engine that records class names, input size and precision."""
    return engine_path.with_name(engine_path.name + ".json")


@dataclass(frozen=True)
class EngineInfo:
    """What ``dfine export`` records beside an engine (``<engine>.json``)."""

    class_names: list[str]
    category_ids: list[int]
    img_size: tuple[int, int]
    precision: str  # "fp32" or "fp16"
    min_batch: int
    opt_batch: int
    max_batch: int
    tensorrt_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_names": self.class_names,
            "category_ids": self.category_ids,
            "img_size": list(self.img_size),
            "precision": self.precision,
            "min_batch": self.min_batch,
            "opt_batch": self.opt_batch,
            "max_batch": self.max_batch,
            "tensorrt_version": self.tensorrt_version,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EngineInfo:
        try:
            h, w = (int(v) for v in data["img_size"])
            return cls(
                class_names=[str(n) for n in data["class_names"]],
                category_ids=[int(i) for i in data["category_ids"]],
                img_size=(h, w),
                precision=str(data.get("precision", "fp32")),
                min_batch=int(data.get("min_batch", 1)),
                opt_batch=int(data.get("opt_batch", 1)),
                max_batch=int(data.get("max_batch", 1)),
                tensorrt_version=str(data.get("tensorrt_version", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"malformed engine description ({exc!r})") from None


def read_engine_info(engine_path: Path) -> EngineInfo | None:
    """The sidecar of ``engine_path`` if it exists (``None`` otherwise)."""
    sidecar = engine_sidecar(engine_path)
    if not sidecar.is_file():
        return None
    try:
        return EngineInfo.from_dict(json.loads(sidecar.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{sidecar}: not valid JSON ({exc.msg})") from None


def torch_dtype_name(trt_dtype_name: str) -> str:
    """TensorRT ``DataType`` name (``FLOAT``, ``HALF``, ``INT64``...) -> torch dtype name."""
    table = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT64": "int64",
             "INT32": "int32", "INT8": "int8", "UINT8": "uint8", "BOOL": "bool"}
    try:
        return table[trt_dtype_name.upper()]
    except KeyError:
        raise CheckpointError(f"unsupported TensorRT tensor type {trt_dtype_name}") from None


class TensorRTBackend:
    """``(images [N,3,H,W] float32, orig_sizes [N,2] int64) -> (labels, boxes, scores)`` on a GPU."""

    def __init__(self, path: Path, device: str | torch.device | None = "cuda") -> None:
        trt = require_tensorrt()
        import torch

        from dfine_cli.devices import resolve_backend_device

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"TensorRT engine not found: {path}")
        dev = resolve_backend_device("tensorrt", device)
        self._torch = torch
        self.device = dev
        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")
        with torch.cuda.device(dev):
            runtime = trt.Runtime(self._logger)
            self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise CheckpointError(
                    f"TensorRT cannot load {path} (built by another TensorRT version or GPU?)"
                )
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        if set(names) != set(INPUT_NAMES + OUTPUT_NAMES):
            raise CheckpointError(
                f"{path.name}: expected I/O tensors {INPUT_NAMES + OUTPUT_NAMES}, found {names}"
            )
        self._dtypes = {
            name: getattr(torch, torch_dtype_name(self.engine.get_tensor_dtype(name).name))
            for name in names
        }
        shape = tuple(self.engine.get_tensor_shape("images"))
        img_size = (int(shape[2]), int(shape[3]))
        profile_min, _, profile_max = self.engine.get_tensor_profile_shape("images", 0)
        self.batch_range = (int(profile_min[0]), int(profile_max[0]))
        info = read_engine_info(path)
        if info is None:
            from dfine_cli.checkpoints import ModelInfo

            log.info("%s has no %s: class names default to COCO", path.name,
                     engine_sidecar(path).name)
            names80, ids80 = ModelInfo.default_names(80)
            info = EngineInfo(names80, ids80, img_size, "unknown", *self.batch_range,
                              self.batch_range[1])
        self.info = info
        self.meta = BackendMeta(
            img_size=img_size, class_names=list(info.class_names),
            category_ids=list(info.category_ids), dynamic_batch=int(shape[0]) == -1,
            description=f"tensorrt {trt.__version__} ({dev}, {info.precision})",
        )

    def __call__(
        self, images: np.ndarray, orig_sizes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        torch = self._torch
        batch = int(images.shape[0])
        low, high = self.batch_range
        if not low <= batch <= high:
            raise UsageError(f"this engine takes batches of {low}..{high} images, got {batch}")
        with torch.cuda.device(self.device):
            stream = torch.cuda.current_stream(self.device)
            inputs = {
                "images": torch.from_numpy(np.ascontiguousarray(images)).to(
                    self.device, self._dtypes["images"]),
                "orig_target_sizes": torch.from_numpy(np.ascontiguousarray(orig_sizes)).to(
                    self.device, self._dtypes["orig_target_sizes"]),
            }
            for name, tensor in inputs.items():
                self.context.set_input_shape(name, tuple(tensor.shape))
                self.context.set_tensor_address(name, tensor.data_ptr())
            outputs = {}
            for name in OUTPUT_NAMES:
                shape = tuple(self.context.get_tensor_shape(name))
                outputs[name] = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
                self.context.set_tensor_address(name, outputs[name].data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise CheckpointError("TensorRT failed to run the engine")
            stream.synchronize()
        return (
            outputs["labels"].to(torch.int64).cpu().numpy(),
            outputs["boxes"].float().cpu().numpy(),
            outputs["scores"].float().cpu().numpy(),
        )
