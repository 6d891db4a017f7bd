"""transformers' D-FINE configured like the official models, for conversion and parity tests.

The per-size values follow the official YAML configurations (``configs/dfine/*_coco.yml``)
expressed in transformers' ``DFineConfig``/``HGNetV2Config`` fields, the way transformers'
own conversion script sets them. They are written out here rather than derived from
``dfine_cli.models.presets`` so that the tests compare two independent descriptions.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

# HGNetv2 B0/B2/B4/B5 as HGNetV2Config fields (stage order 1..4).
_HGNETV2: dict[str, dict[str, Any]] = {
    "B0": {
        "stem_channels": [3, 16, 16],
        "stage_in_channels": [16, 64, 256, 512],
        "stage_mid_channels": [16, 32, 64, 128],
        "stage_out_channels": [64, 256, 512, 1024],
        "stage_num_blocks": [1, 1, 2, 1],
        "stage_numb_of_layers": [3, 3, 3, 3],
    },
    "B2": {
        "stem_channels": [3, 24, 32],
        "stage_in_channels": [32, 96, 384, 768],
        "stage_mid_channels": [32, 64, 128, 256],
        "stage_out_channels": [96, 384, 768, 1536],
        "stage_num_blocks": [1, 1, 3, 1],
        "stage_numb_of_layers": [4, 4, 4, 4],
    },
    "B4": {
        "stem_channels": [3, 32, 48],
        "stage_in_channels": [48, 128, 512, 1024],
        "stage_mid_channels": [48, 96, 192, 384],
        "stage_out_channels": [128, 512, 1024, 2048],
        "stage_num_blocks": [1, 1, 3, 1],
        "stage_numb_of_layers": [6, 6, 6, 6],
    },
    "B5": {
        "stem_channels": [3, 32, 64],
        "stage_in_channels": [64, 128, 512, 1024],
        "stage_mid_channels": [64, 128, 256, 512],
        "stage_out_channels": [128, 512, 1024, 2048],
        "stage_num_blocks": [1, 2, 5, 2],
        "stage_numb_of_layers": [6, 6, 6, 6],
    },
}

# DFineConfig fields per official size (besides the backbone).
_SIZES: dict[str, dict[str, Any]] = {
    "n": {
        "backbone": "B0", "use_lab": True, "out_indices": [3, 4],
        "encoder_in_channels": [512, 1024], "feat_strides": [16, 32], "encode_proj_layers": [1],
        "encoder_hidden_dim": 128, "encoder_ffn_dim": 512, "hidden_expansion": 0.34, "depth_mult": 0.5,
        "d_model": 128, "decoder_ffn_dim": 512, "decoder_in_channels": [128, 128],
        "num_feature_levels": 2, "decoder_n_points": [6, 6], "decoder_layers": 3, "reg_scale": 4.0,
    },
    "s": {
        "backbone": "B0", "use_lab": True, "out_indices": [2, 3, 4],
        "encoder_in_channels": [256, 512, 1024], "hidden_expansion": 0.5, "depth_mult": 0.34,
        "decoder_layers": 3, "reg_scale": 4.0,
    },
    "m": {
        "backbone": "B2", "use_lab": True, "out_indices": [2, 3, 4],
        "encoder_in_channels": [384, 768, 1536], "hidden_expansion": 1.0, "depth_mult": 0.67,
        "decoder_layers": 4, "reg_scale": 4.0,
    },
    "l": {
        "backbone": "B4", "use_lab": False, "out_indices": [2, 3, 4],
        "encoder_in_channels": [512, 1024, 2048], "hidden_expansion": 1.0, "depth_mult": 1.0,
        "decoder_layers": 6, "reg_scale": 4.0,
    },
    "x": {
        "backbone": "B5", "use_lab": False, "out_indices": [2, 3, 4],
        "encoder_in_channels": [512, 1024, 2048], "hidden_expansion": 1.0, "depth_mult": 1.0,
        "encoder_hidden_dim": 384, "encoder_ffn_dim": 2048, "decoder_in_channels": [384, 384, 384],
        "decoder_layers": 6, "reg_scale": 8.0,
    },
}


def make_hf_dfine_config(size: str, num_classes: int = 80, variant: str = "dfine") -> Any:
    """A ``transformers.DFineConfig`` for the official D-FINE size ``size`` (n/s/m/l/x).

    ``variant="deim"`` sets ``decoder_activation_function="silu"``. Classes are named
    ``class_0``... Skips the calling test when transformers is not installed.
    """
    transformers = pytest.importorskip("transformers")
    fields = dict(_SIZES[size])
    backbone = _HGNETV2[fields.pop("backbone")]
    backbone_config = transformers.HGNetV2Config(
        **backbone,
        hidden_sizes=backbone["stage_out_channels"],
        embedding_size=backbone["stem_channels"][2],
        stage_downsample=[False, True, True, True],
        stage_light_block=[False, False, True, True],
        stage_kernel_size=[3, 3, 5, 5],
        use_learnable_affine_block=fields.pop("use_lab"),
        out_indices=fields.pop("out_indices"),
        layer_type="basic",
    )
    fields.setdefault("decoder_n_points", [3, 6, 3])
    return transformers.DFineConfig(
        backbone_config=backbone_config,
        id2label={i: f"class_{i}" for i in range(num_classes)},
        decoder_activation_function="silu" if variant == "deim" else "relu",
        **fields,
    )


def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    """Overwrite every floating-point parameter with seeded noise around its value.

    transformers initialises many tensors to constants (zero offsets, zero box heads),
    which would make outputs degenerate; BatchNorm buffers are given plausible statistics.
    ``up``/``reg_scale`` (frozen FDR constants) and ``num_points_scale`` keep their values.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if not tensor.is_floating_point() or name.endswith(
                ("decoder.up", "decoder.reg_scale", "num_points_scale")
            ):
                continue
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
            if name.endswith("running_var"):
                tensor.copy_(1.0 + 0.5 * torch.rand(tensor.shape, generator=generator))
            elif name.endswith("running_mean"):
                tensor.copy_(0.1 * noise)
            elif tensor.dim() > 1:
                fan_in = tensor[0].numel()
                tensor.copy_(noise / fan_in**0.5)
            else:
                tensor.add_(scale * noise)


def calibrate_batchnorm_(model: torch.nn.Module, images: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to those of its input on ``images``.

    One eval-mode forward pass; each BatchNorm (transformers' frozen ones included) takes
    the per-channel mean and variance of its actual input just before it runs, so layers
    downstream see calibrated inputs too. Keeps random deep backbones (B4, B5) from
    saturating into identical predictions for every query.
    """

    def set_statistics(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].detach()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3), unbiased=False))

    handles = [
        module.register_forward_pre_hook(set_statistics)
        for module in model.modules()
        if "BatchNorm" in type(module).__name__ and isinstance(getattr(module, "running_var", None), torch.Tensor)
    ]
    try:
        model.eval()
        with torch.no_grad():
            model(pixel_values=images)
    finally:
        for handle in handles:
            handle.remove()
