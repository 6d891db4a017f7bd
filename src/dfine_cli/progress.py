"""The progress callback every long library call accepts: one type and its no-op default.

A library function that loops over many items takes ``progress: Progress = no_progress`` and
iterates ``progress(items, "what", total)`` instead of ``items``. The command line passes
:func:`dfine_cli.cli._common.track` (a bar on a TTY, plain ``what: i/n`` lines when piped);
Python callers pass nothing, or their own function of the same shape.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

T = TypeVar("T")


class Progress(Protocol):
    """``progress(items, description, total=None)`` → the same items, in order.

    ``description`` names the step (``"eval"``, ``"epoch 3/72"``); ``total`` is the number of
    items when ``items`` has no length (``None``: unknown).
    """

    def __call__(self, items: Iterable[T], description: str, /, total: int | None = None) -> Iterable[T]: ...


def no_progress(items: Iterable[T], description: str, /, total: int | None = None) -> Iterable[T]:
    """The default :class:`Progress`: shows nothing and returns ``items`` unchanged."""
    return items


__all__ = ["Progress", "no_progress"]
