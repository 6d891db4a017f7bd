"""Contrastive denoising queries for training (DN-DETR / DINO, as RT-DETR and D-FINE use).

Ground-truth boxes are repeated in ``num_groups`` groups of positive and negative copies;
positives get small box noise (and some label flips), negatives larger noise. The decoder
must reconstruct positives and reject negatives. An attention mask keeps matching queries
from seeing the denoising ones and groups from seeing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

from dfine_cli.models.layers import inverse_sigmoid
from dfine_cli.models.outputs import DenoisingMeta


@dataclass
class DenoisingQueries:
    content: Tensor  # [B, D, C] class embeddings of the (noised) labels
    boxes_unact: Tensor  # [B, D, 4] logit of noised cxcywh boxes
    attn_mask: Tensor  # [D + Q, D + Q] bool, True = may not attend
    meta: DenoisingMeta


# Runs eagerly under torch.compile: its random draws are sized by the batch's target count,
# which changes every batch (dynamo cannot draw random tensors of a symbolic size), and it is
# cheap next to the network.
@torch.compiler.disable
def make_denoising_queries(
    targets: list[dict[str, Tensor]],
    num_classes: int,
    num_queries: int,
    class_embed: nn.Embedding,
    num_denoising: int = 100,
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> DenoisingQueries | None:
    """Build the denoising queries for a batch; ``None`` when there is nothing to denoise.

    Args:
        targets: per image ``labels`` int64 ``[n]`` and ``boxes`` ``[n, 4]`` cxcywh in [0, 1].
    """
    if num_denoising <= 0:
        return None
    counts = [len(t["labels"]) for t in targets]
    max_gt = max(counts) if counts else 0
    if max_gt == 0:
        return None
    device = targets[0]["labels"].device
    groups = max(1, num_denoising // max_gt)
    bs = len(targets)

    labels = torch.full((bs, max_gt), num_classes, dtype=torch.int64, device=device)
    boxes = torch.zeros((bs, max_gt, 4), device=device)
    valid = torch.zeros((bs, max_gt), dtype=torch.bool, device=device)
    for i, (t, n) in enumerate(zip(targets, counts)):
        if n:
            labels[i, :n] = t["labels"]
            boxes[i, :n] = t["boxes"]
            valid[i, :n] = True

    labels = labels.repeat(1, 2 * groups)
    boxes = boxes.repeat(1, 2 * groups, 1)
    valid = valid.repeat(1, 2 * groups)
    negative = torch.zeros((bs, max_gt * 2, 1), device=device)
    negative[:, max_gt:] = 1
    negative = negative.repeat(1, groups, 1)
    positive = (1 - negative).squeeze(-1) * valid
    positive_idx = torch.nonzero(positive)[:, 1]
    positive_indices = list(torch.split(positive_idx, [n * groups for n in counts]))
    total = int(max_gt * 2 * groups)

    def rand(shape: torch.Size) -> Tensor:
        return torch.rand(shape, device=device, generator=generator)

    if label_noise_ratio > 0:
        flip = rand(labels.shape) < (label_noise_ratio * 0.5)
        new_labels = torch.randint(
            0, num_classes, labels.shape, device=device, dtype=labels.dtype, generator=generator
        )
        labels = torch.where(flip & valid, new_labels, labels)

    if box_noise_scale > 0:
        xyxy = box_convert(boxes, "cxcywh", "xyxy")
        diff = (boxes[..., 2:] * 0.5).repeat(1, 1, 2) * box_noise_scale
        sign = torch.randint(0, 2, boxes.shape, device=device, generator=generator) * 2.0 - 1.0
        part = rand(boxes.shape)
        part = (part + 1.0) * negative + part * (1 - negative)
        xyxy = (xyxy + sign * part * diff).clamp(0.0, 1.0)
        boxes = box_convert(xyxy, "xyxy", "cxcywh")
        boxes = boxes.abs()
    boxes_unact = inverse_sigmoid(boxes)
    content = class_embed(labels)

    size = total + num_queries
    mask = torch.zeros((size, size), dtype=torch.bool, device=device)
    mask[total:, :total] = True  # matching queries cannot see denoising queries
    span = max_gt * 2
    for g in range(groups):
        lo, hi = span * g, span * (g + 1)
        mask[lo:hi, hi:total] = True  # nor later groups
        mask[lo:hi, :lo] = True  # nor earlier groups
    meta = DenoisingMeta(
        positive_indices=positive_indices, num_groups=groups, num_split=(total, num_queries)
    )
    return DenoisingQueries(content=content, boxes_unact=boxes_unact, attn_mask=mask, meta=meta)
