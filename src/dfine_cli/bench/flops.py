"""Parameters, FLOPs and MACs of a D-FINE model, next to the official figures.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` (maintained in
torch), on a model built on the ``meta`` device: shapes only, no arithmetic, so every size
is counted in about a second and weights do not matter. It counts convolutions and matrix
products (``aten.convolution``, ``mm``, ``addmm``, ``bmm``) at 2 FLOPs per multiply-accumulate
and nothing else, so ``macs`` is ``flops / 2``.

The official figures come from calflops (``tools/benchmark/get_info.py``), run on a CPU. It
differs in two ways: it adds element-wise work (activations, normalisation, additions,
softmax, sampling) to its FLOPs, and it does not see the attention products computed inside
PyTorch's fused multi-head-attention kernel (taken on a CPU in inference), about 0.22 GFLOPs
for N at 640. Run on the same model, calflops gives 3.547 GMACs for N; we count 3.657.

What is counted is the official *deploy* model at the given input size, without the
postprocessor: the encoder's RepVGG blocks and conv+BN pairs re-parameterised into single
convolutions (as the official ``convert_to_deploy`` does; the backbone and the encoder's input
projections keep their BatchNorms), the decoder's intermediate score heads and LQE layers
dropped (inference uses only the last layer's). The parameter count follows the official
counter (``sum(p.numel() for p in model.parameters())`` of that deploy model), which also
holds the two frozen scalars ``up`` and ``reg_scale`` that we keep as buffers.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from dfine_cli.models.build import build_model_from_config
from dfine_cli.models.dfine import DFINE
from dfine_cli.models.presets import ModelConfig


@dataclass(frozen=True)
class OfficialFigures:
    """The official README's table (rounded) and, where known, the official counter's output."""

    params_m: float  # millions, README table
    gflops: float  # README table
    counter_params: int | None = None  # tools/benchmark/get_info.py at 640, 80 classes
    counter_gflops: float | None = None


#: D-FINE README (COCO, 640x640, 80 classes); counter values from ``get_info.py``.
OFFICIAL: dict[str, OfficialFigures] = {
    "n": OfficialFigures(4, 7, 3_753_799, 7.165),
    "s": OfficialFigures(10, 25, 10_237_491, 25.17),
    "m": OfficialFigures(19, 57),
    "l": OfficialFigures(31, 91),
    "x": OfficialFigures(62, 202),
}

#: Parameters the official model registers as (frozen) ``nn.Parameter`` and we as buffers.
_OFFICIAL_FROZEN_PARAMETERS = ("decoder.up", "decoder.reg_scale")


@dataclass(frozen=True)
class Complexity:
    """Size and compute of one model at one input size (batch 1)."""

    size: str  # preset name: n, s, m, l, x
    variant: str
    num_classes: int
    img_size: tuple[int, int]
    params_total: int  # every parameter of the training model
    params_deploy: int  # as the official counter counts the deploy model
    flops: int  # per image, 2 per multiply-accumulate, convolutions and matrix products
    flops_by_operator: dict[str, int] = field(default_factory=dict)

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def gmacs(self) -> float:
        return self.flops / 2e9

    @property
    def official(self) -> OfficialFigures | None:
        return OFFICIAL.get(self.size)

    @property
    def comparable(self) -> bool:
        """True when the official figures describe the same setup (640x640, 80 classes)."""
        return self.img_size == (640, 640) and self.num_classes == 80

    def to_dict(self) -> dict[str, Any]:
        official = self.official
        return {
            "size": self.size,
            "variant": self.variant,
            "num_classes": self.num_classes,
            "img_size": list(self.img_size),
            "params_total": self.params_total,
            "params_deploy": self.params_deploy,
            "gflops": round(self.gflops, 4),
            "gmacs": round(self.gmacs, 4),
            "gflops_by_operator": {k: round(v / 1e9, 4) for k, v in self.flops_by_operator.items()},
            "counter": "torch.utils.flop_counter.FlopCounterMode",
            "official": None if official is None else {
                "params_m": official.params_m,
                "gflops": official.gflops,
                "counter_params": official.counter_params,
                "counter_gflops": official.counter_gflops,
                "comparable": self.comparable,
            },
        }


def official_deploy_view(model: DFINE) -> DFINE:
    """A copy of ``model`` with exactly the structure of the official deploy model.

    Encoder blocks re-parameterised except the input projections, decoder score heads and
    LQE layers of the intermediate layers removed. Outputs are unchanged (eval mode).
    """
    view = copy.deepcopy(model).eval()
    encoder = view.encoder
    for name, module in list(encoder.named_modules()):
        if not name or name.startswith("input_proj"):
            continue
        fuse = getattr(module, "fuse", None)
        if callable(fuse):
            fuse()
    decoder = view.decoder
    last = len(decoder.decoder.layers) - 1
    for i in range(last):
        decoder.dec_score_head[i] = torch.nn.Identity()
        decoder.decoder.lqe_layers[i] = torch.nn.Identity()
    return view


def deploy_parameter_count(model: DFINE) -> int:
    """Parameters as the official ``get_info.py`` counts them (see the module docstring)."""
    view = official_deploy_view(model)
    count = sum(p.numel() for p in view.parameters())
    buffers = dict(view.named_buffers())
    return count + sum(buffers[n].numel() for n in _OFFICIAL_FROZEN_PARAMETERS if n in buffers)


def count_flops(model: DFINE, img_size: tuple[int, int]) -> tuple[int, dict[str, int]]:
    """FLOPs of one forward pass on a ``[1, 3, H, W]`` image, total and per operator.

    Works on a model built on the ``meta`` device too (shapes only, no arithmetic), which
    is how ``dfine bench info`` counts a preset without computing anything.
    """
    view = official_deploy_view(model)
    images = torch.zeros(1, 3, *img_size, device=next(view.parameters()).device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        view(images)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return int(counter.get_total_flops()), by_op


def model_complexity(config: ModelConfig, img_size: tuple[int, int]) -> Complexity:
    """Count parameters and FLOPs of the model ``config`` describes at ``img_size`` (H, W)."""
    with torch.device("meta"):
        model = build_model_from_config(config).eval()
    flops, by_op = count_flops(model, img_size)
    return Complexity(
        size=config.name,
        variant=config.variant,
        num_classes=model.num_classes,
        img_size=(int(img_size[0]), int(img_size[1])),
        params_total=sum(p.numel() for p in model.parameters()),
        params_deploy=deploy_parameter_count(model),
        flops=flops,
        flops_by_operator=by_op,
    )


def difference_note(result: Complexity) -> str:
    """One sentence on how our figures relate to the official ones for this model."""
    official = result.official
    if official is None:
        return "no official figures for this size"
    if not result.comparable:
        return (
            "the official figures are for 640x640 and 80 classes; this model differs "
            f"({result.img_size[0]}x{result.img_size[1]}, {result.num_classes} classes)"
        )
    parts = []
    if official.counter_params is not None:
        delta = result.params_deploy - official.counter_params
        parts.append("parameters equal the official counter's" if delta == 0
                     else f"parameters differ from the official counter by {delta:+,}")
    reference = official.counter_gflops or official.gflops
    source = "calflops" if official.counter_gflops else "the README's rounded calflops figure"
    parts.append(
        f"GFLOPs {result.gflops / reference - 1.0:+.1%} vs {source}, which adds element-wise "
        "operations and misses the attention products inside PyTorch's fused attention"
    )
    return "; ".join(parts)


def complexity_of(
    models: Sequence[str], img_size: tuple[int, int] | None = None, variant: str | None = None
) -> list[tuple[str, Complexity]]:
    """``dfine bench info``: :func:`model_complexity` of each preset name (``n``..``x``, 80
    classes) or checkpoint in ``models``, at ``img_size`` ``(h, w)`` pixels (``None``: a
    checkpoint's own size, 640 for a preset). ``variant`` is the decoder variant of presets
    and official ``.pth`` files (``None``: dfine, or read from the file)."""
    from dfine_cli.bench.latency import is_preset_name
    from dfine_cli.checkpoints import read_checkpoint
    from dfine_cli.image_size import DEFAULT_IMG_SIZE
    from dfine_cli.models.presets import preset

    results = []
    for name in models:
        if is_preset_name(name):
            config = preset(name.lower(), num_classes=80, variant=variant or "dfine")
            size = img_size or (DEFAULT_IMG_SIZE, DEFAULT_IMG_SIZE)
        else:
            info = read_checkpoint(name, variant=variant).info
            config, size = info.config, img_size or info.img_size
        results.append((name, model_complexity(config, tuple(size))))  # type: ignore[arg-type]
    return results
