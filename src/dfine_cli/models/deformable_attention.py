"""Multi-scale deformable cross-attention (Deformable DETR), D-FINE's variant.

D-FINE's version has no value/output projection, a per-level number of sampling points,
and scales the predicted offsets by the reference box size (``offset_scale / n_points``).
Sampling is bilinear with zero padding (``grid_sample``, ``align_corners=False``).
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def deformable_sample(
    values: list[Tensor],
    spatial_shapes: list[tuple[int, int]],
    locations: Tensor,
    weights: Tensor,
    points_per_level: tuple[int, ...],
) -> Tensor:
    """Weighted sum of bilinearly sampled values.

    Args:
        values: per level ``[B * heads, head_dim, H_l, W_l]``.
        spatial_shapes: per level ``(H_l, W_l)``.
        locations: ``[B, Q, heads, sum(points), 2]`` sampling positions in ``[0, 1]`` (x, y).
        weights: ``[B, Q, heads, sum(points)]`` attention weights (softmax over points).
        points_per_level: number of sampling points on each level.

    Returns:
        ``[B, Q, heads * head_dim]``.
    """
    b, q, heads, total, _ = locations.shape
    split = list(points_per_level)
    # Points before queries: each level's samples come out as [B*heads, head_dim, P_l, Q], so
    # the weighted sum over points adds whole rows of queries (a vectorised reduction over
    # a middle dimension), instead of reducing a short innermost dimension of P_l values.
    grids = (2 * locations - 1).permute(0, 2, 3, 1, 4).flatten(0, 1)  # [B*heads, P, Q, 2]
    w = weights.permute(0, 2, 3, 1).reshape(b * heads, 1, total, q)
    out: Tensor | None = None
    for v, g, wl in zip(values, grids.split(split, dim=1), w.split(split, dim=2)):
        sampled = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)
        part = (sampled * wl).sum(2)  # [B*heads, head_dim, Q]
        out = part if out is None else out + part
    assert out is not None
    return out.reshape(b, -1, q).permute(0, 2, 1)


class MSDeformableAttention(nn.Module):
    """Deformable attention around reference boxes (cxcywh in ``[0, 1]``)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        points_per_level: tuple[int, ...],
        offset_scale: float = 0.5,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError("dim must be divisible by heads")
        self.heads = heads
        self.points_per_level = tuple(points_per_level)
        self.offset_scale = offset_scale
        total = sum(self.points_per_level)
        self.total_points = total
        self.register_buffer(
            "num_points_scale",
            torch.tensor([1.0 / n for n in self.points_per_level for _ in range(n)]),
            persistent=False,
        )
        self.sampling_offsets = nn.Linear(dim, heads * total * 2)
        self.attention_weights = nn.Linear(dim, heads * total)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid.reshape(self.heads, 1, 2).repeat(1, self.total_points, 1)
        scaling = torch.cat([torch.arange(1, n + 1) for n in self.points_per_level])
        grid = grid * scaling.reshape(1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)

    def forward(
        self,
        query: Tensor,
        reference: Tensor,
        values: list[Tensor],
        spatial_shapes: list[tuple[int, int]],
    ) -> Tensor:
        """``query [B, Q, C]``, ``reference [B, Q, 1, 4]`` cxcywh -> ``[B, Q, C]``."""
        b, q, _ = query.shape
        offsets = self.sampling_offsets(query).reshape(b, q, self.heads, self.total_points, 2)
        weights = self.attention_weights(query).reshape(b, q, self.heads, self.total_points)
        weights = weights.softmax(-1)
        scale = cast(Tensor, self.num_points_scale).to(query.dtype).unsqueeze(-1)
        offsets = offsets * scale * reference[:, :, None, :, 2:] * self.offset_scale
        locations = reference[:, :, None, :, :2] + offsets
        return deformable_sample(values, spatial_shapes, locations, weights, self.points_per_level)
