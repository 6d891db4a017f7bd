"""Key names of transformers' D-FINE checkpoints, renamed to the official state-dict layout.

The weights of ``transformers.DFineForObjectDetection`` are the official D-FINE weights under
other names. What differs between the two layouts:

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

Official keys a transformers checkpoint never holds are the input-size ones
(:data:`~dfine_cli.checkpoints.official.INPUT_SIZE_KEYS`); the loader takes them from the
built model. The backbone BatchNorm counters (``num_batches_tracked``) that N/S/M keep but
HF's frozen backbone BatchNorm lacks are produced as 0, the value of a freshly built model
(official checkpoints also hold 0).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from dfine_cli.checkpoints.infer import UP, HFModelSpec
from dfine_cli.errors import CheckpointError
from dfine_cli.models.presets import ModelConfig

_SHOWN = 5  # how many offending keys an error message lists

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


def canonical_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` under the names ``save_pretrained`` writes (any release's names accepted;
    tied duplicates checked equal and merged)."""
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
    (N, S, M). The result lacks only the official ``INPUT_SIZE_KEYS``.

    Raises:
        CheckpointError: unknown or incomplete keys, or weights that contradict ``spec``
            (number of classes, ``reg_scale``, ``up``).
    """
    cfg = spec.model_config()
    canonical = canonical_state(state)
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
    if up.numel() != 1 or not math.isclose(float(up), UP, abs_tol=1e-6):
        raise CheckpointError(f"weights have up={up.flatten().tolist()} but {name} uses {UP}")
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
