"""The few words a progress display shows beside an epoch's bar: running loss and learning rate.

The trainer hands its progress callback (:class:`dfine_cli.progress.Progress`) a
:class:`StatusIterable` instead of the bare batch iterator. A display that knows about it
(``dfine_cli.cli._common.track``) reads :meth:`StatusIterable.status` after every item and shows
it on the bar (TTY) or at the end of each plain line (piped); any other callback just iterates
it as usual.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class StatusIterable(Generic[T]):
    """``items``, plus a ``status()`` text describing how the work they feed is going."""

    def __init__(self, items: Iterable[T], status: Callable[[], str]) -> None:
        self._items = items
        self.status = status

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)


@dataclass
class RunningStatus:
    """Mean loss of the epoch so far and the learning rate of the last optimizer step."""

    loss: float = math.nan
    lr: float = math.nan

    def update(self, mean_loss: float, lr: float) -> None:
        self.loss, self.lr = mean_loss, lr

    def text(self) -> str:
        """``"loss 12.3456 lr 2.50e-04"``; empty before the first step."""
        if math.isnan(self.lr):
            return ""
        return f"loss {self.loss:.4f} lr {self.lr:.2e}"
