"""Hybrid encoder: intra-scale transformer on the coarsest map, then FPN + PAN fusion.

State-dict layout follows the official checkpoints (``input_proj``, ``encoder.{i}.layers``,
``lateral_convs``, ``fpn_blocks``, ``downsample_convs``, ``pan_blocks``).
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfine_cli.models.layers import ConvNorm, Projection, fuse_conv_bn, in_place, make_activation


def sincos_position_embedding(
    width: int, height: int, dim: int, temperature: float = 10000.0
) -> Tensor:
    """2-D sine-cosine position embedding ``[1, width*height, dim]``.

    The official encoder builds its grid ``(i_w, i_h)`` with ``i_w`` major
    (``meshgrid(range(w), range(h), indexing="ij")``) and adds it to tokens flattened
    row-major; we reproduce that order exactly so that trained weights see the same
    embedding: token ``k`` gets ``u = k // height`` and ``v = k % height``, and the
    embedding is ``[sin(u w), cos(u w), sin(v w), cos(v w)]`` with
    ``w_i = temperature^(-i / (dim/4))``.
    """
    if dim % 4:
        raise ValueError("position embedding dimension must be divisible by 4")
    quarter = dim // 4
    omega = 1.0 / (temperature ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    grid_u, grid_v = torch.meshgrid(
        torch.arange(width, dtype=torch.float32),
        torch.arange(height, dtype=torch.float32),
        indexing="ij",
    )
    out_u = grid_u.flatten()[:, None] @ omega[None]
    out_v = grid_v.flatten()[:, None] @ omega[None]
    return torch.cat([out_u.sin(), out_u.cos(), out_v.sin(), out_v.cos()], dim=1)[None]


class TransformerEncoderLayer(nn.Module):
    """Post-norm transformer layer; position embedding added to queries and keys."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, activation: str = "gelu") -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.activation = make_activation(activation)

    def forward(self, src: Tensor, pos: Tensor) -> Tensor:
        q = src + pos
        attn, _ = self.self_attn(q, q, value=src, need_weights=False)
        src = self.norm1(src + attn)
        return self.norm2(src + self.linear2(self.activation(self.linear1(src))))


class TransformerEncoder(nn.Module):
    def __init__(self, layers: list[TransformerEncoderLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, src: Tensor, pos: Tensor) -> Tensor:
        for layer in self.layers:
            src = layer(src, pos)
        return src


class RepVGGBlock(nn.Module):
    """3x3 conv-norm plus 1x1 conv-norm branches, summed, then activation.

    ``fuse()`` re-parameterises both branches into one 3x3 conv (RepVGG).
    """

    def __init__(self, in_ch: int, out_ch: int, activation: str = "silu") -> None:
        super().__init__()
        self.conv1 = ConvNorm(in_ch, out_ch, 3, padding=1)
        self.conv2 = ConvNorm(in_ch, out_ch, 1, padding=0)
        self.act = make_activation(activation)
        self.fused: nn.Conv2d | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            return self.act(self.fused(x))
        return self.act(self.conv1(x) + self.conv2(x))

    def fuse(self) -> None:
        if self.fused is not None:
            return
        k3 = fuse_conv_bn(self.conv1.conv, self.conv1.norm)
        k1 = fuse_conv_bn(self.conv2.conv, self.conv2.norm)
        with torch.no_grad():
            k3.weight.add_(F.pad(k1.weight, [1, 1, 1, 1]))
            cast(Tensor, k3.bias).add_(cast(Tensor, k1.bias))
        self.fused = k3
        self.act = in_place(self.act)
        del self.conv1
        del self.conv2


class CSPLayer(nn.Module):
    """Two 1x1 branches; one runs ``num_blocks`` RepVGG blocks; outputs summed."""

    def __init__(self, in_ch: int, out_ch: int, num_blocks: int, activation: str = "silu") -> None:
        super().__init__()
        self.conv1 = ConvNorm(in_ch, out_ch, 1, activation=activation)
        self.conv2 = ConvNorm(in_ch, out_ch, 1, activation=activation)
        self.bottlenecks = nn.Sequential(
            *[RepVGGBlock(out_ch, out_ch, activation) for _ in range(num_blocks)]
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.bottlenecks(self.conv1(x)) + self.conv2(x)


class RepNCSPELAN4(nn.Module):
    """CSP-ELAN fusion block (GELAN): split, two CSP+conv stages chained, concat, 1x1."""

    def __init__(
        self, in_ch: int, out_ch: int, split_ch: int, branch_ch: int, num_blocks: int,
        activation: str = "silu",
    ) -> None:
        super().__init__()
        self.split = split_ch // 2
        self.cv1 = ConvNorm(in_ch, split_ch, 1, activation=activation)
        self.cv2 = nn.Sequential(
            CSPLayer(split_ch // 2, branch_ch, num_blocks, activation),
            ConvNorm(branch_ch, branch_ch, 3, activation=activation),
        )
        self.cv3 = nn.Sequential(
            CSPLayer(branch_ch, branch_ch, num_blocks, activation),
            ConvNorm(branch_ch, branch_ch, 3, activation=activation),
        )
        self.cv4 = ConvNorm(split_ch + 2 * branch_ch, out_ch, 1, activation=activation)

        self.cv1_halves: nn.ModuleList | None = None
        self.cv1_low: nn.ModuleList | None = None
        self.cv1_lateral: nn.ModuleList | None = None

    def forward(self, x: Tensor, lateral: Tensor | None = None) -> Tensor:
        """``x``: the block's input; or, with ``lateral`` (after :meth:`split_input`), the
        low-resolution map whose 2x upsampling comes first in the input (see
        :meth:`forward_upsampled`). Called through the module either way, so that exported
        node names keep the block's path."""
        if lateral is not None:
            return self.forward_upsampled(x, lateral)
        if self.cv1_halves is not None:
            a, b = (half(x) for half in self.cv1_halves)
        else:
            a, b = self.cv1(x).split((self.split, self.split), dim=1)
        return self._rest(a, b)

    def _rest(self, a: Tensor, b: Tensor) -> Tensor:
        c = self.cv2(b)
        d = self.cv3(c)
        return self.cv4(torch.cat([a, b, c, d], dim=1))

    def forward_upsampled(self, low: Tensor, lateral: Tensor) -> Tensor:
        """``forward(cat([upsample_2x(low), lateral]))`` without the upsampled concat.

        A 1x1 conv commutes with nearest 2x upsampling, so the part of ``cv1`` that reads
        the upsampled map runs on ``low`` at a quarter of the pixels and is upsampled after;
        the concatenation is never built. Inference form only (see :meth:`split_input`).
        """
        assert self.cv1_low is not None and self.cv1_lateral is not None
        assert self.cv1_halves is not None
        halves = []
        for full, from_low, from_lateral in zip(self.cv1_halves, self.cv1_low, self.cv1_lateral):
            y = from_lateral(lateral)
            y.add_(F.interpolate(from_low(low), scale_factor=2.0, mode="nearest"))
            halves.append(cast(nn.Sequential, full)[1](y))  # the activation
        return self._rest(halves[0], halves[1])

    def fuse(self) -> None:
        """Fold the norms, and run ``cv1`` as two convs, one per half (inference only).

        On channels-last maps a channel slice is not dense, so every conv reading the split
        ``b`` would first copy it; two half-width convs give two dense maps for the same work.
        """
        if self.cv1_halves is not None:
            return
        self.cv1.fuse()
        whole = cast(nn.Conv2d, self.cv1.fused)
        halves = []
        for lo in (0, self.split):
            conv = nn.Conv2d(whole.in_channels, self.split, 1).to(whole.weight)
            with torch.no_grad():
                conv.weight.copy_(whole.weight[lo : lo + self.split])
                cast(Tensor, conv.bias).copy_(cast(Tensor, whole.bias)[lo : lo + self.split])
            halves.append(nn.Sequential(conv, in_place(self.cv1.act)))
        self.cv1_halves = nn.ModuleList(halves)
        del self.cv1

    def split_input(self, low_channels: int) -> None:
        """Prepare :meth:`forward_upsampled` for inputs whose first ``low_channels``
        channels are an upsampled map (after :meth:`fuse`)."""
        self.fuse()
        assert self.cv1_halves is not None
        lows, laterals = [], []
        for full in self.cv1_halves:
            conv = cast(nn.Conv2d, cast(nn.Sequential, full)[0])
            low = nn.Conv2d(low_channels, conv.out_channels, 1, bias=False).to(conv.weight)
            lat = nn.Conv2d(conv.in_channels - low_channels, conv.out_channels, 1).to(conv.weight)
            with torch.no_grad():
                low.weight.copy_(conv.weight[:, :low_channels])
                lat.weight.copy_(conv.weight[:, low_channels:])
                cast(Tensor, lat.bias).copy_(cast(Tensor, conv.bias))
            lows.append(low)
            laterals.append(lat)
        self.cv1_low = nn.ModuleList(lows)
        self.cv1_lateral = nn.ModuleList(laterals)


class SCDown(nn.Module):
    """Spatial-channel decoupled downsampling: 1x1 conv then stride-2 depthwise conv."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.cv1 = ConvNorm(in_ch, out_ch, 1)
        self.cv2 = ConvNorm(out_ch, out_ch, kernel_size, stride, groups=out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.cv2(self.cv1(x))


class HybridEncoder(nn.Module):
    """AIFI (attention on the coarsest level) + CCFF (FPN top-down, PAN bottom-up).

    Input: backbone maps ``[B, C_i, H/s_i, W/s_i]``; output: the same number of maps with
    ``hidden_dim`` channels, finest first.
    """

    def __init__(
        self,
        in_channels: tuple[int, ...],
        hidden_dim: int,
        heads: int,
        ffn_dim: int,
        use_encoder_idx: tuple[int, ...],
        num_encoder_layers: int,
        expansion: float,
        depth_mult: float,
        activation: str = "silu",
        encoder_activation: str = "gelu",
        pe_temperature: float = 10000.0,
    ) -> None:
        super().__init__()
        levels = len(in_channels)
        self.hidden_dim = hidden_dim
        self.use_encoder_idx = tuple(i % levels for i in use_encoder_idx)
        self.pe_temperature = pe_temperature
        self.input_proj = nn.ModuleList(Projection(c, hidden_dim) for c in in_channels)
        self.encoder = nn.ModuleList(
            TransformerEncoder(
                [
                    TransformerEncoderLayer(hidden_dim, heads, ffn_dim, encoder_activation)
                    for _ in range(num_encoder_layers)
                ]
            )
            for _ in self.use_encoder_idx
        )
        branch = round(expansion * hidden_dim // 2)
        blocks = round(3 * depth_mult)
        self.lateral_convs = nn.ModuleList(
            ConvNorm(hidden_dim, hidden_dim, 1) for _ in range(levels - 1)
        )
        self.fpn_blocks = nn.ModuleList(
            RepNCSPELAN4(hidden_dim * 2, hidden_dim, hidden_dim * 2, branch, blocks, activation)
            for _ in range(levels - 1)
        )
        self.downsample_convs = nn.ModuleList(
            nn.Sequential(SCDown(hidden_dim, hidden_dim, 3, 2)) for _ in range(levels - 1)
        )
        self.pan_blocks = nn.ModuleList(
            RepNCSPELAN4(hidden_dim * 2, hidden_dim, hidden_dim * 2, branch, blocks, activation)
            for _ in range(levels - 1)
        )
        self._pos_cache: dict[tuple[int, int, str, torch.dtype], Tensor] = {}

    def _position_embedding(self, w: int, h: int, like: Tensor) -> Tensor:
        key = (w, h, str(like.device), like.dtype)
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or self.training:
            return sincos_position_embedding(w, h, self.hidden_dim, self.pe_temperature).to(like)
        cached = self._pos_cache.get(key)
        if cached is None:
            with torch.inference_mode(False), torch.no_grad():
                cached = sincos_position_embedding(w, h, self.hidden_dim, self.pe_temperature).to(
                    device=like.device, dtype=like.dtype
                )
            self._pos_cache[key] = cached
        return cached

    def fuse(self) -> None:
        """Inference form: the FPN blocks take the upsampled map unconcatenated."""
        for block in self.fpn_blocks:
            cast(RepNCSPELAN4, block).split_input(self.hidden_dim)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        proj = [p(f) for p, f in zip(self.input_proj, feats)]
        for enc, idx in zip(self.encoder, self.use_encoder_idx):
            x = proj[idx]
            b, c, h, w = x.shape
            tokens = x.flatten(2).permute(0, 2, 1)
            tokens = enc(tokens, self._position_embedding(w, h, tokens))
            proj[idx] = tokens.permute(0, 2, 1).reshape(b, c, h, w).contiguous()

        # top-down: coarsest to finest
        levels = len(proj)
        inner = [proj[-1]]
        for step, idx in enumerate(range(levels - 1, 0, -1)):
            high = self.lateral_convs[step](inner[0])
            inner[0] = high
            block = cast(RepNCSPELAN4, self.fpn_blocks[step])
            if block.cv1_low is not None:
                inner.insert(0, block(high, lateral=proj[idx - 1]))
                continue
            up = F.interpolate(high, scale_factor=2.0, mode="nearest")
            inner.insert(0, block(torch.cat([up, proj[idx - 1]], dim=1)))
        # bottom-up
        outs = [inner[0]]
        for step in range(levels - 1):
            down = self.downsample_convs[step](outs[-1])
            outs.append(self.pan_blocks[step](torch.cat([down, inner[step + 1]], dim=1)))
        return outs
