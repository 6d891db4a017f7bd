"""Official-format checkpoints of every size from ../shared/reference (keyed weights).

The reference README gives the keyed-weight rule for every size and the calibrated
BatchNorm statistics for N only. For the other sizes they are calibrated the same way:
every BatchNorm's running mean/variance (FrozenBatchNorm2d included) is set, layer by
layer in forward order, to the per-channel mean/variance of its actual input on a fixed
batch (the reference's two synthetic images). This keeps activations at a sane scale and
makes the deep L/X networks as numerically sensitive as real weights are.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dfine_cli.checkpoints import load_weights, read_checkpoint
from dfine_cli.models.build import build_model_from_config
from tests.models.reference_weights import keyed_state_dict


def calibrate_batchnorm_(model: torch.nn.Module, images: torch.Tensor) -> int:
    """Set each BatchNorm's running statistics to those of its input; returns how many."""

    def set_statistics(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))  # type: ignore[operator]
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))  # type: ignore[operator]

    handles = [
        m.register_forward_pre_hook(set_statistics)
        for m in model.modules()
        if "BatchNorm" in type(m).__name__ and isinstance(getattr(m, "running_var", None), torch.Tensor)
    ]
    try:
        model.eval()
        with torch.inference_mode():
            model(images)
    finally:
        for handle in handles:
            handle.remove()
    return len(handles)


def official_checkpoint(reference: Path, size: str, path: Path) -> Path:
    """Write ``{"model": state_dict}`` (official layout) for ``size`` with calibrated BatchNorms."""
    if size == "n":
        return reference / "dfine_n_keyed1234.pth"
    raw = path.with_name(f"{path.stem}_uncalibrated.pth")
    torch.save({"model": keyed_state_dict(reference, size)}, raw)
    ckpt = read_checkpoint(raw)
    model = build_model_from_config(ckpt.info.config)
    load_weights(model, ckpt.state_dict, source=str(raw))
    images = torch.load(reference / "inputs_n.pt", weights_only=True)["images"]
    calibrate_batchnorm_(model, images)
    torch.save({"model": {k: v.detach().clone() for k, v in model.state_dict().items()}}, path)
    raw.unlink()
    return path
