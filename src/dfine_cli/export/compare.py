"""Engine-independent comparison of two backends' detections (tie-aware)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Agreement:
    """How closely two sets of top-K outputs agree."""

    max_score_diff: float  # elementwise on the (sorted) score arrays
    max_box_diff: float  # over matched detections, pixels
    matched_fraction: float  # expected detections that found a partner
    label_rank_agreement: float  # fraction of ranks with the same label

    def ok(self, score_tol: float, box_tol: float) -> bool:
        return (
            self.max_score_diff <= score_tol
            and self.max_box_diff <= box_tol
            and self.matched_fraction >= 1.0
        )

    def describe(self) -> str:
        return (
            f"max |score diff| {self.max_score_diff:.3g}, max |box diff| {self.max_box_diff:.3g} px, "
            f"{self.matched_fraction:.2%} of detections matched"
        )


def compare_detections(
    expected: tuple[np.ndarray, np.ndarray, np.ndarray],
    actual: tuple[np.ndarray, np.ndarray, np.ndarray],
    score_tol: float,
    box_tol: float,
) -> Agreement:
    """Match each expected detection to an actual one with the same label.

    Scores are sorted, so they are compared rank by rank; near-equal scores may swap
    order, so labels and boxes are matched as sets: expected detection ``i`` matches any
    actual detection with the same label, score within ``score_tol`` and box within
    ``box_tol`` (max-abs, pixels). ``max_box_diff`` is the worst best-match distance.
    Detections whose score ties the top-K cut-off (within ``score_tol``) and find no partner
    are left out: near-equal scores at the cut may fall on either side of it.
    """
    e_labels, e_boxes, e_scores = (np.asarray(a) for a in expected)
    a_labels, a_boxes, a_scores = (np.asarray(a) for a in actual)
    if e_scores.shape != a_scores.shape:
        return Agreement(float("inf"), float("inf"), 0.0, 0.0)
    max_score = float(np.abs(e_scores.astype(np.float64) - a_scores).max()) if e_scores.size else 0.0
    matched = 0
    total = 0
    worst_box = 0.0
    for b in range(e_scores.shape[0]):
        cutoff = float(min(e_scores[b].min(), a_scores[b].min())) if e_scores.shape[1] else 0.0
        for i in range(e_scores.shape[1]):
            same = (a_labels[b] == e_labels[b, i]) & (np.abs(a_scores[b] - e_scores[b, i]) <= score_tol)
            dist = float(np.abs(a_boxes[b][same] - e_boxes[b, i]).max(-1).min()) if same.any() else float("inf")
            if dist > box_tol and e_scores[b, i] - cutoff <= score_tol:
                # Tied with the top-K cut-off score: it may legitimately fall just outside the
                # other backend's top K, so it is not counted either way.
                continue
            total += 1
            worst_box = max(worst_box, dist)
            matched += int(dist <= box_tol)
    ranks = float((e_labels == a_labels).mean()) if e_labels.size else 1.0
    return Agreement(max_score, worst_box, matched / max(total, 1), ranks)
