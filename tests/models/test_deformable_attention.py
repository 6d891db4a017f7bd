"""Deformable sampling (value maps and memory rows) against a point-by-point bilinear reference."""

from __future__ import annotations

import math

import pytest
import torch

from dfine_cli.models.deformable_attention import (
    MSDeformableAttention,
    deformable_sample,
    deformable_sample_rows,
    row_layout,
)


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


def _memory(values: list[torch.Tensor], batch: int) -> torch.Tensor:
    """The value maps ``[B * heads, head_dim, H, W]`` as the decoder's memory ``[B, L, C]``."""
    per_level = []
    for v in values:
        _, head_dim, h, w = v.shape
        per_level.append(v.reshape(batch, -1, head_dim, h * w).permute(0, 3, 1, 2).flatten(2))
    return torch.cat(per_level, dim=1).contiguous()


@pytest.mark.parametrize("form", ["value maps", "memory rows"])
@pytest.mark.parametrize("points_per_level", [(3, 6, 3), (2, 1)])
def test_sampling_equals_a_point_by_point_bilinear_sum(points_per_level, form):
    gen = torch.Generator().manual_seed(0)
    b, q, heads, head_dim = 2, 5, 2, 3
    shapes = [(7, 9), (4, 5), (2, 3)][: len(points_per_level)]
    total = sum(points_per_level)
    values = [torch.randn(b * heads, head_dim, h, w, generator=gen, dtype=torch.float64)
              for h, w in shapes]
    # Some locations fall outside [0, 1], where the padding is zeros.
    locations = torch.rand(b, q, heads, total, 2, generator=gen, dtype=torch.float64) * 1.4 - 0.2
    # the edges and pixel centres, where a corner index sits exactly on a level's border
    locations[0, 0, 0, :2] = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    h, w = shapes[0]
    locations[0, 1, 0, 0] = torch.tensor([0.5 / w, (h - 0.5) / h], dtype=torch.float64)
    weights = torch.rand(b, q, heads, total, generator=gen, dtype=torch.float64).softmax(-1)

    if form == "value maps":
        got = deformable_sample(values, shapes, locations, weights, points_per_level)
    else:
        layout = row_layout(shapes, points_per_level, torch.device("cpu"))
        got = deformable_sample_rows(_memory(values, b), layout, locations, weights)

    assert got.shape == (b, q, heads * head_dim)
    torch.testing.assert_close(got, _reference(values, locations, weights, points_per_level))


def test_attention_gives_the_same_output_from_memory_rows_and_value_maps():
    gen = torch.Generator().manual_seed(4)
    shapes, points, heads, dim = [(10, 12), (5, 6)], (4, 2), 4, 16
    attention = MSDeformableAttention(dim, heads, points)
    with torch.no_grad():
        for p in attention.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    query = torch.randn(2, 7, dim, generator=gen)
    reference = torch.rand(2, 7, 1, 4, generator=gen) * 0.8 + 0.1
    maps = [torch.randn(2, dim, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
            for h, w in shapes]
    values = [m.reshape(2 * heads, dim // heads, *m.shape[2:]) for m in maps]
    memory = torch.cat([m.flatten(2).permute(0, 2, 1) for m in maps], dim=1)  # as the decoder
    with torch.inference_mode():
        from_rows = attention(query, reference, memory, shapes)
        from_maps = attention(query, reference, values, shapes)
        again = attention(query, reference, memory, shapes)  # the cached layout

    torch.testing.assert_close(from_rows, from_maps, rtol=1e-5, atol=1e-6)
    assert torch.equal(again, from_rows)
    assert list(attention._row_layouts) == [((tuple(shapes)), torch.device("cpu"))]
