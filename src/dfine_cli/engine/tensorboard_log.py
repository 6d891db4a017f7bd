"""Optional TensorBoard scalars of a training run (``dfine train --tensorboard``).

Written through ``torch.utils.tensorboard`` into ``<run folder>/tensorboard/``, by the main
process only:

- every optimizer step, at the global step: ``train/loss``, each loss term
  (``train/loss_vfl``...) and ``train/lr``;
- every epoch, at the epoch number (1-based): every number of the epoch's ``metrics.csv`` row
  under ``epoch/`` (``epoch/loss``, ``epoch/val_AP``, ``epoch/images_per_s``...).

A resumed run purges the events after the step it resumes from, so the curves do not
double back. ``torch.utils.tensorboard`` needs the ``tensorboard`` package (the
``dfine[tensorboard]`` extra); :func:`require_tensorboard` fails early, with exit code 6,
when it is missing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dfine_cli.errors import DependencyError

TENSORBOARD_DIR = "tensorboard"
_MISSING = ("--tensorboard needs the 'tensorboard' package, which is not installed; install it "
            "with: pip install 'dfine[tensorboard]' (or pip install tensorboard)")


def require_tensorboard() -> None:
    """Raise :class:`DependencyError` (exit 6) unless ``torch.utils.tensorboard`` imports."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError as exc:
        raise DependencyError(f"{_MISSING} ({exc})") from exc


class ScalarLog:
    """Where the trainer reports its scalars; this base class drops them (TensorBoard off)."""

    def step(self, global_step: int, losses: dict[str, float], lr: float) -> None:
        """After optimizer step ``global_step`` (1-based): its loss terms and learning rate."""

    def epoch(self, record: dict[str, Any]) -> None:
        """After an epoch: its ``metrics.csv`` row (``record["epoch"]`` is 1-based)."""

    def close(self) -> None:
        """Flush and release the files."""


class TensorBoardLog(ScalarLog):
    """Scalars into ``log_dir`` through ``torch.utils.tensorboard.SummaryWriter``.

    Args:
        log_dir: the events folder (created if needed).
        purge_step: on resume, the global step training continues from: later events of an
            earlier writer are hidden.
    """

    def __init__(self, log_dir: Path, purge_step: int | None = None) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def step(self, global_step: int, losses: dict[str, float], lr: float) -> None:
        for name, value in losses.items():
            self._writer.add_scalar(f"train/{name}", value, global_step)
        self._writer.add_scalar("train/lr", lr, global_step)

    def epoch(self, record: dict[str, Any]) -> None:
        epoch = int(record["epoch"])
        for name, value in record.items():
            if name != "epoch" and isinstance(value, int | float) and not isinstance(value, bool) \
                    and math.isfinite(value):
                self._writer.add_scalar(f"epoch/{name}", value, epoch)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def open_scalar_log(enabled: bool, run_dir: Path, purge_step: int | None = None) -> ScalarLog:
    """A :class:`TensorBoardLog` in ``run_dir/tensorboard`` when ``enabled``, else a no-op."""
    return TensorBoardLog(run_dir / TENSORBOARD_DIR, purge_step) if enabled else ScalarLog()
