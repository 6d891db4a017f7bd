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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dfine_cli.engine.run_lock import LOCK_NAME, RunLock
from dfine_cli.errors import UsageError
from dfine_cli.fileio import atomic_open, next_run_dir, write_json

log = logging.getLogger("dfine.train")

#: What a training run writes into its folder; ``exist_ok`` removes a previous run's copies.
RUN_ARTIFACTS = ("last.pth", "best.pth", "best_stg1.pth", "best_eval.json", "config.yaml", "metrics.csv",
                 "metrics.json", "metrics.svg")


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


def _polyline(values: list[tuple[float, float]], x0: float, y0: float, w: float, h: float,
              color: str) -> str:
    finite = [(x, y) for x, y in values if math.isfinite(y)]
    if not finite:
        return ""
    xs = [x for x, _ in finite]
    ys = [y for _, y in finite]
    xmin, xmax = min(xs), max(xs)
    ymin, ymax = min(ys), max(ys)
    if xmax == xmin:
        xmax = xmin + 1
    if ymax == ymin:
        ymax = ymin + 1
    pts = " ".join(
        f"{x0 + (x - xmin) / (xmax - xmin) * w:.1f},{y0 + h - (y - ymin) / (ymax - ymin) * h:.1f}"
        for x, y in finite
    )
    return (f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>'
            f'<text x="{x0}" y="{y0 - 4}" font-size="11">{ymax:.4g}</text>'
            f'<text x="{x0}" y="{y0 + h + 12}" font-size="11">{ymin:.4g}</text>')


def render_svg(history: list[dict[str, Any]]) -> str:
    """Two panels: training loss and validation mAP per epoch (self-contained SVG)."""
    loss = [(float(r["epoch"]), float(r.get("loss", float("nan")))) for r in history]
    ap = [(float(r["epoch"]), float(r["val_AP"])) for r in history if "val_AP" in r]
    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="640" height="260" font-family="sans-serif">',
        '<rect width="640" height="260" fill="white"/>',
        '<text x="20" y="18" font-size="13">training loss</text>',
        '<text x="340" y="18" font-size="13">validation mAP 50:95</text>',
        '<rect x="20" y="30" width="280" height="200" fill="none" stroke="#ccc"/>',
        '<rect x="340" y="30" width="280" height="200" fill="none" stroke="#ccc"/>',
        _polyline(loss, 20, 30, 280, 200, "#d62728"),
        _polyline(ap, 340, 30, 280, 200, "#1f77b4"),
        "</svg>",
    ]
    return "\n".join(parts) + "\n"
