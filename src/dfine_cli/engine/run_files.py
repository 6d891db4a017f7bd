"""The run folder of a training run and what it writes besides checkpoints.

A run folder is claimed before training (:func:`claim_new_run`, :func:`claim_resumed_run`):
created if needed, locked (:mod:`dfine_cli.engine.run_lock`) and, for a new run, refused
when it already holds files unless ``exist_ok``. :meth:`RunFolder.close` releases the lock
and removes the folder again when the run created it and left nothing in it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import shutil
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import yaml

from dfine_cli.engine.run_lock import LOCK_NAME, RunLock
from dfine_cli.errors import UsageError
from dfine_cli.fileio import atomic_open, next_run_dir, write_json

log = logging.getLogger("dfine.train")

#: What a training run writes into its folder; ``exist_ok`` removes a previous run's copies.
RUN_ARTIFACTS = ("last.pth", "best.pth", "best_stg1.pth", "best_eval.json", "config.yaml", "metrics.csv",
                 "metrics.json", "metrics.svg", "tensorboard")


@dataclass
class RunFolder:
    """A run folder this process trains in; :meth:`close` it when the run ends (any way)."""

    path: Path
    created: bool  # this process created the folder
    lock: RunLock

    def close(self) -> None:
        """Release the lock; remove the folder if this run created it and wrote nothing."""
        self.lock.release()
        if self.created and not _contents(self.path):
            with contextlib.suppress(OSError):
                for leftover in self.path.iterdir():  # lock temporaries of a killed writer
                    leftover.unlink()
                self.path.rmdir()


def _contents(folder: Path) -> list[str]:
    """Names in ``folder`` other than lock files, sorted (checkpoints first)."""
    try:
        names = [p.name for p in folder.iterdir() if not p.name.startswith(LOCK_NAME)]
    except FileNotFoundError:
        return []
    rank = {n: i for i, n in enumerate(RUN_ARTIFACTS)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def _lock(path: Path, created: bool) -> RunFolder:
    folder = RunFolder(path, created, RunLock(path))
    try:
        folder.lock.acquire()
    except BaseException:
        folder.close()
        raise
    return folder


def claim_new_run(output: str | os.PathLike[str] | None, name: str | None = None,
                  exist_ok: bool = False, root: str | os.PathLike[str] = "runs") -> RunFolder:
    """Create and lock the folder of a new training run.

    ``output`` given: that folder, refused when it holds files unless ``exist_ok`` (which
    then removes the previous run's :data:`RUN_ARTIFACTS`). Otherwise ``runs/train/<name>``
    numbered ``exp``, ``exp2``... like Ultralytics; with ``exist_ok``, ``runs/train/<name>``
    itself (default name ``exp``).

    Raises:
        UsageError: the folder holds files (without ``exist_ok``), is a file, or another live
            process trains in it (:class:`~dfine_cli.engine.run_lock.RunFolderInUse`).
    """
    if output is None and not exist_ok:
        return _lock(next_run_dir("train", name, root=root), created=True)
    path = Path(output) if output is not None else Path(root) / "train" / (name or "exp")
    if path.exists() and not path.is_dir():
        raise UsageError(f"run folder {path} is a file, not a folder; choose another --output")
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    folder = _lock(path, created)
    if folder.lock.owner is None:
        return folder  # our launcher holds the lock and has checked the folder
    try:
        leftovers = _contents(path)
        if leftovers and not exist_ok:
            shown = ", ".join(leftovers[:4]) + (", ..." if len(leftovers) > 4 else "")
            second = (f"--resume {path} to continue that run" if "last.pth" in leftovers
                      else "another --output")
            raise UsageError(f"run folder {path} is not empty ({shown}); pass --exist-ok to "
                             f"start a new run over it, or {second}")
        removed = [n for n in RUN_ARTIFACTS if n in leftovers]
        for artifact in removed:
            if (path / artifact).is_dir():  # tensorboard/: the previous run's events
                shutil.rmtree(path / artifact)
            else:
                (path / artifact).unlink(missing_ok=True)
        if removed:
            log.warning("--exist-ok: removed the previous run's %s from %s", ", ".join(removed), path)
    except BaseException:
        folder.close()
        raise
    return folder


def claim_resumed_run(run_dir: str | os.PathLike[str]) -> RunFolder:
    """Lock the folder of a run to resume (raises if another live process trains in it)."""
    return _lock(Path(run_dir), created=False)


class RunFiles:
    """Writers for ``config.yaml``, ``metrics.csv``, ``metrics.json`` and ``metrics.svg``."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.run_dir = run_dir
        self.enabled = enabled

    def write_config(self, config: dict[str, Any]) -> None:
        if self.enabled:
            with atomic_open(self.run_dir / "config.yaml") as fh:
                yaml.safe_dump(config, fh, sort_keys=False)

    def write_history(self, history: list[dict[str, Any]]) -> None:
        if not self.enabled or not history:
            return
        write_json(self.run_dir / "metrics.json", {"schema_version": 1, "epochs": history})
        columns: list[str] = []
        for row in history:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k, "") for k in columns})
        with atomic_open(self.run_dir / "metrics.csv") as fh:
            fh.write(buf.getvalue())
        with atomic_open(self.run_dir / "metrics.svg") as fh:
            fh.write(render_svg(history))


@dataclass(frozen=True)
class _Panel:
    """Where one chart sits in the SVG (pixels; ``y`` grows downwards)."""

    x: float
    y: float
    width: float
    height: float

    def to_x(self, value: float, low: float, high: float) -> float:
        return self.x + (value - low) / (high - low) * self.width

    def to_y(self, value: float, low: float, high: float) -> float:
        return self.y + self.height - (value - low) / (high - low) * self.height


_SVG_WIDTH, _SVG_HEIGHT = 720, 300
_PANELS = (_Panel(64, 36, 280, 200), _Panel(424, 36, 280, 200))
_MAX_TICKS = 8


def epoch_ticks(first: int, last: int, max_ticks: int = _MAX_TICKS) -> list[int]:
    """Whole epochs to label on the x axis of a chart of epochs ``first..last``.

    At most ``max_ticks`` ticks at the multiples of a step of 1, 2, 5, 10, 20, 50... epochs,
    plus ``first`` when it is at least half a step before the first multiple.
    """
    step = 1
    while True:
        start = -(-first // step) * step  # the first multiple of step >= first
        ticks = list(range(start, last + 1, step))
        if not ticks or start - first >= step / 2:
            ticks.insert(0, first)
        if len(ticks) <= max_ticks:
            return ticks
        step = _next_step(step)


def _next_step(step: int) -> int:
    """1 → 2 → 5 → 10 → 20 → 50 → 100 ..."""
    magnitude = 10 ** (len(str(step)) - 1)
    lead = step // magnitude
    return {1: 2, 2: 5, 5: 10}[lead] * magnitude


def _panel_svg(title: str, values: list[tuple[float, float]], panel: _Panel, epochs: tuple[int, int],
               color: str) -> list[str]:
    """One chart: title above the frame, min/max at the left of the y axis, epoch ticks below."""
    p = panel
    parts = [f'<text class="title" x="{p.x}" y="{p.y - 12}" font-size="13">{escape(title)}</text>',
             f'<rect class="frame" x="{p.x}" y="{p.y}" width="{p.width}" height="{p.height}" '
             'fill="none" stroke="#ccc"/>']
    first, last = epochs
    x_high = last if last > first else first + 1
    for epoch in epoch_ticks(first, last):
        x = p.to_x(epoch, first, x_high)
        bottom = p.y + p.height
        parts.append(f'<line class="tick" x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 5}" '
                     'stroke="#666"/>')
        parts.append(f'<text class="tick-label" x="{x:.1f}" y="{bottom + 18}" font-size="11" '
                     f'text-anchor="middle">{epoch}</text>')
    parts.append(f'<text class="axis-label" x="{p.x + p.width / 2}" y="{p.y + p.height + 34}" '
                 'font-size="11" text-anchor="middle">epoch</text>')
    finite = [(x, y) for x, y in values if math.isfinite(y)]
    if not finite:
        parts.append(f'<text class="empty" x="{p.x + p.width / 2}" y="{p.y + p.height / 2}" '
                     'font-size="11" text-anchor="middle" fill="#888">no values yet</text>')
        return parts
    low = min(y for _, y in finite)
    high = max(y for _, y in finite)
    y_high = high if high > low else low + 1
    points = " ".join(f"{p.to_x(x, first, x_high):.1f},{p.to_y(y, low, y_high):.1f}" for x, y in finite)
    parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>')
    for value, y in ((high, p.to_y(high, low, y_high)), (low, p.y + p.height)):
        parts.append(f'<text class="y-label" x="{p.x - 6}" y="{y + 4:.1f}" font-size="11" '
                     f'text-anchor="end">{value:.4g}</text>')
    return parts


def render_svg(history: list[dict[str, Any]]) -> str:
    """Two panels, training loss and validation mAP 50:95 per epoch, as a self-contained SVG.

    The x axis of both panels spans the same epochs, labelled with whole-epoch ticks; each
    panel's highest and lowest value are written at the left of its y axis.
    """
    loss = [(float(r["epoch"]), float(r.get("loss", float("nan")))) for r in history]
    ap = [(float(r["epoch"]), float(r["val_AP"])) for r in history if "val_AP" in r]
    epochs = [int(r["epoch"]) for r in history]
    span = (min(epochs), max(epochs)) if epochs else (1, 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_SVG_WIDTH}" height="{_SVG_HEIGHT}" '
        f'viewBox="0 0 {_SVG_WIDTH} {_SVG_HEIGHT}" font-family="sans-serif">',
        f'<rect width="{_SVG_WIDTH}" height="{_SVG_HEIGHT}" fill="white"/>',
        *_panel_svg("training loss", loss, _PANELS[0], span, "#d62728"),
        *_panel_svg("validation mAP 50:95", ap, _PANELS[1], span, "#1f77b4"),
        "</svg>",
    ]
    return "\n".join(parts) + "\n"
