"""The EMA update and the optimizer builder of ``engine/optim.py``."""

from __future__ import annotations

import copy

import torch
from torch import nn

from dfine_cli.engine.optim import ModelEMA, build_optimizer, load_optimizer_state


def _small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4)
    )


def _train_steps(
    model: nn.Module, optimizer: torch.optim.Optimizer, ema: ModelEMA | None, steps: int, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = model(torch.rand(2, 3, 8, 8, generator=g)).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update(model)


def test_ema_update_equals_entry_by_entry_formula_exactly():
    model = _small_model()
    model(torch.rand(1, 3, 8, 8))  # materialise the lazy layer
    ema = ModelEMA(model, decay=0.99, warmups=10)
    reference = copy.deepcopy(ema.module)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(4):
        _train_steps(model, optimizer, None, 1, seed=step)
        ema.update(model)
        d = ema.current_decay()
        source = model.state_dict()
        with torch.no_grad():
            for key, value in reference.state_dict().items():
                if value.dtype.is_floating_point:
                    value.mul_(d).add_(source[key], alpha=1.0 - d)
                else:
                    value.copy_(source[key])
    for key, value in reference.state_dict().items():
        assert torch.equal(ema.module.state_dict()[key], value), key
    # integer buffers are copied: one materialising forward + four training steps
    assert int(ema.module[1].num_batches_tracked) == 5


def test_build_optimizer_is_fused_on_cpu_and_keeps_groups():
    model = _small_model()
    model(torch.rand(1, 3, 8, 8))
    groups = [
        {"params": list(model[0].parameters()), "lr": 1e-3, "weight_decay": 0.0},
        {"params": list(model[4].parameters()), "lr": 2e-3, "weight_decay": 1e-4},
    ]
    optimizer = build_optimizer(groups, lr=5e-4, betas=(0.9, 0.99), weight_decay=1e-4)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["fused"] is True
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 2e-3]
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.99)


def test_fused_optimizer_resume_is_bit_exact_and_close_to_default_adamw():
    def make() -> tuple[nn.Module, torch.optim.Optimizer, ModelEMA]:
        model = _small_model()
        model(torch.rand(1, 3, 8, 8))
        optimizer = build_optimizer([{"params": list(model.parameters())}], lr=1e-2)
        return model, optimizer, ModelEMA(model, decay=0.9, warmups=5)

    full_model, full_opt, full_ema = make()
    _train_steps(full_model, full_opt, full_ema, 3, seed=1)
    saved = copy.deepcopy((full_model.state_dict(), full_opt.state_dict(), full_ema.state_dict()))
    _train_steps(full_model, full_opt, full_ema, 3, seed=2)

    model, optimizer, ema = make()
    model.load_state_dict(saved[0])
    optimizer.load_state_dict(saved[1])
    ema.load_state_dict(saved[2])
    _train_steps(model, optimizer, ema, 3, seed=2)
    for key, value in full_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    for key, value in full_ema.module.state_dict().items():
        assert torch.equal(ema.module.state_dict()[key], value), key

    # the fused kernel computes AdamW's update: the same step as the per-parameter loop, up to
    # rounding (one step: Adam divides by sqrt(v), so later steps amplify rounding on tiny gradients)
    plain_model = _small_model()
    plain_model(torch.rand(1, 3, 8, 8))
    plain = torch.optim.AdamW(plain_model.parameters(), lr=1e-2, foreach=False)
    fused_model, fused_opt, _ = make()
    _train_steps(plain_model, plain, None, 1, seed=3)
    _train_steps(fused_model, fused_opt, None, 1, seed=3)
    for key, value in plain_model.state_dict().items():
        torch.testing.assert_close(fused_model.state_dict()[key], value, rtol=1e-5, atol=1e-6)


def _channels_last_steps(
    start: torch.Tensor, state: dict | None, grads: list[torch.Tensor]
) -> tuple[torch.Tensor, dict]:
    """Fused AdamW steps on a channels-last conv weight, optionally from a saved state."""
    weight = nn.Parameter(start.clone().contiguous(memory_format=torch.channels_last))
    optimizer = build_optimizer([{"params": [weight]}], lr=0.1)
    if state is not None:
        load_optimizer_state(optimizer, state)
    for grad in grads:
        weight.grad = grad.contiguous(memory_format=torch.channels_last)
        optimizer.step()
    return weight.detach().clone(), optimizer.state_dict()


def test_optimizer_state_is_loaded_in_each_parameter_layout():
    """A state saved from contiguous parameters, loaded for channels-last ones: torch's fused
    AdamW would mix the elements of moments laid out unlike their parameter."""
    g = torch.Generator().manual_seed(0)
    start = torch.randn(8, 4, 3, 3, generator=g)
    grads = [torch.randn(8, 4, 3, 3, generator=g) for _ in range(2)]
    uninterrupted, _ = _channels_last_steps(start, None, grads)
    middle, state = _channels_last_steps(start, None, grads[:1])
    contiguous = copy.deepcopy(state)
    for moments in contiguous["state"].values():
        for key, value in moments.items():
            if value.dim() == 4:
                moments[key] = value.contiguous()
                assert not moments[key].is_contiguous(memory_format=torch.channels_last)
    for saved in (state, contiguous):
        resumed, _ = _channels_last_steps(middle, saved, grads[1:])
        assert torch.equal(resumed, uninterrupted)
