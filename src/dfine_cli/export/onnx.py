"""ONNX export with the official input/output contract, metadata, and a correctness check.

Inputs ``images`` float32 ``[N,3,H,W]`` and ``orig_target_sizes`` int64 ``[N,2]`` (w, h);
outputs ``labels`` int64 ``[N,K]``, ``boxes`` float32 ``[N,K,4]``, ``scores`` float32
``[N,K]``. Only the batch axis can be dynamic (named ``N``, as the official exporter does);
H and W are fixed at export time because anchors are derived from them.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dfine_cli import __version__
from dfine_cli.checkpoint import ModelInfo
from dfine_cli.errors import ExportError, require
from dfine_cli.export.compare import Agreement, compare_detections
from dfine_cli.fileio import atomic_path
from dfine_cli.models.dfine import DFINE, DeployModel

log = logging.getLogger("dfine.export")

INPUT_NAMES = ["images", "orig_target_sizes"]
OUTPUT_NAMES = ["labels", "boxes", "scores"]
MIN_OPSET = 16


@dataclass
class ExportReport:
    path: Path
    opset: int
    img_size: tuple[int, int]
    dynamic_batch: bool
    simplified: bool
    checks: dict[int, Agreement] = field(default_factory=dict)  # batch size -> agreement

    def to_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "format": "onnx",
            "opset": self.opset,
            "img_size": list(self.img_size),
            "dynamic_batch": self.dynamic_batch,
            "simplified": self.simplified,
            "checks": {
                str(b): {
                    "max_score_diff": a.max_score_diff,
                    "max_box_diff_px": a.max_box_diff,
                    "matched_fraction": a.matched_fraction,
                }
                for b, a in self.checks.items()
            },
        }


def check_inputs(batch: int, img_size: tuple[int, int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic random batch: images in 0..1 and plausible original sizes."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, *img_size, generator=g)
    w = torch.randint(200, 1400, (batch, 1), generator=g)
    h = torch.randint(200, 1400, (batch, 1), generator=g)
    return images, torch.cat([w, h], dim=1).to(torch.int64)


def export_onnx(
    model: DFINE,
    info: ModelInfo,
    output: str | Path,
    *,
    img_size: tuple[int, int] = (640, 640),
    opset: int = 17,
    dynamic_batch: bool = True,
    simplify: bool = True,
    check: bool = True,
    score_tol: float = 1e-4,
    box_tol: float = 0.5,
) -> ExportReport:
    """Export ``model`` (+ postprocessor) to ``output`` atomically and verify it.

    With ``check``, the same random batch runs through torch and ONNX Runtime and the
    export fails (:class:`ExportError`, nothing written) if they disagree beyond
    ``score_tol`` / ``box_tol`` pixels; dynamic batch is verified at batch 1 and 3.
    """
    onnx = require("onnx", "onnx")
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old; D-FINE needs opset >= {MIN_OPSET}")
    if any(s <= 0 or s % 32 for s in img_size):
        raise ExportError(f"image size must be a multiple of 32, got {img_size}")
    output = Path(output)
    module = DeployModel(_fused(model)).eval()
    report = ExportReport(output, opset, img_size, dynamic_batch, simplified=simplify)
    with atomic_path(output) as tmp:
        proto = trace_to_onnx(module, tmp, img_size, opset, dynamic_batch, "torch.onnx.export")
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
            for batch in batches:
                agreement = verify_onnx(module, tmp, batch, img_size)
                report.checks[batch] = agreement
                log.info("check at batch %d: %s", batch, agreement.describe())
                if not agreement.ok(score_tol, box_tol):
                    raise ExportError(
                        f"ONNX Runtime disagrees with torch at batch {batch}: {agreement.describe()} "
                        f"(tolerance: score {score_tol}, box {box_tol} px)"
                    )
    return report


def verify_onnx(
    module: DeployModel, path: Path, batch: int, img_size: tuple[int, int]
) -> Agreement:
    """Run the same random batch through ``module`` and ONNX Runtime and compare."""
    ort = require("onnxruntime", "onnx")
    images, sizes = check_inputs(batch, img_size, seed=batch)
    with torch.inference_mode():
        expected = tuple(t.numpy() for t in module(images, sizes))
    options = ort.SessionOptions()  # type: ignore[attr-defined]
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    actual = session.run(OUTPUT_NAMES, {"images": images.numpy(), "orig_target_sizes": sizes.numpy()})
    return compare_detections(expected, tuple(actual), score_tol=1e-4, box_tol=0.5)  # type: ignore[arg-type]


def _fused(model: DFINE) -> DFINE:
    import copy

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
    dynamic_batch: bool, what: str = "ONNX export",
):
    """Trace ``module`` (the deploy contract) to ``path`` with the official names and axes."""
    onnx = require("onnx", "onnx")
    images, sizes = check_inputs(1, img_size)
    axes = {name: {0: "N"} for name in INPUT_NAMES + OUTPUT_NAMES} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module, (images, sizes), str(path), input_names=INPUT_NAMES,
                output_names=OUTPUT_NAMES, dynamic_axes=axes, opset_version=opset,
                do_constant_folding=True, dynamo=False,
            )
        except Exception as exc:  # the exporter raises many types
            raise ExportError(f"{what} failed: {str(exc).splitlines()[0][:200]}") from exc
    return onnx.load(str(path))


def onnx_summary(path: Path) -> dict[str, object]:
    """Names, dtypes and shapes of the model's inputs/outputs (for tests and ``dfine info``)."""
    onnx = require("onnx", "onnx")
    proto = onnx.load(str(path), load_external_data=False)

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
