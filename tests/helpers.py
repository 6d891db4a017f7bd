"""Small models and files the tests make."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import cast

import torch
from torch import nn

from dfine_cli.checkpoints import ModelInfo, save_checkpoint
from dfine_cli.models.build import build_model_from_config
from dfine_cli.models.presets import preset


def tiny_checkpoint(path: Path, num_classes: int = 3, img_size: int = 320, seed: int = 0,
                    names: list[str] | None = None, category_ids: list[int] | None = None) -> Path:
    """A D-FINE-N with fewer decoder layers, saved in our format (fast to run)."""
    torch.manual_seed(seed)
    cfg = preset("n", num_classes=num_classes, num_layers=2)
    model = build_model_from_config(cfg).eval()
    # Make a few detections score high so that predictions are not empty.
    last_head = cast(nn.ModuleList, model.get_submodule("decoder.dec_score_head"))[-1]
    with torch.no_grad():
        cast(nn.Linear, last_head).bias.fill_(2.0)
    info = ModelInfo(
        config=cfg,
        class_names=names or [f"thing{i}" for i in range(num_classes)],
        category_ids=category_ids or [3, 7, 42][:num_classes],
        img_size=(img_size, img_size),
    )
    return save_checkpoint(path, model, info)


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (not a package) as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module
