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


def _ran_as_one_function(out: torch.Tensor) -> bool:
    """Whether the block's output came from the fused norm function (not ReLU/LAB modules)."""
    return type(out.grad_fn).__name__ == "_ChannelsLastBatchNormFunctionBackward"


def _training_pair(scale: float, bias: float, use_lab: bool) -> tuple[ConvBNAct, ConvBNAct]:
    """A training block in channels-last (the fused path) and its contiguous twin."""
    torch.manual_seed(3)
    block = ConvBNAct(8, 16, 3, use_lab=use_lab).train()
    _randomise(block, scale, bias)
    twin = copy.deepcopy(block)
    return block.to(memory_format=torch.channels_last), twin


@pytest.mark.parametrize(
    ("scale", "bias", "use_lab"),
    [(1.3, 0.2, True), (-0.7, 0.4, True), (1.0, -0.3, True), (1.0, 0.0, False)],
)
def test_training_norm_relu_lab_fused_in_channels_last_matches_the_modules(
    scale: float, bias: float, use_lab: bool
) -> None:
    """CPU channels-last training runs BatchNorm + ReLU (+ LAB) as one function; over two steps
    its outputs, every gradient (LAB scale and bias included) and the running statistics follow
    the three modules run one after another, for either sign of the scale."""
    fused, plain = _training_pair(scale, bias, use_lab)
    for step in range(2):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(4, 8, 20, 20, generator=g) * 2.0 + 1.0
        grad = torch.randn(4, 16, 20, 20, generator=g)
        a = x.contiguous(memory_format=torch.channels_last).requires_grad_()
        b = x.clone().requires_grad_()
        out_a, out_b = fused(a), plain(b)
        assert _ran_as_one_function(out_a)
        assert out_a.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out_a, out_b, rtol=1e-5, atol=2e-6)
        out_a.backward(grad)
        out_b.backward(grad)
        assert a.grad is not None and b.grad is not None
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
        params_b = dict(plain.named_parameters())
        for name, p in fused.named_parameters():
            q = params_b[name]
            assert p.grad is not None and q.grad is not None, name
            # sums over 6,400 terms of size ~100 (the conv's also differ by its layout)
            assert float((p.grad - q.grad).norm() / q.grad.norm()) < 1e-5, name
            p.grad, q.grad = None, None
        buffers_b = dict(plain.named_buffers())
        for name, buf in fused.named_buffers():
            torch.testing.assert_close(buf, buffers_b[name], rtol=1e-6, atol=1e-6, msg=name)


def test_training_fused_lab_gradient_is_as_accurate_as_the_modules() -> None:
    """The LAB scale's gradient comes from the norm's per-channel sums; against float64 it is
    as close as the modules' own (a wrong shift term, for instance, is off by far more)."""
    fused, plain = _training_pair(1.3, 0.2, True)
    exact = copy.deepcopy(plain).double()
    x = torch.randn(4, 8, 20, 20, generator=torch.Generator().manual_seed(5)) * 3.0 + 2.0
    grad = torch.randn(4, 16, 20, 20, generator=torch.Generator().manual_seed(6))
    fused(x.contiguous(memory_format=torch.channels_last)).backward(grad)
    plain(x).backward(grad)
    exact(x.double()).backward(grad.double())
    for name in ("lab.scale", "lab.bias", "bn.weight", "bn.bias", "conv.weight"):
        want = dict(exact.named_parameters())[name].grad
        errors = [float((dict(m.named_parameters())[name].grad.double() - want).norm() / want.norm())
                  for m in (fused, plain)]
        assert errors[0] < max(3 * errors[1], 1e-6), (name, errors)


def test_training_zero_lab_scale_and_frozen_parameters() -> None:
    """A LAB scale of exactly zero takes the modules (the output then says nothing about the
    ReLU); frozen norm and LAB parameters get no gradient on the fused path."""
    fused, plain = _training_pair(0.0, 0.1, True)
    x = torch.randn(2, 8, 10, 10)
    out = fused(x.contiguous(memory_format=torch.channels_last))
    assert not _ran_as_one_function(out)
    torch.testing.assert_close(out, plain(x), rtol=1e-5, atol=2e-6)

    frozen, _ = _training_pair(1.3, 0.2, True)
    for p in (*frozen.bn.parameters(), *frozen.lab.parameters()):
        p.requires_grad_(False)
    a = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    out = frozen(a)
    assert _ran_as_one_function(out)
    out.sum().backward()
    assert a.grad is not None and frozen.conv.weight.grad is not None
    assert all(p.grad is None for p in (*frozen.bn.parameters(), *frozen.lab.parameters()))


def test_training_fused_backward_takes_a_channel_slice_of_a_gradient() -> None:
    """Blocks concatenate their layers' outputs, so the gradient reaching a layer is a channel
    slice of a channels-last tensor (neither layout's contiguous form)."""
    fused, plain = _training_pair(1.3, -0.2, True)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 8, 12, 12, generator=g)
    other = torch.randn(2, 5, 12, 12, generator=g)
    grad = torch.randn(2, 21, 12, 12, generator=g).contiguous(memory_format=torch.channels_last)
    a = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    b = x.clone().requires_grad_()
    torch.cat([other.contiguous(memory_format=torch.channels_last), fused(a)], 1).backward(grad)
    torch.cat([other, plain(b)], 1).backward(grad.contiguous())
    assert a.grad is not None and b.grad is not None
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(fused.named_parameters(), plain.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None
        assert float((p.grad - q.grad).norm() / q.grad.norm()) < 1e-5, name
