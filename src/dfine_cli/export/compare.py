"""Engine-independent comparison of two implementations' outputs, robust to near-ties.

Two float32 implementations of the same network (torch and ONNX Runtime, fused and
unfused BatchNorms) round differently, and a deep network amplifies the difference.
Near-equal scores then swap places, so comparing top-K lists index by index reports
disagreements that are not there. Two order-free measures are used instead:

* :func:`compare_detections`: the top-K detections ``(labels [B,K], boxes [B,K,4],
  scores [B,K])``. Sorted scores are compared rank by rank (sorting removes the order);
  each expected detection then looks for an *unused* actual detection with the same
  label, a score within the score tolerance and a box within the box tolerance.
* :func:`compare_raw`: the decoder's raw outputs before top-K (``logits [B,Q,C]``,
  ``boxes [B,Q,4]`` cxcywh normalised), matched row by row as sets.

Every figure reported is finite: a detection without a partner is reported as the worst
unmatched detection (its label, score and box, and how far the nearest candidate is).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class UnmatchedDetection:
    """An expected detection that found no partner, and its nearest same-label candidate."""

    image: int
    rank: int
    label: int
    score: float
    box: tuple[float, float, float, float]  # xyxy, pixels
    nearest_score_diff: float | None  # None: no actual detection has this label
    nearest_box_diff: float | None  # pixels, max-abs over the 4 coordinates

    def describe(self) -> str:
        box = ", ".join(f"{v:.1f}" for v in self.box)
        where = f"label {self.label} score {self.score:.4f} box [{box}] (image {self.image}, rank {self.rank})"
        if self.nearest_score_diff is None or self.nearest_box_diff is None:
            return f"{where}: no detection with that label"
        return (
            f"{where}: nearest same-label detection differs by {self.nearest_score_diff:.3g} in "
            f"score and {self.nearest_box_diff:.3g} px in box"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "image": self.image, "rank": self.rank, "label": self.label, "score": self.score,
            "box": list(self.box), "nearest_score_diff": self.nearest_score_diff,
            "nearest_box_diff_px": self.nearest_box_diff,
        }


@dataclass(frozen=True)
class RawAgreement:
    """How closely the raw per-query outputs agree, matched as sets of rows."""

    max_logit_diff: float  # over expected rows, to the nearest actual row
    max_box_diff: float  # normalised box units (fraction of the image side)
    matched_fraction: float  # expected rows with an actual row within both tolerances
    rows: int

    def ok(self, logit_tol: float, box_tol: float, min_fraction: float) -> bool:
        del logit_tol, box_tol  # the fraction was computed with them
        return self.matched_fraction >= min_fraction

    def describe(self) -> str:
        return (
            f"raw outputs: {self.matched_fraction:.2%} of {self.rows} query rows matched, "
            f"max |logit diff| {self.max_logit_diff:.3g}, max |box diff| {self.max_box_diff:.3g}"
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "max_logit_diff": self.max_logit_diff, "max_box_diff": self.max_box_diff,
            "matched_fraction": self.matched_fraction, "rows": self.rows,
        }


@dataclass
class Agreement:
    """How closely two sets of top-K outputs agree (all numbers finite)."""

    max_score_diff: float  # sorted scores, rank by rank
    max_box_diff: float  # pixels, over matched detections
    matched_fraction: float  # of compared expected detections
    label_rank_agreement: float  # fraction of ranks with the same label (informational)
    compared: int = 0  # expected detections compared (ties at the top-K cut-off excused)
    worst_unmatched: UnmatchedDetection | None = None
    raw: RawAgreement | None = None

    def ok(self, score_tol: float, box_tol: float) -> bool:
        """Sorted scores within ``score_tol`` and every compared detection matched.

        ``box_tol`` was used for the matching itself; ``max_box_diff`` never exceeds it.
        """
        return (
            self.max_score_diff <= score_tol
            and self.max_box_diff <= box_tol
            and self.matched_fraction >= 1.0
        )

    def describe(self) -> str:
        text = (
            f"{self.matched_fraction:.2%} of {self.compared} detections matched, "
            f"max |score diff| {self.max_score_diff:.3g}, "
            f"max |box diff| {self.max_box_diff:.3g} px over matched detections"
        )
        if self.worst_unmatched is not None:
            text += f"; worst unmatched: {self.worst_unmatched.describe()}"
        if self.raw is not None:
            text += f"; {self.raw.describe()}"
        return text

    def to_dict(self) -> dict[str, object]:
        return {
            "max_score_diff": self.max_score_diff,
            "max_box_diff_px": self.max_box_diff,
            "matched_fraction": self.matched_fraction,
            "compared": self.compared,
            "worst_unmatched": None if self.worst_unmatched is None else self.worst_unmatched.to_dict(),
            "raw": None if self.raw is None else self.raw.to_dict(),
        }


def compare_detections(
    expected: tuple[np.ndarray, np.ndarray, np.ndarray],
    actual: tuple[np.ndarray, np.ndarray, np.ndarray],
    score_tol: float,
    box_tol: float,
) -> Agreement:
    """Match each expected detection to an unused actual one (tie-aware, one to one).

    ``expected``/``actual``: ``(labels [B,K], boxes [B,K,4] xyxy pixels, scores [B,K])``,
    scores sorted descending. Expected detection ``i`` (best first) takes the unused actual
    detection with the same label, ``|score diff| <= score_tol`` and max-abs box
    difference ``<= box_tol`` pixels that is nearest in box. Expected detections whose
    score is within ``score_tol`` of the top-K cut-off and find no partner are not
    counted: near-equal scores at the cut may fall on either side of it.
    """
    e_labels, e_boxes, e_scores = (np.asarray(a) for a in expected)
    a_labels, a_boxes, a_scores = (np.asarray(a) for a in actual)
    if e_scores.shape != a_scores.shape or e_boxes.shape != a_boxes.shape:
        raise ValueError(
            f"output shapes differ: scores {e_scores.shape} vs {a_scores.shape}, "
            f"boxes {e_boxes.shape} vs {a_boxes.shape}"
        )
    e_boxes64, a_boxes64 = e_boxes.astype(np.float64), a_boxes.astype(np.float64)
    e_scores64, a_scores64 = e_scores.astype(np.float64), a_scores.astype(np.float64)
    max_score = float(np.abs(e_scores64 - a_scores64).max()) if e_scores.size else 0.0
    compared = matched = 0
    worst_box = 0.0
    worst: UnmatchedDetection | None = None
    worst_key = -1.0
    for b in range(e_scores.shape[0]):
        if not e_scores.shape[1]:
            continue
        cutoff = float(min(e_scores64[b].min(), a_scores64[b].min()))
        used = np.zeros(a_scores.shape[1], dtype=bool)
        # box distance of every expected detection to every actual one (pixels, max-abs)
        dist = np.abs(e_boxes64[b][:, None, :] - a_boxes64[b][None, :, :]).max(-1)
        score_diff = np.abs(e_scores64[b][:, None] - a_scores64[b][None, :])
        same_label = e_labels[b][:, None] == a_labels[b][None, :]
        for i in np.argsort(-e_scores64[b], kind="stable"):
            ok = same_label[i] & (score_diff[i] <= score_tol) & (dist[i] <= box_tol) & ~used
            if ok.any():
                j = int(np.flatnonzero(ok)[np.argmin(dist[i][ok])])
                used[j] = True
                compared += 1
                matched += 1
                worst_box = max(worst_box, float(dist[i, j]))
                continue
            if e_scores64[b, i] - cutoff <= score_tol:
                continue  # tied with the cut-off: may legitimately fall outside the other top K
            compared += 1
            candidates = np.flatnonzero(same_label[i])
            if candidates.size:
                # nearest same-label candidate in tolerance units (score and box together)
                cost = np.maximum(score_diff[i][candidates] / max(score_tol, 1e-12),
                                  dist[i][candidates] / max(box_tol, 1e-12))
                j = int(candidates[np.argmin(cost)])
                near_score, near_box = float(score_diff[i, j]), float(dist[i, j])
                key = float(cost.min())
            else:
                near_score = near_box = None  # type: ignore[assignment]
                key = float("inf")
            # the worst is the one furthest from any candidate; among equals, the best scored
            if worst is None or key > worst_key:
                worst_key = key
                worst = UnmatchedDetection(
                    image=b, rank=int(i), label=int(e_labels[b, i]), score=float(e_scores64[b, i]),
                    box=tuple(float(v) for v in e_boxes64[b, i]),  # type: ignore[arg-type]
                    nearest_score_diff=near_score, nearest_box_diff=near_box,
                )
    ranks = float((e_labels == a_labels).mean()) if e_labels.size else 1.0
    fraction = matched / compared if compared else 1.0
    return Agreement(max_score, worst_box, fraction, ranks, compared, worst)


def compare_raw(
    expected: tuple[np.ndarray, np.ndarray],
    actual: tuple[np.ndarray, np.ndarray],
    logit_tol: float,
    box_tol: float,
) -> RawAgreement:
    """Match the decoder's raw query rows as sets (the query order is not compared).

    ``expected``/``actual``: ``(logits [B,Q,C], boxes [B,Q,4])``. Expected row ``i`` is
    matched if some actual row of the same image is within ``logit_tol`` (max-abs over the
    classes) and ``box_tol`` (max-abs, normalised units). The reported differences are
    those of each expected row's nearest actual row (in tolerance units), maximised.
    Rows at the encoder's query-selection cut-off may be replaced by a near-tied query,
    so the caller accepts a small unmatched fraction.
    """
    e_logits, e_boxes = (np.asarray(a, dtype=np.float64) for a in expected)
    a_logits, a_boxes = (np.asarray(a, dtype=np.float64) for a in actual)
    if e_logits.shape != a_logits.shape or e_boxes.shape != a_boxes.shape:
        raise ValueError(
            f"raw output shapes differ: logits {e_logits.shape} vs {a_logits.shape}, "
            f"boxes {e_boxes.shape} vs {a_boxes.shape}"
        )
    rows = int(e_logits.shape[0] * e_logits.shape[1])
    matched = 0
    max_logit = max_box = 0.0
    for b in range(e_logits.shape[0]):
        dl = _max_abs_distance(e_logits[b], a_logits[b])
        db = _max_abs_distance(e_boxes[b], a_boxes[b])
        cost = np.maximum(dl / max(logit_tol, 1e-12), db / max(box_tol, 1e-12))
        nearest = cost.argmin(axis=1)
        idx = np.arange(cost.shape[0])
        matched += int((cost[idx, nearest] <= 1.0).sum())
        if cost.shape[0]:
            max_logit = max(max_logit, float(dl[idx, nearest].max()))
            max_box = max(max_box, float(db[idx, nearest].max()))
    return RawAgreement(max_logit, max_box, matched / rows if rows else 1.0, rows)


def _max_abs_distance(a: np.ndarray, b: np.ndarray, chunk: int = 64) -> np.ndarray:
    """``[n, d]`` x ``[m, d]`` -> ``[n, m]`` Chebyshev (max-abs) distances, in chunks."""
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.float64)
    for start in range(0, a.shape[0], chunk):
        out[start : start + chunk] = np.abs(a[start : start + chunk, None, :] - b[None, :, :]).max(-1)
    return out
