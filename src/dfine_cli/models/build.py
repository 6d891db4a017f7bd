"""The one builder that reads a :class:`~dfine_cli.models.presets.ModelConfig`."""

from __future__ import annotations

from dfine_cli.models.backbone import HGNetv2
from dfine_cli.models.decoder import DFineDecoder
from dfine_cli.models.dfine import DFINE
from dfine_cli.models.encoder import HybridEncoder
from dfine_cli.models.presets import ModelConfig, preset


def build_model_from_config(cfg: ModelConfig) -> DFINE:
    """Construct a randomly initialised D-FINE network for ``cfg`` (no side effects)."""
    backbone = HGNetv2(
        cfg.backbone_spec,
        return_idx=cfg.return_idx,
        use_lab=cfg.use_lab,
        freeze_stem=cfg.freeze_stem,
        freeze_norm=cfg.freeze_norm,
    )
    encoder = HybridEncoder(
        in_channels=cfg.encoder_in_channels,
        hidden_dim=cfg.encoder_hidden_dim,
        heads=cfg.encoder_heads,
        ffn_dim=cfg.encoder_ffn_dim,
        use_encoder_idx=cfg.use_encoder_idx,
        num_encoder_layers=cfg.num_encoder_layers,
        expansion=cfg.expansion,
        depth_mult=cfg.depth_mult,
    )
    decoder = DFineDecoder(
        feat_channels=(cfg.encoder_hidden_dim,) * cfg.num_levels,
        num_classes=cfg.num_classes,
        hidden_dim=cfg.decoder_hidden_dim,
        heads=cfg.decoder_heads,
        ffn_dim=cfg.decoder_ffn_dim,
        num_layers=cfg.num_layers,
        num_queries=cfg.num_queries,
        points_per_level=cfg.num_points,
        reg_max=cfg.reg_max,
        reg_scale=cfg.reg_scale,
        num_denoising=cfg.num_denoising,
        label_noise_ratio=cfg.label_noise_ratio,
        box_noise_scale=cfg.box_noise_scale,
        activation=cfg.decoder_activation,
        mlp_activation=cfg.mlp_activation,
    )
    return DFINE(backbone=backbone, encoder=encoder, decoder=decoder)


def build_model(
    size: str = "n", *, num_classes: int = 80, variant: str = "dfine", **overrides: object
) -> DFINE:
    """Build an official size (``n``/``s``/``m``/``l``/``x``), optionally overriding fields."""
    return build_model_from_config(
        preset(size, num_classes=num_classes, variant=variant, **overrides)
    )
