"""The backbone's inference form: BatchNorm, ReLU and LAB folded into each conv."""

from __future__ import annotations

import copy

import pytest
import torch

from dfine_cli.models.backbone import ClampAt, ConvBNAct, HGBlock, LearnableAffine


def _randomise(module: torch.nn.Module, scale: float, bias: float) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, LearnableAffine):
                m.scale.fill_(scale)
                m.bias.fill_(bias)
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)


@pytest.mark.parametrize(("scale", "bias"), [(1.3, 0.2), (-0.7, 0.4), (0.0, -0.1)])
def test_conv_relu_lab_folds_into_one_conv_and_one_clamp(scale: float, bias: float) -> None:
    torch.manual_seed(0)
    block = ConvBNAct(8, 16, 3, use_lab=True).eval()
    _randomise(block, scale, bias)
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        expected = block(x)
        block.fuse()
        got = block(x)
    assert isinstance(block.act, ClampAt) and isinstance(block.lab, torch.nn.Identity)
    assert block.act.upper is (scale < 0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_fold_is_exact_on_the_clamped_side() -> None:
    """Where the ReLU clips, the LAB's output is exactly its bias, folded or not."""
    torch.manual_seed(1)
    block = ConvBNAct(4, 4, 1, use_lab=True).eval()
    _randomise(block, 2.0, 0.25)
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        expected = block(x)
        block.fuse()
        got = block(x)
    clipped = expected == 0.25
    assert clipped.any()
    assert torch.equal(got[clipped], expected[clipped])


def test_plain_relu_becomes_an_in_place_clamp_and_residual_block_matches() -> None:
    torch.manual_seed(2)
    block = HGBlock(16, 8, 16, num_layers=3, kernel_size=3, residual=True, light_block=False,
                    use_lab=False).eval()
    _randomise(block, 1.0, 0.0)
    x = torch.randn(1, 16, 10, 10)
    before = x.clone()
    reference = copy.deepcopy(block)
    with torch.no_grad():
        expected = reference(x)
        for m in block.modules():
            if isinstance(m, ConvBNAct):
                m.fuse()
        got = block(x)
    assert all(isinstance(m.act, ClampAt) and m.act.bound == 0.0
               for m in block.modules() if isinstance(m, ConvBNAct))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(x, before)  # the in-place residual add never touches the input


def test_stem_max_pool_exports_as_one_max_pool_node(tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    from dfine_cli.models.backbone import Stem

    stem = Stem(3, 16, 32, use_lab=True).eval()
    path = tmp_path / "stem.onnx"
    torch.onnx.export(stem, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("MaxPool") == 1 and "Max" not in ops


def test_stem_max_pool_matches_the_pooling_kernel_forward_and_backward() -> None:
    """Both forms equal ``MaxPool2d(2, stride=1)``; with gradients the routing of ties is the
    pooling kernel's (the whole gradient to one input), not an even split."""
    import torch.nn.functional as F

    from dfine_cli.models.backbone import _max_pool_2x2_stride1

    x = torch.randn(2, 4, 9, 11).clamp_min(0.0)  # ReLU outputs: many exact ties at zero
    x[0, 0, :2, :2] = 1.0  # one positive tie
    with torch.no_grad():
        torch.testing.assert_close(_max_pool_2x2_stride1(x), F.max_pool2d(x, 2, stride=1), rtol=0, atol=0)
    ours, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn(2, 4, 8, 10)
    _max_pool_2x2_stride1(ours).backward(grad)
    F.max_pool2d(ref, 2, stride=1).backward(grad)
    assert ours.grad is not None and ref.grad is not None
    torch.testing.assert_close(ours.grad, ref.grad, rtol=0, atol=0)
