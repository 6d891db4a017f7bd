"""Which preset a checkpoint holds: one rule, derived from the presets, for every format."""

from __future__ import annotations

import pytest
import torch

from dfine_cli.checkpoints.infer import backbone_name, infer_config, match_preset, size_of
from dfine_cli.errors import CheckpointError
from dfine_cli.models.build import build_model_from_config
from dfine_cli.models.presets import (
    HGNETV2,
    SIZES,
    VARIANT_ACTIVATIONS,
    VARIANTS,
    preset,
    variant_of_activation,
)


def shapes_of(size: str, num_classes: int = 80, **overrides: object) -> dict[str, torch.Tensor]:
    """A state dict with the shapes of a preset (built on the meta device: no memory)."""
    cfg = preset(size, num_classes=num_classes, **overrides)
    with torch.device("meta"):
        state = build_model_from_config(cfg).state_dict()
    real = {"decoder.reg_scale": torch.tensor([cfg.reg_scale]), "decoder.up": torch.tensor([0.5])}
    return {k: real.get(k, v) for k, v in state.items()}


@pytest.mark.parametrize("size", SIZES)
def test_every_preset_is_recognised_from_its_shapes(size: str) -> None:
    cfg = infer_config(shapes_of(size, num_classes=7))
    assert cfg == preset(size, num_classes=7)


def test_decoder_layers_and_classes_come_from_the_weights() -> None:
    cfg = infer_config(shapes_of("n", num_classes=3, num_layers=2))
    assert (cfg.name, cfg.num_classes, cfg.num_layers) == ("n", 3, 2)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_sets_the_activation(variant: str) -> None:
    cfg = infer_config(shapes_of("s"), variant=variant)
    assert cfg.variant == variant
    assert cfg.decoder_activation == cfg.mlp_activation == VARIANT_ACTIVATIONS[variant]
    assert variant_of_activation(VARIANT_ACTIVATIONS[variant]) == variant
    assert variant_of_activation("gelu") is None


@pytest.mark.parametrize("name", list(HGNETV2))
def test_backbone_names_come_from_the_hgnetv2_table(name: str) -> None:
    spec = HGNETV2[name]
    assert backbone_name(spec.stem_mid, spec.stem_out) == name
    assert backbone_name(spec.stem_mid, spec.stem_out, spec.stages) == name


@pytest.mark.parametrize("size", SIZES)
def test_size_from_backbone_and_levels(size: str) -> None:
    cfg = preset(size)
    assert size_of(cfg.backbone, cfg.num_levels) == size


def test_unknown_architectures_are_one_line_errors() -> None:
    state = shapes_of("n")
    state["backbone.stem.stem1.conv.weight"] = torch.empty(12, 3, 3, 3, device="meta")
    with pytest.raises(CheckpointError, match=r"^unsupported backbone: stem widths 12/16 match no HGNetv2 B0/B2/B4/B5$"):
        infer_config(state)
    assert size_of("B2", 2) is None


def test_match_preset_names_the_closest_size() -> None:
    with pytest.raises(CheckpointError, match=r"closest D-FINE-S\): decoder_layers is 9 \(D-FINE-S has 3\)"):
        match_preset({"backbone_config (HGNetv2)": "B0", "num_feature_levels": 3, "decoder_layers": 9},
                     "dfine", what="this model")
    assert match_preset({"backbone_config (HGNetv2)": "B4", "max_num_bins": 32}, "dfine") == "l"
