"""One progress-callback type: the CLI's tracker and the library default both fit it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from dfine_cli.progress import Progress, no_progress

T = TypeVar("T")


def test_no_progress_passes_items_through_unchanged() -> None:
    items = iter([3, 1, 2])
    assert no_progress(items, "anything", 3) is items


def test_a_generator_tracker_fits_the_type_and_sees_the_total() -> None:
    seen: list[tuple[str, int | None]] = []

    def tracker(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
        seen.append((description, total))
        yield from items

    progress: Progress = tracker
    assert list(progress([1, 2], "eval", 2)) == [1, 2]
    assert seen == [("eval", 2)]
