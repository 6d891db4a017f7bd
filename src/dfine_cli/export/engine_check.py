"""How close an engine's detections must be to the reference's, and the check that says so.

Engine-independent and tested without a GPU: the tolerance policy (:data:`TOLERANCES`), the
comparison of one batch (:func:`check_outputs`, tie-aware through
:func:`~dfine_cli.export.compare.compare_detections`) and the result table (:func:`check_table`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dfine_cli.errors import UsageError
from dfine_cli.export.compare import UnmatchedDetection, compare_detections

#: The precisions an engine is built and checked in.
ENGINE_PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class Tolerance:
    """How far an engine's detections may be from the reference's.

    ``score``: max absolute score difference, rank by rank (scores are sorted) and for
    matched detections. ``box_px``: max absolute box-coordinate difference in pixels of the
    check images. ``min_score``: only detections the reference scores at least this high
    are matched (FP16 reorders the low-score tail freely; it is not what anyone keeps).
    """

    score: float
    box_px: float
    min_score: float = 0.0


#: FP32 must agree closely (TF32 is switched off for FP32 builds); FP16 within what half
#: precision through ~100 layers gives.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(score=1e-3, box_px=1.0, min_score=0.0),
    "fp16": Tolerance(score=3e-2, box_px=4.0, min_score=0.1),
}


def tolerance_for(precision: str) -> Tolerance:
    try:
        return TOLERANCES[precision]
    except KeyError:
        raise UsageError(f"unknown engine precision {precision!r}; one of {ENGINE_PRECISIONS}") from None


@dataclass(frozen=True)
class EngineCheck:
    """The outcome of running the same batch through the engine and the reference.

    Every figure is finite: ``max_box_diff`` is over matched detections, and a detection
    without a partner is described by ``worst_unmatched``; ``problem`` names a mismatch
    that prevents any comparison (different output shapes).
    """

    batch: int
    max_score_diff: float
    max_box_diff: float  # pixels, over matched detections
    matched_fraction: float  # of compared detections
    compared: int  # detections compared for boxes (reference score >= min_score)
    tolerance: Tolerance
    worst_unmatched: UnmatchedDetection | None = None
    problem: str | None = None

    @property
    def passed(self) -> bool:
        return (
            self.problem is None
            and self.max_score_diff <= self.tolerance.score
            and self.max_box_diff <= self.tolerance.box_px
            and self.matched_fraction >= 1.0
        )

    def describe(self) -> str:
        if self.problem is not None:
            return f"batch {self.batch}: {self.problem}"
        text = (
            f"batch {self.batch}: max |score diff| {self.max_score_diff:.3g} "
            f"(tolerance {self.tolerance.score:g}), max |box diff| {self.max_box_diff:.3g} px "
            f"(tolerance {self.tolerance.box_px:g}), {self.matched_fraction:.1%} of "
            f"{self.compared} detections matched"
        )
        if self.worst_unmatched is not None:
            text += f"; worst unmatched: {self.worst_unmatched.describe()}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "max_score_diff": self.max_score_diff,
            "max_box_diff_px": self.max_box_diff,
            "matched_fraction": self.matched_fraction,
            "compared": self.compared,
            "tolerance": dataclasses.asdict(self.tolerance),
            "worst_unmatched": None if self.worst_unmatched is None else self.worst_unmatched.to_dict(),
            "problem": self.problem,
            "passed": self.passed,
        }


Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]


def check_outputs(expected: Outputs, actual: Outputs, tolerance: Tolerance) -> EngineCheck:
    """Compare ``(labels [B,K], boxes [B,K,4], scores [B,K])`` of an engine with a reference.

    Scores are compared rank by rank over all ``K`` (both are sorted, so reordering of equal
    scores does not matter); boxes and labels over the reference's detections scoring at
    least ``tolerance.min_score``, tie-aware and one to one (see
    :func:`~dfine_cli.export.compare.compare_detections`).
    """
    e_labels, e_boxes, e_scores = (np.asarray(a) for a in expected)
    a_labels, a_boxes, a_scores = (np.asarray(a) for a in actual)
    batch = int(e_scores.shape[0]) if e_scores.ndim else 0
    if e_scores.shape != a_scores.shape or e_boxes.shape != a_boxes.shape:
        problem = (f"output shapes differ: scores {a_scores.shape}, boxes {a_boxes.shape} "
                   f"(reference {e_scores.shape}, {e_boxes.shape})")
        return EngineCheck(batch, 0.0, 0.0, 0.0, 0, tolerance, problem=problem)
    max_score = float(np.abs(e_scores.astype(np.float64) - a_scores).max()) if e_scores.size else 0.0
    worst_box, matched, compared = 0.0, 0.0, 0
    worst: UnmatchedDetection | None = None
    for b in range(batch):
        k = int((e_scores[b] >= tolerance.min_score).sum())
        if k == 0:
            continue
        part = compare_detections(
            (e_labels[b : b + 1, :k], e_boxes[b : b + 1, :k], e_scores[b : b + 1, :k]),
            (a_labels[b : b + 1, :k], a_boxes[b : b + 1, :k], a_scores[b : b + 1, :k]),
            score_tol=tolerance.score,
            box_tol=tolerance.box_px,
        )
        worst_box = max(worst_box, part.max_box_diff)
        matched += part.matched_fraction * part.compared
        compared += part.compared
        if part.worst_unmatched is not None and worst is None:
            worst = dataclasses.replace(part.worst_unmatched, image=b)
    fraction = matched / compared if compared else 1.0
    return EngineCheck(batch, max_score, worst_box, fraction, compared, tolerance, worst)


CHECK_COLUMNS = ("batch", "max score diff", "max box diff (px)", "matched", "tolerance", "result")


def check_table(checks: Sequence[EngineCheck]) -> list[tuple[str, ...]]:
    """Rows for :data:`CHECK_COLUMNS`, one per checked batch size."""
    return [
        (
            str(c.batch),
            f"{c.max_score_diff:.3g}",
            f"{c.max_box_diff:.3g}",
            f"{c.matched_fraction:.1%} of {c.compared}",
            f"score {c.tolerance.score:g}, box {c.tolerance.box_px:g} px",
            "ok" if c.passed else "FAILED",
        )
        for c in checks
    ]
