"""The transformers D-FINE format: ``save_pretrained`` folders and single weights files.

``transformers.DFineForObjectDetection.save_pretrained`` writes a folder with ``config.json``
and ``model.safetensors`` (or ``pytorch_model.bin``). This module reads such a folder (or one
weights file), identifies the official preset from ``config.json`` or, without one, from the
tensor shapes (:mod:`dfine_cli.checkpoints.infer`), and renames the weights to the official
layout (:mod:`dfine_cli.checkpoints.transformers_keys`).

Behavioural differences of transformers' D-FINE worth knowing (reported in
:attr:`~dfine_cli.checkpoints.infer.HFModelSpec.notes` when they apply):

- ``decoder_activation_function`` only sets the decoder layers' feed-forward activation;
  the MLP heads (query position head, box heads, LQE) are always ReLU in transformers. The
  official DEIM models use SiLU in both (``activation``/``mlp_act``), so a SiLU HF model is
  loaded as ``variant="deim"`` but transformers itself does not run it as DEIM does.
- With ``eval_size`` set, transformers runs the encoder's self-attention in eval mode
  *without* positional embeddings; the official model uses the precomputed ones.
- Without denoising (``num_denoising=0``) HF has no ``denoising_class_embed``; the spec then
  builds the model without it too.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dfine_cli.checkpoints.infer import (
    CSP_DEPTH,
    CSP_WIDTH,
    HFModelSpec,
    backbone_name,
    infer_config,
    match_preset,
    same_value,
)
from dfine_cli.checkpoints.info import LoadedCheckpoint, ModelInfo
from dfine_cli.checkpoints.transformers_keys import canonical_state, hf_state_dict_to_official
from dfine_cli.coco_names import COCO_NAMES
from dfine_cli.errors import CheckpointError
from dfine_cli.models.presets import VARIANT_ACTIVATIONS, StageSpec, preset, variant_of_activation

log = logging.getLogger("dfine.checkpoint")

_SHOWN = 5  # how many offending ids an error message lists

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


def _backbone_name(stem_mid: int, stem_out: int, stages: tuple[StageSpec, ...]) -> str:
    """``B0``/``B2``/``B4``/``B5`` when the architecture is an official HGNetv2, else a summary."""
    name = backbone_name(stem_mid, stem_out, stages)
    if name is not None:
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
    variant = variant_of_activation(activation)
    if variant is None:
        raise CheckpointError(
            f"decoder_activation_function {activation!r} is neither "
            f"{VARIANT_ACTIVATIONS['dfine']!r} (D-FINE) nor {VARIANT_ACTIVATIONS['deim']!r} (DEIM)"
        )
    try:
        observed = _observe_config(config)
        num_denoising = int(config.get("num_denoising", _DFINE_DEFAULTS["num_denoising"]))
        config_reg_scale = float(config.get("reg_scale") or _DFINE_DEFAULTS["reg_scale"])
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"malformed transformers D-FINE config ({type(exc).__name__}: {exc})") from exc
    size = match_preset(observed, variant)
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
    if not same_value(config_reg_scale, reg_scale):
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
        CSP_WIDTH: _shape(sd, "model.encoder.fpn_blocks.0.csp_rep1.conv1.conv.weight")[0],
        CSP_DEPTH: _count(sd, "model.encoder.fpn_blocks.0.csp_rep1.bottlenecks."),
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
    sd = canonical_state(state)
    try:
        observed = _observe_shapes(sd)
    except (IndexError, ValueError, ZeroDivisionError) as exc:
        raise CheckpointError(f"cannot infer the model size from the weights ({exc})") from exc
    size = match_preset(observed, "dfine")
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

    The result lacks only the official ``INPUT_SIZE_KEYS``.
    """
    state, config = read_hf_checkpoint(path)
    spec = hf_config_to_spec(config) if config is not None else spec_from_state_dict_shapes(state)
    return hf_state_dict_to_official(state, spec), spec


def read_transformers(path: Path, variant: str | None) -> LoadedCheckpoint:
    """A transformers checkpoint as a :class:`LoadedCheckpoint` in the official layout.

    ``variant`` ``None`` follows ``config.json`` (SiLU decoder: DEIM); class names come from
    ``id2label`` when it lists one name per class.
    """
    official, spec = load_hf_as_official(path)
    chosen = variant or spec.variant
    cfg = infer_config(official, variant=chosen)
    if variant is None and spec.variant == "deim":
        # transformers' SiLU option changes the decoder layers only; its heads stay ReLU.
        cfg = cfg.replace(mlp_activation=VARIANT_ACTIVATIONS["dfine"])
    for note in spec.notes:
        log.warning("%s: %s", path, note)
    names, ids = ModelInfo.default_names(cfg.num_classes)
    if spec.class_names and len(spec.class_names) == cfg.num_classes:
        names = list(spec.class_names)
        if cfg.num_classes != len(COCO_NAMES) or names != list(COCO_NAMES):
            ids = list(range(cfg.num_classes))
    info = ModelInfo(config=cfg, class_names=names, category_ids=ids, source_format="transformers")
    return LoadedCheckpoint(info=info, state_dict=official)
