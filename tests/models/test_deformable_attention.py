"""Deformable sampling against a point-by-point bilinear reference."""

from __future__ import annotations

import math

import pytest
import torch

from dfine_cli.models.deformable_attention import deformable_sample


def _bilinear(value: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """``value [C, H, W]`` at normalised ``(x, y)`` in [0, 1]: align_corners=False, zeros outside."""
    _, h, w = value.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(value.shape[0], dtype=value.dtype)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= xx < w and 0 <= yy < h:
                out += wx * wy * value[:, yy, xx]
    return out


def _reference(values, locations, weights, points_per_level):
    b, q, heads, _, _ = locations.shape
    head_dim = values[0].shape[1]
    out = torch.zeros(b, q, heads * head_dim, dtype=locations.dtype)
    level_of = [lvl for lvl, n in enumerate(points_per_level) for _ in range(n)]
    for bi in range(b):
        for qi in range(q):
            for hi in range(heads):
                acc = torch.zeros(head_dim, dtype=locations.dtype)
                for p, lvl in enumerate(level_of):
                    x, y = locations[bi, qi, hi, p].tolist()
                    acc += weights[bi, qi, hi, p] * _bilinear(values[lvl][bi * heads + hi], x, y)
                out[bi, qi, hi * head_dim:(hi + 1) * head_dim] = acc
    return out


@pytest.mark.parametrize("points_per_level", [(3, 6, 3), (2, 1)])
def test_sampling_equals_a_point_by_point_bilinear_sum(points_per_level):
    gen = torch.Generator().manual_seed(0)
    b, q, heads, head_dim = 2, 5, 2, 3
    shapes = [(7, 9), (4, 5), (2, 3)][: len(points_per_level)]
    total = sum(points_per_level)
    values = [torch.randn(b * heads, head_dim, h, w, generator=gen, dtype=torch.float64) for h, w in shapes]
    # Some locations fall outside [0, 1], where the padding is zeros.
    locations = torch.rand(b, q, heads, total, 2, generator=gen, dtype=torch.float64) * 1.2 - 0.1
    weights = torch.rand(b, q, heads, total, generator=gen, dtype=torch.float64).softmax(-1)

    got = deformable_sample(values, shapes, locations, weights, points_per_level)

    assert got.shape == (b, q, heads * head_dim)
    torch.testing.assert_close(got, _reference(values, locations, weights, points_per_level))


def test_sampling_gradients_are_correct():
    gen = torch.Generator().manual_seed(1)
    shapes, points = [(4, 4), (2, 3)], (2, 1)
    values = [torch.randn(2, 2, h, w, generator=gen, dtype=torch.float64, requires_grad=True)
              for h, w in shapes]
    locations = (torch.rand(1, 3, 2, 3, 2, generator=gen, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    weights = torch.rand(1, 3, 2, 3, generator=gen, dtype=torch.float64).requires_grad_()

    def fn(v0, v1, loc, w):
        return deformable_sample([v0, v1], shapes, loc, w, points)

    assert torch.autograd.gradcheck(fn, (*values, locations, weights))


def test_channels_last_value_maps_give_the_same_result():
    gen = torch.Generator().manual_seed(2)
    shapes, points = [(8, 8), (4, 4)], (3, 2)
    maps = [torch.randn(1, 8, h, w, generator=gen) for h, w in shapes]
    locations = torch.rand(1, 6, 2, 5, 2, generator=gen)
    weights = torch.rand(1, 6, 2, 5, generator=gen).softmax(-1)
    dense = [m.reshape(2, 4, *m.shape[2:]) for m in maps]
    strided = [m.contiguous(memory_format=torch.channels_last).reshape(2, 4, *m.shape[2:]) for m in maps]

    torch.testing.assert_close(deformable_sample(strided, shapes, locations, weights, points),
                               deformable_sample(dense, shapes, locations, weights, points))
