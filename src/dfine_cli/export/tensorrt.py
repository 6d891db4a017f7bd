"""TensorRT engines: build from ONNX with the TensorRT Python API, then check against a reference.

Precision follows TensorRT's strong typing (the only mode of TensorRT 11, opted into on 10):
an engine computes in the types its ONNX graph declares. So an FP16 engine is built from a
mixed-precision ONNX that dfine exports itself from the checkpoint: the network in float16,
the postprocessor (top-K, scaling boxes to original pixels, where float16 would cost up to a
pixel) in float32, and any module named with ``keep_fp32`` in float32 too. That ONNX is
ordinary ONNX, so it is checked on a CPU with ONNX Runtime like any other export.

Engine-independent parts, tested without a GPU: the optimisation profile
(:func:`batch_profile`), the tolerance policy (:data:`TOLERANCES`, :func:`check_outputs`),
the mixed-precision ONNX (:func:`export_mixed_precision_onnx`) and the result table
(:func:`check_table`). :func:`build_engine` and :func:`export_engine` need a GPU and TensorRT.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dfine_cli.checkpoint import ModelInfo
from dfine_cli.errors import ExportError, UsageError, require
from dfine_cli.export.compare import UnmatchedDetection, compare_detections
from dfine_cli.export.onnx import (
    INPUT_NAMES,
    check_inputs,
    model_metadata,
    simplify_onnx,
    trace_to_onnx,
)
from dfine_cli.fileio import atomic_path, write_json
from dfine_cli.models.dfine import DFINE
from dfine_cli.models.postprocess import PostProcessor

log = logging.getLogger("dfine.export.tensorrt")

#: The ONNX opset engines are built from (the issue's floor; TensorRT parses 17+ well).
MIN_ENGINE_OPSET = 17
ENGINE_PRECISIONS = ("fp32", "fp16")


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


# --------------------------------------------------------------------------- tolerance


@dataclass(frozen=True)
class Tolerance:
    """How far an engine's detections may be from the reference's.

    ``score``: max absolute score difference, rank by rank (scores are sorted) and for
    matched detections. ``box_px``: max absolute box-coordinate difference in pixels of the
    check images. ``min_score``: only detections the reference scores at least this high
    are matched (FP16 reorders the low-score tail freely; it is not what anyone keeps).
    """

    score: float
    box_px: float
    min_score: float = 0.0


#: FP32 must agree closely (TF32 is switched off for FP32 builds); FP16 within what half
#: precision through ~100 layers gives.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(score=1e-3, box_px=1.0, min_score=0.0),
    "fp16": Tolerance(score=3e-2, box_px=4.0, min_score=0.1),
}


def tolerance_for(precision: str) -> Tolerance:
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise UsageError(f"unknown engine precision {precision!r}; one of {ENGINE_PRECISIONS}") from None


@dataclass(frozen=True)
class EngineCheck:
    """The outcome of running the same batch through the engine and the reference.

    Every figure is finite: ``max_box_diff`` is over matched detections, and a detection
    without a partner is described by ``worst_unmatched``; ``problem`` names a mismatch
    that prevents any comparison (different output shapes).
    """

    batch: int
    max_score_diff: float
    max_box_diff: float  # pixels, over matched detections
    matched_fraction: float  # of compared detections
    compared: int  # detections compared for boxes (reference score >= min_score)
    tolerance: Tolerance
    worst_unmatched: UnmatchedDetection | None = None
    problem: str | None = None

    @property
    def passed(self) -> bool:
        return (
            self.problem is None
            and self.max_score_diff <= self.tolerance.score
            and self.max_box_diff <= self.tolerance.box_px
            and self.matched_fraction >= 1.0
        )

    def describe(self) -> str:
        if self.problem is not None:
            return f"batch {self.batch}: {self.problem}"
        text = (
            f"batch {self.batch}: max |score diff| {self.max_score_diff:.3g} "
            f"(tolerance {self.tolerance.score:g}), max |box diff| {self.max_box_diff:.3g} px "
            f"(tolerance {self.tolerance.box_px:g}), {self.matched_fraction:.1%} of "
            f"{self.compared} detections matched"
        )
        if self.worst_unmatched is not None:
            text += f"; worst unmatched: {self.worst_unmatched.describe()}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "max_score_diff": self.max_score_diff,
            "max_box_diff_px": self.max_box_diff,
            "matched_fraction": self.matched_fraction,
            "compared": self.compared,
            "tolerance": dataclasses.asdict(self.tolerance),
            "worst_unmatched": None if self.worst_unmatched is None else self.worst_unmatched.to_dict(),
            "problem": self.problem,
            "passed": self.passed,
        }


Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]


def check_outputs(expected: Outputs, actual: Outputs, tolerance: Tolerance) -> EngineCheck:
    """Compare ``(labels [B,K], boxes [B,K,4], scores [B,K])`` of an engine with a reference.

    Scores are compared rank by rank over all ``K`` (both are sorted, so reordering of equal
    scores does not matter); boxes and labels over the reference's detections scoring at
    least ``tolerance.min_score``, tie-aware and one to one (see
    :func:`~dfine_cli.export.compare.compare_detections`).
    """
    e_labels, e_boxes, e_scores = (np.asarray(a) for a in expected)
    a_labels, a_boxes, a_scores = (np.asarray(a) for a in actual)
    batch = int(e_scores.shape[0]) if e_scores.ndim else 0
    if e_scores.shape != a_scores.shape or e_boxes.shape != a_boxes.shape:
        problem = (f"output shapes differ: scores {a_scores.shape}, boxes {a_boxes.shape} "
                   f"(reference {e_scores.shape}, {e_boxes.shape})")
        return EngineCheck(batch, 0.0, 0.0, 0.0, 0, tolerance, problem=problem)
    max_score = float(np.abs(e_scores.astype(np.float64) - a_scores).max()) if e_scores.size else 0.0
    worst_box, matched, compared = 0.0, 0.0, 0
    worst: UnmatchedDetection | None = None
    for b in range(batch):
        k = int((e_scores[b] >= tolerance.min_score).sum())
        if k == 0:
            continue
        part = compare_detections(
            (e_labels[b : b + 1, :k], e_boxes[b : b + 1, :k], e_scores[b : b + 1, :k]),
            (a_labels[b : b + 1, :k], a_boxes[b : b + 1, :k], a_scores[b : b + 1, :k]),
            score_tol=tolerance.score,
            box_tol=tolerance.box_px,
        )
        worst_box = max(worst_box, part.max_box_diff)
        matched += part.matched_fraction * part.compared
        compared += part.compared
        if part.worst_unmatched is not None and worst is None:
            worst = dataclasses.replace(part.worst_unmatched, image=b)
    fraction = matched / compared if compared else 1.0
    return EngineCheck(batch, max_score, worst_box, fraction, compared, tolerance, worst)


CHECK_COLUMNS = ("batch", "max score diff", "max box diff (px)", "matched", "tolerance", "result")


def check_table(checks: Sequence[EngineCheck]) -> list[tuple[str, ...]]:
    """Rows for :data:`CHECK_COLUMNS`, one per checked batch size."""
    return [
        (
            str(c.batch),
            f"{c.max_score_diff:.3g}",
            f"{c.max_box_diff:.3g}",
            f"{c.matched_fraction:.1%} of {c.compared}",
            f"score {c.tolerance.score:g}, box {c.tolerance.box_px:g} px",
            "ok" if c.passed else "FAILED",
        )
        for c in checks
    ]


# --------------------------------------------------------------------------- mixed precision ONNX


def _cast_floats(value: Any, dtype: torch.dtype) -> Any:
    """Cast every floating tensor inside tensors, tuples, lists, dicts and dataclasses."""
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_cast_floats(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast_floats(v, dtype) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value, **{f.name: _cast_floats(getattr(value, f.name), dtype)
                      for f in dataclasses.fields(value) if f.init}
        )
    return value


def select_modules(model: nn.Module, patterns: Sequence[str]) -> dict[str, nn.Module]:
    """Submodules of ``model`` whose dotted names match any glob in ``patterns``.

    A leading ``model.`` is ignored (names as printed by ``print(model)`` of the deploy module).

    Raises:
        UsageError: a pattern matches nothing.
    """
    named = dict(model.named_modules())
    named.pop("", None)
    chosen: dict[str, nn.Module] = {}
    for raw in patterns:
        pattern = raw.removeprefix("model.")
        hits = {n: m for n, m in named.items() if fnmatch.fnmatchcase(n, pattern)}
        if not hits:
            tops = sorted({n.split(".")[0] for n in named})
            raise UsageError(
                f"--keep-fp32 {raw!r} names no module; names are dotted module paths such as "
                f"{', '.join(tops)} or 'decoder.dec_bbox_head.*' (globs allowed)"
            )
        chosen.update(hits)
    return chosen


class MixedPrecisionDeploy(nn.Module):
    """The deploy contract with the network in float16 and selected parts in float32.

    ``forward(images float32 [N,3,H,W], orig_target_sizes int64 [N,2])`` returns the usual
    ``(labels, boxes, scores)`` with float32 boxes/scores. Modules named in ``keep_fp32``
    run in float32 (their inputs are cast up and their outputs back down); the
    postprocessor always runs in float32.
    """

    def __init__(self, model: DFINE, keep_fp32: Sequence[str] = (), top_k: int = 300) -> None:
        super().__init__()
        model = copy.deepcopy(model).cpu().float().eval().fuse()
        kept = select_modules(model, keep_fp32)
        model.half()
        for module in kept.values():
            module.float()
            for unit in _called_units(module):
                unit.register_forward_pre_hook(_to_fp32_inputs, with_kwargs=True)
                unit.register_forward_hook(_to_fp16_output)
        self.kept = sorted(kept)
        self.model = model
        self.postprocessor = PostProcessor(top_k)

    def forward(self, images: Tensor, orig_target_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.model(images.half())
        return self.postprocessor(out.logits.float(), out.boxes.float(), orig_target_sizes)


def _called_units(module: nn.Module) -> list[nn.Module]:
    """The modules that are actually called: a ModuleList/ModuleDict never is, its items are."""
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        return [unit for child in module.children() for unit in _called_units(child)]
    return [module]


def _to_fp32_inputs(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return _cast_floats(args, torch.float32), _cast_floats(kwargs, torch.float32)


def _to_fp16_output(module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    return _cast_floats(output, torch.float16)


def export_mixed_precision_onnx(
    model: DFINE,
    info: ModelInfo,
    output: str | Path,
    *,
    img_size: tuple[int, int],
    keep_fp32: Sequence[str] = (),
    dynamic_batch: bool = True,
    opset: int = MIN_ENGINE_OPSET,
    simplify: bool = True,
) -> Path:
    """Write the FP16 (mixed-precision) ONNX an FP16 engine is built from.

    Same inputs, outputs and metadata as :func:`~dfine_cli.export.onnx.export_onnx`
    (float32 I/O), plus ``precision: fp16`` and the kept module names in the metadata.
    """
    onnx = require("onnx", "onnx")
    output = Path(output)
    module = MixedPrecisionDeploy(model, keep_fp32).eval()
    with atomic_path(output) as tmp:
        proto = trace_to_onnx(module, tmp, img_size, opset, dynamic_batch, "FP16 ONNX export")
        if simplify:
            proto = simplify_onnx(proto)
        onnx.helper.set_model_props(
            proto, model_metadata(info, img_size, precision="fp16", keep_fp32=json.dumps(module.kept))
        )
        onnx.save(proto, str(tmp))
    return output


@dataclass(frozen=True)
class OnnxDescription:
    """What an engine build needs to know about its ONNX input."""

    img_size: tuple[int, int]
    batch: int | None  # None: dynamic
    opset: int
    precision: str  # "fp16" if the graph holds float16 weights, else "fp32"
    class_names: list[str]
    category_ids: list[int]


def describe_onnx(path: Path) -> OnnxDescription:
    """Read input shape, opset, precision and class names of an exported D-FINE ONNX.

    Raises:
        UsageError: the file is not a D-FINE export or its opset is below 17.
    """
    onnx = require("onnx", "onnx")
    if not path.is_file():
        raise UsageError(f"ONNX model not found: {path}")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise UsageError(f"cannot read {path} as ONNX: {str(exc).splitlines()[0][:200]}") from exc
    inputs = {v.name: v for v in proto.graph.input}
    if set(INPUT_NAMES) - set(inputs):
        raise UsageError(f"{path.name} does not have the D-FINE inputs {INPUT_NAMES}")
    dims = inputs["images"].type.tensor_type.shape.dim
    if len(dims) != 4 or not (dims[2].dim_value and dims[3].dim_value):
        raise UsageError(f"{path.name}: the images input needs a fixed height and width")
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if opset < MIN_ENGINE_OPSET:
        raise UsageError(
            f"{path.name} has opset {opset}; TensorRT engines are built from opset >= "
            f"{MIN_ENGINE_OPSET} (re-export with --opset 17)"
        )
    half = any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    props = {p.key: p.value for p in proto.metadata_props}
    names = json.loads(props["class_names"]) if "class_names" in props else []
    ids = json.loads(props["category_ids"]) if "category_ids" in props else []
    if not names:
        names, ids = ModelInfo.default_names(80)
    return OnnxDescription(
        img_size=(int(dims[2].dim_value), int(dims[3].dim_value)),
        batch=int(dims[0].dim_value) if dims[0].dim_value else None,
        opset=opset,
        precision="fp16" if half else "fp32",
        class_names=list(names),
        category_ids=list(ids) or list(range(len(names))),
    )


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
    source: Path
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
            "source": str(self.source),
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
    source: str | Path,
    output: str | Path,
    *,
    fp16: bool = False,
    workspace_gb: float | None = None,
    min_batch: int | None = None,
    opt_batch: int | None = None,
    max_batch: int | None = None,
    img_size: tuple[int, int] | None = None,
    keep_fp32: Sequence[str] = (),
    variant: str | None = None,
    check: bool = True,
) -> EngineReport:
    """Build and check a TensorRT engine from a checkpoint or an exported ``.onnx``.

    From a checkpoint, the ONNX is exported first (float32, or mixed precision for
    ``fp16``) and the engine is checked against the torch model; from an ``.onnx``, the
    engine keeps the file's precision and is checked against ONNX Runtime on the CPU.
    The engine and its ``<engine>.json`` appear only if the check passes.

    Raises:
        UsageError: inconsistent options; HardwareError/DependencyError: no GPU or no
        TensorRT; ExportError: the build failed or the engine disagrees with the reference.
    """
    from dfine_cli.backends.tensorrt_backend import (
        EngineInfo,
        TensorRTBackend,
        engine_sidecar,
        require_tensorrt,
    )

    source, output = Path(source), Path(output)
    if output.suffix.lower() not in (".engine", ".trt", ".plan"):
        raise UsageError(f"an engine file ends in .engine, .trt or .plan, got {output.name}")
    from_onnx = source.suffix.lower() == ".onnx"
    description = describe_onnx(source) if from_onnx else None
    if description is not None:
        if keep_fp32:
            raise UsageError("--keep-fp32 applies when dfine exports the ONNX from a checkpoint")
        if fp16 and description.precision != "fp16":
            raise UsageError(
                f"{source.name} is float32 and TensorRT engines compute in the ONNX's types: "
                "pass the checkpoint to build an FP16 engine (dfine exports the mixed-precision "
                "ONNX itself), or convert the ONNX to FP16 first"
            )
        if img_size is not None and tuple(img_size) != description.img_size:
            raise UsageError(f"{source.name} has a fixed input size {description.img_size}")
    elif keep_fp32 and not fp16:
        raise UsageError("--keep-fp32 names layers to keep in FP32 in an --fp16 engine")
    onnx_batch = description.batch if description is not None else None
    profile = batch_profile(min_batch, opt_batch, max_batch, onnx_batch)
    require_tensorrt()  # before any slow work: one clear line if there is no GPU/TensorRT

    with tempfile.TemporaryDirectory(prefix="dfine-engine-") as tmp_dir:
        reference: Any
        if description is None:
            model, info = _load_model(source, variant)
            size = img_size or info.img_size
            onnx_path = Path(tmp_dir) / "model.onnx"
            if fp16:
                export_mixed_precision_onnx(model, info, onnx_path, img_size=size,
                                            keep_fp32=keep_fp32)
            else:
                from dfine_cli.export.onnx import export_onnx

                export_onnx(model, info, onnx_path, img_size=size, check=False)
            description = describe_onnx(onnx_path)
            reference = _torch_reference(model)
        else:
            onnx_path = source
            reference = _onnx_reference(source)
        precision = description.precision
        report = EngineReport(output, source, precision, description.img_size, profile,
                              list(keep_fp32))
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
                    result = check_outputs(expected, engine(images.numpy(), sizes.numpy()),
                                           tolerance)
                    report.checks.append(result)
                    log.info("engine check %s", result.describe())
                    if not result.passed:
                        raise ExportError(
                            f"the {precision} engine disagrees with the reference: "
                            f"{result.describe()}"
                        )
            info_out = EngineInfo(
                class_names=description.class_names, category_ids=description.category_ids,
                img_size=description.img_size, precision=precision, min_batch=profile.min,
                opt_batch=profile.opt, max_batch=profile.max,
                tensorrt_version=report.tensorrt_version,
            )
            write_json(engine_sidecar(output), info_out.to_dict())
    return report


def _load_model(path: Path, variant: str | None) -> tuple[DFINE, ModelInfo]:
    from dfine_cli.checkpoint import load_weights, read_checkpoint
    from dfine_cli.models.build import build_model_from_config

    ckpt = read_checkpoint(path, variant=variant)
    model = build_model_from_config(ckpt.info.config)
    load_weights(model, ckpt.state_dict, source=str(path))
    return model, ckpt.info


def _torch_reference(model: DFINE) -> Any:
    from dfine_cli.models.dfine import DeployModel

    module = DeployModel(copy.deepcopy(model).cpu().float().eval().fuse()).eval()

    def run(images: np.ndarray, sizes: np.ndarray) -> Outputs:
        with torch.inference_mode():
            labels, boxes, scores = module(torch.from_numpy(images), torch.from_numpy(sizes))
        return labels.numpy(), boxes.numpy(), scores.numpy()

    return run


def _onnx_reference(path: Path) -> Any:
    from dfine_cli.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend(path)
