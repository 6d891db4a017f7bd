"""Where the wall-clock time of a training epoch goes: waiting for data or computing.

:class:`ThroughputMeter` wraps the batch iterator of an epoch. The time spent inside the
iterator's ``next()`` (the DataLoader delivering a batch) is *data wait*; the time from a
batch being handed out until the next one is requested (forward, loss, backward, optimizer,
EMA, logging) is *step time*. A data-wait fraction near 0 means the model is the bottleneck;
a large one means the data pipeline is (more ``--workers`` help).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["THROUGHPUT_KEYS", "ThroughputMeter", "last_epoch_throughput"]


class ThroughputMeter:
    """Accumulate data-wait and step seconds, images and steps of one epoch.

    Use ``for batch in meter.timed(loader): ...``; a batch is ``(images [B, ...], targets)``
    and counts ``B`` images. Read :meth:`summary` after the loop.
    """

    def __init__(self) -> None:
        self.data_seconds = 0.0
        self.step_seconds = 0.0
        self.images = 0
        self.steps = 0

    def timed(self, batches: Iterable[Any]) -> Iterator[Any]:
        """Yield the batches of ``batches`` while timing them (see the module docstring)."""
        iterator = iter(batches)
        while True:
            requested = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            delivered = time.perf_counter()
            self.data_seconds += delivered - requested
            yield batch
            self.step_seconds += time.perf_counter() - delivered
            self.steps += 1
            self.images += _batch_size(batch)

    def summary(self, processes: int = 1) -> dict[str, float]:
        """``images_per_s`` (all ``processes`` together, each assumed to see as many),
        ``data_wait_frac`` (share of the epoch spent waiting for batches, 0..1) and
        ``step_time_s`` (mean seconds per step, without the data wait); 0 for an empty epoch.
        """
        total = self.data_seconds + self.step_seconds
        return {
            "images_per_s": round(self.images * processes / total, 3) if total > 0 else 0.0,
            "data_wait_frac": round(self.data_seconds / total, 4) if total > 0 else 0.0,
            "step_time_s": round(self.step_seconds / self.steps, 4) if self.steps else 0.0,
        }


def _batch_size(batch: Any) -> int:
    images = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    shape = getattr(images, "shape", None)
    return int(shape[0]) if shape else 0


#: The per-epoch columns :meth:`ThroughputMeter.summary` adds to the training history.
THROUGHPUT_KEYS = ("images_per_s", "data_wait_frac", "step_time_s")


def last_epoch_throughput(history: list[dict[str, Any]]) -> dict[str, float] | None:
    """The throughput columns of the last epoch of a training history, ``None`` if absent."""
    if not history or not all(key in history[-1] for key in THROUGHPUT_KEYS):
        return None
    return {key: float(history[-1][key]) for key in THROUGHPUT_KEYS}
