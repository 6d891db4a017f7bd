"""Small models and files the tests make."""

from __future__ import annotations

from pathlib import Path

import torch

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
    with torch.no_grad():
        model.decoder.dec_score_head[-1].bias.fill_(2.0)
    info = ModelInfo(
        config=cfg,
        class_names=names or [f"thing{i}" for i in range(num_classes)],
        category_ids=category_ids or [3, 7, 42][:num_classes],
        img_size=(img_size, img_size),
    )
    return save_checkpoint(path, model, info)
