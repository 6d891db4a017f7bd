"""Loss terms of D-FINE and DEIM as pure functions.

Each function takes tensors and returns a tensor; none keeps state between calls. Matching
(which query supervises which ground-truth box) happens outside, in
:mod:`dfine_cli.engine.matcher`, and the weighting/naming of the terms in
:mod:`dfine_cli.engine.criterion`.

Conventions:

* boxes are ``cxcywh`` normalised to ``[0, 1]`` unless a name says ``xyxy``;
* ``logits`` are raw classification logits (sigmoid, no softmax), ``[B, Q, C]``;
* ``corners`` are the unnormalised FDR edge distributions, ``[..., 4 * (reg_max + 1)]`` with the
  four edges (left, top, right, bottom) in that order, each over ``reg_max + 1`` bins;
* ``num_boxes`` is the normaliser (number of target boxes, averaged over processes);
* half-precision predictions are upcast: every loss is computed in at least float32.

References:

* D-FINE: Peng et al., "D-FINE: Redefine Regression Task in DETRs as Fine-grained Distribution
  Refinement", ICLR 2025 (Eq. 1-3: FDR; Eq. 4-5: FGL; Eq. 6-7: DDF).
* DEIM: Huang et al., "DEIM: DETR with Improved Matching for Fast Convergence", CVPR 2025
  (Matchability-Aware Loss).
* VarifocalNet: Zhang et al., CVPR 2021 (varifocal loss), in the RT-DETR form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert

__all__ = [
    "BinTargets",
    "DistillationBalance",
    "box_to_distance",
    "decoupled_distillation_focal_loss",
    "dense_class_targets",
    "distance_to_bins",
    "fine_grained_localization_loss",
    "giou_box_loss",
    "l1_box_loss",
    "matchability_aware_loss",
    "paired_box_iou",
    "paired_generalized_box_iou",
    "varifocal_loss",
]


def _at_least_float32(tensor: Tensor) -> Tensor:
    """Upcast half-precision inputs: sums over ~10^4 terms and near-zero KLs need float32."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


# --------------------------------------------------------------------------------------------
# FDR targets: the inverse of the distance-to-box decoding, and two-bin soft labels
# --------------------------------------------------------------------------------------------


def box_to_distance(ref_points: Tensor, boxes_xyxy: Tensor, reg_scale: Tensor) -> Tensor:
    """Edge offsets of ``boxes_xyxy`` relative to ``ref_points``: the inverse of FDR's decoding.

    FDR decodes edge offsets ``d`` into a box around the reference ``(x, y, w, h)`` as
    ``x1 = x - (c / 2 + d_left) * w / c`` (and likewise for the other edges; paper Eq. 1,
    :func:`dfine_cli.models.fdr.distance_to_box`, with ``c = |reg_scale|``). This returns ``d``
    for a given box, in the same units as W(n) (Eq. 3).

    Args:
        ref_points: Tensor[..., 4], reference boxes ``cxcywh``.
        boxes_xyxy: Tensor[..., 4], target boxes ``xyxy`` (same leading shape).
        reg_scale: ``[1]`` tensor ``c``.

    Returns:
        Tensor[..., 4]: offsets (left, top, right, bottom); 0 puts the edge at ``c / 2`` units of
        ``w / c`` (i.e. half the reference size) from the centre.
    """
    ref_points = _at_least_float32(ref_points)
    c = reg_scale.reshape(-1)[0].abs().to(ref_points.dtype)
    cx, cy, w, h = ref_points.unbind(-1)
    x1, y1, x2, y2 = boxes_xyxy.to(ref_points.dtype).unbind(-1)
    unit_w = w / c + 1e-16
    unit_h = h / c + 1e-16
    half = 0.5 * c
    left = (cx - x1) / unit_w - half
    top = (cy - y1) / unit_h - half
    right = (x2 - cx) / unit_w - half
    bottom = (y2 - cy) / unit_h - half
    return torch.stack([left, top, right, bottom], dim=-1)


@dataclass(frozen=True)
class BinTargets:
    """Soft two-bin labels of continuous edge offsets (paper Eq. 5).

    The offset ``phi`` lies between ``W(left)`` and ``W(left + 1)``; ``weight_left`` and
    ``weight_right`` are its linear-interpolation weights on these two bins (they sum to 1).
    Offsets beyond the range of W put all weight on the outermost bin.
    """

    left: Tensor  # int64 [...], in [0, reg_max - 1]
    weight_left: Tensor  # float [...]
    weight_right: Tensor  # float [...]


def distance_to_bins(distances: Tensor, bin_values: Tensor) -> BinTargets:
    """Translate continuous edge offsets into two-bin soft labels (paper Eq. 5).

    With ``n_l`` the last bin such that ``W(n_l) <= phi`` and ``n_r = n_l + 1``::

        w_right = |phi - W(n_l)| / (|phi - W(n_l)| + |W(n_r) - phi|),   w_left = 1 - w_right.

    ``phi < W(0)`` gives ``n_l = 0, w_left = 1``; ``phi >= W(reg_max)`` gives
    ``n_l = reg_max - 1, w_right = 1`` (all weight on the last bin), as in the official code.

    Args:
        distances: Tensor[...], offsets ``phi`` (typically ``[M, 4]`` from :func:`box_to_distance`).
        bin_values: Tensor[reg_max + 1], W(n) from
            :func:`dfine_cli.models.fdr.weighting_function`.

    Returns:
        :class:`BinTargets` with the shape of ``distances``; no gradient flows through it.
    """
    distances = distances.detach().to(bin_values.dtype)
    reg_max = bin_values.numel() - 1
    # number of bins with W(n) <= phi, minus one: -1 below the range, reg_max at or above it
    index = torch.searchsorted(bin_values, distances.contiguous(), right=True) - 1
    left = index.clamp(0, reg_max - 1)
    left_value = bin_values[left]
    right_value = bin_values[left + 1]
    to_left = (distances - left_value).abs()
    to_right = (right_value - distances).abs()
    weight_right = to_left / (to_left + to_right)
    weight_right = torch.where(index < 0, torch.zeros_like(weight_right), weight_right)
    weight_right = torch.where(index >= reg_max, torch.ones_like(weight_right), weight_right)
    return BinTargets(left=left, weight_left=1.0 - weight_right, weight_right=weight_right)


# --------------------------------------------------------------------------------------------
# Classification: varifocal loss (D-FINE) and matchability-aware loss (DEIM)
# --------------------------------------------------------------------------------------------


def dense_class_targets(
    logits: Tensor,
    batch_idx: Tensor,
    query_idx: Tensor,
    labels: Tensor,
    scores: Tensor,
) -> tuple[Tensor, Tensor]:
    """Scatter per-match targets into dense ``[B, Q, C]`` tensors.

    Args:
        logits: Tensor[B, Q, C], only its shape, dtype and device are used.
        batch_idx, query_idx: int64 Tensor[M], the matched (image, query) pairs (unique).
        labels: int64 Tensor[M], the class of the ground-truth box of each match.
        scores: Tensor[M], the soft target of each match (the IoU of the matched pair).

    Returns:
        ``(target_scores, positive)``, both Tensor[B, Q, C] in the dtype of ``logits`` (at least
        float32):
        ``positive`` is 1 at (image, query, label) of every match and 0 elsewhere;
        ``target_scores`` holds ``scores`` at the same places and 0 elsewhere.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    positive = torch.zeros_like(logits, dtype=dtype)
    target_scores = torch.zeros_like(logits, dtype=dtype)
    positive[batch_idx, query_idx, labels] = 1.0
    target_scores[batch_idx, query_idx, labels] = scores.detach().to(dtype)
    return target_scores, positive


def _sum_over_queries(loss: Tensor, num_boxes: float) -> Tensor:
    # ``mean(1) * Q`` is a sum over queries; written like the official code so that float32
    # results agree to the last bits.
    return loss.mean(1).sum() * loss.shape[1] / num_boxes


def varifocal_loss(
    logits: Tensor,
    target_scores: Tensor,
    positive: Tensor,
    num_boxes: float,
    alpha: float = 0.75,
    gamma: float = 2.0,
) -> Tensor:
    """Varifocal loss (VarifocalNet), IoU-aware classification as used by RT-DETR and D-FINE.

    With ``p = sigmoid(x)`` (detached) and the soft target ``q`` (IoU on matched pairs, else 0)::

        weight = alpha * p ** gamma * (1 - positive) + q
        loss   = sum(weight * BCE(x, q)) / num_boxes

    Args:
        logits: Tensor[B, Q, C] raw logits ``x``.
        target_scores: Tensor[B, Q, C], ``q`` (see :func:`dense_class_targets`).
        positive: Tensor[B, Q, C], 1 on matched (query, class) pairs.
        num_boxes: normaliser (number of ground-truth boxes).
        alpha, gamma: focal weighting of the negatives (0.75 and 2 officially).

    Returns:
        Scalar tensor.
    """
    logits = _at_least_float32(logits)
    pred_score = logits.sigmoid().detach()
    weight = alpha * pred_score.pow(gamma) * (1 - positive) + target_scores
    loss = F.binary_cross_entropy_with_logits(
        logits, target_scores, weight=weight, reduction="none"
    )
    return _sum_over_queries(loss, num_boxes)


def matchability_aware_loss(
    logits: Tensor,
    target_scores: Tensor,
    positive: Tensor,
    num_boxes: float,
    gamma: float = 1.5,
    alpha: float | None = None,
) -> Tensor:
    """Matchability-Aware Loss (DEIM, Sec. 3.3), as the official DEIM code computes it.

    With ``p = sigmoid(x)`` (detached) and ``q`` the IoU on matched pairs (0 elsewhere)::

        target = q ** gamma
        weight = positive + (1 - positive) * p ** gamma    (times ``alpha`` when given)
        loss   = sum(weight * BCE(x, target)) / num_boxes

    Unlike VFL the positives are weighted 1 (not ``q``), so low-IoU matches still receive a
    full-strength (but low-target) signal.

    Args:
        logits: Tensor[B, Q, C] raw logits ``x``.
        target_scores: Tensor[B, Q, C], ``q`` (see :func:`dense_class_targets`).
        positive: Tensor[B, Q, C], 1 on matched (query, class) pairs.
        num_boxes: normaliser (number of ground-truth boxes).
        gamma: exponent of the target and of the negative weight (1.5 officially).
        alpha: optional factor on the negative weight (``mal_alpha``; unset officially).

    Returns:
        Scalar tensor.
    """
    logits = _at_least_float32(logits)
    pred_score = logits.sigmoid().detach()
    target = target_scores.pow(gamma)
    negative_weight = pred_score.pow(gamma) * (1 - positive)
    if alpha is not None:
        negative_weight = alpha * negative_weight
    weight = negative_weight + positive
    loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight, reduction="none")
    return _sum_over_queries(loss, num_boxes)


# --------------------------------------------------------------------------------------------
# Box regression on matched pairs
# --------------------------------------------------------------------------------------------


def _paired_iou_and_enclosing(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """IoU, union area and enclosing-box area of corresponding ``cxcywh`` boxes, each ``[M]``."""
    a = box_convert(boxes1, "cxcywh", "xyxy")
    b = box_convert(boxes2, "cxcywh", "xyxy")
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    overlap = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0)
    inter = overlap[:, 0] * overlap[:, 1]
    union = area_a + area_b - inter
    hull = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0)
    return inter / union, union, hull[:, 0] * hull[:, 1]


def paired_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of corresponding boxes, ``cxcywh``.

    Equal to ``torchvision.ops.box_iou(xyxy1, xyxy2).diagonal()``, in O(M) instead of O(M^2)
    (denoising makes M reach the thousands).

    Args:
        boxes1, boxes2: Tensor[M, 4] ``cxcywh``.

    Returns:
        Tensor[M] IoU in ``[0, 1]`` (NaN for two empty boxes, as ``box_iou``).
    """
    return _paired_iou_and_enclosing(boxes1, boxes2)[0]


def paired_generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU of corresponding boxes, ``cxcywh`` (Rezatofighi et al., CVPR 2019).

    ``GIoU = IoU - (|C| - |A u B|) / |C|`` with ``C`` the smallest enclosing box; equal to
    ``torchvision.ops.generalized_box_iou(xyxy1, xyxy2).diagonal()``, in O(M). (The official
    losses use that exact form; ``torchvision.ops.generalized_box_iou_loss`` adds ``1e-7`` to
    the areas, which visibly biases tiny boxes: a perfect 1-pixel box at 640 px would keep a
    loss of 0.04.)

    Args:
        boxes1, boxes2: Tensor[M, 4] ``cxcywh``.

    Returns:
        Tensor[M] in ``[-1, 1]``.
    """
    iou, union, enclosing = _paired_iou_and_enclosing(boxes1, boxes2)
    return iou - (enclosing - union) / enclosing


def l1_box_loss(pred_boxes: Tensor, target_boxes: Tensor, num_boxes: float) -> Tensor:
    """L1 distance of matched boxes (``cxcywh``), summed and divided by ``num_boxes``.

    Args:
        pred_boxes, target_boxes: Tensor[M, 4] ``cxcywh``.
    """
    return F.l1_loss(pred_boxes, target_boxes, reduction="sum") / num_boxes


def giou_box_loss(pred_boxes: Tensor, target_boxes: Tensor, num_boxes: float) -> Tensor:
    """``1 - GIoU`` of matched boxes (``cxcywh``), summed and divided by ``num_boxes``.

    Args:
        pred_boxes, target_boxes: Tensor[M, 4] ``cxcywh``.
    """
    return (1 - paired_generalized_box_iou(pred_boxes, target_boxes)).sum() / num_boxes


# --------------------------------------------------------------------------------------------
# FDR / GO-LSD: fine-grained localisation and decoupled distillation focal losses
# --------------------------------------------------------------------------------------------


def fine_grained_localization_loss(
    corners: Tensor,
    targets: BinTargets,
    ious: Tensor,
    num_boxes: float,
) -> Tensor:
    """Fine-Grained Localization loss (D-FINE paper, Eq. 4).

    For every matched box and edge, the cross-entropy of the predicted distribution with the two
    bins around the ground-truth offset, weighted by their interpolation weights (Eq. 5) and by
    the IoU of the predicted box with its target::

        L_FGL = sum_boxes IoU * sum_edges (w_l * CE(P, n_l) + w_r * CE(P, n_r)) / num_boxes

    Args:
        corners: Tensor[M, 4 * (reg_max + 1)] (or ``[M, 4, reg_max + 1]``), unnormalised
            distributions of the matched queries.
        targets: :class:`BinTargets` of shape ``[M, 4]``.
        ious: Tensor[M], IoU of each matched prediction with its target (detached here).
        num_boxes: normaliser.

    Returns:
        Scalar tensor.
    """
    num_bins = corners.shape[-1] if corners.dim() == 3 else corners.shape[-1] // 4
    logits = _at_least_float32(corners).reshape(-1, num_bins)
    left = targets.left.reshape(-1)
    loss = F.cross_entropy(logits, left, reduction="none") * targets.weight_left.reshape(-1)
    right_loss = F.cross_entropy(logits, left + 1, reduction="none")
    loss = loss + right_loss * targets.weight_right.reshape(-1)
    edge_weight = ious.detach().to(loss.dtype).repeat_interleave(4)
    return (loss * edge_weight).sum() / num_boxes


@dataclass(frozen=True)
class DistillationBalance:
    """How DDF balances matched against unmatched queries (D-FINE paper, Eq. 7).

    The matched and unmatched KL means are mixed with weights proportional to
    ``sqrt(num_matched)`` and ``sqrt(num_unmatched)`` (counts of edges or of queries: only the
    ratio matters).
    """

    num_matched: float
    num_unmatched: float

    @classmethod
    def from_mask(cls, matched: Tensor) -> DistillationBalance:
        """Balance of a ``[B, Q]`` boolean mask of matched queries."""
        num_matched = int(matched.sum())
        return cls(
            num_matched=float(num_matched), num_unmatched=float(matched.numel() - num_matched)
        )


def decoupled_distillation_focal_loss(
    student_corners: Tensor,
    teacher_corners: Tensor,
    weights: Tensor,
    matched: Tensor,
    temperature: float = 5.0,
    balance: DistillationBalance | None = None,
) -> Tensor:
    """Decoupled Distillation Focal loss of GO-LSD (D-FINE paper, Eq. 6-7).

    Distils the final layer's edge distributions (teacher) into an earlier layer's (student)::

        KL_k   = T^2 * KL( softmax(teacher_k / T) || softmax(student_k / T) )     per query & edge
        L_m    = mean over matched (query, edge) of  w_k * KL_k     (w_k = IoU with its target)
        L_u    = mean over unmatched (query, edge) of  w_k * KL_k   (w_k = teacher confidence)
        L_DDF  = (sqrt(K_m) * L_m + sqrt(K_u) * L_u) / (sqrt(K_m) + sqrt(K_u))

    where ``K_m``/``K_u`` are the matched/unmatched counts of ``balance`` (of ``matched`` by
    default). An empty group contributes 0.

    Args:
        student_corners: Tensor[B, Q, 4 * (reg_max + 1)], the layer's distributions.
        teacher_corners: same shape, the final layer's distributions (detached here).
        weights: Tensor[B, Q], the per-query weight ``w`` (detached here).
        matched: bool Tensor[B, Q], queries matched to a ground-truth box.
        temperature: distillation temperature ``T`` (5 officially).
        balance: counts for the decoupled weighting; defaults to those of ``matched``.

    Returns:
        Scalar tensor.
    """
    num_bins = student_corners.shape[-1] // 4
    student = _at_least_float32(student_corners).reshape(-1, num_bins)
    teacher = _at_least_float32(teacher_corners.detach()).reshape(-1, num_bins)
    kl = F.kl_div(
        F.log_softmax(student / temperature, dim=1),
        F.softmax(teacher / temperature, dim=1),
        reduction="none",
    ).sum(-1)
    edge_weights = weights.detach().reshape(-1).repeat_interleave(4)
    loss = edge_weights * (temperature**2) * kl
    edge_matched = matched.reshape(-1).repeat_interleave(4)

    if balance is None:
        balance = DistillationBalance.from_mask(matched)
    zero = loss.new_zeros(())
    loss_matched = loss[edge_matched].mean() if bool(edge_matched.any()) else zero
    loss_unmatched = loss[~edge_matched].mean() if bool((~edge_matched).any()) else zero
    weight_matched = balance.num_matched**0.5
    weight_unmatched = balance.num_unmatched**0.5
    return (loss_matched * weight_matched + loss_unmatched * weight_unmatched) / (
        weight_matched + weight_unmatched
    )
