"""One-to-one assignment of queries to ground-truth boxes.

* :class:`HungarianMatcher` — the DETR bipartite matching with D-FINE's costs (focal
  classification cost, L1 and GIoU box costs), solved by ``scipy.optimize.linear_sum_assignment``.
* :func:`union_matches` — GO-LSD's union of the matches of all decoder layers, the pre-head and
  the encoder proposals (``indices_go`` in the official code), so that every query matched by
  some layer receives box and localisation supervision in all of them.
* :func:`denoising_matches` — the fixed assignment of denoising queries to the boxes they were
  made from.

A match is a pair ``(query_idx, target_idx)`` of int64 tensors of equal length, one per image;
``query_idx[k]`` is supervised by ground-truth box ``target_idx[k]`` of that image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou

__all__ = [
    "HungarianMatcher",
    "Match",
    "denoising_matches",
    "focal_class_cost",
    "matched_pairs",
    "union_matches",
]

Match = tuple[Tensor, Tensor]
"""``(query_idx, target_idx)``: int64 tensors of equal length for one image."""

Target = Mapping[str, Tensor]
"""A ground-truth dict: ``labels`` int64 ``[n]``, ``boxes`` float ``[n, 4]`` cxcywh in [0, 1]."""


def focal_class_cost(probs: Tensor, labels: Tensor, alpha: float, gamma: float) -> Tensor:
    """Classification cost of assigning queries to targets, the focal-loss difference.

    The cost of query ``i`` for a target of class ``c`` with ``p = probs[i, c]`` is the focal loss
    of ``p`` as a positive minus its focal loss as a negative::

        alpha * (1 - p) ** gamma * -log(p + 1e-8)  -  (1 - alpha) * p ** gamma * -log(1 - p + 1e-8)

    Args:
        probs: Tensor[N, C] sigmoid class probabilities.
        labels: int64 Tensor[M] target classes.
        alpha, gamma: focal parameters (0.25 and 2 in every official configuration).

    Returns:
        Tensor[N, M].
    """
    p = probs[:, labels]
    negative = (1 - alpha) * (p**gamma) * (-(1 - p + 1e-8).log())
    positive = alpha * ((1 - p) ** gamma) * (-(p + 1e-8).log())
    return positive - negative


@dataclass(frozen=True)
class HungarianMatcher:
    """Optimal one-to-one matching of predictions and targets, per image.

    Cost: ``class_weight * focal_class_cost + bbox_weight * L1(cxcywh) - giou_weight * GIoU``;
    defaults are the official D-FINE/DEIM values (``cost_class 2, cost_bbox 5, cost_giou 2``,
    ``alpha 0.25, gamma 2``). NaN costs are replaced by 1 before solving (as DEIM does), so
    degenerate predictions cannot make the solver fail.
    """

    class_weight: float = 2.0
    bbox_weight: float = 5.0
    giou_weight: float = 2.0
    alpha: float = 0.25
    gamma: float = 2.0

    def __post_init__(self) -> None:
        if self.class_weight == 0 and self.bbox_weight == 0 and self.giou_weight == 0:
            raise ValueError("at least one matching cost weight must be non-zero")

    def cost_matrix(
        self, logits: Tensor, boxes: Tensor, labels: Tensor, target_boxes: Tensor
    ) -> Tensor:
        """Matching cost of every prediction against every target.

        Args:
            logits: Tensor[N, C] raw class logits.
            boxes: Tensor[N, 4] predicted boxes, cxcywh.
            labels: int64 Tensor[M] target classes.
            target_boxes: Tensor[M, 4] target boxes, cxcywh.

        Returns:
            Tensor[N, M].
        """
        cost_class = focal_class_cost(logits.sigmoid(), labels, self.alpha, self.gamma)
        cost_bbox = torch.cdist(boxes, target_boxes, p=1)
        cost_giou = -generalized_box_iou(
            box_convert(boxes, "cxcywh", "xyxy"), box_convert(target_boxes, "cxcywh", "xyxy")
        )
        return (
            self.bbox_weight * cost_bbox
            + self.class_weight * cost_class
            + self.giou_weight * cost_giou
        )

    @torch.no_grad()
    def __call__(self, logits: Tensor, boxes: Tensor, targets: Sequence[Target]) -> list[Match]:
        """Match the queries of each image to its targets.

        Args:
            logits: Tensor[B, Q, C] raw class logits.
            boxes: Tensor[B, Q, 4] predicted boxes, cxcywh.
            targets: B dicts with ``labels`` ``[n_b]`` and ``boxes`` ``[n_b, 4]`` (cxcywh).

        Returns:
            B matches ``(query_idx, target_idx)`` of length ``min(Q, n_b)``, on the device of
            ``logits``, sorted by query index (the order ``linear_sum_assignment`` returns).
        """
        batch_size, num_queries = logits.shape[:2]
        if len(targets) != batch_size:
            raise ValueError(f"{len(targets)} targets for a batch of {batch_size}")
        # costs in at least float32: half-precision costs tie too easily (and CPU cdist lacks them)
        dtype = torch.promote_types(boxes.dtype, torch.float32)
        sizes = [len(t["boxes"]) for t in targets]
        labels = torch.cat([t["labels"] for t in targets])
        target_boxes = torch.cat([t["boxes"] for t in targets]).to(dtype)
        cost = self.cost_matrix(
            logits.flatten(0, 1).to(dtype), boxes.flatten(0, 1).to(dtype), labels, target_boxes
        )
        cost = cost.view(batch_size, num_queries, len(labels)).cpu()
        cost = torch.nan_to_num(cost, nan=1.0)

        matches: list[Match] = []
        for image, image_cost in enumerate(cost.split(sizes, dim=-1)):
            rows, cols = linear_sum_assignment(image_cost[image].numpy())
            matches.append(
                (
                    torch.as_tensor(rows, dtype=torch.int64, device=logits.device),
                    torch.as_tensor(cols, dtype=torch.int64, device=logits.device),
                )
            )
        return matches


def union_matches(match_sets: Sequence[Sequence[Match]]) -> list[Match]:
    """GO-LSD's union of several matchings: one target per query, by majority (``indices_go``).

    For each image, all ``(query, target)`` pairs of all matchings are pooled. Every query that
    appears keeps the target it was paired with most often; ties go to the lower target index
    (the official code breaks ties by an unstable sort; a stable order makes the result
    independent of device and sort implementation). A target may end up with several queries.

    Args:
        match_sets: one matching per prediction head (final layer first, then the auxiliary
            layers, the pre-head and the encoder, as officially), each a list of B matches.

    Returns:
        B matches ``(query_idx, target_idx)``, ordered by decreasing vote count, then by query
        and target index (the order of the official implementation when it has no ties).
    """
    if not match_sets:
        raise ValueError("union_matches needs at least one matching")
    batch_size = len(match_sets[0])
    if any(len(matches) != batch_size for matches in match_sets):
        raise ValueError("all matchings must cover the same number of images")

    result: list[Match] = []
    for image in range(batch_size):
        queries = torch.cat([matches[image][0] for matches in match_sets])
        targets = torch.cat([matches[image][1] for matches in match_sets])
        pairs = torch.stack([queries, targets], dim=1)
        unique_pairs, counts = torch.unique(pairs, dim=0, return_counts=True)  # lexicographic
        order = torch.sort(counts, descending=True, stable=True).indices
        ranked = unique_pairs[order]
        # keep the first (best-ranked) pair of every query
        query_ranked = ranked[:, 0]
        position = torch.arange(len(ranked), device=ranked.device)
        num_slots = int(query_ranked.max()) + 1 if len(ranked) else 0
        first_position = torch.full(
            (num_slots,), len(ranked), dtype=position.dtype, device=position.device
        ).scatter_reduce(0, query_ranked, position, reduce="amin")
        kept = ranked[first_position[query_ranked] == position]
        result.append((kept[:, 0].contiguous(), kept[:, 1].contiguous()))
    return result


def denoising_matches(
    positive_indices: Sequence[Tensor], num_groups: int, num_targets: Sequence[int]
) -> list[Match]:
    """Assignment of the positive denoising queries to the boxes they were made from.

    Denoising groups repeat the targets of an image in order, so the ``k``-th positive query of
    an image (group-major) is paired with target ``k mod n``.

    Args:
        positive_indices: per image, int64 Tensor[num_groups * n] of positive query indices,
            group-major (``DenoisingMeta.positive_indices``).
        num_groups: number of denoising groups.
        num_targets: per image, the number of targets ``n``.

    Returns:
        B matches ``(query_idx, target_idx)``.
    """
    matches: list[Match] = []
    for positives, count in zip(positive_indices, num_targets, strict=True):
        if count == 0:
            empty = torch.zeros(0, dtype=torch.int64, device=positives.device)
            matches.append((empty, empty.clone()))
            continue
        target_idx = torch.arange(count, dtype=torch.int64, device=positives.device).repeat(
            num_groups
        )
        if len(positives) != len(target_idx):
            raise ValueError(
                f"{len(positives)} positive denoising queries for {count} targets x {num_groups} groups"
            )
        matches.append((positives.to(torch.int64), target_idx))
    return matches


def matched_pairs(matches: Sequence[Match]) -> tuple[Tensor, Tensor]:
    """Flatten per-image matches into ``(batch_idx, query_idx)`` index tensors ``[M]``.

    Indexing a ``[B, Q, ...]`` prediction tensor with the result selects the matched queries in
    image order, aligned with ``torch.cat([t[key][target_idx] for each image])``.
    """
    batch_idx = torch.cat(
        [torch.full_like(query, image) for image, (query, _) in enumerate(matches)]
    )
    query_idx = torch.cat([query for query, _ in matches])
    return batch_idx, query_idx
