"""What a training run writes besides checkpoints: config, metrics CSV/JSON, an SVG plot."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import yaml

from dfine_cli.fileio import atomic_open, write_json


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
