"""Unit tests of the pure loss functions: hand-checkable values, invariants, finite gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, box_iou, generalized_box_iou

from dfine_cli.engine.losses import (
    BinTargets,
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
    paired_generalized_box_iou,
    varifocal_loss,
)
from dfine_cli.models.fdr import distance_to_box, weighting_function

BINS_4 = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])  # a W(n) for reg_max = 4, easy to reason about


def _random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    centre = 0.2 + 0.6 * torch.rand(n, 2, generator=generator)
    size = 0.05 + 0.3 * torch.rand(n, 2, generator=generator)
    return torch.cat([centre, size], dim=1)


# ---------------------------------------------------------------------------- FDR targets


def test_box_to_distance_inverts_fdr_decoding() -> None:
    g = torch.Generator().manual_seed(0)
    reg_scale = torch.tensor([4.0])
    ref = _random_boxes(16, g)
    offsets = torch.randn(16, 4, generator=g)
    decoded = distance_to_box(ref, offsets, reg_scale)
    recovered = box_to_distance(ref, box_convert(decoded, "cxcywh", "xyxy"), reg_scale)
    torch.testing.assert_close(recovered, offsets, rtol=0, atol=1e-4)


def test_box_to_distance_is_zero_for_the_reference_box_itself() -> None:
    # offset 0 places each edge at half the reference size from the centre
    ref = torch.tensor([[0.5, 0.4, 0.2, 0.1]])
    distances = box_to_distance(ref, box_convert(ref, "cxcywh", "xyxy"), torch.tensor([4]))
    torch.testing.assert_close(distances, torch.zeros(1, 4), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("distance", "left", "weight_left", "weight_right"),
    [
        (0.25, 2, 0.75, 0.25),  # between W(2) = 0 and W(3) = 1
        (-1.5, 0, 0.5, 0.5),  # between W(0) = -2 and W(1) = -1
        (-1.0, 1, 1.0, 0.0),  # exactly on a bin
        (1.9, 3, 0.1, 0.9),
        (-3.0, 0, 1.0, 0.0),  # below the range: all weight on bin 0
        (2.0, 3, 0.0, 1.0),  # at the top: all weight on the last bin
        (7.0, 3, 0.0, 1.0),  # above the range: all weight on the last bin
    ],
)
def test_distance_to_bins_by_hand(
    distance: float, left: int, weight_left: float, weight_right: float
) -> None:
    bins = distance_to_bins(torch.tensor([distance]), BINS_4)
    assert bins.left.dtype == torch.int64
    assert int(bins.left) == left
    assert float(bins.weight_left) == pytest.approx(weight_left, abs=1e-6)
    assert float(bins.weight_right) == pytest.approx(weight_right, abs=1e-6)


def test_distance_to_bins_interpolation_reproduces_in_range_offsets() -> None:
    bin_values = weighting_function(32, torch.tensor([0.5]), torch.tensor([4]))
    distances = torch.linspace(-3.99, 3.99, 400).reshape(-1, 4)
    bins = distance_to_bins(distances, bin_values)
    assert bins.left.shape == distances.shape
    assert int(bins.left.min()) >= 0 and int(bins.left.max()) <= 31
    rebuilt = (
        bins.weight_left * bin_values[bins.left] + bins.weight_right * bin_values[bins.left + 1]
    )
    torch.testing.assert_close(rebuilt, distances, rtol=0, atol=1e-5)
    torch.testing.assert_close(bins.weight_left + bins.weight_right, torch.ones_like(distances))


# ---------------------------------------------------------------------------- classification


def _bce(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def _one_match_targets(logits: torch.Tensor, iou: float) -> tuple[torch.Tensor, torch.Tensor]:
    # image 0, query 0 matched to a box of class 1 with the given IoU
    return dense_class_targets(
        logits, torch.tensor([0]), torch.tensor([0]), torch.tensor([1]), torch.tensor([iou])
    )


def test_dense_class_targets_places_scores_at_matched_query_and_class() -> None:
    logits = torch.zeros(2, 3, 4)
    scores, positive = dense_class_targets(
        logits,
        torch.tensor([0, 1]),
        torch.tensor([2, 0]),
        torch.tensor([3, 1]),
        torch.tensor([0.5, 0.25]),
    )
    assert positive.sum() == 2 and positive[0, 2, 3] == 1 and positive[1, 0, 1] == 1
    assert scores[0, 2, 3] == 0.5 and scores[1, 0, 1] == 0.25 and scores.sum() == 0.75


def test_varifocal_loss_by_hand() -> None:
    # one query, two classes; matched to class 1 with IoU 0.5; normaliser 2
    logits = torch.tensor([[[0.0, 2.0]]])
    scores, positive = _one_match_targets(logits, 0.5)
    loss = varifocal_loss(logits, scores, positive, num_boxes=2.0, alpha=0.75, gamma=2.0)
    negative = 0.75 * 0.5**2 * _bce(0.0, 0.0)  # p = sigmoid(0) = 0.5
    positive_term = 0.5 * _bce(2.0, 0.5)  # weighted by the IoU target
    assert float(loss) == pytest.approx((negative + positive_term) / 2, rel=1e-6)


def test_matchability_aware_loss_by_hand() -> None:
    logits = torch.tensor([[[0.0, 2.0]]])
    scores, positive = _one_match_targets(logits, 0.5)
    loss = matchability_aware_loss(logits, scores, positive, num_boxes=2.0, gamma=1.5)
    negative = 0.5**1.5 * _bce(0.0, 0.0)
    positive_term = 1.0 * _bce(2.0, 0.5**1.5)  # target IoU^gamma, weight 1
    assert float(loss) == pytest.approx((negative + positive_term) / 2, rel=1e-6)

    with_alpha = matchability_aware_loss(
        logits, scores, positive, num_boxes=2.0, gamma=1.5, alpha=0.2
    )
    assert float(with_alpha) == pytest.approx((0.2 * negative + positive_term) / 2, rel=1e-6)


def test_classification_losses_sum_over_queries_and_divide_by_num_boxes() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 3, generator=g)
    scores, positive = dense_class_targets(
        logits,
        torch.tensor([0, 1]),
        torch.tensor([1, 4]),
        torch.tensor([2, 0]),
        torch.tensor([0.7, 0.4]),
    )
    for loss_fn in (varifocal_loss, matchability_aware_loss):
        one = loss_fn(logits, scores, positive, 1.0)
        four = loss_fn(logits, scores, positive, 4.0)
        assert float(four) == pytest.approx(float(one) / 4, rel=1e-6)


def test_varifocal_loss_prefers_confident_correct_predictions() -> None:
    logits = torch.tensor([[[-8.0, 8.0]]])
    scores, positive = _one_match_targets(logits, 1.0)
    good = varifocal_loss(logits, scores, positive, 1.0)
    bad = varifocal_loss(-logits, scores, positive, 1.0)
    assert float(good) < 1e-3 < float(bad)


# ---------------------------------------------------------------------------- boxes


def test_box_losses_agree_with_torchvision_pairwise_versions() -> None:
    g = torch.Generator().manual_seed(2)
    pred, target = _random_boxes(7, g), _random_boxes(7, g)
    pred_xyxy, target_xyxy = (
        box_convert(pred, "cxcywh", "xyxy"),
        box_convert(target, "cxcywh", "xyxy"),
    )
    torch.testing.assert_close(
        paired_box_iou(pred, target), box_iou(pred_xyxy, target_xyxy).diagonal()
    )
    giou = generalized_box_iou(pred_xyxy, target_xyxy).diagonal()
    torch.testing.assert_close(paired_generalized_box_iou(pred, target), giou)
    torch.testing.assert_close(giou_box_loss(pred, target, 3.0), (1 - giou).sum() / 3)
    torch.testing.assert_close(l1_box_loss(pred, target, 3.0), (pred - target).abs().sum() / 3)


def test_box_losses_vanish_for_perfect_boxes() -> None:
    boxes = _random_boxes(4, torch.Generator().manual_seed(3))
    assert float(l1_box_loss(boxes, boxes, 4.0)) == 0.0
    assert float(giou_box_loss(boxes, boxes, 4.0)) == pytest.approx(0.0, abs=1e-7)
    tiny = torch.tensor([[0.5, 0.5, 1 / 640, 1 / 640]])  # one pixel at 640 x 640
    assert float(giou_box_loss(tiny, tiny, 1.0)) == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(paired_box_iou(boxes, boxes), torch.ones(4))


def test_paired_box_iou_by_hand() -> None:
    a = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    b = torch.tensor([[0.6, 0.5, 0.2, 0.2]])  # shifted by half a width: overlap 0.1 x 0.2
    assert float(paired_box_iou(a, b)) == pytest.approx(0.02 / (0.04 + 0.04 - 0.02), rel=1e-5)


# ---------------------------------------------------------------------------- FGL


def test_fine_grained_localization_loss_uniform_distribution_by_hand() -> None:
    # uniform logits over 5 bins: every cross-entropy is log 5, soft weights sum to 1
    corners = torch.zeros(2, 4 * 5)
    bins = distance_to_bins(torch.full((2, 4), 0.25), BINS_4)
    ious = torch.tensor([0.5, 1.0])
    loss = fine_grained_localization_loss(corners, bins, ious, num_boxes=3.0)
    assert float(loss) == pytest.approx((0.5 + 1.0) * 4 * math.log(5) / 3, rel=1e-6)


def test_fine_grained_localization_loss_is_minimal_at_the_soft_label() -> None:
    bins = BinTargets(
        left=torch.tensor([[1, 2, 0, 3]]),
        weight_left=torch.tensor([[0.3, 0.5, 1.0, 0.9]]),
        weight_right=torch.tensor([[0.7, 0.5, 0.0, 0.1]]),
    )
    target = torch.full((4, 5), 1e-12)
    for edge in range(4):
        target[edge, bins.left[0, edge]] += bins.weight_left[0, edge]
        target[edge, bins.left[0, edge] + 1] += bins.weight_right[0, edge]
    corners = target.log().reshape(1, 20).requires_grad_()
    loss = fine_grained_localization_loss(corners, bins, torch.ones(1), num_boxes=1.0)
    (grad,) = torch.autograd.grad(loss, corners)
    assert float(grad.abs().max()) < 1e-5  # softmax(corners) equals the soft label


def test_fine_grained_localization_loss_scales_with_iou_weight() -> None:
    g = torch.Generator().manual_seed(4)
    corners = torch.randn(3, 20, generator=g)
    bins = distance_to_bins(torch.randn(3, 4, generator=g), BINS_4)
    full = fine_grained_localization_loss(corners, bins, torch.ones(3), 1.0)
    half = fine_grained_localization_loss(corners, bins, torch.full((3,), 0.5), 1.0)
    assert float(half) == pytest.approx(float(full) / 2, rel=1e-6)


# ---------------------------------------------------------------------------- DDF


def _kl(teacher: torch.Tensor, student: torch.Tensor, temperature: float) -> torch.Tensor:
    p = F.softmax(teacher.double() / temperature, -1)
    q = F.softmax(student.double() / temperature, -1)
    return (p * (p.log() - q.log())).sum(-1)


def test_ddf_is_zero_when_student_equals_teacher() -> None:
    corners = torch.randn(2, 3, 20, generator=torch.Generator().manual_seed(5))
    matched = torch.tensor([[True, False, False], [False, True, False]])
    loss = decoupled_distillation_focal_loss(corners, corners, torch.rand(2, 3), matched)
    assert float(loss) == pytest.approx(0.0, abs=1e-7)


def test_ddf_by_hand_one_matched_one_unmatched_query() -> None:
    g = torch.Generator().manual_seed(6)
    student = torch.randn(1, 2, 4 * 5, generator=g)
    teacher = torch.randn(1, 2, 4 * 5, generator=g)
    weights = torch.tensor([[0.8, 0.3]])  # IoU of the matched query, confidence of the other
    matched = torch.tensor([[True, False]])
    t = 2.0
    kl = _kl(teacher.reshape(2, 4, 5), student.reshape(2, 4, 5), t)  # [query, edge]
    loss_matched = (0.8 * t**2 * kl[0]).mean()
    loss_unmatched = (0.3 * t**2 * kl[1]).mean()

    loss = decoupled_distillation_focal_loss(student, teacher, weights, matched, temperature=t)
    # equal counts: the matched and unmatched means are averaged with equal weight
    assert float(loss) == pytest.approx(float((loss_matched + loss_unmatched) / 2), rel=1e-5)

    balance = DistillationBalance(num_matched=1.0, num_unmatched=9.0)  # sqrt weights 1 and 3
    loss = decoupled_distillation_focal_loss(
        student, teacher, weights, matched, temperature=t, balance=balance
    )
    assert float(loss) == pytest.approx(float((loss_matched + 3 * loss_unmatched) / 4), rel=1e-5)


def test_ddf_without_matched_queries_is_the_unmatched_mean() -> None:
    g = torch.Generator().manual_seed(7)
    student, teacher = torch.randn(1, 3, 20, generator=g), torch.randn(1, 3, 20, generator=g)
    weights = torch.tensor([[0.2, 0.5, 0.9]])
    matched = torch.zeros(1, 3, dtype=torch.bool)
    kl = _kl(teacher.reshape(3, 4, 5), student.reshape(3, 4, 5), 5.0)
    expected = (weights.double().reshape(3, 1) * 25 * kl).mean()
    loss = decoupled_distillation_focal_loss(student, teacher, weights, matched)
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_ddf_does_not_train_the_teacher_or_the_weights() -> None:
    g = torch.Generator().manual_seed(8)
    student = torch.randn(1, 2, 20, generator=g).requires_grad_()
    teacher = torch.randn(1, 2, 20, generator=g).requires_grad_()
    weights = torch.rand(1, 2, generator=g).requires_grad_()
    loss = decoupled_distillation_focal_loss(
        student, teacher, weights, torch.tensor([[True, False]])
    )
    loss.backward()
    assert student.grad is not None and float(student.grad.abs().sum()) > 0
    assert teacher.grad is None and weights.grad is None


# ---------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("scale", [1.0, 50.0], ids=["moderate", "extreme-logits"])
def test_all_losses_have_finite_gradients(scale: float) -> None:
    g = torch.Generator().manual_seed(9)
    logits = (scale * torch.randn(2, 6, 3, generator=g)).requires_grad_()
    pred = _random_boxes(4, g).requires_grad_()
    target = _random_boxes(4, g)
    corners = (scale * torch.randn(2, 6, 4 * 33, generator=g)).requires_grad_()
    teacher = scale * torch.randn(2, 6, 4 * 33, generator=g)
    batch_idx, query_idx = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 3, 2, 5])
    ious = paired_box_iou(pred, target)
    scores, positive = dense_class_targets(
        logits, batch_idx, query_idx, torch.tensor([0, 2, 1, 1]), ious
    )
    matched = torch.zeros(2, 6, dtype=torch.bool)
    matched[batch_idx, query_idx] = True
    bin_values = weighting_function(32, torch.tensor([0.5]), torch.tensor([4]))
    bins = distance_to_bins(
        box_to_distance(
            _random_boxes(4, g), box_convert(target, "cxcywh", "xyxy"), torch.tensor([4])
        ),
        bin_values,
    )
    total = (
        varifocal_loss(logits, scores, positive, 4.0)
        + matchability_aware_loss(logits, scores, positive, 4.0)
        + l1_box_loss(pred, target, 4.0)
        + giou_box_loss(pred, target, 4.0)
        + fine_grained_localization_loss(corners[batch_idx, query_idx], bins, ious, 4.0)
        + decoupled_distillation_focal_loss(
            corners, teacher, torch.rand(2, 6, generator=g), matched
        )
    )
    total.backward()
    assert torch.isfinite(total)
    for tensor in (logits, pred, corners):
        assert tensor.grad is not None and bool(torch.isfinite(tensor.grad).all())
