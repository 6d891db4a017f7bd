"""The two-stage policy's decisions (pure logic; the trainer test checks the reloads)."""

from __future__ import annotations

import pytest

from dfine_cli.engine.stages import TwoStagePolicy


def test_best_reloads_at_stage2_start_only_when_a_stage1_best_exists() -> None:
    policy = TwoStagePolicy("best", stage2_start=3, epochs=5)
    assert policy.enabled
    assert not policy.reload_before(2, have_stage1_best=True)
    assert policy.reload_before(3, have_stage1_best=True)
    assert not policy.reload_before(3, have_stage1_best=False)
    assert not policy.reload_before(4, have_stage1_best=True)


def test_best_reloads_after_non_improving_stage2_epochs_except_the_last() -> None:
    policy = TwoStagePolicy("best", stage2_start=3, epochs=6)
    kwargs = {"evaluated": True, "have_stage1_best": True}
    assert not policy.reload_after(2, improved=False, **kwargs)  # stage 1: never
    assert policy.reload_after(3, improved=False, **kwargs)
    assert not policy.reload_after(3, improved=True, **kwargs)
    assert not policy.reload_after(4, improved=False, evaluated=False, have_stage1_best=True)
    assert not policy.reload_after(5, improved=False, **kwargs)  # final epoch


def test_continue_never_reloads() -> None:
    policy = TwoStagePolicy("continue", stage2_start=3, epochs=6)
    assert not policy.enabled
    assert not policy.reload_before(3, have_stage1_best=True)
    assert not policy.reload_after(4, improved=False, evaluated=True, have_stage1_best=True)
    assert not policy.keeps_stage1_best(1)


def test_runs_without_a_stage1_or_stage2_are_not_managed() -> None:
    assert not TwoStagePolicy("best", stage2_start=0, epochs=4).enabled
    assert not TwoStagePolicy("best", stage2_start=4, epochs=4).enabled


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="stage2 must be one of"):
        TwoStagePolicy("sometimes", stage2_start=3, epochs=6)
