"""Training criterion of D-FINE (VFL + boxes + FGL/DDF) and of DEIM (MAL instead of VFL).

The criterion matches every prediction head to the ground truth, computes the loss terms of
:mod:`dfine_cli.engine.losses` on the matches, multiplies them by their weights and returns them
under the names the official implementations use::

    loss_{vfl|mal}, loss_bbox, loss_giou, loss_fgl       final decoder layer
    ..._aux_{i} (+ loss_ddf_aux_{i})                     earlier decoder layers i = 0 .. L-2
    loss_{vfl|mal}_pre, loss_bbox_pre, loss_giou_pre     pre-refinement head of the first layer
    ..._enc_{i}                                          encoder top-k proposals
    ..._dn_{i}, ..._dn_pre                               denoising queries (when present)

Supervision, as in the official code (``use_union_set``, D-FINE always, DEIM by default):

* classification (VFL/MAL) of each head uses that head's own Hungarian matching, normalised by
  the number of target boxes;
* boxes (L1, GIoU) and localisation (FGL, DDF) of every non-denoising head use the GO-LSD union
  of all heads' matchings (:func:`~dfine_cli.engine.matcher.union_matches`), normalised by the
  size of that union; encoder heads get no FGL/DDF (they predict no distributions);
* DDF distils the final layer (of the matching or of the denoising queries) into each earlier
  layer; the final layer itself has no DDF term;
* denoising heads use the fixed denoising assignment for every term, normalised by
  ``num_boxes * num_groups``, and their DDF reuses the matched/unmatched balance of the
  non-denoising queries (as the official code does).

Nothing is cached between calls.

Where this differs from the official code (none of it changes the official N-size losses):

* the GO-LSD union breaks vote ties by the lower target index (officially: an unstable sort);
* FGL targets are computed for each head's own box matching; officially they are computed once
  per call and reused, which is only equivalent while every head shares the union matching;
* a class-agnostic encoder head (one logit) is matched and supervised with every target as
  class 0; officially only its loss sees class 0, and its matching would fail;
* matching costs and all losses are computed in at least float32, whatever the predictions' dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torchvision.ops import box_convert

from dfine_cli.engine.losses import (
    DistillationBalance,
    box_to_distance,
    decoupled_distillation_focal_loss,
    dense_class_targets,
    distance_to_bins,
    fine_grained_localization_loss,
    giou_box_loss,
    l1_box_loss,
    matchability_aware_loss,
    paired_box_iou,
    varifocal_loss,
)
from dfine_cli.engine.matcher import (
    HungarianMatcher,
    Match,
    denoising_matches,
    matched_pairs,
    union_matches,
)
from dfine_cli.models.fdr import weighting_function
from dfine_cli.models.outputs import DetectorOutput, HeadOutput

__all__ = [
    "ClassLoss",
    "DFineCriterion",
    "LossOutput",
    "LossWeights",
    "build_criterion",
    "deim_criterion",
    "dfine_criterion",
]

ClassLoss = Literal["vfl", "mal"]
Target = Mapping[str, Tensor]


@dataclass(frozen=True)
class LossWeights:
    """Multipliers of the loss terms (official: ``vfl|mal 1, bbox 5, giou 2, fgl 0.15, ddf 1.5``)."""

    classification: float = 1.0  # loss_vfl (D-FINE) or loss_mal (DEIM)
    bbox: float = 5.0
    giou: float = 2.0
    fgl: float = 0.15
    ddf: float = 1.5


@dataclass
class LossOutput:
    """Weighted loss terms under their official names, and their sum."""

    terms: dict[str, Tensor]  # name -> weighted scalar, in the official order
    total: Tensor  # sum of the terms

    def as_floats(self) -> dict[str, float]:
        """The terms as Python floats (for logging; synchronises with the device)."""
        return {name: float(value.detach()) for name, value in self.terms.items()}


@dataclass(frozen=True)
class _Supervision:
    """Which matches and normalisers supervise one head."""

    class_matches: list[Match]
    box_matches: list[Match]
    num_boxes: float  # normaliser of the classification term
    num_box_matches: float  # normaliser of the box and localisation terms
    teacher: HeadOutput | None = None  # distillation teacher (DDF), if any
    balance: DistillationBalance | None = None  # DDF balance; default: that of box_matches


def _mean_over_processes(count: float, device: torch.device) -> float:
    """``count`` averaged over the processes of the default group, clamped to at least 1."""
    value = torch.as_tensor([count], dtype=torch.float, device=device)
    world_size = 1
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value)
        world_size = dist.get_world_size()
    return float(torch.clamp(value / world_size, min=1).item())


def _gather_targets(targets: Sequence[Target], matches: Sequence[Match], key: str) -> Tensor:
    """Target rows ``targets[b][key][target_idx]`` of all matches, in image order."""
    return torch.cat(
        [t[key][target_idx] for t, (_, target_idx) in zip(targets, matches, strict=True)]
    )


def _matched_mask(
    matches: Sequence[Match], batch_size: int, num_queries: int, device: torch.device
) -> Tensor:
    mask = torch.zeros(batch_size, num_queries, dtype=torch.bool, device=device)
    mask[matched_pairs(matches)] = True
    return mask


class DFineCriterion(nn.Module):
    """Loss of D-FINE (``class_loss="vfl"``) and DEIM (``class_loss="mal"``).

    Use :func:`dfine_criterion` / :func:`deim_criterion` for the official settings.

    Args:
        class_loss: ``"vfl"`` (varifocal, D-FINE) or ``"mal"`` (matchability-aware, DEIM).
        weights: multipliers of the terms.
        matcher: the Hungarian matcher (costs ``class 2, bbox 5, giou 2``, focal 0.25 / 2).
        alpha: VFL negative weight (0.75); unused by MAL.
        gamma: VFL (2.0) or MAL (1.5) exponent.
        mal_alpha: optional MAL negative weight (unset officially).
        ddf_temperature: GO-LSD distillation temperature (5).
        use_union_set: supervise boxes/FGL/DDF of every head with the GO-LSD union of matches
            (official D-FINE always; DEIM's ``use_uni_set``, default True); when False each head
            uses its own matching and ``num_boxes``.
        zero_nan_terms: replace NaN terms by 0 (DEIM applies ``nan_to_num(nan=0)`` to every
            term; D-FINE does not).
    """

    def __init__(
        self,
        *,
        class_loss: ClassLoss = "vfl",
        weights: LossWeights = LossWeights(),
        matcher: HungarianMatcher = HungarianMatcher(),
        alpha: float = 0.75,
        gamma: float = 2.0,
        mal_alpha: float | None = None,
        ddf_temperature: float = 5.0,
        use_union_set: bool = True,
        zero_nan_terms: bool = False,
    ) -> None:
        super().__init__()
        if class_loss not in ("vfl", "mal"):
            raise ValueError(f"class_loss must be 'vfl' or 'mal', got {class_loss!r}")
        self.class_loss: ClassLoss = class_loss
        self.weights = weights
        self.matcher = matcher
        self.alpha = alpha
        self.gamma = gamma
        self.mal_alpha = mal_alpha
        self.ddf_temperature = ddf_temperature
        self.use_union_set = use_union_set
        self.zero_nan_terms = zero_nan_terms

    def extra_repr(self) -> str:
        return (
            f"class_loss={self.class_loss}, weights={self.weights}, matcher={self.matcher}, "
            f"alpha={self.alpha}, gamma={self.gamma}, mal_alpha={self.mal_alpha}, "
            f"ddf_temperature={self.ddf_temperature}, use_union_set={self.use_union_set}, "
            f"zero_nan_terms={self.zero_nan_terms}"
        )

    # ----------------------------------------------------------------------------------------

    def forward(self, outputs: DetectorOutput, targets: Sequence[Target]) -> LossOutput:
        """Compute every weighted loss term.

        Args:
            outputs: the model's training-mode output.
            targets: one dict per image: ``labels`` int64 ``[n]`` (0 .. C-1) and ``boxes``
                float ``[n, 4]`` (cxcywh, normalised), on the device of the outputs.

        Returns:
            :class:`LossOutput` with the terms (already weighted) and their sum.
        """
        final = outputs.layers[-1]
        batch_size = final.logits.shape[0]
        if len(targets) != batch_size:
            raise ValueError(f"{len(targets)} targets for a batch of {batch_size} images")
        device = final.logits.device
        num_boxes = _mean_over_processes(sum(len(t["labels"]) for t in targets), device)
        encoder_targets = self._encoder_targets(outputs, targets)

        final_matches = self.matcher(final.logits, final.boxes, targets)
        aux_matches = [self.matcher(h.logits, h.boxes, targets) for h in outputs.layers[:-1]]
        pre_matches = self.matcher(outputs.pre.logits, outputs.pre.boxes, targets)
        encoder_matches = [
            self.matcher(h.logits, h.boxes, t)
            for h, t in zip(outputs.encoder, encoder_targets, strict=True)
        ]

        union: list[Match] | None = None
        num_union = num_boxes
        if self.use_union_set:
            union = union_matches([final_matches, *aux_matches, pre_matches, *encoder_matches])
            num_union = _mean_over_processes(sum(len(q) for q, _ in union), device)

        def box_supervision(own: list[Match]) -> tuple[list[Match], float]:
            return (own, num_boxes) if union is None else (union, num_union)

        terms: dict[str, Tensor] = {}
        teacher = final
        # (suffix, head, own matching) in the official order of the terms
        heads: list[tuple[str, HeadOutput, list[Match]]] = [("", final, final_matches)]
        heads += [
            (f"_aux_{i}", h, m)
            for i, (h, m) in enumerate(zip(outputs.layers[:-1], aux_matches, strict=True))
        ]
        heads.append(("_pre", outputs.pre, pre_matches))
        last_balance: DistillationBalance | None = None
        for suffix, head, own in heads:
            box_matches, num_box_matches = box_supervision(own)
            is_student = head is not final and head.corners is not None
            balance = None
            if is_student:
                balance = DistillationBalance.from_mask(
                    _matched_mask(box_matches, batch_size, head.logits.shape[1], device)
                )
                last_balance = balance
            supervision = _Supervision(
                class_matches=own,
                box_matches=box_matches,
                num_boxes=num_boxes,
                num_box_matches=num_box_matches,
                teacher=teacher if is_student else None,
                balance=balance,
            )
            terms.update(self._head_terms(head, targets, supervision, outputs, suffix))

        for i, (head, own, head_targets) in enumerate(
            zip(outputs.encoder, encoder_matches, encoder_targets, strict=True)
        ):
            box_matches, num_box_matches = box_supervision(own)
            supervision = _Supervision(own, box_matches, num_boxes, num_box_matches)
            terms.update(self._head_terms(head, head_targets, supervision, outputs, f"_enc_{i}"))

        if outputs.dn_layers is not None:
            terms.update(self._denoising_terms(outputs, targets, num_boxes, last_balance))

        if self.zero_nan_terms:
            terms = {name: torch.nan_to_num(value, nan=0.0) for name, value in terms.items()}
        total = sum(terms.values(), start=torch.zeros((), device=device))
        return LossOutput(terms=terms, total=total)

    # ----------------------------------------------------------------------------------------

    def _denoising_terms(
        self,
        outputs: DetectorOutput,
        targets: Sequence[Target],
        num_boxes: float,
        balance: DistillationBalance | None,
    ) -> dict[str, Tensor]:
        layers, meta = outputs.dn_layers, outputs.dn_meta
        if not layers or meta is None:
            raise ValueError("denoising outputs need both dn_layers and dn_meta")
        matches = denoising_matches(
            meta.positive_indices, meta.num_groups, [len(t["labels"]) for t in targets]
        )
        dn_num_boxes = num_boxes * meta.num_groups
        teacher = layers[-1]
        heads = [(f"_dn_{i}", h) for i, h in enumerate(layers)]
        if outputs.dn_pre is not None:
            heads.append(("_dn_pre", outputs.dn_pre))
        terms: dict[str, Tensor] = {}
        for suffix, head in heads:
            is_student = head is not teacher and head.corners is not None
            supervision = _Supervision(
                class_matches=matches,
                box_matches=matches,
                num_boxes=dn_num_boxes,
                num_box_matches=dn_num_boxes,
                teacher=teacher if is_student else None,
                balance=balance,
            )
            terms.update(self._head_terms(head, targets, supervision, outputs, suffix))
        return terms

    @staticmethod
    def _encoder_targets(
        outputs: DetectorOutput, targets: Sequence[Target]
    ) -> list[Sequence[Target]]:
        """Targets of each encoder head: class-agnostic heads (one logit) see every box as class 0."""
        num_classes = outputs.layers[-1].logits.shape[-1]
        result: list[Sequence[Target]] = []
        for head in outputs.encoder:
            if head.logits.shape[-1] == 1 and num_classes != 1:
                result.append([{**t, "labels": torch.zeros_like(t["labels"])} for t in targets])
            else:
                result.append(targets)
        return result

    def _head_terms(
        self,
        head: HeadOutput,
        targets: Sequence[Target],
        supervision: _Supervision,
        outputs: DetectorOutput,
        suffix: str,
    ) -> dict[str, Tensor]:
        """The weighted terms of one head, named with ``suffix``."""
        w = self.weights
        terms = {
            f"loss_{self.class_loss}{suffix}": self._class_loss(head, targets, supervision)
            * w.classification
        }

        # boxes on the box matching (the GO-LSD union unless disabled)
        box_idx = matched_pairs(supervision.box_matches)
        pred_boxes = head.boxes[box_idx]
        target_boxes = _gather_targets(targets, supervision.box_matches, "boxes")
        num = supervision.num_box_matches
        terms[f"loss_bbox{suffix}"] = l1_box_loss(pred_boxes, target_boxes, num) * w.bbox
        terms[f"loss_giou{suffix}"] = giou_box_loss(pred_boxes, target_boxes, num) * w.giou
        if head.corners is None:
            return terms

        # fine-grained localisation (Eq. 4-5)
        if head.ref_points is None:
            raise ValueError("a head with corners must also carry ref_points")
        reg_max = head.corners.shape[-1] // 4 - 1
        # targets in the dtype of ``up`` (float32 under autocast too)
        bin_values = weighting_function(reg_max, outputs.up, outputs.reg_scale)
        with torch.no_grad():
            distances = box_to_distance(
                head.ref_points[box_idx],
                box_convert(target_boxes, "cxcywh", "xyxy"),
                outputs.reg_scale,
            )
            bins = distance_to_bins(distances, bin_values)
        box_ious = paired_box_iou(pred_boxes, target_boxes).detach()
        terms[f"loss_fgl{suffix}"] = (
            fine_grained_localization_loss(head.corners[box_idx], bins, box_ious, num) * w.fgl
        )

        # decoupled distillation focal loss (Eq. 6-7)
        teacher = supervision.teacher
        if teacher is not None:
            if teacher.corners is None:
                raise ValueError("the distillation teacher has no corners")
            # unmatched queries: the teacher's confidence; matched ones: this layer's IoU
            weights = teacher.logits.detach().sigmoid().amax(dim=-1)
            weights[box_idx] = box_ious.to(weights.dtype)
            matched = torch.zeros_like(weights, dtype=torch.bool)
            matched[box_idx] = True
            loss = decoupled_distillation_focal_loss(
                head.corners,
                teacher.corners,
                weights,
                matched,
                temperature=self.ddf_temperature,
                balance=supervision.balance,
            )
            terms[f"loss_ddf{suffix}"] = loss * w.ddf
        return terms

    def _class_loss(
        self, head: HeadOutput, targets: Sequence[Target], supervision: _Supervision
    ) -> Tensor:
        """Unweighted VFL or MAL of one head on its own matching (IoU-valued soft targets)."""
        matches = supervision.class_matches
        batch_idx, query_idx = matched_pairs(matches)
        ious = paired_box_iou(
            head.boxes[batch_idx, query_idx], _gather_targets(targets, matches, "boxes")
        )
        target_scores, positive = dense_class_targets(
            head.logits, batch_idx, query_idx, _gather_targets(targets, matches, "labels"), ious
        )
        if self.class_loss == "vfl":
            return varifocal_loss(
                head.logits, target_scores, positive, supervision.num_boxes, self.alpha, self.gamma
            )
        return matchability_aware_loss(
            head.logits, target_scores, positive, supervision.num_boxes, self.gamma, self.mal_alpha
        )


def dfine_criterion(weights: LossWeights = LossWeights()) -> DFineCriterion:
    """The official D-FINE criterion (every size): VFL (alpha 0.75, gamma 2), boxes, FGL, DDF."""
    return DFineCriterion(class_loss="vfl", weights=weights, alpha=0.75, gamma=2.0)


def deim_criterion(weights: LossWeights = LossWeights()) -> DFineCriterion:
    """The official DEIM-D-FINE criterion: MAL (gamma 1.5) instead of VFL, NaN terms zeroed."""
    return DFineCriterion(
        class_loss="mal", weights=weights, gamma=1.5, mal_alpha=None, zero_nan_terms=True
    )


def build_criterion(variant: Literal["dfine", "deim"]) -> DFineCriterion:
    """The official criterion of a model variant (``"dfine"`` or ``"deim"``)."""
    builders = {"dfine": dfine_criterion, "deim": deim_criterion}
    if variant not in builders:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(builders)}")
    return builders[variant]()
