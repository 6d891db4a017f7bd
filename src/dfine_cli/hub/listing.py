"""What ``dfine weights list`` and ``dfine weights download`` report, as plain data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfine_cli.errors import UsageError
from dfine_cli.hub.registry import WEIGHTS, WeightsEntry, lookup


@dataclass(frozen=True)
class WeightsRow:
    """One table entry with its cache state."""

    entry: WeightsEntry
    path: Path
    cached: bool

    def to_dict(self) -> dict[str, Any]:
        e = self.entry
        return {
            "name": e.name, "kind": e.kind, "size": e.size, "backbone": f"HGNetv2-{e.backbone}",
            "variant": e.variant if e.kind == "detector" else None, "dataset": e.dataset,
            "num_classes": e.num_classes, "ap": e.ap, "ap_on": e.ap_on or None,
            "url": e.url, "path": str(self.path), "cached": self.cached, "sha256": e.sha256,
        }


def list_weights() -> list[WeightsRow]:
    """Every name in table order, with its cache path and whether the file is there."""
    rows = []
    for entry in WEIGHTS.values():
        path = entry.cache_path()
        rows.append(WeightsRow(entry, path, path.is_file()))
    return rows


def entries_for(names: Sequence[str]) -> list[WeightsEntry]:
    """Table entries for ``names``; a usage error names every unknown one."""
    unknown = [n for n in names if lookup(n) is None]
    if unknown:
        raise UsageError(f"unknown weights name(s): {', '.join(unknown)}; see 'dfine weights list'")
    entries = [lookup(n) for n in names]
    return [e for e in entries if e is not None]


def download_weights(names: Sequence[str]) -> list[WeightsRow]:
    """Download (or verify the cached copy of) each named file; stops at the first failure."""
    from dfine_cli.hub.download import fetch_entry

    rows = []
    for entry in entries_for(names):
        rows.append(WeightsRow(entry, fetch_entry(entry), True))
    return rows
