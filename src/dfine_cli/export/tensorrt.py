"""TensorRT engines: build from ONNX with the TensorRT Python API, then check against a reference.

An engine computes in the types its ONNX graph declares (strong typing), so an FP16 engine is
built from the mixed-precision ONNX of :mod:`dfine_cli.export.mixed_precision`; every engine is
checked against the torch model (or, built from an ``.onnx``, against ONNX Runtime on the
CPU) within the tolerances of :mod:`dfine_cli.export.engine_check`, and written only if it
agrees.

:func:`batch_profile` is tested without a GPU; :func:`build_engine`, :func:`export_engine`
and :func:`export_engine_from_onnx` need a GPU and TensorRT.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dfine_cli.checkpoints import ModelInfo
from dfine_cli.errors import ExportError, UsageError
from dfine_cli.export.engine_check import EngineCheck, Outputs, check_outputs, tolerance_for
from dfine_cli.export.mixed_precision import (
    OnnxDescription,
    describe_onnx,
    export_mixed_precision_onnx,
)
from dfine_cli.export.onnx import check_inputs
from dfine_cli.fileio import atomic_path, write_json
from dfine_cli.models.dfine import DFINE

log = logging.getLogger("dfine.export.tensorrt")

#: The file suffixes of a serialized engine.
ENGINE_SUFFIXES = (".engine", ".trt", ".plan")


# --------------------------------------------------------------------------- profile


@dataclass(frozen=True)
class BatchProfile:
    """Batch sizes of a TensorRT optimisation profile: valid ``min..max``, tuned for ``opt``."""

    min: int
    opt: int
    max: int

    def shapes(self, img_size: tuple[int, int]) -> dict[str, tuple[tuple[int, ...], ...]]:
        """``{input name: (min shape, opt shape, max shape)}`` for ``images`` and sizes."""
        h, w = img_size
        return {
            "images": tuple((b, 3, h, w) for b in (self.min, self.opt, self.max)),
            "orig_target_sizes": tuple((b, 2) for b in (self.min, self.opt, self.max)),
        }


def batch_profile(
    min_batch: int | None, opt_batch: int | None, max_batch: int | None, onnx_batch: int | None
) -> BatchProfile:
    """Validate ``--min/--opt/--max-batch`` against the ONNX model's batch axis.

    Args:
        onnx_batch: the fixed batch size of the ONNX input, ``None`` when it is dynamic.

    Unset values default to ``min=1``, ``max=max(min, opt, 1)`` and ``opt=min`` (latency
    at batch 1 is the common case). A static-batch model admits only its own batch size.

    Raises:
        UsageError: non-positive sizes, ``min <= opt <= max`` violated, or sizes that a
            static-batch model cannot take.
    """
    given = [v for v in (min_batch, opt_batch, max_batch) if v is not None]
    if any(v < 1 for v in given):
        raise UsageError(f"batch sizes must be at least 1, got {given}")
    if onnx_batch is not None:
        if any(v != onnx_batch for v in given):
            raise UsageError(
                f"the ONNX model has a fixed batch size {onnx_batch}; re-export it with "
                "--dynamic-batch for other batch sizes"
            )
        return BatchProfile(onnx_batch, onnx_batch, onnx_batch)
    low = min_batch if min_batch is not None else 1
    opt = opt_batch if opt_batch is not None else low
    high = max_batch if max_batch is not None else max(low, opt)
    if not low <= opt <= high:
        raise UsageError(f"batch sizes must satisfy min <= opt <= max, got {low}, {opt}, {high}")
    return BatchProfile(low, opt, high)


# --------------------------------------------------------------------------- build (GPU)


def build_engine(
    onnx_path: Path,
    output: Path,
    *,
    profile: BatchProfile,
    img_size: tuple[int, int],
    precision: str,
    dynamic_batch: bool,
    workspace_gb: float | None = None,
) -> str:
    """Parse ``onnx_path`` and write a serialized engine to ``output``; return TensorRT's version.

    The network is strongly typed: it computes in the ONNX graph's types. For FP32 builds
    TF32 is switched off so that "FP32" means float32 arithmetic.
    """
    from dfine_cli.backends.tensorrt_backend import require_tensorrt, tensorrt_major

    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if tensorrt_major(trt) < 11:  # strong typing is the only mode from TensorRT 11 on
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ExportError(f"TensorRT cannot parse the ONNX model: {errors[0] if errors else '?'}")
    config = builder.create_builder_config()
    if workspace_gb:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if dynamic_batch:
        opt_profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.shapes(img_size).items():
            opt_profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError("TensorRT could not build the engine (try a larger --workspace)")
    output.write_bytes(bytes(serialized))
    return str(trt.__version__)


@dataclass
class EngineReport:
    path: Path
    source: Path | None  # the checkpoint or ONNX built from, if known
    precision: str
    img_size: tuple[int, int]
    profile: BatchProfile
    keep_fp32: list[str]
    tensorrt_version: str = ""
    checks: list[EngineCheck] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "format": "engine",
            "source": None if self.source is None else str(self.source),
            "precision": self.precision,
            "img_size": list(self.img_size),
            "min_batch": self.profile.min,
            "opt_batch": self.profile.opt,
            "max_batch": self.profile.max,
            "keep_fp32": self.keep_fp32,
            "tensorrt_version": self.tensorrt_version,
            "checks": [c.to_dict() for c in self.checks],
        }


def export_engine(
    model: DFINE,
    info: ModelInfo,
    output: str | Path,
    *,
    fp16: bool = False,
    workspace_gb: float | None = None,
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    img_size: tuple[int, int] | None = None,
    keep_fp32: Sequence[str] = (),
    check: bool = True,
    source: str | Path | None = None,
) -> EngineReport:
    """Build and check a TensorRT engine from a loaded model.

    The ONNX is exported first (float32, or mixed precision for ``fp16``, with the modules
    named in ``keep_fp32`` in float32) at ``img_size`` ``(h, w)`` pixels (``None``: the
    model's own), and the engine is checked against the torch model. The engine and its
    ``<engine>.json`` appear only if the check passes. ``source`` is recorded in the report.

    Raises:
        UsageError: inconsistent options; HardwareError/DependencyError: no GPU or no
        TensorRT; ExportError: the build failed or the engine disagrees with the model.
    """
    from dfine_cli.backends.tensorrt_backend import require_tensorrt

    output = _engine_path(output)
    if keep_fp32 and not fp16:
        raise UsageError("--keep-fp32 names layers to keep in FP32 in an --fp16 engine")
    profile = batch_profile(min_batch, opt_batch, max_batch, None)
    require_tensorrt()  # before any slow work: one clear line if there is no GPU/TensorRT
    size = img_size or info.img_size
    with tempfile.TemporaryDirectory(prefix="dfine-engine-") as tmp_dir:
        onnx_path = Path(tmp_dir) / "model.onnx"
        if fp16:
            export_mixed_precision_onnx(model, info, onnx_path, img_size=size, keep_fp32=keep_fp32)
        else:
            from dfine_cli.export.onnx import export_onnx

            export_onnx(model, info, onnx_path, img_size=size, check=False)
        return _build_and_check(
            onnx_path, describe_onnx(onnx_path), output, _torch_reference(model),
            profile=profile, keep_fp32=keep_fp32, workspace_gb=workspace_gb, check=check,
            source=None if source is None else Path(source),
        )


def export_engine_from_onnx(
    onnx_path: str | Path,
    output: str | Path,
    *,
    fp16: bool = False,
    workspace_gb: float | None = None,
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    img_size: tuple[int, int] | None = None,
    check: bool = True,
) -> EngineReport:
    """Build and check a TensorRT engine from an exported D-FINE ``.onnx``.

    The engine keeps the file's precision (``fp16`` only confirms an FP16 ONNX) and input
    size, and is checked against ONNX Runtime on the CPU.

    Raises:
        UsageError: inconsistent options; HardwareError/DependencyError: no GPU or no
        TensorRT; ExportError: the build failed or the engine disagrees with ONNX Runtime.
    """
    from dfine_cli.backends.tensorrt_backend import require_tensorrt

    onnx_path, output = Path(onnx_path), _engine_path(output)
    description = describe_onnx(onnx_path)
    if fp16 and description.precision != "fp16":
        raise UsageError(
            f"{onnx_path.name} is float32 and TensorRT engines compute in the ONNX's types: "
            "pass the checkpoint to build an FP16 engine (dfine exports the mixed-precision "
            "ONNX itself), or convert the ONNX to FP16 first"
        )
    if img_size is not None and tuple(img_size) != description.img_size:
        raise UsageError(f"{onnx_path.name} has a fixed input size {description.img_size}")
    profile = batch_profile(min_batch, opt_batch, max_batch, description.batch)
    require_tensorrt()
    return _build_and_check(
        onnx_path, description, output, _onnx_reference(onnx_path), profile=profile,
        keep_fp32=(), workspace_gb=workspace_gb, check=check, source=onnx_path,
    )


def _engine_path(output: str | Path) -> Path:
    output = Path(output)
    if output.suffix.lower() not in ENGINE_SUFFIXES:
        raise UsageError(f"an engine file ends in .engine, .trt or .plan, got {output.name}")
    return output


def _build_and_check(
    onnx_path: Path,
    description: OnnxDescription,
    output: Path,
    reference: Callable[[np.ndarray, np.ndarray], Outputs],
    *,
    profile: BatchProfile,
    keep_fp32: Sequence[str],
    workspace_gb: float | None,
    check: bool,
    source: Path | None,
) -> EngineReport:
    """Build ``onnx_path`` into ``output`` atomically, check it against ``reference`` at the
    profile's smallest and largest batch, and write the ``<engine>.json`` sidecar."""
    from dfine_cli.backends.tensorrt_backend import EngineInfo, TensorRTBackend, engine_sidecar

    precision = description.precision
    report = EngineReport(output, source, precision, description.img_size, profile, list(keep_fp32))
    with atomic_path(output) as tmp:
        report.tensorrt_version = build_engine(
            onnx_path, tmp, profile=profile, img_size=description.img_size,
            precision=precision, dynamic_batch=description.batch is None,
            workspace_gb=workspace_gb,
        )
        if check:
            engine = TensorRTBackend(tmp)
            tolerance = tolerance_for(precision)
            for batch in sorted({profile.min, profile.max}):
                images, sizes = check_inputs(batch, description.img_size, seed=batch)
                expected = reference(images.numpy(), sizes.numpy())
                result = check_outputs(expected, engine(images.numpy(), sizes.numpy()), tolerance)
                report.checks.append(result)
                log.info("engine check %s", result.describe())
                if not result.passed:
                    raise ExportError(
                        f"the {precision} engine disagrees with the reference: {result.describe()}"
                    )
        info_out = EngineInfo(
            class_names=description.class_names, category_ids=description.category_ids,
            img_size=description.img_size, precision=precision, min_batch=profile.min,
            opt_batch=profile.opt, max_batch=profile.max,
            tensorrt_version=report.tensorrt_version,
        )
        write_json(engine_sidecar(output), info_out.to_dict())
    return report


def _torch_reference(model: DFINE) -> Callable[[np.ndarray, np.ndarray], Outputs]:
    from dfine_cli.models.dfine import DeployModel

    module = DeployModel(copy.deepcopy(model).cpu().float().eval().fuse()).eval()

    def run(images: np.ndarray, sizes: np.ndarray) -> Outputs:
        with torch.inference_mode():
            labels, boxes, scores = module(torch.from_numpy(images), torch.from_numpy(sizes))
        return labels.numpy(), boxes.numpy(), scores.numpy()

    return run


def _onnx_reference(path: Path) -> Callable[[np.ndarray, np.ndarray], Outputs]:
    from dfine_cli.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(path)

