"""Matching, precision-recall curves and the confusion matrix on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from dfine_cli.viz.pr_curves import class_pr_curves, confusion_matrix, match_image, pr_curve

GT = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], dtype=np.float32)


def test_match_prefers_higher_scores_and_one_detection_per_box():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], np.float32)
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.6, 0.9, 0.8, 0.7])
    m = match_image(GT, np.array([0, 1]), boxes, labels, scores)
    # the 0.9 detection takes GT 0 first; the exact box at 0.6 is then a duplicate (FP)
    assert m.det_tp.tolist() == [False, True, True, False]
    assert m.det_gt.tolist() == [-1, 0, 1, -1]
    assert m.gt_matched.all() and (m.false_positives, m.false_negatives) == (2, 0)


def test_match_needs_the_same_class_and_enough_overlap():
    m = match_image(GT, np.array([0, 1]), GT, np.array([1, 1]), np.array([0.9, 0.8]))
    assert m.det_tp.tolist() == [False, True] and m.false_negatives == 1
    shifted = GT + np.array([6, 6, 6, 6], np.float32)  # IoU 16/184 with the original
    assert not match_image(GT, np.array([0, 1]), shifted, np.array([0, 1]), np.array([1, 1])).det_tp.any()


def test_empty_images():
    m = match_image(np.zeros((0, 4)), np.zeros(0), GT, np.array([0, 1]), np.array([0.5, 0.4]))
    assert m.false_positives == 2 and m.false_negatives == 0
    m = match_image(GT, np.array([0, 1]), np.zeros((0, 4)), np.zeros(0), np.zeros(0))
    assert m.false_negatives == 2 and m.det_tp.shape == (0,)


def test_pr_curve_and_ap():
    curve = pr_curve(np.array([0.9, 0.8, 0.7, 0.6]), np.array([True, False, True, False]), num_gt=2)
    assert curve.precision.tolist() == pytest.approx([1.0, 0.5, 2 / 3, 0.5])
    assert curve.recall.tolist() == pytest.approx([0.5, 0.5, 1.0, 1.0])
    # interpolated: precision 1 up to recall 0.5, 2/3 beyond -> (51 * 1 + 50 * 2/3) / 101
    assert curve.ap == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert pr_curve(np.array([0.5]), np.array([True]), num_gt=1).ap == pytest.approx(1.0)
    assert np.isnan(pr_curve(np.zeros(0), np.zeros(0, bool), num_gt=0).ap)
    assert pr_curve(np.zeros(0), np.zeros(0, bool), num_gt=3).ap == 0.0


def test_class_curves_split_by_label():
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    labels, scores = np.array([0, 1]), np.array([0.9, 0.8])
    m = match_image(GT, np.array([0, 1]), boxes, labels, scores)
    curves = class_pr_curves([np.array([0, 1])], [labels], [scores], [m], num_classes=3)
    assert [c.num_gt for c in curves] == [1, 1, 0]
    assert curves[0].ap == pytest.approx(1.0) and curves[1].ap == pytest.approx(1.0)
    assert np.isnan(curves[2].ap)


def test_confusion_matrix_counts_class_mixups_and_background():
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], np.float32)
    labels = np.array([0, 0, 1])  # right, wrong class, nothing there
    matrix = confusion_matrix([GT, GT], [np.array([0, 1]), np.array([0, 1])],
                              [boxes, np.zeros((0, 4))], [labels, np.zeros(0)], num_classes=2)
    expected = np.array([
        [1, 0, 1],  # true 0: once right, once missed (second image)
        [1, 0, 1],  # true 1: once called 0, once missed
        [0, 1, 0],  # background: the box at 50..60 predicted as 1
    ])
    assert matrix.tolist() == expected.tolist()
    assert matrix.sum() == 5
