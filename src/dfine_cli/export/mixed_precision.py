"""The mixed-precision ONNX an FP16 TensorRT engine is built from, and what an ONNX file holds.

TensorRT builds strongly typed networks (the only mode of TensorRT 11, opted into on 10): an
engine computes in the types its ONNX graph declares. So an FP16 engine is built from a
mixed-precision ONNX that dfine exports itself from the model: the network in float16, the
postprocessor (top-K, scaling boxes to original pixels, where float16 would cost up to a
pixel) in float32, and any module named with ``keep_fp32`` in float32 too. That ONNX is
ordinary ONNX, so it is checked on a CPU with ONNX Runtime like any other export.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dfine_cli.checkpoints import ModelInfo
from dfine_cli.errors import UsageError, require
from dfine_cli.export.onnx import INPUT_NAMES, model_metadata, simplify_onnx, trace_to_onnx
from dfine_cli.fileio import atomic_path
from dfine_cli.models.dfine import DFINE
from dfine_cli.models.postprocess import PostProcessor

#: The ONNX opset engines are built from (TensorRT parses 17+ well).
MIN_ENGINE_OPSET = 17


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
