"""Read D-FINE checkpoints saved by transformers and rename them to the official layout.

``transformers.DFineForObjectDetection.save_pretrained`` writes a folder with ``config.json``
and ``model.safetensors`` (or ``pytorch_model.bin``). Its weights are the official D-FINE
weights under other names; this module turns them into the official state-dict layout
(``official_keys_{size}.tsv``) that :mod:`dfine_cli.models` loads.

What differs between the two layouts:

- Names: HF nests the backbone under ``model.backbone.model`` (``embedder`` = official
  ``stem``; ``convolution``/``normalization`` = ``conv``/``bn``), keeps the query-selection
  heads on the top model (``model.enc_*``) and names the decoder heads ``class_embed`` /
  ``bbox_embed`` (official ``dec_score_head`` / ``dec_bbox_head``).
- Self-attention: HF stores separate ``q_proj``/``k_proj``/``v_proj``; the official modules
  are ``nn.MultiheadAttention`` with one fused ``in_proj_weight`` ``[3D, D]`` (rows q, k, v).
- ``reg_scale`` is a float parameter in HF and an int64 one in the official model; the
  official model also exposes ``up``/``reg_scale`` twice (``decoder.*`` and
  ``decoder.decoder.*``, one tensor).
- Saved HF files use the names of the transformers release that wrote them; the names of
  newer releases (``o_proj``, ``mlp.layers.{0,1}``, ``encoder.aifi``) are accepted too, as is
  the tied duplicate of the heads at the top level (``class_embed.*``/``bbox_embed.*``).

Official keys a transformers checkpoint never holds: ``decoder.anchors`` and
``decoder.valid_mask`` (HF regenerates them from the input size); the loader takes them from
the built model (:func:`is_model_derived_key`). The backbone BatchNorm counters
(``num_batches_tracked``) that N/S/M keep but HF's frozen backbone BatchNorm lacks are
produced as 0, the value of a freshly built model (official checkpoints also hold 0).
Without denoising (``num_denoising=0``) HF has no ``denoising_class_embed``; the spec then
builds the model without it too.

Behavioural differences of transformers' D-FINE worth knowing (reported in
:attr:`HFModelSpec.notes` when they apply):

- ``decoder_activation_function`` only sets the decoder layers' feed-forward activation;
  the MLP heads (query position head, box heads, LQE) are always ReLU in transformers. The
  official DEIM models use SiLU in both (``activation``/``mlp_act``), so a SiLU HF model is
  loaded as ``variant="deim"`` but transformers itself does not run it as DEIM does.
- With ``eval_size`` set, transformers runs the encoder's self-attention in eval mode
  *without* positional embeddings; the official model uses the precomputed ones.
"""

from __future__ import annotations

import json
import math
import pickle
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dfine_cli.errors import CheckpointError
from dfine_cli.models.presets import HGNETV2, SIZES, ModelConfig, StageSpec, preset

__all__ = [
    "HFModelSpec",
    "hf_config_to_spec",
    "hf_state_dict_to_official",
    "is_model_derived_key",
    "load_hf_as_official",
    "read_hf_checkpoint",
    "spec_from_state_dict_shapes",
]

# Official weighting-function bound `a` (paper Eq. 3); the same for every size.
_UP = 0.5
_SHOWN = 5  # how many offending keys an error message lists


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


# --------------------------------------------------------------------------- config.json

# DFineConfig / HGNetV2Config defaults, used when a config.json omits a field.
_DFINE_DEFAULTS: dict[str, Any] = {
    "encoder_hidden_dim": 256,
    "encoder_in_channels": [512, 1024, 2048],
    "feat_strides": [8, 16, 32],
    "encoder_layers": 1,
    "encoder_ffn_dim": 1024,
    "encoder_attention_heads": 8,
    "encode_proj_layers": [2],
    "positional_encoding_temperature": 10000,
    "encoder_activation_function": "gelu",
    "activation_function": "silu",
    "eval_size": None,
    "normalize_before": False,
    "hidden_expansion": 1.0,
    "d_model": 256,
    "num_queries": 300,
    "decoder_in_channels": [256, 256, 256],
    "decoder_ffn_dim": 1024,
    "num_feature_levels": 3,
    "decoder_n_points": 4,
    "decoder_layers": 6,
    "decoder_attention_heads": 8,
    "decoder_activation_function": "relu",
    "num_denoising": 100,
    "learn_initial_query": False,
    "with_box_refine": True,
    "eval_idx": -1,
    "layer_scale": 1.0,
    "max_num_bins": 32,
    "reg_scale": 4.0,
    "depth_mult": 1.0,
    "top_prob_values": 4,
    "lqe_hidden_dim": 64,
    "lqe_layers": 2,
    "decoder_offset_scale": 0.5,
    "decoder_method": "default",
    "up": 0.5,
}
_HGNET_DEFAULTS: dict[str, Any] = {
    "stem_channels": [3, 32, 48],
    "stem_strides": [2, 1, 1, 2, 1],
    "stage_in_channels": [48, 128, 512, 1024],
    "stage_mid_channels": [48, 96, 192, 384],
    "stage_out_channels": [128, 512, 1024, 2048],
    "stage_num_blocks": [1, 1, 3, 1],
    "stage_downsample": [False, True, True, True],
    "stage_downsample_strides": [2, 2, 2, 2],
    "stage_light_block": [False, False, True, True],
    "stage_kernel_size": [3, 3, 5, 5],
    "stage_numb_of_layers": [6, 6, 6, 6],
    "use_learnable_affine_block": False,
    "hidden_act": "relu",
    "out_indices": [2, 3, 4],
}
_ACTIVATION_TO_VARIANT = {"relu": "dfine", "silu": "deim"}

# Labels of the checks below; the ones marked "from weights" are derived quantities that a
# state dict shows directly (a config gives them through hidden_expansion / depth_mult).
_CSP_WIDTH = "CSP width (from weights)"
_CSP_DEPTH = "CSP depth (from weights)"


def _expected_fields(cfg: ModelConfig) -> dict[str, Any]:
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
        _CSP_WIDTH: round(cfg.expansion * cfg.encoder_hidden_dim // 2),
        _CSP_DEPTH: round(3 * cfg.depth_mult),
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
        "up": _UP,
    }


def _same(observed: Any, expected: Any) -> bool:
    if isinstance(expected, float) and isinstance(observed, int | float):
        return math.isclose(observed, expected, rel_tol=1e-9, abs_tol=1e-9)
    return bool(observed == expected)


def _match_preset(observed: Mapping[str, Any], variant: str) -> str:
    """The size whose preset agrees with every observed field, or a CheckpointError."""
    best: tuple[int, str, list[str]] | None = None
    for size in SIZES:
        expected = _expected_fields(preset(size, variant=variant))
        mismatches = [
            f"{label} is {value!r} (D-FINE-{size.upper()} has {expected[label]!r})"
            for label, value in observed.items()
            if not _same(value, expected[label])
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
        f"transformers D-FINE model matches no official size (closest D-FINE-{size.upper()}): "
        f"{shown}{more}"
    )


def _backbone_name(stem_mid: int, stem_out: int, stages: tuple[StageSpec, ...]) -> str:
    """``B0``/``B2``/``B4``/``B5`` when the architecture is an official HGNetv2, else a summary."""
    for name, spec in HGNETV2.items():
        if (spec.stem_mid, spec.stem_out, spec.stages) == (stem_mid, stem_out, stages):
            return name
    widths = "/".join(str(s.out_channels) for s in stages)
    depths = "/".join(str(s.num_blocks) for s in stages)
    return f"custom (stem {stem_mid}-{stem_out}, stage widths {widths}, blocks {depths})"


def _as_tuple(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, list | tuple) else (value,)


def _num_points(value: Any, levels: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, list | tuple) else (int(value),) * levels


def _class_names(config: Mapping[str, Any]) -> tuple[str, ...]:
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        num_labels = config.get("num_labels")
        if isinstance(num_labels, int) and num_labels > 0:
            return tuple(f"class_{i}" for i in range(num_labels))
        raise CheckpointError("config.json has neither id2label nor num_labels")
    try:
        by_index = {int(k): str(v) for k, v in id2label.items()}
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"config.json id2label has a non-integer id ({exc})") from exc
    if sorted(by_index) != list(range(len(by_index))):
        raise CheckpointError(
            f"config.json id2label ids are not 0..{len(by_index) - 1} "
            f"(got {sorted(by_index)[:_SHOWN]}...)"
        )
    return tuple(by_index[i] for i in range(len(by_index)))


def _observe_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of :func:`_expected_fields` as a transformers ``config.json`` sets them."""

    def get(key: str) -> Any:
        return config[key] if config.get(key) is not None else _DFINE_DEFAULTS.get(key)

    backbone_config = config.get("backbone_config") or {}
    if backbone_config.get("model_type", "hgnet_v2") != "hgnet_v2":
        raise CheckpointError(
            f"backbone_config is a {backbone_config.get('model_type')!r} model; "
            "official D-FINE uses HGNetV2 ('hgnet_v2')"
        )
    backbone = dict(_HGNET_DEFAULTS)
    backbone.update({k: v for k, v in backbone_config.items() if v is not None})
    if backbone_config.get("out_indices") is None and backbone_config.get("out_features"):
        stage_names = ["stem", "stage1", "stage2", "stage3", "stage4"]
        backbone["out_indices"] = [stage_names.index(n) for n in backbone_config["out_features"]]
    stages = tuple(
        StageSpec(
            in_channels=backbone["stage_in_channels"][i],
            mid_channels=backbone["stage_mid_channels"][i],
            out_channels=backbone["stage_out_channels"][i],
            num_blocks=backbone["stage_num_blocks"][i],
            downsample=bool(backbone["stage_downsample"][i]),
            light_block=bool(backbone["stage_light_block"][i]),
            kernel_size=backbone["stage_kernel_size"][i],
            layers_per_block=backbone["stage_numb_of_layers"][i],
        )
        for i in range(len(backbone["stage_in_channels"]))
    )
    stem = backbone["stem_channels"]
    levels = int(get("num_feature_levels"))
    layers = int(get("decoder_layers"))
    eval_idx = int(get("eval_idx"))
    return {
        "backbone_config (HGNetv2)": _backbone_name(stem[1], stem[2], stages),
        "backbone_config.use_learnable_affine_block": bool(backbone["use_learnable_affine_block"]),
        "backbone_config.hidden_act": backbone["hidden_act"],
        "backbone_config.stem_strides": _as_tuple(backbone["stem_strides"]),
        "backbone_config.stage_downsample_strides": _as_tuple(backbone["stage_downsample_strides"]),
        "backbone_config.out_indices": _as_tuple(backbone["out_indices"]),
        "encoder_in_channels": _as_tuple(get("encoder_in_channels")),
        "feat_strides": _as_tuple(get("feat_strides")),
        "encoder_hidden_dim": get("encoder_hidden_dim"),
        "encoder_ffn_dim": get("encoder_ffn_dim"),
        "encoder_attention_heads": get("encoder_attention_heads"),
        "encoder_layers": get("encoder_layers"),
        "encode_proj_layers": tuple(i % levels for i in _as_tuple(get("encode_proj_layers"))),
        "encoder_activation_function": get("encoder_activation_function"),
        "activation_function": get("activation_function"),
        "normalize_before": get("normalize_before"),
        "positional_encoding_temperature": get("positional_encoding_temperature"),
        "hidden_expansion": get("hidden_expansion"),
        "depth_mult": get("depth_mult"),
        "d_model": get("d_model"),
        "decoder_ffn_dim": get("decoder_ffn_dim"),
        "decoder_attention_heads": get("decoder_attention_heads"),
        "decoder_layers": layers,
        "num_feature_levels": levels,
        "decoder_n_points": _num_points(get("decoder_n_points"), levels),
        "decoder_in_channels": _as_tuple(get("decoder_in_channels")),
        "num_queries": get("num_queries"),
        "max_num_bins": get("max_num_bins"),
        "eval_idx": eval_idx if eval_idx >= 0 else layers + eval_idx,
        "layer_scale": get("layer_scale"),
        "lqe_hidden_dim": get("lqe_hidden_dim"),
        "lqe_layers": get("lqe_layers"),
        "top_prob_values": get("top_prob_values"),
        "decoder_offset_scale": get("decoder_offset_scale"),
        "decoder_method": get("decoder_method"),
        "learn_initial_query": get("learn_initial_query"),
        "with_box_refine": get("with_box_refine"),
        "up": get("up"),
    }


def hf_config_to_spec(config: Mapping[str, Any]) -> HFModelSpec:
    """Match a transformers D-FINE ``config.json`` (as a dict) to an official preset.

    The size is the preset whose backbone (HGNetv2 B0/B0/B2/B4/B5), encoder, decoder and
    FDR hyper-parameters all agree; the variant follows ``decoder_activation_function``
    (ReLU: D-FINE, SiLU: DEIM). ``reg_scale`` is not taken from the config: transformers
    uses the value stored in the weights, which :func:`hf_state_dict_to_official` checks.
    Fields missing from the file take transformers' defaults.

    Raises:
        CheckpointError: not a D-FINE config, or hyper-parameters of no official size.
    """
    model_type = config.get("model_type", "d_fine")
    if model_type != "d_fine":
        raise CheckpointError(f"config.json describes a {model_type!r} model, not D-FINE ('d_fine')")
    if config.get("use_timm_backbone") or (config.get("backbone") and not config.get("backbone_config")):
        raise CheckpointError("only transformers D-FINE models with an HGNetV2 backbone_config are supported")
    activation = str(config.get("decoder_activation_function") or "relu")
    if activation not in _ACTIVATION_TO_VARIANT:
        raise CheckpointError(
            f"decoder_activation_function {activation!r} is neither 'relu' (D-FINE) nor 'silu' (DEIM)"
        )
    variant = _ACTIVATION_TO_VARIANT[activation]
    try:
        observed = _observe_config(config)
        num_denoising = int(config.get("num_denoising", _DFINE_DEFAULTS["num_denoising"]))
        config_reg_scale = float(config.get("reg_scale") or _DFINE_DEFAULTS["reg_scale"])
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"malformed transformers D-FINE config ({type(exc).__name__}: {exc})") from exc
    size = _match_preset(observed, variant)
    class_names = _class_names(config)

    notes: list[str] = []
    if variant == "deim":
        notes.append(
            "SiLU decoder loaded as DEIM; transformers applies SiLU only to the decoder "
            "feed-forward layers and keeps ReLU in the MLP heads, so its outputs differ"
        )
    if config.get("eval_size"):
        notes.append(
            "config sets eval_size: transformers then drops the encoder's positional "
            "embedding in eval mode, the official model (and dfine) keeps it"
        )
    reg_scale = preset(size).reg_scale
    if not _same(config_reg_scale, reg_scale):
        notes.append(
            f"config.json says reg_scale {config_reg_scale:g} but D-FINE-{size.upper()} uses "
            f"{reg_scale:g}; the value stored in the weights is used, as in transformers"
        )
    return HFModelSpec(
        size=size,
        variant=variant,
        num_classes=len(class_names),
        class_names=class_names,
        num_denoising=max(num_denoising, 0),
        notes=tuple(notes),
    )


# ------------------------------------------------------------------------- key renaming

_BN = r"(?:weight|bias|running_mean|running_var|num_batches_tracked)"
_LIN = r"(?:weight|bias)"
_CONV_NORM = rf"(?:conv\.weight|norm\.{_BN})"
_CSP_PART = rf"(?:conv[123]|bottlenecks\.\d+\.conv[12])\.{_CONV_NORM}"
_STEM = r"stem(?:1|2a|2b|3|4)"
_HG_UNIT = r"stages\.\d+\.(?:downsample|blocks\.\d+\.(?:layers\.\d+(?:\.conv[12])?|aggregation\.[01]))"
_ENC_LAYER = r"model\.encoder\.encoder\.(?P<i>\d+\.layers\.\d+)"
_DEC_LAYER = r"model\.decoder\.layers\.(?P<i>\d+)"

# (transformers key, official key): full-match regexes over the canonical transformers
# names (see _canonical_hf_key) and their replacement templates.
_RENAMES: tuple[tuple[str, str], ...] = (
    # HGNetv2 backbone
    (rf"model\.backbone\.model\.embedder\.(?P<u>{_STEM})\.convolution\.weight", r"backbone.stem.\g<u>.conv.weight"),
    (rf"model\.backbone\.model\.embedder\.(?P<u>{_STEM})\.normalization\.(?P<l>{_BN})", r"backbone.stem.\g<u>.bn.\g<l>"),
    (rf"model\.backbone\.model\.embedder\.(?P<u>{_STEM})\.lab\.(?P<l>scale|bias)", r"backbone.stem.\g<u>.lab.\g<l>"),
    (rf"model\.backbone\.model\.encoder\.(?P<u>{_HG_UNIT})\.convolution\.weight", r"backbone.\g<u>.conv.weight"),
    (rf"model\.backbone\.model\.encoder\.(?P<u>{_HG_UNIT})\.normalization\.(?P<l>{_BN})", r"backbone.\g<u>.bn.\g<l>"),
    (rf"model\.backbone\.model\.encoder\.(?P<u>{_HG_UNIT})\.lab\.(?P<l>scale|bias)", r"backbone.\g<u>.lab.\g<l>"),
    # hybrid encoder: input projections, AIFI layer, FPN/PAN (RepNCSPELAN4 cv1..cv4, SCDown)
    (r"model\.encoder_input_proj\.(?P<i>\d+)\.0\.weight", r"encoder.input_proj.\g<i>.conv.weight"),
    (rf"model\.encoder_input_proj\.(?P<i>\d+)\.1\.(?P<l>{_BN})", r"encoder.input_proj.\g<i>.norm.\g<l>"),
    (rf"{_ENC_LAYER}\.self_attn\.out_proj\.(?P<l>{_LIN})", r"encoder.encoder.\g<i>.self_attn.out_proj.\g<l>"),
    (rf"{_ENC_LAYER}\.fc1\.(?P<l>{_LIN})", r"encoder.encoder.\g<i>.linear1.\g<l>"),
    (rf"{_ENC_LAYER}\.fc2\.(?P<l>{_LIN})", r"encoder.encoder.\g<i>.linear2.\g<l>"),
    (rf"{_ENC_LAYER}\.self_attn_layer_norm\.(?P<l>{_LIN})", r"encoder.encoder.\g<i>.norm1.\g<l>"),
    (rf"{_ENC_LAYER}\.final_layer_norm\.(?P<l>{_LIN})", r"encoder.encoder.\g<i>.norm2.\g<l>"),
    (rf"model\.encoder\.lateral_convs\.(?P<i>\d+)\.(?P<l>{_CONV_NORM})", r"encoder.lateral_convs.\g<i>.\g<l>"),
    (rf"model\.encoder\.(?P<b>fpn|pan)_blocks\.(?P<i>\d+)\.conv1\.(?P<l>{_CONV_NORM})", r"encoder.\g<b>_blocks.\g<i>.cv1.\g<l>"),
    (rf"model\.encoder\.(?P<b>fpn|pan)_blocks\.(?P<i>\d+)\.csp_rep1\.(?P<l>{_CSP_PART})", r"encoder.\g<b>_blocks.\g<i>.cv2.0.\g<l>"),
    (rf"model\.encoder\.(?P<b>fpn|pan)_blocks\.(?P<i>\d+)\.conv2\.(?P<l>{_CONV_NORM})", r"encoder.\g<b>_blocks.\g<i>.cv2.1.\g<l>"),
    (rf"model\.encoder\.(?P<b>fpn|pan)_blocks\.(?P<i>\d+)\.csp_rep2\.(?P<l>{_CSP_PART})", r"encoder.\g<b>_blocks.\g<i>.cv3.0.\g<l>"),
    (rf"model\.encoder\.(?P<b>fpn|pan)_blocks\.(?P<i>\d+)\.conv3\.(?P<l>{_CONV_NORM})", r"encoder.\g<b>_blocks.\g<i>.cv3.1.\g<l>"),
    (rf"model\.encoder\.(?P<b>fpn|pan)_blocks\.(?P<i>\d+)\.conv4\.(?P<l>{_CONV_NORM})", r"encoder.\g<b>_blocks.\g<i>.cv4.\g<l>"),
    (rf"model\.encoder\.downsample_convs\.(?P<i>\d+)\.conv(?P<c>[12])\.(?P<l>{_CONV_NORM})", r"encoder.downsample_convs.\g<i>.0.cv\g<c>.\g<l>"),
    # decoder: input projections and query selection (kept on DFineModel by transformers)
    (r"model\.decoder_input_proj\.(?P<i>\d+)\.0\.weight", r"decoder.input_proj.\g<i>.conv.weight"),
    (rf"model\.decoder_input_proj\.(?P<i>\d+)\.1\.(?P<l>{_BN})", r"decoder.input_proj.\g<i>.norm.\g<l>"),
    (r"model\.denoising_class_embed\.weight", r"decoder.denoising_class_embed.weight"),
    (rf"model\.enc_output\.0\.(?P<l>{_LIN})", r"decoder.enc_output.proj.\g<l>"),
    (rf"model\.enc_output\.1\.(?P<l>{_LIN})", r"decoder.enc_output.norm.\g<l>"),
    (rf"model\.enc_score_head\.(?P<l>{_LIN})", r"decoder.enc_score_head.\g<l>"),
    (rf"model\.enc_bbox_head\.layers\.(?P<i>\d+)\.(?P<l>{_LIN})", r"decoder.enc_bbox_head.layers.\g<i>.\g<l>"),
    # decoder heads
    (rf"model\.decoder\.class_embed\.(?P<i>\d+)\.(?P<l>{_LIN})", r"decoder.dec_score_head.\g<i>.\g<l>"),
    (rf"model\.decoder\.bbox_embed\.(?P<i>\d+\.layers\.\d+)\.(?P<l>{_LIN})", r"decoder.dec_bbox_head.\g<i>.\g<l>"),
    (rf"model\.decoder\.pre_bbox_head\.layers\.(?P<i>\d+)\.(?P<l>{_LIN})", r"decoder.pre_bbox_head.layers.\g<i>.\g<l>"),
    (rf"model\.decoder\.query_pos_head\.layers\.(?P<i>\d+)\.(?P<l>{_LIN})", r"decoder.query_pos_head.layers.\g<i>.\g<l>"),
    (rf"model\.decoder\.lqe_layers\.(?P<i>\d+\.reg_conf\.layers\.\d+)\.(?P<l>{_LIN})", r"decoder.decoder.lqe_layers.\g<i>.\g<l>"),
    # decoder layers
    (rf"{_DEC_LAYER}\.self_attn\.out_proj\.(?P<l>{_LIN})", r"decoder.decoder.layers.\g<i>.self_attn.out_proj.\g<l>"),
    (rf"{_DEC_LAYER}\.self_attn_layer_norm\.(?P<l>{_LIN})", r"decoder.decoder.layers.\g<i>.norm1.\g<l>"),
    (rf"{_DEC_LAYER}\.encoder_attn\.(?P<m>sampling_offsets|attention_weights)\.(?P<l>{_LIN})", r"decoder.decoder.layers.\g<i>.cross_attn.\g<m>.\g<l>"),
    (rf"{_DEC_LAYER}\.encoder_attn\.num_points_scale", r"decoder.decoder.layers.\g<i>.cross_attn.num_points_scale"),
    (rf"{_DEC_LAYER}\.gateway\.(?P<m>gate|norm)\.(?P<l>{_LIN})", r"decoder.decoder.layers.\g<i>.gateway.\g<m>.\g<l>"),
    (rf"{_DEC_LAYER}\.fc1\.(?P<l>{_LIN})", r"decoder.decoder.layers.\g<i>.linear1.\g<l>"),
    (rf"{_DEC_LAYER}\.fc2\.(?P<l>{_LIN})", r"decoder.decoder.layers.\g<i>.linear2.\g<l>"),
    (rf"{_DEC_LAYER}\.final_layer_norm\.(?P<l>{_LIN})", r"decoder.decoder.layers.\g<i>.norm3.\g<l>"),
)
_COMPILED_RENAMES = tuple((re.compile(src), dst) for src, dst in _RENAMES)

# Separate q/k/v projections, fused into nn.MultiheadAttention's in_proj (rows q, k, v).
_QKV = re.compile(
    r"(?P<layer>model\.encoder\.encoder\.\d+\.layers\.\d+|model\.decoder\.layers\.\d+)"
    r"\.self_attn\.(?P<proj>[qkv])_proj\.(?P<leaf>weight|bias)"
)
_MLP_LAYER = re.compile(r"(layers\.\d+)\.mlp\.layers\.([01])\.")
_MLP_NAMES = {"0": "fc1", "1": "fc2"}
_BACKBONE_NORM_COUNTER = re.compile(r"backbone\..*\.num_batches_tracked")
_BACKBONE_NORM_MEAN = re.compile(r"(?P<bn>backbone\..*\.bn)\.running_mean")


def _canonical_hf_key(key: str) -> str:
    """Map the names of any transformers release to the ones ``save_pretrained`` writes.

    Newer releases name modules ``o_proj``, ``mlp.layers.{0,1}`` and ``encoder.aifi`` in
    memory (and rename them back when saving); the detection heads also exist at the top
    level (``class_embed``/``bbox_embed``), tied to ``model.decoder.*``.
    """
    if key.startswith(("class_embed.", "bbox_embed.")):
        key = "model.decoder." + key
    key = key.replace(".self_attn.o_proj.", ".self_attn.out_proj.")
    key = _MLP_LAYER.sub(lambda m: f"{m.group(1)}.{_MLP_NAMES[m.group(2)]}.", key)
    return key.replace("model.encoder.aifi.", "model.encoder.encoder.", 1)


def _official_layer_prefix(hf_layer: str) -> str:
    if hf_layer.startswith("model.decoder.layers."):
        return "decoder.decoder.layers." + hf_layer.removeprefix("model.decoder.layers.")
    return hf_layer.removeprefix("model.")


def _canonical_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    canonical: dict[str, Tensor] = {}
    for key, tensor in state.items():
        if not isinstance(tensor, Tensor):
            raise CheckpointError(f"checkpoint entry {key!r} is not a tensor ({type(tensor).__name__})")
        name = _canonical_hf_key(key)
        if name in canonical and not torch.equal(canonical[name], tensor):
            raise CheckpointError(f"tied weights {key!r} and {name!r} differ in the checkpoint")
        canonical[name] = tensor
    return canonical


def _float32(tensor: Tensor) -> Tensor:
    return tensor.float() if tensor.is_floating_point() else tensor


def _first(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    more = f" and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def hf_state_dict_to_official(state: Mapping[str, Tensor], spec: HFModelSpec) -> dict[str, Tensor]:
    """Rename a transformers D-FINE state dict to the official layout.

    Floating-point tensors are returned as float32 (transformers may save fp16/bf16);
    ``reg_scale`` becomes int64 ``[1]`` and appears, like ``up``, under both official
    names. Backbone BatchNorm counters follow the preset: dropped where the official
    backbone BatchNorm is frozen (L, X), 0 where HF froze it but the official one is not
    (N, S, M). The result lacks only the keys :func:`is_model_derived_key` accepts.

    Raises:
        CheckpointError: unknown or incomplete keys, or weights that contradict ``spec``
            (number of classes, ``reg_scale``, ``up``).
    """
    cfg = spec.model_config()
    canonical = _canonical_state(state)
    official: dict[str, Tensor] = {}
    unknown: list[str] = []
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}

    for key, tensor in canonical.items():
        if key in ("model.decoder.up", "model.decoder.reg_scale"):
            continue
        match = _QKV.fullmatch(key)
        if match:
            qkv.setdefault((match["layer"], match["leaf"]), {})[match["proj"]] = tensor
            continue
        for pattern, template in _COMPILED_RENAMES:
            match = pattern.fullmatch(key)
            if match:
                official[match.expand(template)] = _float32(tensor)
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} transformers key(s) have no official D-FINE counterpart: {_first(unknown)}"
        )

    for (layer, leaf), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(parts))
            raise CheckpointError(f"{layer}.self_attn lacks {'/'.join(missing)}_proj.{leaf}")
        fused = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        official[f"{_official_layer_prefix(layer)}.self_attn.in_proj_{leaf}"] = _float32(fused)

    official.update(_fdr_constants(canonical, spec, cfg))

    if cfg.freeze_norm:  # official FrozenBatchNorm2d keeps no counter
        official = {k: v for k, v in official.items() if not _BACKBONE_NORM_COUNTER.fullmatch(k)}
    else:  # HF froze a BatchNorm2d that counts batches in the official model
        for key in list(official):
            match = _BACKBONE_NORM_MEAN.fullmatch(key)
            if match and f"{match['bn']}.num_batches_tracked" not in official:
                official[f"{match['bn']}.num_batches_tracked"] = torch.tensor(0, dtype=torch.int64)

    head = official.get("decoder.dec_score_head.0.weight")
    if head is None:
        raise CheckpointError("checkpoint has no decoder class head (model.decoder.class_embed.0)")
    if head.shape[0] != spec.num_classes:
        raise CheckpointError(
            f"weights have {head.shape[0]} classes but the configuration lists {spec.num_classes}"
        )
    return official


def _fdr_constants(
    canonical: Mapping[str, Tensor], spec: HFModelSpec, cfg: ModelConfig
) -> dict[str, Tensor]:
    """``up`` (float32 [1]) and ``reg_scale`` (int64 [1]) under both official names."""
    name = f"D-FINE-{spec.size.upper()}"
    up = canonical.get("model.decoder.up")
    reg_scale = canonical.get("model.decoder.reg_scale")
    if up is None or reg_scale is None:
        raise CheckpointError("checkpoint lacks model.decoder.up / model.decoder.reg_scale")
    if up.numel() != 1 or not math.isclose(float(up), _UP, abs_tol=1e-6):
        raise CheckpointError(f"weights have up={up.flatten().tolist()} but {name} uses {_UP}")
    if reg_scale.numel() != 1 or not math.isclose(float(reg_scale), cfg.reg_scale, abs_tol=1e-6):
        raise CheckpointError(
            f"weights have reg_scale={reg_scale.flatten().tolist()} but {name} uses {cfg.reg_scale:g}"
        )
    up_value = up.reshape(1).float()
    reg_scale_value = torch.tensor([round(cfg.reg_scale)], dtype=torch.int64)
    return {
        "decoder.up": up_value,
        "decoder.reg_scale": reg_scale_value,
        "decoder.decoder.up": up_value,
        "decoder.decoder.reg_scale": reg_scale_value,
    }


def is_model_derived_key(key: str) -> bool:
    """Whether an official key is absent from every converted transformers checkpoint.

    Only the eval-size anchors and their validity mask: transformers regenerates them from
    the input size and stores neither; the loader takes them from the built model.
    """
    return key in ("decoder.anchors", "decoder.valid_mask")


# ---------------------------------------------------------------- weights without config


def _tensor(state: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in state:
        raise CheckpointError(f"cannot infer the model size: {key!r} is missing")
    return state[key]


def _shape(state: Mapping[str, Tensor], key: str) -> tuple[int, ...]:
    return tuple(_tensor(state, key).shape)


def _count(state: Mapping[str, Tensor], prefix: str) -> int:
    """Number of consecutive indices ``prefix{i}.`` present in ``state``."""
    indices = {
        int(rest.split(".", 1)[0])
        for key in state
        if key.startswith(prefix) and (rest := key[len(prefix) :]).split(".", 1)[0].isdigit()
    }
    return len(indices)


def _points_per_level(scale: Tensor) -> tuple[int, ...]:
    """Invert ``num_points_scale`` (``1/n`` repeated ``n`` times per level)."""
    values = scale.flatten().tolist()
    points: list[int] = []
    i = 0
    while i < len(values):
        n = round(1.0 / values[i]) if values[i] > 0 else 0
        if n <= 0:
            raise CheckpointError("num_points_scale does not describe sampling points per level")
        points.append(n)
        i += n
    return tuple(points)


def _observe_shapes(sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """The fields of :func:`_expected_fields` that tensor shapes reveal."""
    bb = "model.backbone.model."
    stages = []
    for i in range(_count(sd, f"{bb}encoder.stages.")):
        stage = f"{bb}encoder.stages.{i}."
        first = f"{stage}blocks.0.layers.0."
        light = f"{first}conv1.convolution.weight" in sd
        in_key = f"{first}conv1.convolution.weight" if light else f"{first}convolution.weight"
        kernel_key = f"{first}conv2.convolution.weight" if light else in_key
        stages.append(
            StageSpec(
                in_channels=_shape(sd, in_key)[1],
                mid_channels=_shape(sd, in_key)[0],
                out_channels=_shape(sd, f"{stage}blocks.0.aggregation.1.convolution.weight")[0],
                num_blocks=_count(sd, f"{stage}blocks."),
                downsample=f"{stage}downsample.convolution.weight" in sd,
                light_block=light,
                kernel_size=_shape(sd, kernel_key)[-1],
                layers_per_block=_count(sd, f"{stage}blocks.0.layers."),
            )
        )
    levels = _count(sd, "model.encoder_input_proj.")
    d_model = _shape(sd, "model.decoder.layers.0.self_attn.q_proj.weight")[0]
    decoder_in = tuple(
        _shape(sd, f"model.decoder_input_proj.{i}.0.weight")[1]
        for i in range(_count(sd, "model.decoder_input_proj."))
    ) or (d_model,) * levels
    points = _points_per_level(_tensor(sd, "model.decoder.layers.0.encoder_attn.num_points_scale"))
    return {
        "backbone_config (HGNetv2)": _backbone_name(
            _shape(sd, f"{bb}embedder.stem1.convolution.weight")[0],
            _shape(sd, f"{bb}embedder.stem4.convolution.weight")[0],
            tuple(stages),
        ),
        "backbone_config.use_learnable_affine_block": any(
            k.startswith(bb) and ".lab." in k for k in sd
        ),
        "encoder_in_channels": tuple(
            _shape(sd, f"model.encoder_input_proj.{i}.0.weight")[1] for i in range(levels)
        ),
        "encoder_hidden_dim": _shape(sd, "model.encoder_input_proj.0.0.weight")[0],
        "encoder_ffn_dim": _shape(sd, "model.encoder.encoder.0.layers.0.fc1.weight")[0],
        "encoder_layers": _count(sd, "model.encoder.encoder.0.layers."),
        _CSP_WIDTH: _shape(sd, "model.encoder.fpn_blocks.0.csp_rep1.conv1.conv.weight")[0],
        _CSP_DEPTH: _count(sd, "model.encoder.fpn_blocks.0.csp_rep1.bottlenecks."),
        "d_model": d_model,
        "decoder_ffn_dim": _shape(sd, "model.decoder.layers.0.fc1.weight")[0],
        "decoder_layers": _count(sd, "model.decoder.layers."),
        "num_feature_levels": len(points),
        "decoder_n_points": points,
        "decoder_in_channels": decoder_in,
        "max_num_bins": _shape(sd, "model.decoder.bbox_embed.0.layers.2.weight")[0] // 4 - 1,
        "lqe_hidden_dim": _shape(sd, "model.decoder.lqe_layers.0.reg_conf.layers.0.weight")[0],
        "top_prob_values": _shape(sd, "model.decoder.lqe_layers.0.reg_conf.layers.0.weight")[1] // 4 - 1,
    }


def spec_from_state_dict_shapes(state: Mapping[str, Tensor]) -> HFModelSpec:
    """Infer the preset from tensor shapes when only the weights file is available.

    The activation function is not visible in the weights: the variant is assumed to be
    D-FINE (ReLU) and a note says so. Class names are unknown (empty).

    Raises:
        CheckpointError: shapes of no official size, or keys missing for the inference.
    """
    sd = _canonical_state(state)
    try:
        observed = _observe_shapes(sd)
    except (IndexError, ValueError, ZeroDivisionError) as exc:
        raise CheckpointError(f"cannot infer the model size from the weights ({exc})") from exc
    size = _match_preset(observed, "dfine")
    return HFModelSpec(
        size=size,
        variant="dfine",
        num_classes=_shape(sd, "model.enc_score_head.weight")[0],
        notes=(
            "no config.json: decoder activation unknown, assumed ReLU (D-FINE, not DEIM); "
            "class names unknown",
        ),
    )


# ------------------------------------------------------------------------------ reading

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read safetensors file {path}: {exc}") from exc


def _load_sharded(index_path: Path) -> dict[str, Tensor]:
    index = _read_json(index_path)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index_path} has no weight_map")
    state: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        state.update(_load_safetensors(index_path.parent / str(shard)))
    return state


def _load_torch_bin(path: Path) -> dict[str, Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} safely (weights only): {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict ({type(state).__name__})")
    return state


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return data


def read_hf_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """Read a transformers checkpoint: a ``save_pretrained`` folder or one weights file.

    Weights come from ``model.safetensors`` (or its sharded index) and, only if that is
    absent, ``pytorch_model.bin`` through ``torch.load(weights_only=True)``. The config is
    the ``config.json`` inside the folder (beside the file), or ``None`` when there is none.

    Raises:
        CheckpointError: no weights found, unreadable or unsafe files.
    """
    path = Path(path)
    if path.is_dir():
        folder = path
        candidates = [path / name for name in _WEIGHT_FILES if (path / name).is_file()]
        if not candidates:
            raise CheckpointError(f"{path} holds none of {', '.join(_WEIGHT_FILES)}")
        weights = candidates[0]
    elif path.is_file():
        folder, weights = path.parent, path
    else:
        raise CheckpointError(f"{path} does not exist")

    if weights.name.endswith(".safetensors.index.json"):
        state = _load_sharded(weights)
    elif weights.suffix == ".safetensors":
        state = _load_safetensors(weights)
    elif weights.suffix in (".bin", ".pt", ".pth"):
        state = _load_torch_bin(weights)
    else:
        raise CheckpointError(f"{weights} is not a .safetensors or pytorch_model.bin file")
    config_path = folder / "config.json"
    config = _read_json(config_path) if config_path.is_file() else None
    return state, config


def load_hf_as_official(path: Path) -> tuple[dict[str, Tensor], HFModelSpec]:
    """Read, identify and convert a transformers checkpoint (see the functions above).

    The result lacks only the model-derived keys (:func:`is_model_derived_key`).
    """
    state, config = read_hf_checkpoint(path)
    spec = hf_config_to_spec(config) if config is not None else spec_from_state_dict_shapes(state)
    return hf_state_dict_to_official(state, spec), spec
