"""Model size presets: frozen dataclasses with named fields, one builder per size.

The five official D-FINE sizes (COCO configurations, ``configs/dfine/dfine_hgnetv2_*_coco.yml``)
and their HGNetv2 backbones. DEIM's D-FINE models are the same networks with SiLU instead of
ReLU in the decoder: :func:`preset` takes ``variant="deim"`` for that.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, cast

Variant = Literal["dfine", "deim"]
VARIANTS: tuple[str, ...] = ("dfine", "deim")
#: The decoder activation that tells the variants apart: D-FINE's ReLU, DEIM's SiLU (DEIM's
#: ``activation``/``mlp_act``). No tensor shows it, so checkpoints record or assume it.
VARIANT_ACTIVATIONS: dict[str, str] = {"dfine": "relu", "deim": "silu"}


def variant_of_activation(activation: str) -> Variant | None:
    """The variant whose decoder uses ``activation`` (``"relu"``/``"silu"``), else ``None``."""
    found = [variant for variant, act in VARIANT_ACTIVATIONS.items() if act == activation]
    return cast(Variant, found[0]) if found else None


@dataclass(frozen=True)
class StageSpec:
    """One HGNetv2 stage."""

    in_channels: int
    mid_channels: int
    out_channels: int
    num_blocks: int
    downsample: bool
    light_block: bool
    kernel_size: int
    layers_per_block: int


@dataclass(frozen=True)
class BackboneSpec:
    """An HGNetv2 architecture (PP-HGNetV2 B0..B5)."""

    name: str
    stem_in: int
    stem_mid: int
    stem_out: int
    stages: tuple[StageSpec, StageSpec, StageSpec, StageSpec]


def _stage(
    in_ch: int, mid: int, out: int, blocks: int, down: bool, light: bool, k: int, n: int
) -> StageSpec:
    return StageSpec(
        in_channels=in_ch,
        mid_channels=mid,
        out_channels=out,
        num_blocks=blocks,
        downsample=down,
        light_block=light,
        kernel_size=k,
        layers_per_block=n,
    )


HGNETV2: dict[str, BackboneSpec] = {
    "B0": BackboneSpec(
        name="B0", stem_in=3, stem_mid=16, stem_out=16,
        stages=(
            _stage(16, 16, 64, blocks=1, down=False, light=False, k=3, n=3),
            _stage(64, 32, 256, blocks=1, down=True, light=False, k=3, n=3),
            _stage(256, 64, 512, blocks=2, down=True, light=True, k=5, n=3),
            _stage(512, 128, 1024, blocks=1, down=True, light=True, k=5, n=3),
        ),
    ),
    "B2": BackboneSpec(
        name="B2", stem_in=3, stem_mid=24, stem_out=32,
        stages=(
            _stage(32, 32, 96, blocks=1, down=False, light=False, k=3, n=4),
            _stage(96, 64, 384, blocks=1, down=True, light=False, k=3, n=4),
            _stage(384, 128, 768, blocks=3, down=True, light=True, k=5, n=4),
            _stage(768, 256, 1536, blocks=1, down=True, light=True, k=5, n=4),
        ),
    ),
    "B4": BackboneSpec(
        name="B4", stem_in=3, stem_mid=32, stem_out=48,
        stages=(
            _stage(48, 48, 128, blocks=1, down=False, light=False, k=3, n=6),
            _stage(128, 96, 512, blocks=1, down=True, light=False, k=3, n=6),
            _stage(512, 192, 1024, blocks=3, down=True, light=True, k=5, n=6),
            _stage(1024, 384, 2048, blocks=1, down=True, light=True, k=5, n=6),
        ),
    ),
    "B5": BackboneSpec(
        name="B5", stem_in=3, stem_mid=32, stem_out=64,
        stages=(
            _stage(64, 64, 128, blocks=1, down=False, light=False, k=3, n=6),
            _stage(128, 128, 512, blocks=2, down=True, light=False, k=3, n=6),
            _stage(512, 256, 1024, blocks=5, down=True, light=True, k=5, n=6),
            _stage(1024, 512, 2048, blocks=2, down=True, light=True, k=5, n=6),
        ),
    ),
}


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build a D-FINE network (weights excluded)."""

    name: str
    backbone: str
    use_lab: bool
    freeze_stem: bool
    freeze_norm: bool
    return_idx: tuple[int, ...]
    feat_strides: tuple[int, ...]
    encoder_hidden_dim: int
    encoder_ffn_dim: int
    expansion: float
    depth_mult: float
    decoder_hidden_dim: int
    decoder_ffn_dim: int
    num_layers: int
    num_points: tuple[int, ...]
    reg_scale: float
    encoder_heads: int = 8
    use_encoder_idx: tuple[int, ...] = (-1,)
    num_encoder_layers: int = 1
    decoder_heads: int = 8
    num_queries: int = 300
    reg_max: int = 32
    num_denoising: int = 100
    label_noise_ratio: float = 0.5
    box_noise_scale: float = 1.0
    decoder_activation: str = "relu"
    mlp_activation: str = "relu"
    num_classes: int = 80

    @property
    def backbone_spec(self) -> BackboneSpec:
        return HGNETV2[self.backbone]

    @property
    def encoder_in_channels(self) -> tuple[int, ...]:
        stages = self.backbone_spec.stages
        return tuple(stages[i].out_channels for i in self.return_idx)

    @property
    def num_levels(self) -> int:
        return len(self.feat_strides)

    @property
    def variant(self) -> Variant:
        return variant_of_activation(self.decoder_activation) or "dfine"

    def replace(self, **changes: object) -> ModelConfig:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def dfine_n() -> ModelConfig:
    return ModelConfig(
        name="n", backbone="B0", use_lab=True, freeze_stem=False, freeze_norm=False,
        return_idx=(2, 3), feat_strides=(16, 32),
        encoder_hidden_dim=128, encoder_ffn_dim=512, expansion=0.34, depth_mult=0.5,
        decoder_hidden_dim=128, decoder_ffn_dim=512, num_layers=3, num_points=(6, 6),
        reg_scale=4.0,
    )


def dfine_s() -> ModelConfig:
    return ModelConfig(
        name="s", backbone="B0", use_lab=True, freeze_stem=False, freeze_norm=False,
        return_idx=(1, 2, 3), feat_strides=(8, 16, 32),
        encoder_hidden_dim=256, encoder_ffn_dim=1024, expansion=0.5, depth_mult=0.34,
        decoder_hidden_dim=256, decoder_ffn_dim=1024, num_layers=3, num_points=(3, 6, 3),
        reg_scale=4.0,
    )


def dfine_m() -> ModelConfig:
    return ModelConfig(
        name="m", backbone="B2", use_lab=True, freeze_stem=False, freeze_norm=False,
        return_idx=(1, 2, 3), feat_strides=(8, 16, 32),
        encoder_hidden_dim=256, encoder_ffn_dim=1024, expansion=1.0, depth_mult=0.67,
        decoder_hidden_dim=256, decoder_ffn_dim=1024, num_layers=4, num_points=(3, 6, 3),
        reg_scale=4.0,
    )


def dfine_l() -> ModelConfig:
    return ModelConfig(
        name="l", backbone="B4", use_lab=False, freeze_stem=True, freeze_norm=True,
        return_idx=(1, 2, 3), feat_strides=(8, 16, 32),
        encoder_hidden_dim=256, encoder_ffn_dim=1024, expansion=1.0, depth_mult=1.0,
        decoder_hidden_dim=256, decoder_ffn_dim=1024, num_layers=6, num_points=(3, 6, 3),
        reg_scale=4.0,
    )


def dfine_x() -> ModelConfig:
    return ModelConfig(
        name="x", backbone="B5", use_lab=False, freeze_stem=True, freeze_norm=True,
        return_idx=(1, 2, 3), feat_strides=(8, 16, 32),
        encoder_hidden_dim=384, encoder_ffn_dim=2048, expansion=1.0, depth_mult=1.0,
        decoder_hidden_dim=256, decoder_ffn_dim=1024, num_layers=6, num_points=(3, 6, 3),
        reg_scale=8.0,
    )


PRESETS = {"n": dfine_n, "s": dfine_s, "m": dfine_m, "l": dfine_l, "x": dfine_x}
SIZES: tuple[str, ...] = tuple(PRESETS)


def preset(
    size: str, *, num_classes: int = 80, variant: str = "dfine", **overrides: object
) -> ModelConfig:
    """The configuration of an official size (``n``/``s``/``m``/``l``/``x``).

    ``variant="deim"`` switches the decoder to SiLU (DEIM's ``activation``/``mlp_act``).
    ``overrides`` replace any other field, e.g. ``num_layers=2`` for a tiny test model.
    """
    key = size.lower()
    if key not in PRESETS:
        raise ValueError(f"unknown model size {size!r}; choose one of {', '.join(SIZES)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    act = VARIANT_ACTIVATIONS[variant]
    cfg = PRESETS[key]().replace(
        num_classes=num_classes, decoder_activation=act, mlp_activation=act
    )
    if variant == "deim":
        # DEIM trains every size with ordinary (unfrozen) BatchNorm and an unfrozen stem.
        cfg = cfg.replace(freeze_norm=False, freeze_stem=False)
    return cfg.replace(**overrides) if overrides else cfg
