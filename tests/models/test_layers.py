"""Shared layers: the channels-last training BatchNorm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dfine_cli.models.layers import AccurateBatchNorm2d

CL = torch.channels_last


def _pair(channels: int, momentum: float | None) -> tuple[AccurateBatchNorm2d, nn.BatchNorm2d]:
    ours, ref = AccurateBatchNorm2d(channels, momentum=momentum), nn.BatchNorm2d(channels, momentum=momentum)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-1.0, 1.0)
        ours.running_mean.uniform_(-1.0, 1.0)
        ours.running_var.uniform_(0.5, 2.0)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _feature_map(seed: int, mean: float = 10.0) -> torch.Tensor:
    """Feature maps far from zero mean, where summation order shows in the statistics."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 16, 40, 40, generator=g) * 3.0 + mean


def test_channels_last_training_statistics_are_accurate() -> None:
    """Against float64: torch's own channels-last kernel is about 6e-5 away on these maps
    (one pixel after another), the contiguous kernel 2e-6; ours must be as close as that."""
    ours, _ = _pair(16, 0.1)
    x = _feature_map(0)
    exact = torch.nn.functional.batch_norm(x.double(), None, None, ours.weight.double(),
                                           ours.bias.double(), True, 0.0, ours.eps)
    out = ours(x.contiguous(memory_format=CL))
    assert out.is_contiguous(memory_format=CL)
    assert float((out.detach().double() - exact.detach()).abs().max()) < 5e-6


@pytest.mark.parametrize("momentum", [0.1, None])
def test_channels_last_training_matches_batchnorm2d(momentum: float | None) -> None:
    """Outputs, gradients, running statistics and the step counter follow ``nn.BatchNorm2d``
    over several steps (``momentum=None``: the cumulative average)."""
    ours, ref = _pair(16, momentum)
    for step in range(3):
        x = _feature_map(step)
        a = x.contiguous(memory_format=CL).requires_grad_()
        b = x.clone().requires_grad_()
        out_a, out_b = ours(a), ref(b)
        torch.testing.assert_close(out_a, out_b, rtol=0, atol=2e-6)
        grad = torch.randn(out_b.shape, generator=torch.Generator().manual_seed(10 + step))
        out_a.backward(grad)
        out_b.backward(grad)
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
        for p, q in ((ours.weight, ref.weight), (ours.bias, ref.bias)):
            assert p.grad is not None and q.grad is not None
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-4)  # sums of 25,600 terms
            p.grad, q.grad = None, None
        torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(ours.running_var, ref.running_var, rtol=1e-6, atol=1e-6)
        assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == step + 1


def test_other_inputs_are_batchnorm2d_itself() -> None:
    """Evaluation mode, contiguous inputs and other dtypes run the parent class unchanged."""
    ours, ref = _pair(16, 0.1)
    x = _feature_map(1)
    assert torch.equal(ours(x), ref(x))  # training, contiguous
    torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=0, atol=0)
    ours.eval()
    ref.eval()
    assert torch.equal(ours(x.contiguous(memory_format=CL)), ref(x.contiguous(memory_format=CL)))
    ours.train()
    ref.train()
    double = x.double().contiguous(memory_format=CL)
    assert torch.equal(ours.double()(double), ref.double()(double))


def test_no_gradient_needed_for_frozen_affine_parameters() -> None:
    ours, _ = _pair(8, 0.1)
    ours.weight.requires_grad_(False)
    ours.bias.requires_grad_(False)
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=CL).requires_grad_()
    ours(x).sum().backward()
    assert x.grad is not None and ours.weight.grad is None and ours.bias.grad is None
