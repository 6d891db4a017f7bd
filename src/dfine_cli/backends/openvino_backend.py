"""OpenVINO backend (CPU) for models exported by ``dfine export`` or the official script.

OpenVINO reads an ``.onnx`` file directly, or an OpenVINO IR (``.xml`` + ``.bin``, written
by ``dfine export --format openvino``, float32 or INT8). Thread count and inference precision are set
explicitly (``INFERENCE_NUM_THREADS``, ``INFERENCE_PRECISION_HINT``) so that a figure is
reproducible: left alone, OpenVINO picks bf16 by itself on CPUs with AMX, which changes
the detections slightly. ``precision="bf16"`` asks for it where the CPU supports it.

A dynamic-batch model is compiled once per batch size actually used (static shapes are
faster on CPU); the compiled models are kept, so a steady batch size compiles once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfine_cli.backends.base import BackendMeta
from dfine_cli.devices import resolve_backend_device
from dfine_cli.errors import CheckpointError, HardwareError, UsageError, require

log = logging.getLogger("dfine.backends.openvino")

#: Our precision names -> OpenVINO ``INFERENCE_PRECISION_HINT`` values.
OPENVINO_PRECISIONS: dict[str, str] = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
#: The OpenVINO CPU capability each reduced precision needs.
_CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}


def openvino_device(device: str | torch.device | None) -> str:
    """Our ``--device`` value -> an OpenVINO device name (only the CPU is supported)."""
    resolve_backend_device("openvino", device)
    return "CPU"


def meta_from_onnx_file(path: Path, img_size: tuple[int, int], dynamic_batch: bool) -> BackendMeta:
    """Class names and ids from the ``.onnx`` metadata (``dfine export`` writes them).

    Falls back to the 80 COCO classes for files without metadata (official exports), as
    the ONNX Runtime backend does. Reading metadata needs the ``onnx`` package; without it
    the fallback is used too.
    """
    props: dict[str, str] = {}
    try:
        import onnx
    except ImportError:
        log.debug("onnx is not installed: class names fall back to COCO")
    else:
        proto = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in proto.metadata_props}
    return _meta(props, img_size, dynamic_batch)


def ir_metadata(model: Any) -> dict[str, str]:
    """The metadata an IR carries in ``rt_info``: ``dfine`` (ours), else ``framework``
    (what OpenVINO copies from an ONNX file's metadata)."""
    props: dict[str, str] = {}
    for section in ("framework", "dfine"):  # ours last: it wins
        for key in ("class_names", "category_ids", "precision", "variant", "model"):
            if model.has_rt_info([section, key]):
                props[key] = str(model.get_rt_info([section, key]).astype(str))
    return props


def _meta(props: dict[str, str], img_size: tuple[int, int], dynamic_batch: bool) -> BackendMeta:
    names: list[str] = json.loads(props["class_names"]) if "class_names" in props else []
    ids: list[int] = json.loads(props["category_ids"]) if "category_ids" in props else []
    if not names:
        from dfine_cli.checkpoints import ModelInfo

        names, ids = ModelInfo.default_names(80)
    return BackendMeta(
        img_size=img_size, class_names=names, category_ids=ids or list(range(len(names))),
        dynamic_batch=dynamic_batch, description="openvino",
    )


def check_precision_supported(precision: str, capabilities: list[str]) -> None:
    """Raise if ``precision`` is unknown or this CPU cannot run it (pure: capabilities given)."""
    if precision not in OPENVINO_PRECISIONS:
        raise UsageError(
            f"OpenVINO precision must be one of {', '.join(OPENVINO_PRECISIONS)}, got {precision!r}"
        )
    needed = _CAPABILITY.get(precision)
    if needed is not None and needed not in capabilities:
        raise HardwareError(
            f"this CPU cannot run {precision} in OpenVINO (its capabilities: "
            f"{', '.join(capabilities) or 'none reported'}); use fp32"
        )


def check_openvino_precision(precision: str, device: str | torch.device | None = "cpu",
                             core: Any = None) -> None:
    """Raise before any work when this machine's OpenVINO device cannot run ``precision``
    (``core``: an ``openvino.Core`` to ask, else a new one)."""
    if core is None:
        core = require("openvino", "openvino").Core()
    capabilities = core.get_property(openvino_device(device), "OPTIMIZATION_CAPABILITIES")
    check_precision_supported(precision, [str(c) for c in capabilities])


class OpenVINOBackend:
    """``(images [N,3,H,W] float32, orig_sizes [N,2] int64) -> (labels, boxes, scores)``."""

    def __init__(
        self,
        path: Path,
        *,
        threads: int | None = None,
        precision: str = "fp32",
        device: str | torch.device | None = "cpu",
    ) -> None:
        ov = require("openvino", "openvino")
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".onnx", ".xml"):
            raise UsageError(f"the OpenVINO backend reads .onnx or OpenVINO IR .xml files, got {path.name}")
        if not path.is_file():
            raise CheckpointError(f"{'ONNX' if suffix == '.onnx' else 'OpenVINO IR'} model not found: {path}")
        if suffix == ".xml" and not path.with_suffix(".bin").is_file():
            raise CheckpointError(f"{path.name}: its weights file {path.with_suffix('.bin').name} is missing")
        self._ov = ov
        self.core = ov.Core()
        self.device = openvino_device(device)
        check_openvino_precision(precision, device, self.core)
        self.precision = precision
        try:
            self.model = self.core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError with a long report
            from dfine_cli.checkpoints import NOT_A_CHECKPOINT

            raise CheckpointError(
                f"{NOT_A_CHECKPOINT}: OpenVINO cannot read {path}: "
                f"{str(exc).strip().splitlines()[-1][:200]}"
            ) from exc
        names = {port.get_any_name() for port in self.model.inputs}
        if not {"images", "orig_target_sizes"} <= names:
            from dfine_cli.checkpoints import NOT_A_CHECKPOINT

            raise CheckpointError(
                f"{NOT_A_CHECKPOINT}: the ONNX model does not have the D-FINE inputs 'images' "
                "and 'orig_target_sizes'"
            )
        shape = self.model.input("images").get_partial_shape()
        if shape[2].is_dynamic or shape[3].is_dynamic:
            raise CheckpointError(f"{path.name}: the input height and width must be fixed")
        img_size = (shape[2].get_length(), shape[3].get_length())
        self._fixed_batch = None if shape[0].is_dynamic else shape[0].get_length()
        self.config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision],
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": 1,
        }
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self._compiled: dict[int, tuple[Any, Any]] = {}
        if suffix == ".onnx":
            self.meta = meta_from_onnx_file(path, img_size, dynamic_batch=self._fixed_batch is None)
            self.weights_precision = "fp32"
        else:
            props = ir_metadata(self.model)
            self.meta = _meta(props, img_size, dynamic_batch=self._fixed_batch is None)
            self.weights_precision = props.get("precision", "fp32")
        int8 = "int8 weights, " if self.weights_precision == "int8" else ""
        self.meta.description = (
            f"openvino {ov.get_version().split('-')[0]} ({self.device}, {int8}{precision}"
            f"{f', {threads} threads' if threads else ''})"
        )

    def _request(self, batch: int) -> tuple[Any, Any]:
        """A compiled model and infer request for ``batch`` images (compiled on first use)."""
        key = batch if self._fixed_batch is None else self._fixed_batch
        if key not in self._compiled:
            model = self.model
            if self._fixed_batch is None:
                model = self.model.clone()
                h, w = self.meta.img_size
                model.reshape({"images": [batch, 3, h, w], "orig_target_sizes": [batch, 2]})
            compiled = self.core.compile_model(model, self.device, self.config)
            self._compiled[key] = (compiled, compiled.create_infer_request())
            log.debug("compiled for batch %d: %s", key, self.config)
        return self._compiled[key]

    def __call__(
        self, images: np.ndarray, orig_sizes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        batch = int(images.shape[0])
        if self._fixed_batch is not None and batch != self._fixed_batch:
            raise UsageError(f"this model has a fixed batch size {self._fixed_batch}, got {batch}")
        compiled, request = self._request(batch)
        result = request.infer(
            {
                "images": np.ascontiguousarray(images, dtype=np.float32),
                "orig_target_sizes": np.ascontiguousarray(orig_sizes, dtype=np.int64),
            }
        )
        return (
            np.asarray(result[compiled.output("labels")]).astype(np.int64, copy=False),
            np.asarray(result[compiled.output("boxes")], dtype=np.float32),
            np.asarray(result[compiled.output("scores")], dtype=np.float32),
        )

    def node_counters(self, batch: int = 1) -> list[Any]:
        """OpenVINO's per-node counters (``openvino.ProfilingInfo``: node name and type, the
        kernel it ran, its time) of the last inference at ``batch`` images. They are collected
        only with ``self.config["PERF_COUNT"] = True`` set before that batch's first call."""
        return list(self._request(batch)[1].get_profiling_info())

    def runtime_precision(self) -> str:
        """The precision OpenVINO actually runs (``fp32``, ``bf16``...), read back from a
        compiled model."""
        compiled, _ = self._request(self._fixed_batch or 1)
        value = compiled.get_property("INFERENCE_PRECISION_HINT")
        name = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
        ours = {v: k for k, v in OPENVINO_PRECISIONS.items()}
        return ours.get(name, name)
