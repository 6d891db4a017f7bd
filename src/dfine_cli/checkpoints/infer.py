"""Which official preset a checkpoint holds, inferred from its tensors or its configuration.

One rule for every format: the model is one of the presets of :mod:`dfine_cli.models.presets`
(size ``n``..``x``, variant ``dfine``/``deim``) with its own number of classes. The backbone is
told apart by its stem widths (:data:`~dfine_cli.models.presets.HGNETV2`), the size by the
backbone and the number of feature levels; nothing here repeats a preset's numbers.

- :func:`infer_config`: an official-layout state dict → :class:`ModelConfig` (number of
  classes, decoder layers, frozen BatchNorm and ``reg_scale`` read from the tensors).
- :func:`match_preset`: hyper-parameters observed in another format (transformers'
  ``config.json`` or its tensor shapes, keyed by transformers' names) → the one size whose
  preset agrees with all of them, or an error naming the closest size and the differences.

The decoder activation (D-FINE ReLU vs DEIM SiLU) is visible in no tensor: formats that do not
record it are read as ``variant="dfine"`` unless told otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from dfine_cli.checkpoints.info import NOT_A_CHECKPOINT
from dfine_cli.errors import CheckpointError
from dfine_cli.models.presets import HGNETV2, SIZES, ModelConfig, StageSpec, preset

#: The weighting-function bound ``a`` (paper Eq. 3, ``up``): the same for every size.
UP = 0.5
_SHOWN = 5  # how many differences an error message lists


# -- official layout -----------------------------------------------------------------------
def backbone_name(stem_mid: int, stem_out: int, stages: tuple[StageSpec, ...] | None = None) -> str | None:
    """The HGNetv2 name (``B0``/``B2``/``B4``/``B5``) with these stem widths (and stages, if
    given), or ``None`` for an architecture no preset uses."""
    for name, spec in HGNETV2.items():
        if (spec.stem_mid, spec.stem_out) == (stem_mid, stem_out) and (stages is None or spec.stages == stages):
            return name
    return None


def size_of(backbone: str, num_levels: int) -> str | None:
    """The preset size with this backbone and number of feature levels (N and S share B0)."""
    for size in SIZES:
        cfg = preset(size)
        if cfg.backbone == backbone and cfg.num_levels == num_levels:
            return size
    return None


def _shape(state: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"{NOT_A_CHECKPOINT}: key '{key}' is missing")
    return tuple(state[key].shape)


def infer_config(state: Mapping[str, Tensor], variant: str = "dfine") -> ModelConfig:
    """The official size and number of classes of an official-layout ``state`` (from shapes).

    Besides the size, the tensors show the number of classes, the number of decoder layers,
    whether the backbone BatchNorm is frozen (D-FINE L/X keep no ``num_batches_tracked``) and
    ``reg_scale``; these override the preset. ``variant`` sets the decoder activation.
    """
    stem1 = _shape(state, "backbone.stem.stem1.conv.weight")[0]
    stem4 = _shape(state, "backbone.stem.stem4.conv.weight")[0]
    levels = len({k.split(".")[2] for k in state if k.startswith("encoder.input_proj.")})
    backbone = backbone_name(stem1, stem4)
    if backbone is None:
        names = "/".join(HGNETV2)
        raise CheckpointError(
            f"unsupported backbone: stem widths {stem1}/{stem4} match no HGNetv2 {names}"
        )
    size = size_of(backbone, levels)
    if size is None:
        raise CheckpointError(
            f"unsupported checkpoint: HGNetv2 {backbone} with {levels} feature levels matches no official size"
        )
    num_classes = _shape(state, "decoder.enc_score_head.weight")[0]
    num_layers = len({k.split(".")[2] for k in state if k.startswith("decoder.dec_score_head.")})
    cfg = preset(size, num_classes=num_classes, variant=variant)
    overrides: dict[str, Any] = {}
    # Frozen BatchNorm (official D-FINE L/X) has no `num_batches_tracked`; DEIM's L/X do.
    frozen = "backbone.stem.stem1.bn.num_batches_tracked" not in state
    if frozen != cfg.freeze_norm:
        overrides.update(freeze_norm=frozen, freeze_stem=frozen)
    if num_layers and num_layers != cfg.num_layers:
        overrides["num_layers"] = num_layers
    if "decoder.reg_scale" in state:
        overrides["reg_scale"] = float(state["decoder.reg_scale"].reshape(-1)[0])
    if "decoder.up" in state:
        up = float(state["decoder.up"].reshape(-1)[0])
        if abs(up - UP) > 1e-6:
            raise CheckpointError(f"unsupported checkpoint: decoder.up = {up} (expected {UP})")
    return cfg.replace(**overrides) if overrides else cfg


# -- hyper-parameters observed in another format ----------------------------------------------
#: Labels of derived quantities that a state dict shows directly (a transformers config gives
#: them through ``hidden_expansion`` / ``depth_mult``).
CSP_WIDTH = "CSP width (from weights)"
CSP_DEPTH = "CSP depth (from weights)"


def expected_fields(cfg: ModelConfig) -> dict[str, Any]:
    """The observable hyper-parameters of an official model, keyed by transformers' names."""
    levels = cfg.num_levels
    return {
        "backbone_config (HGNetv2)": cfg.backbone,
        "backbone_config.use_learnable_affine_block": cfg.use_lab,
        "backbone_config.hidden_act": "relu",
        "backbone_config.stem_strides": (2, 1, 1, 2, 1),
        "backbone_config.stage_downsample_strides": (2, 2, 2, 2),
        "backbone_config.out_indices": tuple(i + 1 for i in cfg.return_idx),
        "encoder_in_channels": cfg.encoder_in_channels,
        "feat_strides": cfg.feat_strides,
        "encoder_hidden_dim": cfg.encoder_hidden_dim,
        "encoder_ffn_dim": cfg.encoder_ffn_dim,
        "encoder_attention_heads": cfg.encoder_heads,
        "encoder_layers": cfg.num_encoder_layers,
        "encode_proj_layers": tuple(i % levels for i in cfg.use_encoder_idx),
        "encoder_activation_function": "gelu",
        "activation_function": "silu",
        "normalize_before": False,
        "positional_encoding_temperature": 10000,
        "hidden_expansion": cfg.expansion,
        "depth_mult": cfg.depth_mult,
        CSP_WIDTH: round(cfg.expansion * cfg.encoder_hidden_dim // 2),
        CSP_DEPTH: round(3 * cfg.depth_mult),
        "d_model": cfg.decoder_hidden_dim,
        "decoder_ffn_dim": cfg.decoder_ffn_dim,
        "decoder_attention_heads": cfg.decoder_heads,
        "decoder_layers": cfg.num_layers,
        "num_feature_levels": levels,
        "decoder_n_points": cfg.num_points,
        "decoder_in_channels": (cfg.encoder_hidden_dim,) * levels,
        "num_queries": cfg.num_queries,
        "max_num_bins": cfg.reg_max,
        "eval_idx": cfg.num_layers - 1,
        "layer_scale": 1.0,
        "lqe_hidden_dim": 64,
        "lqe_layers": 2,
        "top_prob_values": 4,
        "decoder_offset_scale": 0.5,
        "decoder_method": "default",
        "learn_initial_query": False,
        "with_box_refine": True,
        "up": UP,
    }


def same_value(observed: Any, expected: Any) -> bool:
    """Equality, with floats compared to 1e-9."""
    if isinstance(expected, float) and isinstance(observed, int | float):
        return math.isclose(observed, expected, rel_tol=1e-9, abs_tol=1e-9)
    return bool(observed == expected)


def match_preset(observed: Mapping[str, Any], variant: str, *, what: str = "transformers D-FINE model") -> str:
    """The size whose preset agrees with every ``observed`` field (keys of
    :func:`expected_fields`), or a :class:`CheckpointError` naming the closest size."""
    best: tuple[int, str, list[str]] | None = None
    for size in SIZES:
        expected = expected_fields(preset(size, variant=variant))
        mismatches = [
            f"{label} is {value!r} (D-FINE-{size.upper()} has {expected[label]!r})"
            for label, value in observed.items()
            if not same_value(value, expected[label])
        ]
        if not mismatches:
            return size
        if best is None or len(mismatches) < best[0]:
            best = (len(mismatches), size, mismatches)
    assert best is not None
    _, size, mismatches = best
    shown = "; ".join(mismatches[:_SHOWN])
    more = f"; and {len(mismatches) - _SHOWN} more" if len(mismatches) > _SHOWN else ""
    raise CheckpointError(
        f"{what} matches no official size (closest D-FINE-{size.upper()}): {shown}{more}"
    )


# -- the preset of a transformers checkpoint ---------------------------------------------------
@dataclass(frozen=True)
class HFModelSpec:
    """What the official-layout loader needs to know about a transformers checkpoint.

    ``class_names`` is empty when unknown (weights without ``config.json``). ``notes`` are
    one-line remarks on known behavioural differences; they do not block loading.
    """

    size: str  # "n" | "s" | "m" | "l" | "x"
    variant: str  # "dfine" (ReLU decoder) | "deim" (SiLU decoder)
    num_classes: int
    class_names: tuple[str, ...] = ()
    num_denoising: int = 100  # 0: no denoising class embedding in the checkpoint
    notes: tuple[str, ...] = ()

    def model_config(self) -> ModelConfig:
        """The preset this checkpoint matches, with its number of classes."""
        cfg = preset(self.size, num_classes=self.num_classes, variant=self.variant)
        return cfg if self.num_denoising > 0 else cfg.replace(num_denoising=0)
