from __future__ import annotations

import numpy as np

from dfine_cli.export.compare import compare_detections


def _dets():
    labels = np.array([[1, 2, 2, 0]])
    boxes = np.array([[[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 2, 2], [3, 3, 9, 9]]], dtype=np.float32)
    scores = np.array([[0.9, 0.5, 0.5, 0.1]], dtype=np.float32)
    return labels, boxes, scores


def test_identical_outputs_agree():
    a = _dets()
    agreement = compare_detections(a, a, 1e-6, 1e-6)
    assert agreement.ok(1e-6, 1e-6) and agreement.matched_fraction == 1.0


def test_swapped_ties_still_match():
    labels, boxes, scores = _dets()
    swapped = (labels[:, [0, 2, 1, 3]], boxes[:, [0, 2, 1, 3]], scores[:, [0, 2, 1, 3]])
    assert compare_detections((labels, boxes, scores), swapped, 1e-6, 1e-6).ok(1e-6, 1e-6)


def test_moved_box_is_reported():
    labels, boxes, scores = _dets()
    moved = boxes.copy()
    moved[0, 1] += 3.0
    agreement = compare_detections((labels, boxes, scores), (labels, moved, scores), 1e-6, 0.5)
    assert not agreement.ok(1e-6, 0.5)
    assert agreement.max_box_diff == 3.0


def test_ties_at_the_cutoff_are_excused_but_not_elsewhere():
    labels, boxes, scores = _dets()
    other_labels = labels.copy()
    other_labels[0, 3] = 1  # the last (cut-off) detection differs
    assert compare_detections((labels, boxes, scores), (other_labels, boxes, scores), 1e-6, 1e-6).ok(1e-6, 1e-6)
    other_labels = labels.copy()
    other_labels[0, 0] = 0  # the top detection differs: a real disagreement
    assert not compare_detections((labels, boxes, scores), (other_labels, boxes, scores), 1e-6, 1e-6).ok(1e-6, 1e-6)
