"""Turn final-layer predictions into detections (the official D-FINE postprocessor)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert


def postprocess(
    logits: Tensor, boxes: Tensor, orig_sizes: Tensor, top_k: int = 300
) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k (query, class) pairs by sigmoid score; boxes scaled to original pixels.

    Args:
        logits: ``[N, Q, C]`` class logits.
        boxes: ``[N, Q, 4]`` cxcywh normalised to ``[0, 1]``.
        orig_sizes: ``[N, 2]`` or ``[1, 2]`` original image sizes as **(w, h)**.
        top_k: detections per image (``<= Q * C``).

    Returns:
        ``labels`` int64 ``[N, K]`` (0-based class index), ``boxes`` float ``[N, K, 4]`` xyxy
        in original-image pixels, ``scores`` float ``[N, K]`` sorted descending. A query may
        appear several times with different labels; no NMS, no threshold, no clipping.
    """
    num_classes = logits.shape[-1]
    xyxy = box_convert(boxes, in_fmt="cxcywh", out_fmt="xyxy")
    xyxy = xyxy * orig_sizes.to(xyxy.dtype).repeat(1, 2).unsqueeze(1)
    scores, index = torch.topk(torch.sigmoid(logits).flatten(1), top_k, dim=-1)
    # `index - index // C * C` instead of `%`: older TensorRT versions lack Mod.
    labels = index - torch.div(index, num_classes, rounding_mode="floor") * num_classes
    query = torch.div(index, num_classes, rounding_mode="floor")
    out_boxes = xyxy.gather(1, query.unsqueeze(-1).expand(-1, -1, 4))
    return labels, out_boxes, scores


class PostProcessor(nn.Module):
    """Module form of :func:`postprocess` (for the deploy module and export)."""

    def __init__(self, top_k: int = 300) -> None:
        super().__init__()
        self.top_k = top_k

    def forward(
        self, logits: Tensor, boxes: Tensor, orig_sizes: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        return postprocess(logits, boxes, orig_sizes, self.top_k)
