"""Tests of the Hungarian matcher, the GO-LSD union of matches and the denoising assignment."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dfine_cli.engine.matcher import (
    HungarianMatcher,
    denoising_matches,
    focal_class_cost,
    matched_pairs,
    union_matches,
)


def _random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    centre = 0.2 + 0.6 * torch.rand(n, 2, generator=generator)
    size = 0.05 + 0.3 * torch.rand(n, 2, generator=generator)
    return torch.cat([centre, size], dim=1)


def _targets(labels: list[int], boxes: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"labels": torch.tensor(labels, dtype=torch.int64), "boxes": boxes}


def _as_pairs(match: tuple[torch.Tensor, torch.Tensor]) -> set[tuple[int, int]]:
    return set(zip(match[0].tolist(), match[1].tolist(), strict=True))


# ---------------------------------------------------------------------------- costs


def test_focal_class_cost_by_hand() -> None:
    probs = torch.tensor([[0.2, 0.9]])
    cost = focal_class_cost(probs, torch.tensor([1, 0]), alpha=0.25, gamma=2.0)

    def expected(p: float) -> float:
        positive = 0.25 * (1 - p) ** 2 * -math.log(p + 1e-8)
        negative = 0.75 * p**2 * -math.log(1 - p + 1e-8)
        return positive - negative

    assert cost.shape == (1, 2)
    assert float(cost[0, 0]) == pytest.approx(expected(0.9), rel=1e-5)
    assert float(cost[0, 1]) == pytest.approx(expected(0.2), rel=1e-5)
    assert float(cost[0, 0]) < float(cost[0, 1])  # a confident correct class is cheaper


def test_zero_cost_weights_are_rejected() -> None:
    with pytest.raises(ValueError, match="non-zero"):
        HungarianMatcher(class_weight=0, bbox_weight=0, giou_weight=0)


# ---------------------------------------------------------------------------- matching


def test_matcher_recovers_a_permutation_of_perfect_predictions() -> None:
    g = torch.Generator().manual_seed(0)
    gt_boxes = _random_boxes(4, g)
    labels = [3, 1, 0, 2]
    order = torch.tensor([2, 0, 3, 1])  # query q predicts target order[q]
    boxes = torch.cat([gt_boxes[order], _random_boxes(2, g)])[None]  # 2 extra distractor queries
    logits = torch.full((1, 6, 4), -6.0)
    logits[0, torch.arange(4), torch.tensor(labels)[order]] = 6.0

    (match,) = HungarianMatcher()(logits, boxes, [_targets(labels, gt_boxes)])
    assert _as_pairs(match) == {(q, int(order[q])) for q in range(4)}
    assert match[0].dtype == torch.int64 and match[1].dtype == torch.int64


@pytest.mark.parametrize("seed", range(6))
def test_matcher_is_optimal_against_brute_force(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    num_queries, num_targets, num_classes = 5, 3, 4
    logits = torch.randn(1, num_queries, num_classes, generator=g)
    boxes = _random_boxes(num_queries, g)[None]
    target = _targets(
        torch.randint(0, num_classes, (num_targets,), generator=g).tolist(), _random_boxes(3, g)
    )
    matcher = HungarianMatcher()
    cost = matcher.cost_matrix(logits[0], boxes[0], target["labels"], target["boxes"])

    best = min(
        sum(float(cost[q, t]) for t, q in enumerate(queries))
        for queries in itertools.permutations(range(num_queries), num_targets)
    )
    (match,) = matcher(logits, boxes, [target])
    assert len(match[0]) == num_targets
    assert sorted(match[1].tolist()) == list(range(num_targets))
    assert float(cost[match[0], match[1]].sum()) == pytest.approx(best, rel=1e-6, abs=1e-6)


def test_matcher_cost_matrix_combines_the_three_costs() -> None:
    g = torch.Generator().manual_seed(7)
    logits, boxes = torch.randn(3, 2, generator=g), _random_boxes(3, g)
    labels, target_boxes = torch.tensor([1]), _random_boxes(1, g)
    only_l1 = HungarianMatcher(class_weight=0, bbox_weight=1, giou_weight=0)
    torch.testing.assert_close(
        only_l1.cost_matrix(logits, boxes, labels, target_boxes),
        (boxes - target_boxes).abs().sum(-1, keepdim=True),
    )
    full = HungarianMatcher().cost_matrix(logits, boxes, labels, target_boxes)
    parts = [
        HungarianMatcher(class_weight=2, bbox_weight=0, giou_weight=0),
        HungarianMatcher(class_weight=0, bbox_weight=5, giou_weight=0),
        HungarianMatcher(class_weight=0, bbox_weight=0, giou_weight=2),
    ]
    summed = sum(m.cost_matrix(logits, boxes, labels, target_boxes) for m in parts)
    torch.testing.assert_close(full, summed)


def test_matcher_handles_images_without_targets() -> None:
    g = torch.Generator().manual_seed(1)
    logits, boxes = torch.randn(2, 4, 3, generator=g), _random_boxes(8, g).reshape(2, 4, 4)
    empty = _targets([], torch.zeros(0, 4))
    matches = HungarianMatcher()(logits, boxes, [empty, _targets([2], _random_boxes(1, g))])
    assert len(matches[0][0]) == 0 and len(matches[1][0]) == 1
    matches = HungarianMatcher()(logits, boxes, [empty, empty])
    assert all(len(q) == 0 and len(t) == 0 for q, t in matches)


def test_matcher_survives_nan_predictions() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 4, 3, generator=g)
    logits[0, 1] = float("nan")
    (match,) = HungarianMatcher()(
        logits, _random_boxes(4, g)[None], [_targets([0, 1], _random_boxes(2, g))]
    )
    assert len(match[0]) == 2


def test_matcher_rejects_wrong_number_of_targets() -> None:
    with pytest.raises(ValueError, match="targets"):
        HungarianMatcher()(
            torch.zeros(2, 3, 1), torch.rand(2, 3, 4), [_targets([0], torch.rand(1, 4))]
        )


# ---------------------------------------------------------------------------- GO-LSD union


def _match(queries: list[int], targets: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(queries, dtype=torch.int64), torch.tensor(targets, dtype=torch.int64)


def test_union_keeps_every_matched_query_with_its_majority_target() -> None:
    final = [_match([0, 5], [0, 1])]
    aux = [_match([0, 7], [0, 1])]
    pre = [_match([3, 5], [0, 2])]
    encoder = [_match([5, 9], [2, 1])]
    (union,) = union_matches([final, aux, pre, encoder])
    # query 5 is matched to target 1 once and to target 2 twice: the majority wins
    assert _as_pairs(union) == {(0, 0), (5, 2), (7, 1), (3, 0), (9, 1)}
    # most votes first: (0, 0) and (5, 2) have two each
    assert union[0][:2].tolist() == [0, 5]


def test_union_breaks_ties_by_the_lower_target_index() -> None:
    (union,) = union_matches([[_match([4], [2])], [_match([4], [1])], [_match([4], [3])]])
    assert _as_pairs(union) == {(4, 1)}


def test_union_of_a_single_matching_is_that_matching() -> None:
    matches = [_match([3, 1, 8], [1, 2, 0]), _match([], [])]
    union = union_matches([matches])
    assert _as_pairs(union[0]) == _as_pairs(matches[0])
    assert len(union[1][0]) == 0


def test_union_rejects_inconsistent_batches() -> None:
    with pytest.raises(ValueError):
        union_matches([[_match([0], [0])], [_match([0], [0]), _match([1], [0])]])
    with pytest.raises(ValueError):
        union_matches([])


# ---------------------------------------------------------------------------- denoising


def test_denoising_matches_tile_the_targets_per_group() -> None:
    positives = [
        torch.tensor([0, 1, 6, 7, 12, 13]),
        torch.tensor([0, 6, 12]),
        torch.zeros(0, dtype=torch.int64),
    ]
    matches = denoising_matches(positives, num_groups=3, num_targets=[2, 1, 0])
    assert matches[0][1].tolist() == [0, 1, 0, 1, 0, 1]
    assert matches[0][0].tolist() == [0, 1, 6, 7, 12, 13]
    assert matches[1][1].tolist() == [0, 0, 0]
    assert len(matches[2][0]) == 0 and len(matches[2][1]) == 0


def test_denoising_matches_check_the_counts() -> None:
    with pytest.raises(ValueError, match="positive denoising queries"):
        denoising_matches([torch.tensor([0, 1, 2])], num_groups=2, num_targets=[2])


def test_matched_pairs_flattens_in_image_order() -> None:
    batch_idx, query_idx = matched_pairs([_match([4, 2], [0, 1]), _match([], []), _match([7], [0])])
    assert batch_idx.tolist() == [0, 0, 2]
    assert query_idx.tolist() == [4, 2, 7]
