"""INT8 TensorRT engines by explicit quantization: a calibrated Q/DQ ONNX, then a strongly typed build.

TensorRT 10.1 deprecated implicit INT8 (``BuilderFlag.INT8`` with an ``IInt8EntropyCalibrator2``
attached to the builder config) and TensorRT 11 removed it with every other weak-typing API:
INT8 now comes only from ``QuantizeLinear``/``DequantizeLinear`` pairs in the network. So the
calibration happens before TensorRT sees the model:

1. the float32 ONNX is exported from the checkpoint (the same export as ``dfine export``);
2. ONNX Runtime's static quantization runs it on calibration images, picks each quantized
   activation's range by entropy calibration (the KL-divergence method of TensorRT's entropy
   calibrator) and writes Q/DQ pairs before the chosen operators (convolutions by default);
3. TensorRT builds that graph strongly typed, as :func:`~dfine_cli.export.tensorrt.build_engine`
   builds every engine: the quantized convolutions run in INT8, everything else in float32.

The Q/DQ pairs follow TensorRT's conventions: signed INT8, symmetric (zero point 0),
per-output-channel weight scales, biases left in float. Steps 1 and 2 run on a CPU (tested
without a GPU); step 3 needs a GPU and TensorRT.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dfine_cli.errors import ExportError, UsageError, require
from dfine_cli.fileio import atomic_path, write_json

log = logging.getLogger("dfine.export.tensorrt_int8")

#: ONNX operator types whose inputs are quantized by default: the convolutions of the backbone
#: and encoder carry most of the arithmetic; the decoder's box-distribution heads stay float.
DEFAULT_QUANTIZED_OPS: tuple[str, ...] = ("Conv",)


def calibration_batches(
    images: Sequence[np.ndarray], img_size: tuple[int, int], batch_size: int = 1
) -> list[dict[str, np.ndarray]]:
    """ONNX feeds for calibration: ``images`` resized as predict does, with their own sizes.

    Args:
        images: RGB uint8 ``HxWx3`` arrays.
        img_size: network input ``(h, w)`` in pixels.
        batch_size: images per feed (the last feed may be smaller).

    Returns:
        ``[{"images": float32 [B,3,h,w] in 0..1, "orig_target_sizes": int64 [B,2] (w, h)}]``.

    Raises:
        UsageError: no images, or ``batch_size < 1``.
    """
    from dfine_cli.detector import preprocess

    if not images:
        raise UsageError("INT8 calibration needs at least one image")
    if batch_size < 1:
        raise UsageError(f"the calibration batch size must be at least 1, got {batch_size}")
    feeds = []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start : start + batch_size])
        sizes = np.array([[im.shape[1], im.shape[0]] for im in chunk], dtype=np.int64)
        feeds.append({"images": preprocess(chunk, img_size), "orig_target_sizes": sizes})
    return feeds


def _data_reader(feeds: Sequence[dict[str, np.ndarray]]) -> Any:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over ``feeds`` (read once)."""
    quantization = require("onnxruntime.quantization", "onnx")

    class FeedReader(quantization.CalibrationDataReader):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            self._feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    return FeedReader()


def quantize_onnx_int8(
    source: str | Path,
    output: str | Path,
    feeds: Sequence[dict[str, np.ndarray]],
    *,
    op_types: Sequence[str] = DEFAULT_QUANTIZED_OPS,
    method: str = "entropy",
) -> Path:
    """Write a Q/DQ (explicitly quantized) copy of the float32 ONNX ``source`` to ``output``.

    Args:
        feeds: calibration inputs, e.g. from :func:`calibration_batches`.
        op_types: ONNX operator types whose inputs get Q/DQ pairs.
        method: ``entropy`` (KL divergence, TensorRT's calibrator), ``percentile`` or ``minmax``.

    Raises:
        UsageError: unknown method or no feeds; ExportError: ONNX Runtime failed.
    """
    quantization = require("onnxruntime.quantization", "onnx")
    methods = {
        "entropy": quantization.CalibrationMethod.Entropy,
        "percentile": quantization.CalibrationMethod.Percentile,
        "minmax": quantization.CalibrationMethod.MinMax,
    }
    if method not in methods:
        raise UsageError(f"unknown calibration method {method!r}; one of {', '.join(methods)}")
    if not feeds:
        raise UsageError("INT8 calibration needs at least one batch of images")
    output = Path(output)
    with atomic_path(output) as tmp:
        try:
            quantization.quantize_static(
                str(source), str(tmp), _data_reader(feeds),
                quant_format=quantization.QuantFormat.QDQ,
                op_types_to_quantize=list(op_types),
                per_channel=True,
                activation_type=quantization.QuantType.QInt8,
                weight_type=quantization.QuantType.QInt8,
                calibrate_method=methods[method],
                extra_options={
                    "ActivationSymmetric": True,  # TensorRT: zero point 0
                    "WeightSymmetric": True,
                    "QuantizeBias": False,  # TensorRT dequantizes no INT32 bias
                },
            )
        except Exception as exc:  # ONNX Runtime raises many types
            raise ExportError(
                f"INT8 quantization failed: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
            ) from exc
    return output


def count_qdq_nodes(path: str | Path) -> dict[str, int]:
    """``{"QuantizeLinear": n, "DequantizeLinear": m}`` in the ONNX graph at ``path``."""
    onnx = require("onnx", "onnx")
    proto = onnx.load(str(path))
    counts = {"QuantizeLinear": 0, "DequantizeLinear": 0}
    for node in proto.graph.node:
        if node.op_type in counts:
            counts[node.op_type] += 1
    return counts


@dataclass
class Int8EngineReport:
    """What :func:`export_int8_engine` built."""

    path: Path
    source: Path
    img_size: tuple[int, int]
    calibration_images: int
    method: str
    op_types: list[str]
    qdq_nodes: dict[str, int] = field(default_factory=dict)
    tensorrt_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "source": str(self.source),
            "precision": "int8",
            "img_size": list(self.img_size),
            "calibration_images": self.calibration_images,
            "calibration_method": self.method,
            "quantized_ops": self.op_types,
            "qdq_nodes": self.qdq_nodes,
            "tensorrt_version": self.tensorrt_version,
        }


def export_int8_engine(
    checkpoint: str | Path,
    output: str | Path,
    calibration_images: Sequence[np.ndarray],
    *,
    img_size: tuple[int, int] | None = None,
    variant: str | None = None,
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    workspace_gb: float | None = None,
    op_types: Sequence[str] = DEFAULT_QUANTIZED_OPS,
    method: str = "entropy",
) -> Int8EngineReport:
    """Build an INT8 engine of ``checkpoint`` calibrated on ``calibration_images`` (RGB uint8).

    The engine and its ``<engine>.json`` (precision ``int8``) appear only if the build succeeds.
    INT8 accuracy depends on the calibration images, so nothing here checks it against a
    tolerance: compare the engine's outputs with the float model to see what it costs.

    Raises:
        UsageError: bad options; HardwareError/DependencyError: no GPU, TensorRT or ONNX
        Runtime; ExportError: export, quantization or build failed.
    """
    from dfine_cli.backends.tensorrt_backend import EngineInfo, engine_sidecar, require_tensorrt
    from dfine_cli.checkpoint import load_weights, read_checkpoint
    from dfine_cli.export.onnx import export_onnx
    from dfine_cli.export.tensorrt import batch_profile, build_engine
    from dfine_cli.models.build import build_model_from_config

    checkpoint, output = Path(checkpoint), Path(output)
    if output.suffix.lower() not in (".engine", ".trt", ".plan"):
        raise UsageError(f"an engine file ends in .engine, .trt or .plan, got {output.name}")
    profile = batch_profile(min_batch, opt_batch, max_batch, None)
    require_tensorrt()  # before the slow CPU work
    ckpt = read_checkpoint(checkpoint, variant=variant)
    model = build_model_from_config(ckpt.info.config)
    load_weights(model, ckpt.state_dict, source=str(checkpoint))
    size = img_size or ckpt.info.img_size
    feeds = calibration_batches(calibration_images, size)
    with tempfile.TemporaryDirectory(prefix="dfine-int8-") as tmp_dir:
        fp32_onnx = Path(tmp_dir) / "model.onnx"
        export_onnx(model, ckpt.info, fp32_onnx, img_size=size, check=False)
        qdq_onnx = quantize_onnx_int8(fp32_onnx, Path(tmp_dir) / "model.int8.onnx", feeds,
                                      op_types=op_types, method=method)
        report = Int8EngineReport(output, checkpoint, size, len(calibration_images), method,
                                  list(op_types), count_qdq_nodes(qdq_onnx))
        log.info("calibrated on %d images: %s", len(calibration_images), report.qdq_nodes)
        with atomic_path(output) as tmp:
            report.tensorrt_version = build_engine(
                qdq_onnx, tmp, profile=profile, img_size=size, precision="int8",
                dynamic_batch=True, workspace_gb=workspace_gb,
            )
            info = EngineInfo(
                class_names=list(ckpt.info.class_names),
                category_ids=[int(i) for i in ckpt.info.category_ids], img_size=size,
                precision="int8", min_batch=profile.min, opt_batch=profile.opt,
                max_batch=profile.max, tensorrt_version=report.tensorrt_version,
            )
            write_json(engine_sidecar(output), info.to_dict())
    return report
