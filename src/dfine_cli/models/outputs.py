"""Structured outputs of the D-FINE model in training and evaluation mode.

Boxes are ``cxcywh`` normalised to ``[0, 1]`` of the network input. Logits are raw (before
sigmoid). ``corners`` are the unnormalised FDR edge distributions, ``[B, Q, 4 * (reg_max + 1)]``
(left, top, right, bottom bins), and ``ref_points`` the detached initial reference boxes the
distributions refine (paper Sec. 3.2, Eq. 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class HeadOutput:
    """Predictions of one prediction head (a decoder layer, the pre-head or the encoder)."""

    logits: Tensor  # [B, Q, C]
    boxes: Tensor  # [B, Q, 4] cxcywh in [0, 1]
    corners: Tensor | None = None  # [B, Q, 4 * (reg_max + 1)], decoder layers only
    ref_points: Tensor | None = None  # [B, Q, 4] cxcywh, detached initial references


@dataclass
class DenoisingMeta:
    """Bookkeeping of the contrastive denoising groups (DN-DETR / DINO)."""

    positive_indices: list[Tensor]  # per image: indices of positive DN queries, group-major
    num_groups: int
    num_split: tuple[int, int]  # (num DN queries, num matching queries)


@dataclass
class DetectorOutput:
    """Everything the D-FINE criterion consumes in training mode.

    ``layers[-1]`` is the final prediction; ``layers[:-1]`` are the auxiliary decoder layers
    (their ``teacher`` for GO-LSD distillation is ``layers[-1]``). ``pre`` is the
    pre-refinement head applied to the first layer's queries; ``encoder`` the encoder's top-k
    proposals (class-agnostic when configured). ``dn_*`` mirror these for the denoising
    queries and are ``None`` without denoising.
    """

    layers: list[HeadOutput]
    pre: HeadOutput
    encoder: list[HeadOutput]
    up: Tensor  # scalar-like [1] tensor, FDR hyper-parameter `a` (paper Eq. 3)
    reg_scale: Tensor  # [1] tensor, FDR hyper-parameter `c` (paper Eq. 3)
    dn_layers: list[HeadOutput] | None = None
    dn_pre: HeadOutput | None = None
    dn_meta: DenoisingMeta | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def final(self) -> HeadOutput:
        return self.layers[-1]
