"""Small building blocks shared by the model parts: activations, MLP, conv+norm+act."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def make_activation(name: str | None) -> nn.Module:
    """The activation named in a configuration (``relu``, ``silu``, ``gelu`` or ``None``)."""
    if name is None:
        return nn.Identity()
    table: dict[str, type[nn.Module]] = {
        "relu": nn.ReLU,
        "silu": nn.SiLU,
        "gelu": nn.GELU,
    }
    try:
        return table[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}") from None


def in_place(act: nn.Module) -> nn.Module:
    """The in-place form of a ReLU or SiLU (for a conv's fresh output at inference)."""
    if isinstance(act, nn.ReLU):
        return nn.ReLU(inplace=True)
    if isinstance(act, nn.SiLU):
        return nn.SiLU(inplace=True)
    return act


class MLP(nn.Module):
    """``num_layers`` linear layers with an activation between them (none after the last)."""

    def __init__(
        self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, activation: str = "relu"
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = make_activation(activation)

    @property
    def last(self) -> nn.Linear:
        """The output layer (zero-initialised by several heads)."""
        layer = self.layers[-1]
        assert isinstance(layer, nn.Linear)
        return layer

    def linear(self, index: int) -> nn.Linear:
        layer = self.layers[index]
        assert isinstance(layer, nn.Linear)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.act(x)
        return x


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """Fold an inference-mode BatchNorm (or FrozenBatchNorm2d) into the preceding conv.

    ``y = gamma * (conv(x) - mean) / sqrt(var + eps) + beta`` becomes one conv with
    ``W' = W * gamma / std`` and ``b' = beta + (b - mean) * gamma / std``.
    """
    gamma = cast(Tensor, bn.weight)
    beta = cast(Tensor, bn.bias)
    mean = cast(Tensor, bn.running_mean)
    var = cast(Tensor, bn.running_var)
    scale = gamma / (var + float(cast(float, bn.eps))).sqrt()
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        conv.stride,  # type: ignore[arg-type]
        conv.padding,  # type: ignore[arg-type]
        conv.dilation,  # type: ignore[arg-type]
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(conv.weight.device, conv.weight.dtype)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(mean)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        cast(Tensor, fused.bias).copy_(beta + (bias - mean) * scale)
    return fused


class ConvNorm(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + activation; ``fuse()`` folds the norm for inference.

    State-dict names: ``conv.weight`` and ``norm.*`` (the hybrid encoder's layout).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        padding: int | None = None,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        pad = (kernel_size - 1) // 2 if padding is None else padding
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, pad, groups=groups, bias=False)
        self.norm: nn.Module = nn.BatchNorm2d(out_ch)
        self.act = make_activation(activation)
        self.fused: nn.Conv2d | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        return self.act(self.norm(self.conv(x)))

    def fuse(self) -> None:
        """Fold the norm into the conv (inference only; irreversible)."""
        if self.fused is None:
            self.fused = fuse_conv_bn(self.conv, self.norm)
            self.act = in_place(self.act)
            del self.conv
            del self.norm


class Projection(nn.Sequential):
    """1x1 conv + BatchNorm projecting a feature map to a model width (``conv``, ``norm``)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.norm: nn.Module = nn.BatchNorm2d(out_ch)

    def fuse(self) -> None:
        """Fold the norm into the conv (inference only; irreversible)."""
        if isinstance(self.norm, nn.Identity):
            return
        self.conv = fuse_conv_bn(self.conv, self.norm)
        self.norm = nn.Identity()


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``logit(x)`` with ``x`` clipped to ``[0, 1]`` and both terms clipped at ``eps``."""
    x = x.clamp(0.0, 1.0)
    return torch.log(x.clamp(min=eps) / (1.0 - x).clamp(min=eps))


def prior_logit(prob: float) -> float:
    """Bias that makes ``sigmoid(bias) == prob`` (focal-loss prior initialisation)."""
    import math

    return -math.log((1.0 - prob) / prob)


def interpolate_nearest_2x(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="nearest")
