"""HGNetv2 backbone (PP-HGNetV2, as used by D-FINE).

State-dict layout follows the official checkpoints: ``stem.stem{1,2a,2b,3,4}``,
``stages.{i}.downsample``, ``stages.{i}.blocks.{j}.layers.{k}`` and ``.aggregation.{0,1}``,
each a conv (``conv.weight``), a norm (``bn.*``) and, with ``use_lab``, a learnable affine
(``lab.scale``, ``lab.bias``).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from dfine_cli.models.layers import AccurateBatchNorm2d, fuse_conv_bn
from dfine_cli.models.presets import BackboneSpec, StageSpec


class LearnableAffine(nn.Module):
    """``scale * x + bias`` with two learnable scalars (the "LAB" block)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x + self.bias


class ClampAt(nn.Module):
    """In-place ``max(x, bound)`` (``upper=False``) or ``min(x, bound)`` (``upper=True``).

    The inference form of ReLU followed by a LAB: with ``s`` and ``b`` the LAB's scale and
    bias, ``s * relu(z) + b`` equals ``max(s * z + b, b)`` for ``s >= 0`` and
    ``min(s * z + b, b)`` for ``s < 0``, so the scale and bias fold into the conv and three
    element-wise passes become one. It runs only on a conv's fresh output, hence in place.
    """

    def __init__(self, bound: float, upper: bool) -> None:
        super().__init__()
        self.bound = bound
        self.upper = upper

    def forward(self, x: Tensor) -> Tensor:
        return x.clamp_max_(self.bound) if self.upper else x.clamp_min_(self.bound)

    def extra_repr(self) -> str:
        return f"{'max' if self.upper else 'min'}={self.bound}"


class ConvBNAct(nn.Module):
    """Conv (no bias) + BatchNorm + optional ReLU (+ LAB after the ReLU when ``use_lab``)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        use_act: bool = True,
        use_lab: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_ch, out_ch, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False
        )
        self.bn: nn.Module = AccurateBatchNorm2d(out_ch)
        self.act: nn.Module = nn.ReLU() if use_act else nn.Identity()
        self.lab: nn.Module = LearnableAffine() if (use_act and use_lab) else nn.Identity()
        self.fused: nn.Conv2d | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            return self.lab(self.act(self.fused(x)))
        x = self.conv(x)
        if isinstance(self.act, nn.ReLU) and isinstance(self.bn, AccurateBatchNorm2d):
            lab = self.lab if isinstance(self.lab, LearnableAffine) else None
            out = self.bn.forward_relu_affine(x, lab)  # training, channels-last, on the CPU
            if out is not None:
                return out
        return self.lab(self.act(self.bn(x)))

    def fuse(self) -> None:
        """Fold the norm, and a LAB with its ReLU, into the conv (inference only)."""
        if self.fused is not None:
            return
        self.fused = fuse_conv_bn(self.conv, self.bn)
        del self.conv
        del self.bn
        if isinstance(self.act, nn.ReLU) and isinstance(self.lab, LearnableAffine):
            scale, bias = float(self.lab.scale.detach()), float(self.lab.bias.detach())
            with torch.no_grad():
                self.fused.weight.mul_(scale)
                conv_bias = cast(Tensor, self.fused.bias)
                conv_bias.mul_(scale).add_(bias)
            self.act = ClampAt(bias, upper=scale < 0)
            self.lab = nn.Identity()
        elif isinstance(self.act, nn.ReLU):
            self.act = ClampAt(0.0, upper=False)


class Stem(nn.Module):
    """Stride-4 stem: conv, a two-branch (pool | conv-conv) block, then two convs."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, use_lab: bool) -> None:
        super().__init__()
        self.stem1 = ConvBNAct(in_ch, mid_ch, 3, stride=2, use_lab=use_lab)
        self.stem2a = ConvBNAct(mid_ch, mid_ch // 2, 2, use_lab=use_lab)
        self.stem2b = ConvBNAct(mid_ch // 2, mid_ch, 2, use_lab=use_lab)
        self.stem3 = ConvBNAct(mid_ch * 2, mid_ch, 3, stride=2, use_lab=use_lab)
        self.stem4 = ConvBNAct(mid_ch, out_ch, 1, use_lab=use_lab)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(self.stem1(x), (0, 1, 0, 1))
        branch = self.stem2b(F.pad(self.stem2a(x), (0, 1, 0, 1)))
        x = torch.cat([_max_pool_2x2_stride1(x), branch], dim=1)
        return self.stem4(self.stem3(x))


def _max_pool_2x2_stride1(x: Tensor) -> Tensor:
    """``MaxPool2d(2, stride=1)`` on an input padded by one row/column (same result).

    Without gradients: two element-wise maxima of shifted views, in eager PyTorch on CPUs
    several times faster than the pooling kernel, which also computes indices. With
    gradients, the pooling kernel: its backward is one scatter, where the maxima's backward
    splits ties and zero-fills a full-size gradient per slice (training step: 0.17 s against
    0.09 s for ``[4, 16, 320, 320]`` on two cores), and it routes the gradient as the
    official ``MaxPool2d`` does. In an ONNX export it is one MaxPool node, which ONNX Runtime
    and OpenVINO run faster than four strided slices.
    """
    if torch.onnx.is_in_onnx_export() or (torch.is_grad_enabled() and x.requires_grad):
        return F.max_pool2d(x, 2, stride=1)
    rows = torch.maximum(x[..., :-1, :], x[..., 1:, :])
    return torch.maximum(rows[..., :-1], rows[..., 1:])


class LightConvBNAct(nn.Module):
    """1x1 conv (no activation) followed by a depthwise kxk conv with activation."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, use_lab: bool) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(in_ch, out_ch, 1, use_act=False, use_lab=use_lab)
        self.conv2 = ConvBNAct(out_ch, out_ch, kernel_size, groups=out_ch, use_lab=use_lab)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.conv1(x))


class HGBlock(nn.Module):
    """Stacked convs whose outputs (and the input) are concatenated and aggregated.

    Aggregation is squeeze (1x1 to ``out/2``) then excitation (1x1 to ``out``), as in the
    official D-FINE backbone; blocks after the first in a stage add a residual.
    """

    def __init__(
        self,
        in_ch: int,
        mid_ch: int,
        out_ch: int,
        num_layers: int,
        kernel_size: int,
        residual: bool,
        light_block: bool,
        use_lab: bool,
    ) -> None:
        super().__init__()
        self.residual = residual
        layers: list[nn.Module] = []
        for i in range(num_layers):
            cin = in_ch if i == 0 else mid_ch
            if light_block:
                layers.append(LightConvBNAct(cin, mid_ch, kernel_size, use_lab))
            else:
                layers.append(ConvBNAct(cin, mid_ch, kernel_size, use_lab=use_lab))
        self.layers = nn.ModuleList(layers)
        total = in_ch + num_layers * mid_ch
        self.aggregation = nn.Sequential(
            ConvBNAct(total, out_ch // 2, 1, use_lab=use_lab),
            ConvBNAct(out_ch // 2, out_ch, 1, use_lab=use_lab),
        )

    def forward(self, x: Tensor) -> Tensor:
        outputs = [x]
        y = x
        for layer in self.layers:
            y = layer(y)
            outputs.append(y)
        y = self.aggregation(torch.cat(outputs, dim=1))
        if not self.residual:
            return y
        # In the fused (inference) form y is the fresh output of a clamp: add in place.
        return y.add_(x) if self.aggregation[1].fused is not None else y + x


class HGStage(nn.Module):
    def __init__(self, spec: StageSpec, use_lab: bool) -> None:
        super().__init__()
        c = spec.in_channels
        self.downsample: nn.Module = (
            ConvBNAct(c, c, 3, stride=2, groups=c, use_act=False, use_lab=use_lab)
            if spec.downsample
            else nn.Identity()
        )
        self.blocks = nn.Sequential(
            *[
                HGBlock(
                    spec.in_channels if i == 0 else spec.out_channels,
                    spec.mid_channels,
                    spec.out_channels,
                    spec.layers_per_block,
                    spec.kernel_size,
                    residual=i > 0,
                    light_block=spec.light_block,
                    use_lab=use_lab,
                )
                for i in range(spec.num_blocks)
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(self.downsample(x))


def _freeze_batchnorm(module: nn.Module) -> None:
    """Replace every BatchNorm2d below ``module`` by a FrozenBatchNorm2d (buffers only)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features))
        else:
            _freeze_batchnorm(child)


class HGNetv2(nn.Module):
    """HGNetv2 returning the feature maps of the stages in ``return_idx``.

    Output strides of stages 0..3 are 4, 8, 16, 32.
    """

    def __init__(
        self,
        spec: BackboneSpec,
        return_idx: tuple[int, ...],
        use_lab: bool,
        freeze_stem: bool = False,
        freeze_norm: bool = False,
    ) -> None:
        super().__init__()
        self.return_idx = tuple(return_idx)
        self.stem = Stem(spec.stem_in, spec.stem_mid, spec.stem_out, use_lab)
        self.stages = nn.ModuleList(HGStage(s, use_lab) for s in spec.stages)
        self.out_channels = [spec.stages[i].out_channels for i in self.return_idx]
        if freeze_stem:
            for p in self.stem.parameters():
                p.requires_grad_(False)
        if freeze_norm:
            _freeze_batchnorm(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        outs: list[Tensor] = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.return_idx:
                outs.append(x)
            if i >= max(self.return_idx):
                break
        return outs
