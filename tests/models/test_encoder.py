"""The hybrid encoder's inference form equals its training form."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from dfine_cli.models.encoder import RepNCSPELAN4


def _randomise_norms(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)


def test_fpn_block_takes_the_upsampled_map_unconcatenated() -> None:
    torch.manual_seed(0)
    block = RepNCSPELAN4(32, 16, 16, 8, num_blocks=1).eval()
    _randomise_norms(block)
    low, lateral = torch.randn(1, 16, 5, 6), torch.randn(1, 16, 10, 12)
    with torch.no_grad():
        expected = block(torch.cat([F.interpolate(low, scale_factor=2.0), lateral], dim=1))
        fused = copy.deepcopy(block)
        fused.split_input(16)
        assert fused.cv1_low is not None and fused.cv1_halves is not None
        got = fused.forward_upsampled(low, lateral)
        both = fused(torch.cat([F.interpolate(low, scale_factor=2.0), lateral], dim=1))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both, expected, rtol=1e-5, atol=1e-5)  # the halves alone
    # channels-last maps give dense halves: no slice of a wider map reaches a conv
    low_cl, lateral_cl = (t.contiguous(memory_format=torch.channels_last) for t in (low, lateral))
    with torch.no_grad():
        got_cl = fused.forward_upsampled(low_cl, lateral_cl)
    torch.testing.assert_close(got_cl, expected, rtol=1e-5, atol=1e-5)
