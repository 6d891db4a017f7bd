"""Tie-aware detection matching and order-free raw-row matching (finite reports)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dfine_cli.export.compare import compare_detections, compare_raw


def _dets():
    labels = np.array([[1, 2, 2, 0]])
    boxes = np.array([[[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 2, 2], [3, 3, 9, 9]]], dtype=np.float32)
    scores = np.array([[0.9, 0.5, 0.5, 0.1]], dtype=np.float32)
    return labels, boxes, scores


def test_identical_outputs_agree():
    a = _dets()
    agreement = compare_detections(a, a, 1e-6, 1e-6)
    assert agreement.ok(1e-6, 1e-6) and agreement.matched_fraction == 1.0
    assert agreement.worst_unmatched is None and agreement.compared == 4


def test_swapped_ties_still_match():
    labels, boxes, scores = _dets()
    swapped = (labels[:, [0, 2, 1, 3]], boxes[:, [0, 2, 1, 3]], scores[:, [0, 2, 1, 3]])
    assert compare_detections((labels, boxes, scores), swapped, 1e-6, 1e-6).ok(1e-6, 1e-6)


def test_matching_is_one_to_one():
    """Two expected detections cannot share one actual detection."""
    labels = np.array([[3, 3, 1]])
    boxes = np.array([[[0, 0, 10, 10], [0, 0, 10.2, 10], [50, 50, 60, 60]]], dtype=np.float32)
    scores = np.array([[0.8, 0.8, 0.2]], dtype=np.float32)
    # the actual list holds the first box twice and lacks the second
    actual = (labels, boxes[:, [0, 0, 2]], scores)
    agreement = compare_detections((labels, boxes, scores), actual, 1e-6, 0.5)
    assert agreement.matched_fraction == 1.0  # 0.2 px apart: both within 0.5 px
    strict = compare_detections((labels, boxes, scores), actual, 1e-6, 0.1)
    assert strict.matched_fraction == pytest.approx(2 / 3)
    assert strict.worst_unmatched is not None and strict.worst_unmatched.label == 3


def test_moved_box_is_reported_with_finite_numbers():
    labels, boxes, scores = _dets()
    moved = boxes.copy()
    moved[0, 0] += 3.0
    agreement = compare_detections((labels, boxes, scores), (labels, moved, scores), 1e-6, 0.5)
    assert not agreement.ok(1e-6, 0.5)
    assert math.isfinite(agreement.max_box_diff) and agreement.max_box_diff <= 0.5
    worst = agreement.worst_unmatched
    assert worst is not None
    assert (worst.label, worst.rank, worst.nearest_box_diff) == (1, 0, 3.0)
    assert worst.score == pytest.approx(0.9) and worst.box == (0.0, 0.0, 10.0, 10.0)
    text = agreement.describe()
    assert "inf" not in text and "worst unmatched: label 1 score 0.9000" in text and "3 px" in text


def test_missing_label_is_reported_without_inf():
    labels, boxes, scores = _dets()
    other = labels.copy()
    other[0, 0] = 7  # no detection of label 1 left
    agreement = compare_detections((labels, boxes, scores), (other, boxes, scores), 1e-6, 1e-6)
    assert agreement.worst_unmatched is not None
    assert agreement.worst_unmatched.nearest_box_diff is None
    assert "no detection with that label" in agreement.describe()
    assert "inf" not in agreement.describe()
    assert all(math.isfinite(v) for v in (agreement.max_score_diff, agreement.max_box_diff))


def test_ties_at_the_cutoff_are_excused_but_not_elsewhere():
    labels, boxes, scores = _dets()
    other_labels = labels.copy()
    other_labels[0, 3] = 1  # the last (cut-off) detection differs
    assert compare_detections((labels, boxes, scores), (other_labels, boxes, scores), 1e-6, 1e-6).ok(1e-6, 1e-6)
    other_labels = labels.copy()
    other_labels[0, 0] = 0  # the top detection differs: a real disagreement
    assert not compare_detections((labels, boxes, scores), (other_labels, boxes, scores), 1e-6, 1e-6).ok(1e-6, 1e-6)


def test_score_drift_beyond_tolerance_fails():
    labels, boxes, scores = _dets()
    drift = scores.copy()
    drift[0, 1:3] += 2e-4
    assert compare_detections((labels, boxes, scores), (labels, boxes, drift), 5e-4, 1e-6).ok(5e-4, 1e-6)
    agreement = compare_detections((labels, boxes, scores), (labels, boxes, drift), 1e-4, 1e-6)
    assert not agreement.ok(1e-4, 1e-6)
    assert agreement.max_score_diff == pytest.approx(2e-4, rel=1e-3)


def test_shape_mismatch_raises():
    labels, boxes, scores = _dets()
    with pytest.raises(ValueError, match="shapes differ"):
        compare_detections((labels, boxes, scores), (labels[:, :2], boxes[:, :2], scores[:, :2]), 1, 1)


def _raw(seed: int = 0, q: int = 50, c: int = 6):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(2, q, c)).astype(np.float32), rng.random((2, q, 4)).astype(np.float32)


def test_raw_rows_match_in_any_order():
    logits, boxes = _raw()
    perm = np.random.default_rng(1).permutation(logits.shape[1])
    raw = compare_raw((logits, boxes), (logits[:, perm], boxes[:, perm]), 1e-6, 1e-6)
    assert raw.matched_fraction == 1.0 and raw.max_logit_diff == 0.0 and raw.rows == 100


def test_raw_rows_report_drift_and_replaced_rows():
    logits, boxes = _raw()
    noisy = logits + np.float32(5e-4)
    raw = compare_raw((logits, boxes), (noisy, boxes), 1e-3, 1e-4)
    assert raw.matched_fraction == 1.0 and raw.max_logit_diff == pytest.approx(5e-4, rel=1e-2)
    assert not compare_raw((logits, boxes), (noisy, boxes), 1e-4, 1e-4).ok(1e-4, 1e-4, 0.97)
    replaced = logits.copy()
    replaced[0, 0] = 9.0  # one query swapped at the selection cut-off
    raw = compare_raw((logits, boxes), (replaced, boxes), 1e-3, 1e-4)
    assert raw.matched_fraction == pytest.approx(99 / 100)
    assert raw.ok(1e-3, 1e-4, 0.97) and math.isfinite(raw.max_logit_diff)
