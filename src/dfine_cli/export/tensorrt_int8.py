"""INT8 TensorRT engines by explicit quantization: a calibrated Q/DQ ONNX, then a strongly typed build.

TensorRT 10.1 deprecated implicit INT8 (``BuilderFlag.INT8`` with an ``IInt8EntropyCalibrator2``
attached to the builder config) and TensorRT 11 removed it with every other weak-typing API:
INT8 now comes only from ``QuantizeLinear``/``DequantizeLinear`` pairs in the network. So the
calibration happens before TensorRT sees the model:

1. the float32 ONNX is exported from the checkpoint (the same export as ``dfine export``);
2. ONNX Runtime's static quantization runs it on calibration images, picks each quantized
   activation's range by entropy calibration (the KL-divergence method of the deprecated
   ``IInt8EntropyCalibrator2``) and writes Q/DQ pairs before the chosen operators
   (convolutions by default); the images are read lazily and fed a few at a time
   (:class:`CalibrationFeeds`), so 300 of them at 640x640 fit in a small memory;
3. TensorRT builds that graph strongly typed, as :func:`~dfine_cli.export.tensorrt.build_engine`
   builds every engine: the quantized convolutions run in INT8, everything else in float32.

The Q/DQ pairs follow TensorRT's conventions: signed INT8, symmetric (zero point 0),
per-output-channel weight scales, biases left in float. Steps 1 and 2 run on a CPU (tested
without a GPU); step 3 needs a GPU and TensorRT.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dfine_cli.errors import DfineError, ExportError, UsageError, require
from dfine_cli.fileio import atomic_path, write_json

if TYPE_CHECKING:
    from dfine_cli.checkpoints import ModelInfo
    from dfine_cli.models.dfine import DFINE

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


class CalibrationFeeds:
    """ONNX Runtime's calibration data reader, reading and preprocessing images only when asked.

    Implements the ``onnxruntime.quantization.CalibrationDataReader`` protocol (``get_next``,
    ``__len__``, ``set_range``) without importing ONNX Runtime. Holding every preprocessed
    image at once would take 4.9 MB each at 640x640 (1.5 GB for 300); here at most one feed is
    alive, and ONNX Runtime is handed the feeds a chunk at a time (see :func:`chunk_size`).

    Args:
        images: image paths or RGB uint8 ``HxWx3`` arrays.
        img_size: network input ``(h, w)`` in pixels.

    Raises:
        UsageError: no images.
    """

    def __init__(self, images: Sequence[Path | np.ndarray], img_size: tuple[int, int]) -> None:
        if not images:
            raise UsageError("INT8 calibration needs at least one image")
        self.images = list(images)
        self.img_size = img_size
        self._indices: Iterator[int] = iter(range(len(self.images)))

    def __len__(self) -> int:
        return len(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve feeds ``start_index .. end_index - 1`` next."""
        self._indices = iter(range(max(0, start_index), min(end_index, len(self.images))))

    def rewind(self) -> None:
        """Serve every feed again from the first."""
        self.set_range(0, len(self.images))

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next feed (``images`` float32 ``[1,3,h,w]`` in 0..1, ``orig_target_sizes``
        int64 ``[1,2]`` (w, h)), or ``None`` at the end of the range."""
        index = next(self._indices, None)
        if index is None:
            return None
        image = self.images[index]
        if not isinstance(image, np.ndarray):
            from dfine_cli.media import read_image_rgb

            image = read_image_rgb(image)
        return calibration_batches([image], self.img_size)[0]


def chunk_size(count: int, largest: int = 8) -> int:
    """The largest divisor of ``count`` not above ``largest``: feeds per ONNX Runtime pass.

    The entropy calibrator keeps every activation of a pass in memory before it folds them
    into its histograms; passes of a few images bound that memory. ONNX Runtime needs the
    chunk size to divide the number of feeds.
    """
    if count < 1 or largest < 1:
        raise UsageError(f"chunk size of {count} feeds (at most {largest}) is undefined")
    return max(d for d in range(1, min(count, largest) + 1) if count % d == 0)


def quantize_onnx_int8(
    source: str | Path,
    output: str | Path,
    feeds: CalibrationFeeds,
    *,
    op_types: Sequence[str] = DEFAULT_QUANTIZED_OPS,
    method: str = "entropy",
) -> Path:
    """Write a Q/DQ (explicitly quantized) copy of the float32 ONNX ``source`` to ``output``.

    Args:
        feeds: the calibration images (read in chunks of :func:`chunk_size` feeds).
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
    if len(feeds) == 0:
        raise UsageError("INT8 calibration needs at least one image")
    feeds.rewind()
    output = Path(output)
    with atomic_path(output) as tmp:
        try:
            # ONNX Runtime prints its progress on stdout; stdout carries results (e.g. --json)
            with contextlib.redirect_stdout(sys.stderr):
                quantization.quantize_static(
                    str(source), str(tmp), feeds,
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
                        "CalibStridedMinMax": chunk_size(len(feeds)),  # chunks, any method
                    },
                )
        except DfineError:  # e.g. an unreadable calibration image: its own message
            raise
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


def check_int8_engine_options(
    source: Path,
    *,
    int8: bool,
    data: Path | None,
    calib_images: int | None,
    fp16: bool = False,
    keep_fp32: Sequence[str] = (),
) -> None:
    """Raise :class:`UsageError` for ``dfine export --format engine`` INT8 options that do not fit.

    ``--calib-images`` and ``--data`` need ``--int8``; ``--int8`` needs ``--data``, a
    checkpoint (the calibrated Q/DQ graph is made from the model, not from an ONNX file) and
    no ``--fp16``/``--keep-fp32`` (an INT8 engine keeps float32 where it is not quantized).
    """
    if not int8:
        if calib_images is not None or data is not None:
            raise UsageError("--calib-images and --data apply with --int8 only")
        return
    if fp16 or keep_fp32:
        raise UsageError(f"{'--fp16' if fp16 else '--keep-fp32'} does not apply with --int8 (an "
                         "INT8 engine runs the layers it does not quantize in float32)")
    if Path(source).suffix.lower() == ".onnx":
        raise UsageError(f"an INT8 engine is built from a checkpoint, not from {Path(source).name}: "
                         "give the checkpoint the ONNX was exported from")
    if data is None:
        raise UsageError("--int8 needs calibration images: --data DIR")


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
    precision: str = "int8"
    #: INT8 changes scores by design: no float tolerance applies, so nothing is checked
    #: (the field keeps the shape of :class:`~dfine_cli.export.tensorrt.EngineReport`).
    checks: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": "engine",
            "source": str(self.source),
            "precision": self.precision,
            "img_size": list(self.img_size),
            "calibration_images": self.calibration_images,
            "calibration_method": self.method,
            "quantized_ops": self.op_types,
            "qdq_nodes": self.qdq_nodes,
            "tensorrt_version": self.tensorrt_version,
            "checks": [],
        }


def export_int8_engine(
    model: DFINE,
    info: ModelInfo,
    output: str | Path,
    calibration_images: Sequence[Path | np.ndarray],
    *,
    source: str | Path | None = None,
    img_size: tuple[int, int] | None = None,
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    workspace_gb: float | None = None,
    op_types: Sequence[str] = DEFAULT_QUANTIZED_OPS,
    method: str = "entropy",
) -> Int8EngineReport:
    """Build an INT8 engine of the loaded ``model`` calibrated on ``calibration_images`` (paths
    or RGB uint8 ``HxWx3`` arrays; e.g. :func:`dfine_cli.export.int8.calibration_images`).
    ``source`` names the checkpoint in the report.

    The engine and its ``<engine>.json`` (precision ``int8``) appear only if the build succeeds.
    INT8 accuracy depends on the calibration images, so nothing here checks it against a
    tolerance: compare the engine's outputs with the float model to see what it costs.

    Raises:
        UsageError: bad options; HardwareError/DependencyError: no GPU, TensorRT or ONNX
        Runtime; ExportError: export, quantization or build failed.
    """
    from dfine_cli.backends.tensorrt_backend import EngineInfo, engine_sidecar, require_tensorrt
    from dfine_cli.export.onnx import export_onnx
    from dfine_cli.export.tensorrt import batch_profile, build_engine

    output = Path(output)
    if output.suffix.lower() not in (".engine", ".trt", ".plan"):
        raise UsageError(f"an engine file ends in .engine, .trt or .plan, got {output.name}")
    profile = batch_profile(min_batch, opt_batch, max_batch, None)
    require_tensorrt()  # before the slow CPU work
    size = img_size or info.img_size
    feeds = CalibrationFeeds(calibration_images, size)
    with tempfile.TemporaryDirectory(prefix="dfine-int8-") as tmp_dir:
        fp32_onnx = Path(tmp_dir) / "model.onnx"
        export_onnx(model, info, fp32_onnx, img_size=size, check=False)
        qdq_onnx = quantize_onnx_int8(fp32_onnx, Path(tmp_dir) / "model.int8.onnx", feeds,
                                      op_types=op_types, method=method)
        report = Int8EngineReport(output, Path(source) if source is not None else output, size,
                                  len(calibration_images), method,
                                  list(op_types), count_qdq_nodes(qdq_onnx))
        log.info("calibrated on %d images: %s", len(calibration_images), report.qdq_nodes)
        with atomic_path(output) as tmp:
            report.tensorrt_version = build_engine(
                qdq_onnx, tmp, profile=profile, img_size=size, precision="int8",
                dynamic_batch=True, workspace_gb=workspace_gb,
            )
            sidecar = EngineInfo(
                class_names=list(info.class_names),
                category_ids=[int(i) for i in info.category_ids], img_size=size,
                precision="int8", min_batch=profile.min, opt_batch=profile.opt,
                max_batch=profile.max, tensorrt_version=report.tensorrt_version,
            )
            write_json(engine_sidecar(output), sidecar.to_dict())
    return report
