"""The official two-stage training policy (``--stage2 best|continue``).

D-FINE and DEIM train in two stages. Stage 1 runs with the full augmentation policy; stage 2
starts at the recipe's ``stop_epoch`` (the first epoch without augmentation, 0-based here) and
fine-tunes on clean images. With ``best`` (the official behaviour, our default):

- at the start of stage 2 the run goes back to the stage-1 epoch with the best validation
  metric (``best_stg1.pth``: model, EMA, optimizer and AMP scaler);
- after every stage-2 evaluation that does not beat the best metric so far, it goes back to
  ``best_stg1.pth`` again.

The EMA keeps the run's decay throughout, which is what the official solvers do in effect:
they assign ``ema_restart_decay`` at the stage-2 start and lower ``ema.decay`` by ``1e-4`` on
each later reload, but their ``ModelEMA`` computes every update's decay from the value given
to its constructor, so neither assignment changes an update. Published results were trained
that way, and a long stage 2 with many reloads would otherwise average over an ever shorter
horizon than theirs.

The learning-rate schedule is a function of the global step and is not rewound: a reload
restores weights and optimizer moments, never the step count. Selection uses the validation
split, exactly as ``best.pth`` already does. ``continue`` trains stage 2 straight on from the
last stage-1 epoch.

One deliberate difference from the official solver: it accepts the epoch that follows a
reload whatever its metric (its per-stage best is reset on reload); here every stage-2 epoch
must beat the best metric so far, so a reload is never followed by an epoch that is kept
although it is worse.
"""

from __future__ import annotations

from dataclasses import dataclass

STAGE1_BEST = "best_stg1.pth"
STAGE2_MODES = ("best", "continue")


@dataclass(frozen=True)
class TwoStagePolicy:
    """When to go back to the best stage-1 checkpoint.

    Args:
        mode: ``"best"`` (reload as the official recipes do) or ``"continue"``.
        stage2_start: 0-based index of the first stage-2 epoch (the recipe's ``stop_epoch``).
        epochs: total number of epochs in the run.
    """

    mode: str
    stage2_start: int
    epochs: int

    def __post_init__(self) -> None:
        if self.mode not in STAGE2_MODES:
            raise ValueError(f"stage2 must be one of {', '.join(STAGE2_MODES)}, got {self.mode!r}")

    @property
    def enabled(self) -> bool:
        """True when the run has a stage 2 to manage (a stage 1 before it, and ``best``)."""
        return self.mode == "best" and 0 < self.stage2_start < self.epochs

    def in_stage2(self, epoch: int) -> bool:
        """Whether 0-based ``epoch`` belongs to stage 2."""
        return epoch >= self.stage2_start

    def keeps_stage1_best(self, epoch: int) -> bool:
        """Whether an improving evaluation after ``epoch`` must refresh ``best_stg1.pth``."""
        return self.enabled and not self.in_stage2(epoch)

    def reload_before(self, epoch: int, have_stage1_best: bool) -> bool:
        """Go back to the best stage-1 state before training 0-based ``epoch``?"""
        return self.enabled and epoch == self.stage2_start and have_stage1_best

    def reload_after(self, epoch: int, *, evaluated: bool, improved: bool,
                     have_stage1_best: bool) -> bool:
        """Go back to the best stage-1 state after 0-based ``epoch`` was trained?

        Only after an evaluated stage-2 epoch that did not improve the best metric, and never
        after the final epoch (nothing would train from the reloaded state).
        """
        return (self.enabled and have_stage1_best and evaluated and not improved
                and self.in_stage2(epoch) and epoch + 1 < self.epochs)
