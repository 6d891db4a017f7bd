"""ONNX export with the official input/output contract, metadata, and a correctness check.

Inputs ``images`` float32 ``[N,3,H,W]`` and ``orig_target_sizes`` int64 ``[N,2]`` (w, h);
outputs ``labels`` int64 ``[N,K]``, ``boxes`` float32 ``[N,K,4]``, ``scores`` float32
``[N,K]``. Only the batch axis can be dynamic (named ``N``, as the official exporter does);
H and W are fixed at export time because anchors are derived from them.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dfine_cli import __version__
from dfine_cli.checkpoints import ModelInfo
from dfine_cli.errors import ExportError, require
from dfine_cli.export.compare import Agreement, compare_detections, compare_raw
from dfine_cli.fileio import atomic_path
from dfine_cli.image_size import DEFAULT_IMG_SIZE, IMG_SIZE_RULE, is_valid_side
from dfine_cli.models.dfine import DFINE, DeployModel
from dfine_cli.models.outputs import HeadOutput

log = logging.getLogger("dfine.export")

INPUT_NAMES = ["images", "orig_target_sizes"]
OUTPUT_NAMES = ["labels", "boxes", "scores"]
#: The decoder's outputs before top-K, present only while an export is being checked.
RAW_OUTPUT_NAMES = ["pred_logits", "pred_boxes"]
MIN_OPSET = 16


@dataclass(frozen=True)
class CheckTolerance:
    """How far the exported model may be from torch, derived from torch's own float32 noise.

    ``score``: sorted scores rank by rank and matched detections; ``box_px``: matched
    detections' boxes (pixels of the check images); ``logit`` / ``raw_box``: the raw
    query rows (logits, normalised cxcywh) matched as sets, of which at least
    ``min_raw_fraction`` must find a partner. ``noise`` records the torch-vs-torch figures
    the tolerances were derived from (see :func:`calibrate_tolerance`).
    """

    score: float
    box_px: float
    logit: float
    raw_box: float
    min_raw_fraction: float = 0.97
    noise: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        return (
            f"tolerance: score {self.score:.3g}, box {self.box_px:.3g} px, raw logits "
            f"{self.logit:.3g}, raw boxes {self.raw_box:.3g}, >= {self.min_raw_fraction:.0%} raw rows"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "score": self.score, "box_px": self.box_px, "logit": self.logit,
            "raw_box": self.raw_box, "min_raw_fraction": self.min_raw_fraction,
            "torch_noise": dict(self.noise),
        }


#: A second float32 implementation of the network (ONNX Runtime) lands within a few times
#: the distance between two torch float32 evaluations of it (BatchNorms folded or not);
#: the tolerances are this factor times that distance, between a floor (well above
#: float32 rounding of a shallow network) and a ceiling (below what a wrong graph gives:
#: ReLU swapped for SiLU in the decoder of the reference N moves sorted scores by 9e-3 and
#: raw logits by 0.47, one decoder layer dropped by 1.4e-2 and 0.72; and no detection or
#: raw row of a wrong graph matches at all, which fails the check at any tolerance here).
NOISE_FACTOR = 10.0
TOLERANCE_FLOOR = {"score": 1e-4, "box_px": 0.5, "logit": 1e-3, "raw_box": 1e-4}
TOLERANCE_CEILING = {"score": 5e-3, "box_px": 4.0, "logit": 5e-2, "raw_box": 2e-3}


def calibrate_tolerance(noise: dict[str, float], max_side_px: float) -> CheckTolerance:
    """Tolerances from the measured torch-vs-torch ``noise`` (keys ``score``, ``logit``,
    ``raw_box``; raw boxes in normalised units, converted to pixels with ``max_side_px``)."""

    def pick(name: str, value: float) -> float:
        return float(min(max(NOISE_FACTOR * value, TOLERANCE_FLOOR[name]), TOLERANCE_CEILING[name]))

    return CheckTolerance(
        score=pick("score", noise["score"]),
        box_px=pick("box_px", noise["raw_box"] * max_side_px),
        logit=pick("logit", noise["logit"]),
        raw_box=pick("raw_box", noise["raw_box"]),
        noise=dict(noise),
    )


@dataclass
class ExportReport:
    path: Path
    opset: int
    img_size: tuple[int, int]
    dynamic_batch: bool
    simplified: bool
    checks: dict[int, Agreement] = field(default_factory=dict)  # batch size -> agreement
    tolerances: dict[int, CheckTolerance] = field(default_factory=dict)  # batch size -> tolerance
    format: str = "onnx"
    extra: dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "format": self.format,
            "opset": self.opset,
            "img_size": list(self.img_size),
            "dynamic_batch": self.dynamic_batch,
            "simplified": self.simplified,
            "checks": {
                str(b): {**a.to_dict(), "tolerance": self.tolerances[b].to_dict() if b in self.tolerances else None}
                for b, a in self.checks.items()
            },
            **self.extra,
        }


def check_inputs(batch: int, img_size: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic random batch: images in 0..1 and plausible original sizes."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, *img_size, generator=g)
    w = torch.randint(200, 1400, (batch, 1), generator=g)
    h = torch.randint(200, 1400, (batch, 1), generator=g)
    return images, torch.cat([w, h], dim=1).to(torch.int64)


class CheckedDeployModel(nn.Module):
    """The deploy contract plus the decoder's raw outputs, for checking an export.

    ``forward(images, orig_target_sizes) -> (labels, boxes, scores, pred_logits [N,Q,C],
    pred_boxes [N,Q,4] cxcywh normalised)``. The exported file is this graph with the two
    raw outputs removed, so the checked computation is exactly the one written.
    """

    def __init__(self, deploy: DeployModel) -> None:
        super().__init__()
        self.deploy = deploy.eval()

    def forward(self, images: torch.Tensor, orig_target_sizes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.deploy.model(images)
        assert isinstance(out, HeadOutput)
        labels, boxes, scores = self.deploy.postprocessor(out.logits, out.boxes, orig_target_sizes)
        return labels, boxes, scores, out.logits, out.boxes


def export_onnx(
    model: DFINE,
    info: ModelInfo,
    output: str | Path,
    *,
    img_size: tuple[int, int] = (DEFAULT_IMG_SIZE, DEFAULT_IMG_SIZE),
    opset: int = 17,
    dynamic_batch: bool = True,
    simplify: bool = True,
    check: bool = True,
) -> ExportReport:
    """Export ``model`` (+ postprocessor) to ``output`` atomically and verify it.

    With ``check``, random batches run through torch and ONNX Runtime (batch 1, and 3
    for a dynamic batch) and the export fails (:class:`ExportError`, nothing written) if
    they disagree beyond the tolerances :func:`calibrate_tolerance` derives from torch's own
    float32 noise on the same batch (see :func:`check_export`).
    """
    onnx = require("onnx", "onnx")
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old; D-FINE needs opset >= {MIN_OPSET}")
    if len(img_size) != 2 or not all(is_valid_side(int(side)) for side in img_size):
        raise ExportError(f"image size must be {IMG_SIZE_RULE}, got {tuple(img_size)}")
    output = Path(output)
    module = DeployModel(_fused(model)).eval()
    report = ExportReport(output, opset, img_size, dynamic_batch, simplified=simplify)
    with atomic_path(output) as tmp:
        traced = CheckedDeployModel(module) if check else module
        names = OUTPUT_NAMES + RAW_OUTPUT_NAMES if check else OUTPUT_NAMES
        proto = trace_to_onnx(traced, tmp, img_size, opset, dynamic_batch, "torch.onnx.export",
                              output_names=names)
        try:
            onnx.checker.check_model(proto)
        except Exception as exc:
            raise ExportError(f"the exported graph is invalid: {str(exc).splitlines()[0][:200]}") from exc
        if simplify:
            proto = simplify_onnx(proto)
        onnx.helper.set_model_props(proto, model_metadata(info, img_size))
        onnx.save(proto, str(tmp))
        if check:
            batches = (1, 3) if dynamic_batch else (1,)
            plain = DeployModel(copy.deepcopy(model).cpu().float().eval()).eval()
            results = check_export(module, plain, tmp, batches, img_size)
            for batch, (agreement, tolerance) in results.items():
                report.checks[batch] = agreement
                report.tolerances[batch] = tolerance
                log.info("check at batch %d: %s (%s)", batch, agreement.describe(), tolerance.describe())
            for batch, (agreement, tolerance) in results.items():
                if not check_passed(agreement, tolerance):
                    raise ExportError(
                        f"ONNX Runtime disagrees with torch at batch {batch}: "
                        f"{agreement.describe()} ({tolerance.describe()})"
                    )
            # ship the checked graph without the two raw outputs
            keep = [o for o in proto.graph.output if o.name in OUTPUT_NAMES]
            del proto.graph.output[:]
            proto.graph.output.extend(keep)
            onnx.save(proto, str(tmp))
    return report


def check_passed(agreement: Agreement, tolerance: CheckTolerance) -> bool:
    """Both measures within ``tolerance``: the top-K detections and the raw query rows."""
    raw_ok = agreement.raw is None or agreement.raw.ok(
        tolerance.logit, tolerance.raw_box, tolerance.min_raw_fraction
    )
    return agreement.ok(tolerance.score, tolerance.box_px) and raw_ok


def torch_noise(
    module: DeployModel, plain: DeployModel, images: torch.Tensor, sizes: torch.Tensor
) -> tuple[tuple[np.ndarray, ...], dict[str, float]]:
    """``module``'s five check outputs, and how far a second torch float32 evaluation
    (``plain``: the same weights without folded BatchNorms) is from them.

    Returns the outputs and ``{"score": max sorted-score diff, "logit": max raw logit
    diff, "raw_box": max raw box diff (normalised)}``, raw rows matched as sets.
    """
    with torch.inference_mode():
        expected = tuple(t.numpy() for t in CheckedDeployModel(module)(images, sizes))
        second = tuple(t.numpy() for t in CheckedDeployModel(plain)(images, sizes))
    raw = compare_raw(expected[3:], second[3:], logit_tol=1.0, box_tol=1e-2)
    score = float(np.abs(expected[2].astype(np.float64) - second[2]).max()) if expected[2].size else 0.0
    return expected, {"score": score, "logit": raw.max_logit_diff, "raw_box": raw.max_box_diff}


#: Runs an exported model: ``(images [N,3,H,W] float32, sizes [N,2] int64)`` -> its outputs
#: (``labels, boxes, scores`` and, where the file has them, ``pred_logits, pred_boxes``).
Runner = Callable[[np.ndarray, np.ndarray], Sequence[np.ndarray]]


def onnxruntime_runner(path: Path) -> Runner:
    """A CPU ONNX Runtime session for ``path`` that returns every output the file has, in
    the order ``labels, boxes, scores[, pred_logits, pred_boxes]``."""
    ort = require("onnxruntime", "onnx")
    options = ort.SessionOptions()  # type: ignore[attr-defined]
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    outputs = [o.name for o in session.get_outputs()]
    names = OUTPUT_NAMES + (RAW_OUTPUT_NAMES if all(n in outputs for n in RAW_OUTPUT_NAMES) else [])

    def run(images: np.ndarray, sizes: np.ndarray) -> Sequence[np.ndarray]:
        return session.run(names, {"images": images, "orig_target_sizes": sizes})

    return run


def check_export(
    module: DeployModel,
    plain: DeployModel,
    path: Path | Runner,
    batches: tuple[int, ...],
    img_size: tuple[int, int],
) -> dict[int, tuple[Agreement, CheckTolerance]]:
    """Compare an exported model with torch on deterministic random batches.

    ``module``: the (fused) deploy model that was exported; ``plain``: the same weights
    unfused, whose distance to ``module`` calibrates the tolerances. ``path``: an ONNX file
    (run with ONNX Runtime), or a :data:`Runner` for another runtime. When the outputs
    include ``pred_logits, pred_boxes``, the raw rows are compared too.
    """
    run = onnxruntime_runner(path) if isinstance(path, Path) else path
    results: dict[int, tuple[Agreement, CheckTolerance]] = {}
    for batch in batches:
        images, sizes = check_inputs(batch, img_size, seed=batch)
        expected, noise = torch_noise(module, plain, images, sizes)
        tolerance = calibrate_tolerance(noise, float(sizes.max()))
        actual = list(run(images.numpy(), sizes.numpy()))
        try:
            agreement = compare_detections(expected[:3], tuple(actual[:3]), tolerance.score, tolerance.box_px)  # type: ignore[arg-type]
            if len(actual) == 5:
                agreement.raw = compare_raw(expected[3:], tuple(actual[3:]), tolerance.logit, tolerance.raw_box)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ExportError(f"the exported model's outputs have the wrong shape: {exc}") from exc
        results[batch] = (agreement, tolerance)
    return results


def _fused(model: DFINE) -> DFINE:
    return copy.deepcopy(model).cpu().float().eval().fuse()


def simplify_onnx(proto):
    slim = require("onnxslim", "onnx")
    try:
        return slim.slim(proto)  # type: ignore[attr-defined]
    except Exception as exc:
        raise ExportError(f"onnxslim failed: {str(exc).splitlines()[0][:200]}") from exc


def model_metadata(info: ModelInfo, img_size: tuple[int, int], **extra: str) -> dict[str, str]:
    """The metadata every exported file carries (class names, ids, input size, ...)."""
    return {
        "producer": f"dfine {__version__}",
        "model": f"dfine-{info.config.name}",
        "variant": info.variant,
        "class_names": json.dumps(list(info.class_names)),
        "category_ids": json.dumps([int(i) for i in info.category_ids]),
        "img_size": json.dumps(list(img_size)),
        "preprocessing": json.dumps(info.preprocessing),
        **extra,
    }


def trace_to_onnx(
    module: torch.nn.Module, path: Path, img_size: tuple[int, int], opset: int,
    dynamic_batch: bool, what: str = "ONNX export", output_names: list[str] | None = None,
):
    """Trace ``module`` (the deploy contract) to ``path`` with the official names and axes."""
    output_names = output_names or OUTPUT_NAMES
    onnx = require("onnx", "onnx")
    images, sizes = check_inputs(1, img_size)
    axes = {name: {0: "N"} for name in INPUT_NAMES + output_names} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module, (images, sizes), str(path), input_names=INPUT_NAMES,
                output_names=output_names, dynamic_axes=axes, opset_version=opset,
                do_constant_folding=True, dynamo=False,
            )
        except Exception as exc:  # the exporter raises many types
            raise ExportError(f"{what} failed: {str(exc).splitlines()[0][:200]}") from exc
    return onnx.load(str(path))


def onnx_summary(path: Path) -> dict[str, object]:
    """Names, dtypes and shapes of the model's inputs/outputs (for tests and ``dfine info``).

    Raises :class:`CheckpointError` ("not a dfine/D-FINE checkpoint: ...") for a file that is
    not an ONNX model (empty, random bytes, no graph).
    """
    from dfine_cli.checkpoints import NOT_A_CHECKPOINT
    from dfine_cli.errors import CheckpointError

    onnx = require("onnx", "onnx")
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointError(f"{NOT_A_CHECKPOINT}: {path} is empty")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except OSError:
        raise  # permission denied, a folder...: mapped where it is reported
    except Exception as exc:  # protobuf's DecodeError and friends
        raise CheckpointError(
            f"{NOT_A_CHECKPOINT}: {path} is not an ONNX model ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:160]})"
        ) from exc
    if not proto.graph.input or not any(o.domain in ("", "ai.onnx") for o in proto.opset_import):
        raise CheckpointError(f"{NOT_A_CHECKPOINT}: {path} is not an ONNX model (no graph inputs)")

    def describe(values) -> list[dict[str, object]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "dtype": onnx.TensorProto.DataType.Name(t.elem_type).lower(), "shape": dims})
        return out

    return {
        "inputs": describe(proto.graph.input),
        "outputs": describe(proto.graph.output),
        "opset": max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "metadata": {p.key: p.value for p in proto.metadata_props},
    }


def as_numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()
