"""Fine-grained Distribution Refinement (FDR) math: weighting function, integral, decoding.

Paper: D-FINE, Sec. 3.2. Each box edge is predicted as a distribution over ``reg_max + 1``
bins; the bin values are the non-uniform weighting function ``W(n)`` (Eq. 3) and the edge
offset is the expectation ``sum_n P(n) W(n)`` (Eq. 2), scaled by the reference box size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def weighting_function(reg_max: int, up: Tensor, reg_scale: Tensor) -> Tensor:
    """Bin values ``W(n)`` for ``n = 0..reg_max`` (paper Eq. 3), shape ``[reg_max + 1]``.

    With ``a = |up|`` and ``c = |reg_scale|``: the ends are ``-2a·c`` and ``2a·c``; the
    middle bin is 0; in between the values grow geometrically with step
    ``(a·c + 1)^(2 / (reg_max - 2))`` so that bins are dense near 0 (fine adjustments) and
    sparse towards the ends (large corrections).

    Args:
        reg_max: number of intervals (bins minus one), even.
        up: ``[1]`` tensor, hyper-parameter ``a``.
        reg_scale: ``[1]`` tensor, hyper-parameter ``c`` (any numeric dtype).
    """
    # Computed in float64 and rounded once, as the official deploy path does.
    a_c = up.detach().abs()[0].double() * reg_scale.detach().abs()[0].double()
    upper = a_c * 2
    step = (a_c + 1) ** (2.0 / (reg_max - 2))
    half = reg_max // 2
    exps = torch.arange(1, half, dtype=torch.float64, device=up.device)
    right = step**exps - 1  # n = half+1 .. reg_max-1
    left = -(step ** exps.flip(0)) + 1  # n = 1 .. half-1
    zero = torch.zeros(1, dtype=torch.float64, device=up.device)
    return torch.cat([-upper[None], left, zero, right, upper[None]]).to(up.dtype)


def distribution_integral(corners: Tensor, project: Tensor, reg_max: int) -> Tensor:
    """Expected edge offsets from edge distributions (paper Eq. 2).

    Args:
        corners: ``[..., 4 * (reg_max + 1)]`` unnormalised logits, edges in order
            left, top, right, bottom.
        project: ``[reg_max + 1]`` bin values ``W(n)``.

    Returns:
        ``[..., 4]`` offsets ``sum_n softmax(corners)_n W(n)`` per edge.
    """
    shape = corners.shape[:-1]
    prob = F.softmax(corners.reshape(*shape, 4, reg_max + 1), dim=-1)
    return (prob @ project.to(prob.dtype)).reshape(*shape, 4)


def distance_to_box(points: Tensor, distance: Tensor, reg_scale: Tensor) -> Tensor:
    """Decode edge offsets relative to reference boxes into boxes (paper Eq. 1).

    Args:
        points: ``[..., 4]`` reference boxes, cxcywh.
        distance: ``[..., 4]`` offsets (left, top, right, bottom) in units of
            ``reference size / reg_scale``, measured from the half-size edge.
        reg_scale: ``[1]`` tensor ``c``.

    Returns:
        ``[..., 4]`` boxes, cxcywh.
    """
    c = reg_scale.abs()
    half = 0.5 * c
    cx, cy, w, h = points.unbind(-1)
    sx = w / c
    sy = h / c
    x1 = cx - (half + distance[..., 0]) * sx
    y1 = cy - (half + distance[..., 1]) * sy
    x2 = cx + (half + distance[..., 2]) * sx
    y2 = cy + (half + distance[..., 3]) * sy
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)
