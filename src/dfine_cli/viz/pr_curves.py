"""Matching detections to ground truth, precision-recall curves and the confusion matrix.

Pure numpy functions on one image's or one dataset's arrays; the HTML report draws their
results. Boxes are ``xyxy`` pixels, labels contiguous ``0..C-1``.

Matching follows COCO's rule at one IoU threshold: detections in descending score order
each take the unmatched ground-truth box of the same class with the highest IoU, if that
IoU is at least the threshold. (COCOeval's AP, reported separately, also handles crowd
boxes and area ranges; these curves are for looking at, the AP table is the metric.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import box_iou


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``a [N, 4]`` against ``b [M, 4]`` (xyxy) -> ``[N, M]`` float64."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), dtype=np.float64)
    return box_iou(torch.as_tensor(a, dtype=torch.float64),
                   torch.as_tensor(b, dtype=torch.float64)).numpy()


@dataclass(frozen=True)
class ImageMatch:
    """Which detections of one image are true positives, and which ground truth was found.

    ``det_gt[i]`` is the index of the ground-truth box detection ``i`` matched, -1 if none.
    """

    det_tp: np.ndarray  # bool [D]
    det_gt: np.ndarray  # int64 [D]
    gt_matched: np.ndarray  # bool [G]

    @property
    def false_positives(self) -> int:
        return int((~self.det_tp).sum())

    @property
    def false_negatives(self) -> int:
        return int((~self.gt_matched).sum())


def match_image(
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float = 0.5,
) -> ImageMatch:
    """Greedy same-class matching in descending score order (see the module docstring).

    Args:
        gt_boxes: ``[G, 4]``; gt_labels: ``[G]``; boxes: ``[D, 4]``; labels, scores: ``[D]``.
    """
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    order = np.argsort(-np.asarray(scores, dtype=np.float64).reshape(-1), kind="stable")
    ious = iou_matrix(boxes, gt_boxes)
    det_gt = np.full(len(boxes), -1, dtype=np.int64)
    gt_matched = np.zeros(len(gt_boxes), dtype=bool)
    for i in order:
        candidates = (gt_labels == labels[i]) & ~gt_matched
        if not candidates.any():
            continue
        row = np.where(candidates, ious[i], -1.0)
        j = int(np.argmax(row))
        if row[j] >= iou_threshold:
            det_gt[i] = j
            gt_matched[j] = True
    return ImageMatch(det_gt >= 0, det_gt, gt_matched)


@dataclass(frozen=True)
class PRCurve:
    """Precision and recall after each detection, in descending score order."""

    precision: np.ndarray  # float64 [D]
    recall: np.ndarray  # float64 [D]
    scores: np.ndarray  # float64 [D], descending
    num_gt: int

    @property
    def ap(self) -> float:
        """Area under the interpolated curve at COCO's 101 recall points (nan without GT)."""
        if self.num_gt == 0:
            return float("nan")
        if len(self.precision) == 0:
            return 0.0
        envelope = np.maximum.accumulate(self.precision[::-1])[::-1]
        points = np.linspace(0.0, 1.0, 101)
        index = np.searchsorted(self.recall, points, side="left")
        values = np.where(index < len(envelope), envelope[np.minimum(index, len(envelope) - 1)], 0.0)
        return float(values.mean())


def pr_curve(scores: np.ndarray, true_positive: np.ndarray, num_gt: int) -> PRCurve:
    """The precision-recall curve of one class from its detections over all images.

    Args:
        scores: ``[D]`` scores of the class's detections; true_positive: ``[D]`` bool.
        num_gt: ground-truth boxes of the class.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    tp = np.asarray(true_positive, dtype=bool).reshape(-1)
    order = np.argsort(-scores, kind="stable")
    tp_sum = np.cumsum(tp[order])
    fp_sum = np.cumsum(~tp[order])
    precision = tp_sum / np.maximum(tp_sum + fp_sum, 1)
    recall = tp_sum / num_gt if num_gt else np.zeros_like(precision)
    return PRCurve(precision.astype(np.float64), recall.astype(np.float64), scores[order], num_gt)


def class_pr_curves(
    gt_labels: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    matches: Sequence[ImageMatch],
    num_classes: int,
) -> list[PRCurve]:
    """One :class:`PRCurve` per class from per-image arrays and :func:`match_image` results."""
    all_labels = np.concatenate([np.asarray(x).reshape(-1) for x in labels]) if labels else np.zeros(0)
    all_scores = np.concatenate([np.asarray(x).reshape(-1) for x in scores]) if scores else np.zeros(0)
    all_tp = np.concatenate([m.det_tp for m in matches]) if matches else np.zeros(0, dtype=bool)
    all_gt = np.concatenate([np.asarray(x).reshape(-1) for x in gt_labels]) if gt_labels else np.zeros(0)
    curves = []
    for c in range(num_classes):
        mine = all_labels == c
        curves.append(pr_curve(all_scores[mine], all_tp[mine], int((all_gt == c).sum())))
    return curves


def confusion_matrix(
    gt_boxes: Sequence[np.ndarray],
    gt_labels: Sequence[np.ndarray],
    boxes: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    num_classes: int,
    iou_threshold: float = 0.5,
) -> np.ndarray:
    """Counts ``[C + 1, C + 1]``: rows the true class, columns the predicted class.

    The last row/column is *background*: a detection overlapping no ground truth is
    ``[C, predicted]`` (false positive), a missed ground-truth box ``[true, C]``. Per
    image, detection/ground-truth pairs are matched regardless of class by descending IoU
    (each used once, IoU >= ``iou_threshold``), so a right box with a wrong class lands
    off the diagonal. Pass only the detections you keep (score above a threshold).
    """
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for g_boxes, g_labels, d_boxes, d_labels in zip(gt_boxes, gt_labels, boxes, labels, strict=True):
        g_labels = np.asarray(g_labels, dtype=np.int64).reshape(-1)
        d_labels = np.asarray(d_labels, dtype=np.int64).reshape(-1)
        ious = iou_matrix(np.asarray(d_boxes).reshape(-1, 4), np.asarray(g_boxes).reshape(-1, 4))
        used_d = np.zeros(len(d_labels), dtype=bool)
        used_g = np.zeros(len(g_labels), dtype=bool)
        if ious.size:
            pairs = np.argwhere(ious >= iou_threshold)
            pairs = pairs[np.argsort(-ious[pairs[:, 0], pairs[:, 1]], kind="stable")]
            for d, g in pairs:
                if not used_d[d] and not used_g[g]:
                    used_d[d] = used_g[g] = True
                    matrix[g_labels[g], d_labels[d]] += 1
        for d in np.flatnonzero(~used_d):
            matrix[num_classes, d_labels[d]] += 1
        for g in np.flatnonzero(~used_g):
            matrix[g_labels[g], num_classes] += 1
    return matrix
