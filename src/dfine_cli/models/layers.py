"""Small building blocks shared by the model parts: activations, MLP, conv+norm+act."""

from __future__ import annotations

from typing import Any, cast

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


def _batch_statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance per channel of a channels-last ``[N, C, H, W]`` tensor.

    Column sums of the ``[N*H*W, C]`` view, which torch reduces with cascaded partial sums, in
    two passes (mean, then squared deviations).
    """
    channels = x.shape[1]
    count = x.numel() // channels
    rows = x.permute(0, 2, 3, 1).reshape(count, channels)  # a view for channels-last
    mean = rows.sum(0).div_(count)
    var = (rows - mean).square_().sum(0).div_(count)
    return mean, var


class _ChannelsLastBatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm of a channels-last CPU tensor, optionally with ReLU and LAB.

    The statistics come from :func:`_batch_statistics`; normalisation and the backward are
    torch's own channels-last kernels.

    With ``relu`` the function is ``scale * relu(batch_norm(x)) + shift`` (the backbone's conv
    blocks: batch norm, ReLU and a learnable affine, LAB, with scalar ``scale`` and ``shift``;
    a plain ReLU is ``scale = 1, shift = 0``). Computed one after another that is four passes
    over the map forward, the backward adds five more and keeps the ReLU's output alive. For
    ``scale != 0`` they fold into one batch-norm pass and a clamp: with ``u`` the batch norm
    under weight ``scale * gamma`` and bias ``scale * beta + shift``, the output is
    ``max(u, shift)`` for ``scale > 0`` and ``min(u, shift)`` for ``scale < 0``. The output
    also tells where the ReLU passed (``y != shift``), so the backward needs no other saved
    map: the gradient reaching the norm is ``grad`` there and zero elsewhere, and batch norm's
    own backward, run with weight ``scale * gamma``, returns the input gradient and the sums
    ``sum(g * x_hat)`` and ``sum(g)`` per channel, from which the weight, bias and scale
    gradients follow (``relu(z) = z`` where it passed, with ``z = gamma * x_hat + beta``).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        scale: Tensor | None,
        shift: Tensor | None,
        eps: float,
        relu: bool,
        scale_value: float,
        shift_value: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        mean, var = _batch_statistics(x)
        weight_used: Tensor | None
        bias_used: Tensor | None
        if relu:
            assert weight is not None and bias is not None
            weight_used, bias_used = weight * scale_value, bias * scale_value + shift_value
        else:
            weight_used, bias_used = weight, bias
        out = torch.ops.aten.native_batch_norm(
            x, weight_used, bias_used, mean, var, False, 0.0, eps
        )[0]
        if relu and scale_value > 0:
            out.clamp_min_(shift_value)
        elif relu:
            out.clamp_max_(shift_value)
        ctx.save_for_backward(x, weight, bias, mean, torch.rsqrt(var + eps), out if relu else None)
        ctx.eps, ctx.relu, ctx.scale_value, ctx.shift_value = eps, relu, scale_value, shift_value
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad: Tensor, _grad_mean: Tensor | None, _grad_var: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        x, weight, bias, mean, invstd, out = ctx.saved_tensors
        needs = ctx.needs_input_grad
        s, b = ctx.scale_value, ctx.shift_value
        # a channel slice after a concatenation, or a contiguous gradient, becomes one dense
        # channels-last tensor (the kernels below need it; measured faster than masking it as is)
        grad = grad.contiguous(memory_format=torch.channels_last)
        if not ctx.relu:
            grads = torch.ops.aten.native_batch_norm_backward(
                grad, x, weight, None, None, mean, invstd, True, ctx.eps,
                [needs[0], needs[1], needs[2]],
            )
            return grads[0], grads[1], grads[2], None, None, None, None, None, None
        if s > 0:
            passed = torch.ops.aten.threshold_backward(grad, out, b)
        else:
            passed = torch.where(out < b, grad, 0.0)
        need_sums = needs[1] or needs[2] or needs[3]
        grad_x, sum_gx, sum_g = torch.ops.aten.native_batch_norm_backward(
            passed, x, weight * s, None, None, mean, invstd, True, ctx.eps,
            [needs[0], need_sums, need_sums],
        )
        grad_weight = sum_gx * s if needs[1] else None
        grad_bias = sum_g * s if needs[2] else None
        grad_scale = (weight * sum_gx + bias * sum_g).sum().reshape(1) if needs[3] else None
        grad_shift = grad.sum().reshape(1) if needs[4] else None
        return grad_x, grad_weight, grad_bias, grad_scale, grad_shift, None, None, None, None


class AccurateBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training-mode statistics stay accurate in channels-last.

    For a channels-last float32 CPU input, torch's batch-norm kernel sums the batch mean and
    variance one pixel after another, up to 10-30x further from the exact values than its
    kernel for contiguous inputs (feature maps of mean 10: 6e-5 against 2e-6 after
    normalisation); in a deep network trained from calibrated statistics that moved the
    official loss terms by up to 2e-3 (``tests/engine/test_criterion.py``). Such inputs take
    :class:`_ChannelsLastBatchNormFunction`; the running statistics are updated as torch does
    (unbiased variance, ``momentum`` or a cumulative average). Every other case, evaluation
    mode included, is ``nn.BatchNorm2d`` itself; state-dict keys are the same.
    """

    def takes_accurate_path(self, x: Tensor) -> bool:
        """Whether ``x`` gets the accurately summed channels-last statistics."""
        return (
            self.training
            and x.dim() == 4
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last)
            and self.running_mean is not None
            and self.running_var is not None
            and self.num_batches_tracked is not None
            and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing()
        )

    def forward(self, x: Tensor) -> Tensor:
        if not self.takes_accurate_path(x):
            return super().forward(x)
        return self._normalise(x, None, None, False, 1.0, 0.0)

    def forward_relu_affine(self, x: Tensor, lab: nn.Module | None) -> Tensor | None:
        """``lab(relu(self(x)))`` in one fused pass, or None where that does not apply.

        ``lab`` is a module with scalar ``scale`` and ``bias`` parameters (the backbone's
        learnable affine) or None for a plain ReLU. It applies on the accurate path, with
        affine parameters and a nonzero scale (see
        :class:`_ChannelsLastBatchNormFunction`).
        """
        if not (self.affine and self.takes_accurate_path(x)):
            return None
        scale = cast(Tensor, lab.scale) if lab is not None else None
        shift = cast(Tensor, lab.bias) if lab is not None else None
        scale_value = float(scale.detach()) if scale is not None else 1.0
        shift_value = float(shift.detach()) if shift is not None else 0.0
        if scale_value == 0.0:
            return None
        return self._normalise(x, scale, shift, True, scale_value, shift_value)

    def _normalise(
        self,
        x: Tensor,
        scale: Tensor | None,
        shift: Tensor | None,
        relu: bool,
        scale_value: float,
        shift_value: float,
    ) -> Tensor:
        """Run :class:`_ChannelsLastBatchNormFunction` and update the running statistics and
        counter as ``nn.BatchNorm2d`` does."""
        out, mean, var = _ChannelsLastBatchNormFunction.apply(
            x, self.weight, self.bias, scale, shift, self.eps, relu, scale_value, shift_value
        )
        assert self.running_mean is not None and self.running_var is not None
        assert self.num_batches_tracked is not None
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            factor = (
                1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            )
            count = x.numel() // x.shape[1]
            unbiased = var.double() * (count / max(count - 1, 1))
            for running, batch in ((self.running_mean, mean.double()), (self.running_var, unbiased)):
                running.copy_(batch * factor + running.double() * (1.0 - factor))
        return cast(Tensor, out)


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
        self.norm: nn.Module = AccurateBatchNorm2d(out_ch)
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
        self.norm: nn.Module = AccurateBatchNorm2d(out_ch)

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
