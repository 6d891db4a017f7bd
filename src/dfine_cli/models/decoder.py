"""D-FINE transformer decoder: query selection, FDR refinement layers, LQE, heads.

State-dict layout follows the official checkpoints (``decoder.*`` keys of a D-FINE model):
``decoder.layers`` / ``decoder.lqe_layers`` hold the layers, the heads sit beside them.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dfine_cli.models.deformable_attention import MSDeformableAttention
from dfine_cli.models.denoising import make_denoising_queries
from dfine_cli.models.fdr import distance_to_box, distribution_integral, weighting_function
from dfine_cli.models.layers import (
    MLP,
    Projection,
    inverse_sigmoid,
    make_activation,
    prior_logit,
)
from dfine_cli.models.outputs import DetectorOutput, HeadOutput


class Gate(nn.Module):
    """Gated fusion of the residual and the cross-attention output, then LayerNorm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(2 * dim, 2 * dim)
        self.norm = nn.LayerNorm(dim)
        nn.init.zeros_(self.gate.weight)
        nn.init.constant_(self.gate.bias, prior_logit(0.5))

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        g1, g2 = torch.sigmoid(self.gate(torch.cat([x1, x2], dim=-1))).chunk(2, dim=-1)
        return self.norm(g1 * x1 + g2 * x2)


class DecoderLayer(nn.Module):
    """Self-attention, deformable cross-attention with gating, feed-forward (post-norm)."""

    def __init__(
        self, dim: int, heads: int, ffn_dim: int, points_per_level: tuple[int, ...],
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = MSDeformableAttention(dim, heads, points_per_level)
        self.gateway = Gate(dim)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.activation = make_activation(activation)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm3 = nn.LayerNorm(dim)
        nn.init.xavier_uniform_(self.linear1.weight)
        nn.init.xavier_uniform_(self.linear2.weight)

    def forward(
        self,
        target: Tensor,
        reference: Tensor,
        values: list[Tensor] | Tensor,
        spatial_shapes: list[tuple[int, int]],
        attn_mask: Tensor | None,
        query_pos: Tensor,
    ) -> Tensor:
        q = target + query_pos
        attn, _ = self.self_attn(q, q, value=target, attn_mask=attn_mask, need_weights=False)
        target = self.norm1(target + attn)
        cross = self.cross_attn(target + query_pos, reference, values, spatial_shapes)
        target = self.gateway(target, cross)
        return self.norm3(target + self.linear2(self.activation(self.linear1(target))))


class LocalizationQuality(nn.Module):
    """LQE: adds a score from the top-k statistics of the edge distributions to the logits."""

    def __init__(self, k: int, hidden_dim: int, reg_max: int, activation: str = "relu") -> None:
        super().__init__()
        self.k = k
        self.reg_max = reg_max
        self.reg_conf = MLP(4 * (k + 1), hidden_dim, 1, 2, activation)
        nn.init.zeros_(self.reg_conf.last.weight)
        nn.init.zeros_(self.reg_conf.last.bias)

    def forward(self, logits: Tensor, corners: Tensor) -> Tensor:
        b, q, _ = corners.shape
        prob = F.softmax(corners.reshape(b, q, 4, self.reg_max + 1), dim=-1)
        top, _ = prob.topk(self.k, dim=-1)
        stat = torch.cat([top, top.mean(dim=-1, keepdim=True)], dim=-1)
        return logits + self.reg_conf(stat.reshape(b, q, -1))


class TransformerDecoder(nn.Module):
    """The stack of decoder layers and their LQE modules (official name ``decoder.decoder``)."""

    def __init__(self, layers: list[DecoderLayer], lqe_layers: list[LocalizationQuality]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.lqe_layers = nn.ModuleList(lqe_layers)


def generate_anchors(
    spatial_shapes: list[tuple[int, int]],
    grid_size: float = 0.05,
    eps: float = 0.01,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor]:
    """Anchor boxes for every feature-map cell, in logit space.

    Returns ``anchors [1, L, 4]`` (``logit`` of cxcywh, ``+inf`` where invalid) and
    ``valid [1, L, 1]`` (all four coordinates inside ``(eps, 1 - eps)``). Level ``l`` anchors
    have size ``grid_size * 2^l``.
    """
    per_level = []
    for level, (h, w) in enumerate(spatial_shapes):
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        xy = (torch.stack([xs, ys], dim=-1).to(dtype) + 0.5) / torch.tensor([w, h], dtype=dtype)
        wh = torch.full_like(xy, grid_size * 2.0**level)
        per_level.append(torch.cat([xy, wh], dim=-1).reshape(1, h * w, 4))
    anchors = torch.cat(per_level, dim=1).to(device)
    valid = ((anchors > eps) & (anchors < 1 - eps)).all(-1, keepdim=True)
    anchors = torch.log(anchors / (1 - anchors))
    anchors = torch.where(valid, anchors, torch.full_like(anchors, float("inf")))
    return anchors, valid


def _samples_memory_rows(memory: Tensor) -> bool:
    """Whether deformable attention samples the memory's rows (see
    :func:`~dfine_cli.models.deformable_attention.deformable_sample_rows`): float32 inference
    on the CPU, outside exports and ``torch.compile``, which keep ``grid_sample``."""
    return (
        memory.device.type == "cpu"
        and memory.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.jit.is_tracing()
        and not torch.onnx.is_in_onnx_export()
        and not torch.compiler.is_compiling()
    )


class DFineDecoder(nn.Module):
    """Query selection from encoder memory and iterative FDR refinement.

    Args:
        feat_channels: channels of the encoder maps (projected to ``hidden_dim`` if needed).
        num_classes: number of classes (the score heads' width).
        points_per_level: deformable sampling points per feature level.
        reg_max / reg_scale / up: FDR bins and weighting-function hyper-parameters.
    """

    up: Tensor
    reg_scale: Tensor

    def __init__(
        self,
        *,
        feat_channels: tuple[int, ...],
        num_classes: int,
        hidden_dim: int,
        heads: int,
        ffn_dim: int,
        num_layers: int,
        num_queries: int,
        points_per_level: tuple[int, ...],
        reg_max: int,
        reg_scale: float,
        up: float = 0.5,
        num_denoising: int = 100,
        label_noise_ratio: float = 0.5,
        box_noise_scale: float = 1.0,
        activation: str = "relu",
        mlp_activation: str = "relu",
    ) -> None:
        super().__init__()
        if len(points_per_level) != len(feat_channels):
            raise ValueError("points_per_level needs one entry per feature level")
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.heads = heads
        self.num_queries = num_queries
        self.num_layers = num_layers
        self.reg_max = reg_max
        self.num_denoising = num_denoising
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale
        self.register_buffer("up", torch.tensor([up], dtype=torch.float32))
        self.register_buffer("reg_scale", torch.tensor([reg_scale], dtype=torch.float32))

        self.input_proj = nn.ModuleList(
            nn.Identity() if c == hidden_dim else Projection(c, hidden_dim)
            for c in feat_channels
        )
        self.decoder = TransformerDecoder(
            [
                DecoderLayer(hidden_dim, heads, ffn_dim, points_per_level, activation)
                for _ in range(num_layers)
            ],
            [LocalizationQuality(4, 64, reg_max, mlp_activation) for _ in range(num_layers)],
        )
        # Row ``num_classes`` is the padding label; it exists in official checkpoints.
        self.denoising_class_embed = nn.Embedding(
            num_classes + 1, hidden_dim, padding_idx=num_classes
        )
        nn.init.normal_(self.denoising_class_embed.weight[:-1])
        self.query_pos_head = MLP(4, 2 * hidden_dim, hidden_dim, 2, mlp_activation)
        self.enc_output = nn.Sequential()
        self.enc_output.add_module("proj", nn.Linear(hidden_dim, hidden_dim))
        self.enc_output.add_module("norm", nn.LayerNorm(hidden_dim))
        self.enc_score_head = nn.Linear(hidden_dim, num_classes)
        self.enc_bbox_head = MLP(hidden_dim, hidden_dim, 4, 3, mlp_activation)
        self.dec_score_head = nn.ModuleList(
            nn.Linear(hidden_dim, num_classes) for _ in range(num_layers)
        )
        self.pre_bbox_head = MLP(hidden_dim, hidden_dim, 4, 3, mlp_activation)
        self.dec_bbox_head = nn.ModuleList(
            MLP(hidden_dim, hidden_dim, 4 * (reg_max + 1), 3, mlp_activation)
            for _ in range(num_layers)
        )
        self._reset_parameters()
        self._anchor_cache: dict[tuple[object, ...], tuple[Tensor, Tensor, Tensor]] = {}
        self._project_cache: Tensor | None = None

    def _reset_parameters(self) -> None:
        bias = prior_logit(0.01)
        nn.init.constant_(self.enc_score_head.bias, bias)
        for head in (self.enc_bbox_head, self.pre_bbox_head, *self.dec_bbox_head):
            assert isinstance(head, MLP)
            nn.init.zeros_(head.last.weight)
            nn.init.zeros_(head.last.bias)
        for cls_head in self.dec_score_head:
            assert isinstance(cls_head, nn.Linear)
            nn.init.constant_(cls_head.bias, bias)
        nn.init.xavier_uniform_(cast(nn.Linear, self.enc_output[0]).weight)
        nn.init.xavier_uniform_(self.query_pos_head.linear(0).weight)
        nn.init.xavier_uniform_(self.query_pos_head.linear(1).weight)

    def reset_class_heads(self, num_classes: int) -> list[str]:
        """Re-initialise every class-dependent tensor for ``num_classes`` classes.

        Returns the names of the re-created modules (for fine-tuning messages).
        """
        hidden = self.hidden_dim
        device = self.enc_score_head.weight.device
        self.num_classes = num_classes
        self.enc_score_head = nn.Linear(hidden, num_classes).to(device)
        self.dec_score_head = nn.ModuleList(
            nn.Linear(hidden, num_classes).to(device) for _ in range(self.num_layers)
        )
        self.denoising_class_embed = nn.Embedding(
            num_classes + 1, hidden, padding_idx=num_classes
        ).to(device)
        nn.init.normal_(self.denoising_class_embed.weight[:-1])
        bias = prior_logit(0.01)
        nn.init.constant_(self.enc_score_head.bias, bias)
        for cls_head in self.dec_score_head:
            assert isinstance(cls_head, nn.Linear)
            nn.init.constant_(cls_head.bias, bias)
        return ["enc_score_head", "dec_score_head", "denoising_class_embed"]

    # -- helpers ---------------------------------------------------------------------------
    def _project(self) -> Tensor:
        # Exports and torch.compile build it in the graph (a constant there), as training does.
        if self.training or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return weighting_function(self.reg_max, self.up, self.reg_scale)
        if self._project_cache is None:
            # Built outside inference mode so that the cached tensor can serve any later call.
            with torch.inference_mode(False), torch.no_grad():
                self._project_cache = weighting_function(self.reg_max, self.up, self.reg_scale)
        return self._project_cache

    def _anchors(self, shapes: list[tuple[int, int]], like: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(anchors, valid, invalid)``: ``invalid`` (indices of the cells outside the valid
        range, for masking in place) only in eager inference, where everything is cached per
        shape. torch.compile builds them in the graph: the cache lookup and the data-dependent
        indices would split it."""
        if self.training or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return (*generate_anchors(shapes, device=like.device, dtype=like.dtype), None)
        key = (tuple(shapes), like.device, like.dtype)
        cached = self._anchor_cache.get(key)
        if cached is None:
            with torch.inference_mode(False), torch.no_grad():
                anchors, valid = generate_anchors(shapes, device=like.device, dtype=like.dtype)
                # Indices worked out on the CPU (any device, the meta device included).
                cpu_valid = generate_anchors(shapes)[1]
                invalid = (~cpu_valid[0, :, 0]).nonzero().flatten().to(like.device)
            cached = (anchors, valid, invalid)
            self._anchor_cache[key] = cached
        return cached

    def train(self, mode: bool = True) -> DFineDecoder:
        self._project_cache = None
        return super().train(mode)

    # -- forward ---------------------------------------------------------------------------
    def forward(
        self, feats: list[Tensor], targets: list[dict[str, Tensor]] | None = None
    ) -> DetectorOutput | HeadOutput:
        """Training: a :class:`DetectorOutput`; evaluation: the final layer's predictions."""
        maps = [proj(f) for proj, f in zip(self.input_proj, feats)]
        shapes = [(int(m.shape[2]), int(m.shape[3])) for m in maps]
        memory = torch.cat([m.flatten(2).permute(0, 2, 1) for m in maps], dim=1)  # [B, L, C]
        batch = memory.shape[0]

        dn = None
        if self.training and self.num_denoising > 0 and targets is not None:
            dn = make_denoising_queries(
                targets, self.num_classes, self.num_queries, self.denoising_class_embed,
                self.num_denoising, self.label_noise_ratio, self.box_noise_scale,
            )

        # Query selection (encoder proposals)
        anchors, valid, invalid = self._anchors(shapes, memory)
        sample_rows = invalid is not None and _samples_memory_rows(memory)
        if invalid is None or torch.compiler.is_compiling():
            enc_memory = self.enc_output(valid.to(memory.dtype) * memory)
        elif sample_rows:
            # `memory` stays whole (it is the value maps): the invalid cells' rows are the
            # zero row's output (`enc_output` works row by row), written after.
            enc_memory = self.enc_output(memory)
            zero_row = self.enc_output(memory.new_zeros(1, 1, memory.shape[-1]))
            enc_memory.index_copy_(1, invalid, zero_row.expand(batch, invalid.numel(), -1))
        else:  # `memory` is this call's own concatenation: zero the few invalid cells in place
            enc_memory = self.enc_output(memory.index_fill_(1, invalid, 0.0))
        enc_logits = self.enc_score_head(enc_memory)
        _, topk = torch.topk(enc_logits.max(-1).values, self.num_queries, dim=-1)
        topk_memory = enc_memory.gather(1, topk.unsqueeze(-1).expand(-1, -1, enc_memory.shape[-1]))
        topk_anchors = anchors.expand(batch, -1, -1).gather(1, topk.unsqueeze(-1).expand(-1, -1, 4))
        enc_boxes_unact = self.enc_bbox_head(topk_memory) + topk_anchors
        encoder_outputs: list[HeadOutput] = []
        if self.training:
            topk_logits = enc_logits.gather(
                1, topk.unsqueeze(-1).expand(-1, -1, enc_logits.shape[-1])
            )
            encoder_outputs.append(HeadOutput(topk_logits, torch.sigmoid(enc_boxes_unact)))

        content = topk_memory.detach()
        ref_unact = enc_boxes_unact.detach()
        attn_mask = None
        if dn is not None:
            content = torch.cat([dn.content, content], dim=1)
            ref_unact = torch.cat([dn.boxes_unact, ref_unact], dim=1)
            attn_mask = dn.attn_mask

        # Value maps for deformable attention: per level [B*heads, head_dim, H, W], or
        # (inference on CPUs) the memory, whose rows are their pixels
        head_dim = self.hidden_dim // self.heads
        values: list[Tensor] | Tensor = memory if sample_rows else [
            m.reshape(batch * self.heads, head_dim, h, w) for m, (h, w) in zip(maps, shapes)
        ]
        layers = self._run_layers(content, ref_unact, values, shapes, attn_mask)
        if not self.training:
            return layers.final

        if dn is None:
            return DetectorOutput(
                layers=layers.outputs, pre=layers.pre, encoder=encoder_outputs,
                up=self.up, reg_scale=self.reg_scale,
            )
        split = list(dn.meta.num_split)

        # Under torch.compile the parts are copies: graph outputs that are views of one
        # split tensor make AOT autograd rebuild them with the sizes of another batch's
        # denoising groups (torch 2.14, dynamic shapes); eager keeps the views.
        copy = torch.compiler.is_compiling()

        def split_parts(t: Tensor) -> tuple[Tensor, ...]:
            parts = t.split(split, dim=1)
            return tuple(p.clone() for p in parts) if copy else parts

        def cut(h: HeadOutput) -> tuple[HeadOutput, HeadOutput]:
            parts = [split_parts(t) if t is not None else (None, None) for t in
                     (h.logits, h.boxes, h.corners, h.ref_points)]
            return (
                HeadOutput(parts[0][0], parts[1][0], parts[2][0], parts[3][0]),  # type: ignore[arg-type]
                HeadOutput(parts[0][1], parts[1][1], parts[2][1], parts[3][1]),  # type: ignore[arg-type]
            )

        dn_layers, main_layers = zip(*(cut(h) for h in layers.outputs))
        dn_pre, pre = cut(layers.pre)
        return DetectorOutput(
            layers=list(main_layers), pre=pre, encoder=encoder_outputs,
            up=self.up, reg_scale=self.reg_scale,
            dn_layers=list(dn_layers), dn_pre=dn_pre, dn_meta=dn.meta,
        )

    def _run_layers(
        self,
        content: Tensor,
        ref_unact: Tensor,
        values: list[Tensor] | Tensor,
        shapes: list[tuple[int, int]],
        attn_mask: Tensor | None,
    ) -> _LayerOutputs:
        project = self._project()
        output = content
        output_detach: Tensor | float = 0.0
        corners_undetach: Tensor | float = 0.0
        ref_detach = torch.sigmoid(ref_unact)
        ref_initial = ref_detach
        outputs: list[HeadOutput] = []
        pre: HeadOutput | None = None
        last = self.num_layers - 1
        for i, layer in enumerate(self.decoder.layers):
            query_pos = self.query_pos_head(ref_detach)
            output = layer(output, ref_detach.unsqueeze(2), values, shapes, attn_mask, query_pos)
            if i == 0:
                pre_boxes = torch.sigmoid(self.pre_bbox_head(output) + inverse_sigmoid(ref_detach))
                pre_logits = self.dec_score_head[0](output) if self.training else None
                pre = HeadOutput(pre_logits, pre_boxes)  # type: ignore[arg-type]
                ref_initial = pre_boxes.detach()
            corners = self.dec_bbox_head[i](output + output_detach) + corners_undetach
            boxes = distance_to_box(
                ref_initial, distribution_integral(corners, project, self.reg_max), self.reg_scale
            )
            if self.training or i == last:
                logits = self.decoder.lqe_layers[i](self.dec_score_head[i](output), corners)
                outputs.append(HeadOutput(logits, boxes, corners, ref_initial))
            corners_undetach = corners
            ref_detach = boxes.detach()
            output_detach = output.detach()
        assert pre is not None
        return _LayerOutputs(outputs, pre)


class _LayerOutputs:
    def __init__(self, outputs: list[HeadOutput], pre: HeadOutput) -> None:
        self.outputs = outputs
        self.pre = pre

    @property
    def final(self) -> HeadOutput:
        return self.outputs[-1]
