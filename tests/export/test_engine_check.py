"""The tolerance policy an engine is checked with, and the check of one batch (no GPU needed)."""

from __future__ import annotations

import numpy as np
import pytest

from dfine_cli.export.engine_check import TOLERANCES, check_outputs, check_table, tolerance_for


def _outputs(batch: int = 2, k: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    scores = np.sort(rng.random((batch, k)).astype(np.float32), axis=1)[:, ::-1].copy()
    labels = rng.integers(0, 5, (batch, k))
    xy = rng.uniform(0, 500, (batch, k, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(10, 100, (batch, k, 2))], -1).astype(np.float32)
    return labels, boxes, scores


def test_identical_outputs_pass_both_policies():
    out = _outputs()
    for precision in ("fp32", "fp16"):
        check = check_outputs(out, out, tolerance_for(precision))
        assert check.passed and check.max_score_diff == 0 and check.max_box_diff == 0


def test_fp32_is_stricter_than_fp16():
    labels, boxes, scores = _outputs()
    noisy = (labels, boxes + 2.0, scores)  # every box 2 px off
    assert not check_outputs((labels, boxes, scores), noisy, TOLERANCES["fp32"]).passed
    assert check_outputs((labels, boxes, scores), noisy, TOLERANCES["fp16"]).passed
    assert TOLERANCES["fp32"].score < TOLERANCES["fp16"].score
    assert TOLERANCES["fp32"].box_px < TOLERANCES["fp16"].box_px


def test_score_drift_fails():
    labels, boxes, scores = _outputs()
    drift = scores.copy()
    drift[0, 0] -= 0.1
    check = check_outputs((labels, boxes, scores), (labels, boxes, drift), TOLERANCES["fp16"])
    assert not check.passed and check.max_score_diff == pytest.approx(0.1, abs=1e-6)


def test_wrong_label_fails_and_shape_mismatch_fails():
    labels, boxes, scores = _outputs()
    wrong = labels.copy()
    wrong[1, 0] = (wrong[1, 0] + 1) % 5
    assert not check_outputs((labels, boxes, scores), (wrong, boxes, scores), TOLERANCES["fp32"]).passed
    short = (labels[:, :10], boxes[:, :10], scores[:, :10])
    assert not check_outputs((labels, boxes, scores), short, TOLERANCES["fp32"]).passed


def test_fp16_ignores_the_low_score_tail():
    labels, boxes, scores = _outputs()
    moved = boxes.copy()
    low = scores < TOLERANCES["fp16"].min_score
    moved[low] += 50.0  # low-score detections wander; kept ones do not
    check = check_outputs((labels, boxes, scores), (labels, moved, scores), TOLERANCES["fp16"])
    assert check.passed and check.compared == int((~low).sum())


def test_check_table_rows():
    out = _outputs()
    rows = check_table([check_outputs(out, out, TOLERANCES["fp32"])])
    assert rows[0][0] == "2" and rows[0][-1] == "ok"
