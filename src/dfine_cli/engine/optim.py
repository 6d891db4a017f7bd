"""Optimizer parameter groups, learning-rate schedules and the EMA model.

Parameter groups are chosen by module type and role (normalisation layer or not, bias or
not, backbone or head), never by regular expressions over parameter names. The per-recipe
rules mirror the official configurations' intent:

- every size: the backbone's ordinary weights train at ``backbone_lr``;
- D-FINE N/S/M (trainable BatchNorm): backbone norms at ``backbone_lr`` without weight
  decay; encoder/decoder norms and biases without weight decay;
- D-FINE L/X (frozen backbone norms): encoder/decoder norms without weight decay;
- DEIM S/M: every norm at the base lr without weight decay;
- DEIM L/X: encoder/decoder norms without weight decay (backbone norms train at
  ``backbone_lr`` with weight decay, where DEIM's regular expressions put them).

The official D-FINE N/S/M regular expression ``(?!.*norm|bn)`` does not actually exclude
``bn`` names, so there the backbone BatchNorm weights end up with weight decay; we follow
the evident intent (no weight decay on norms) instead.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

NORM_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.LayerNorm, nn.GroupNorm, FrozenBatchNorm2d)


@dataclass(frozen=True)
class OptimRecipe:
    """Optimizer hyper-parameters of one recipe and size (official COCO values)."""

    lr: float
    backbone_lr: float
    weight_decay: float
    backbone_norm_lr: str  # "backbone" or "base"
    backbone_norm_decay: bool
    head_no_decay: frozenset[str]  # roles without weight decay in encoder/decoder: norm, bias
    betas: tuple[float, float] = (0.9, 0.999)


def parameter_roles(model: nn.Module, *, suffix_bias: bool = True) -> dict[str, tuple[str, str]]:
    """Map every trainable parameter name to ``(part, role)``.

    ``part`` is the top-level child (``backbone``, ``encoder``, ``decoder``); ``role`` is
    ``norm`` (a normalisation layer's parameter), ``bias`` (another layer's bias, including
    ``nn.MultiheadAttention``'s ``in_proj_bias``, which the official regular expressions
    also match by name) or ``weight``. ``suffix_bias=False`` gives the roles of dfine
    versions before that (``in_proj_bias`` as a weight), to read their optimizer states.
    """
    roles: dict[str, tuple[str, str]] = {}
    for module_name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            full = f"{module_name}.{pname}" if module_name else pname
            part = full.split(".", 1)[0]
            if isinstance(module, NORM_TYPES):
                role = "norm"
            elif pname == "bias" or (suffix_bias and pname.endswith("_bias")):  # in_proj_bias
                role = "bias"
            else:
                role = "weight"
            roles[full] = (part, role)
    return roles


def build_param_groups(
    model: nn.Module, recipe: OptimRecipe, lr_scale: float = 1.0, *, suffix_bias: bool = True
) -> list[dict[str, Any]]:
    """AdamW parameter groups (each with ``name``, ``lr``, ``weight_decay``).

    ``suffix_bias``: see :func:`parameter_roles` (``False`` only to read old optimizer states).
    """
    params = dict(model.named_parameters())
    buckets: dict[tuple[str, float, float], list[Tensor]] = {}
    for name, (part, role) in parameter_roles(model, suffix_bias=suffix_bias).items():
        lr, wd = recipe.lr, recipe.weight_decay
        if part == "backbone":
            if role == "norm":
                lr = recipe.backbone_lr if recipe.backbone_norm_lr == "backbone" else recipe.lr
                wd = recipe.weight_decay if recipe.backbone_norm_decay else 0.0
                label = "backbone_norm"
            else:
                lr, label = recipe.backbone_lr, "backbone"
        elif role in recipe.head_no_decay:
            wd, label = 0.0, f"{part}_{role}_no_decay"
        else:
            label = part
        buckets.setdefault((label, lr, wd), []).append(params[name])
    return [
        {"name": label, "params": ps, "lr": lr * lr_scale, "initial_lr": lr * lr_scale, "weight_decay": wd}
        for (label, lr, wd), ps in sorted(buckets.items(), key=lambda kv: kv[0][0])
    ]


# -- learning-rate schedules ---------------------------------------------------------------
@dataclass(frozen=True)
class ScheduleConfig:
    """``multistep``: linear warm-up then steps (D-FINE); ``flatcosine``: DEIM's schedule."""

    kind: str  # "multistep" or "flatcosine"
    total_iters: int
    warmup_iters: int
    milestones: tuple[int, ...] = ()  # iterations, multistep
    gamma: float = 0.1  # multistep factor
    flat_iters: int = 0  # flatcosine: constant lr until this iteration
    no_aug_iters: int = 0  # flatcosine: constant minimum lr for the last iterations
    min_lr_ratio: float = 0.5  # flatcosine: min lr = ratio * initial lr (DEIM's lr_gamma)


def lr_factor(cfg: ScheduleConfig, step: int) -> float:
    """Multiplier of the initial learning rate at optimizer step ``step`` (0-based).

    D-FINE: linear warm-up ``min(1, (step + 1) / warmup)`` times ``gamma ** (#milestones
    passed)``. DEIM flat-cosine: quadratic warm-up ``(step / warmup)^2``, flat, cosine decay
    to ``min_lr_ratio``, then flat at the minimum for the no-augmentation tail.
    """
    if cfg.kind == "multistep":
        warm = min(1.0, (step + 1) / cfg.warmup_iters) if cfg.warmup_iters > 0 else 1.0
        passed = sum(1 for m in cfg.milestones if step >= m)
        return warm * cfg.gamma**passed
    if cfg.kind != "flatcosine":
        raise ValueError(f"unknown schedule {cfg.kind!r}")
    low = cfg.min_lr_ratio
    if cfg.warmup_iters > 0 and step <= cfg.warmup_iters:
        return (step / cfg.warmup_iters) ** 2
    if step <= cfg.flat_iters:
        return 1.0
    if step >= cfg.total_iters - cfg.no_aug_iters:
        return low
    span = max(1, cfg.total_iters - cfg.flat_iters - cfg.no_aug_iters)
    cosine = 0.5 * (1.0 + math.cos(math.pi * (step - cfg.flat_iters) / span))
    return low + (1.0 - low) * cosine


def build_optimizer(
    param_groups: list[dict[str, Any]],
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 1e-2,
) -> torch.optim.AdamW:
    """AdamW over ``param_groups`` (:func:`build_param_groups`), fused where torch has a kernel.

    The fused AdamW (one kernel over all parameters) is used when every parameter is a
    floating-point tensor on the CPU or a CUDA device; on the CPU it is several times faster
    than the default per-parameter loop (``benchmarks/bench_train_step.py``). It computes the
    same update up to float rounding; ``fused`` is saved in the optimizer's state, so a resumed
    run continues with the implementation it started with.
    """
    params = [p for group in param_groups for p in group["params"]]
    fused = bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params
    )
    return torch.optim.AdamW(
        param_groups, lr=lr, betas=betas, weight_decay=weight_decay, fused=fused or None
    )


def group_param_names(model: nn.Module, groups: list[dict[str, Any]]) -> list[list[str]]:
    """The parameter names of each of ``groups`` (an optimizer's ``param_groups`` or
    :func:`build_param_groups`' result), in order: what a saved optimizer state's indices mean."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names[id(p)] for p in group["params"]] for group in groups]


def remap_optimizer_state(
    state: dict[str, Any], saved_names: list[list[str]], current: torch.optim.Optimizer,
    current_names: list[list[str]],
) -> dict[str, Any]:
    """``state`` (an optimizer ``state_dict`` whose groups held ``saved_names``) re-indexed
    for ``current``, whose groups hold ``current_names``: each parameter keeps its own
    moments wherever its group is now; group settings are the current ones (the schedule
    sets the learning rate before every step). Unchanged when the layouts agree.

    Raises :class:`ValueError` when the two layouts do not hold the same parameters.
    """
    if saved_names == current_names:
        return state
    flat_saved = [n for group in saved_names for n in group]
    flat_current = [n for group in current_names for n in group]
    if sorted(flat_saved) != sorted(flat_current):
        missing = sorted(set(flat_current) - set(flat_saved))[:3]
        extra = sorted(set(flat_saved) - set(flat_current))[:3]
        raise ValueError(f"the saved optimizer state holds other parameters (missing {missing}, extra {extra})")
    saved_index = {n: i for i, n in enumerate(flat_saved)}
    moments = state["state"]
    remapped = {j: moments[saved_index[n]] for j, n in enumerate(flat_current) if saved_index[n] in moments}
    groups = current.state_dict()["param_groups"]  # current settings, indices in current order
    return {"state": remapped, "param_groups": groups}


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, each moment then laid out as its parameter.

    A state saved from channels-last parameters (CPU training) may be loaded into contiguous
    ones (a CUDA resume) or the other way round. torch's fused AdamW walks a parameter, its
    gradient and its moments as flat arrays and silently mixes elements whose memory layouts
    differ, so every per-parameter tensor is copied into its parameter's layout.
    """
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        for param in group["params"]:
            moments = optimizer.state.get(param, {})
            for key, value in moments.items():
                if isinstance(value, Tensor) and value.shape == param.shape and value.stride() != param.stride():
                    moments[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def apply_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor


# -- EMA -----------------------------------------------------------------------------------
class ModelEMA:
    """Exponential moving average of a model's floating-point state with warm-up.

    ``decay_t = decay * (1 - exp(-updates / warmups))``: the average follows the model
    closely at first and slows down to ``decay``. Integer buffers are copied.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmups: int = 1000) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmups = warmups
        self.updates = 0

    def current_decay(self) -> float:
        return self.decay * (1.0 - math.exp(-self.updates / self.warmups)) if self.warmups else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """``ema = d * ema + (1 - d) * model`` for floating-point entries, copy for the rest.

        One fused ``torch._foreach`` multiply and add over all floating-point tensors; each
        element gets the same two roundings as an entry-by-entry ``mul_(d).add_(x, alpha)``.
        """
        self.updates += 1
        d = self.current_decay()
        source = model.state_dict()
        averaged: list[Tensor] = []
        current: list[Tensor] = []
        for key, value in self.module.state_dict().items():
            src = source[key].detach()
            if value.dtype.is_floating_point:
                averaged.append(value)
                current.append(src.to(value.dtype))
            else:
                value.copy_(src)
        if averaged:
            torch._foreach_mul_(averaged, d)
            torch._foreach_add_(averaged, current, alpha=1.0 - d)

    def state_dict(self) -> dict[str, Any]:
        module = {k: v.contiguous() for k, v in self.module.state_dict().items()}
        return {"module": module, "updates": self.updates, "decay": self.decay,
                "warmups": self.warmups}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
        self.decay = float(state["decay"])
        self.warmups = int(state["warmups"])
