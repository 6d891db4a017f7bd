"""ImageNet-pretrained HGNetv2 backbones: the official recipe's starting point.

The official configurations set ``HGNetv2.pretrained: True``: training starts from
PaddlePaddle's ImageNet "stage 1" weights of the preset's backbone (B0 for N and S, B2 for M,
B4 for L, B5 for X; DEIM the same). Those files hold the backbone's own state-dict keys (no
``backbone.`` prefix), in the layout of :class:`~dfine_cli.models.backbone.HGNetv2`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dfine_cli.checkpoints import state_dict_mismatch
from dfine_cli.errors import CheckpointError
from dfine_cli.hub.registry import BACKBONE_FOR_SIZE, WEIGHTS, WeightsEntry
from dfine_cli.models.backbone import HGNetv2
from dfine_cli.models.presets import HGNETV2, ModelConfig

log = logging.getLogger("dfine.hub")

NO_PRETRAINED_HINT = "or train from random initialisation with --no-pretrained"
_COUNTER = "num_batches_tracked"


def backbone_entry(size: str) -> WeightsEntry:
    """The table entry of the ImageNet backbone for model size ``size``."""
    return WEIGHTS[BACKBONE_FOR_SIZE[size]]


def build_backbone_for(entry: WeightsEntry) -> HGNetv2:
    """A randomly initialised HGNetv2 of ``entry``'s architecture (all four stages)."""
    return HGNetv2(HGNETV2[entry.backbone], return_idx=(0, 1, 2, 3), use_lab=entry.use_lab)


def read_backbone_state(path: Path) -> dict[str, Tensor]:
    """The tensors of a backbone weights file (read with ``weights_only=True``)."""
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling, zip and I/O errors all mean "not a weights file"
        first = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise CheckpointError(f"{path} is not a readable PyTorch weights file: {first}") from exc
    if isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), dict):
        obj = next(iter(obj.values()))  # {"state_dict": {...}} / {"model": {...}}
    if not isinstance(obj, dict) or not obj or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()
    ):
        raise CheckpointError(f"{path} does not hold a backbone state dict")
    return obj


def load_backbone_weights(backbone: torch.nn.Module, state: dict[str, Tensor], *, source: str = "") -> None:
    """Strictly load a backbone state dict (keys without the ``backbone.`` prefix).

    BatchNorm step counters (``num_batches_tracked``) are the only keys allowed to differ: a
    frozen-BatchNorm backbone (official L/X) has none, and files written without them load into
    an ordinary BatchNorm backbone with the model's own counters. Anything else missing,
    unexpected or of another shape raises :class:`CheckpointError`.
    """
    own = backbone.state_dict()
    clean = {k: v for k, v in state.items() if not (k.endswith(_COUNTER) and k not in own)}
    for key, value in own.items():
        if key.endswith(_COUNTER) and key not in clean:
            clean[key] = value
    problem = state_dict_mismatch(own, clean)
    if problem:
        where = f"{source}: " if source else ""
        raise CheckpointError(f"{where}backbone weights do not fit HGNetv2: {problem}")
    backbone.load_state_dict(clean, strict=True)


def load_pretrained_backbone(model: torch.nn.Module, config: ModelConfig) -> str:
    """Download (once) and load the ImageNet backbone of ``config`` into ``model.backbone``.

    Returns the sentence the training log starts with, e.g.
    ``"backbone: ImageNet HGNetv2-B0 from /root/.cache/dfine/weights/.../PPHGNetV2_B0_stage1.pth"``.
    Raises :class:`~dfine_cli.errors.DependencyError` (exit 6) when the file cannot be had.
    """
    from dfine_cli.hub.download import fetch_entry

    entry = backbone_entry(config.name)
    if entry.backbone != config.backbone:
        raise CheckpointError(f"no ImageNet weights for backbone {config.backbone}")
    path = fetch_entry(entry, hint=NO_PRETRAINED_HINT)
    backbone = model.get_submodule("backbone")
    load_backbone_weights(backbone, read_backbone_state(path), source=str(path))
    return f"backbone: ImageNet HGNetv2-{entry.backbone} from {path}"
