"""What a checkpoint says besides its weights: the model configuration, classes, input size.

Every format reader returns a :class:`LoadedCheckpoint`; formats that do not record class
names (official ``.pth``, transformers weights without ``config.json``) get the names
:meth:`ModelInfo.default_names` picks from the number of classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from dfine_cli.coco_names import COCO_CATEGORY_IDS, COCO_NAMES
from dfine_cli.image_size import DEFAULT_IMG_SIZE
from dfine_cli.models.presets import ModelConfig
from dfine_cli.obj365_names import OBJ365_HEAD_IDS, OBJ365_HEAD_NAMES

NOT_A_CHECKPOINT = "not a dfine/D-FINE checkpoint"
"""How every "this file is no model at all" message starts (``.pth`` and ``.onnx`` alike)."""

#: The input format every D-FINE model expects (RGB in 0..1, bilinear resize, no mean/std).
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "color": "RGB",
    "resize": "bilinear-antialias",
    "scale": "0..1",
    "normalize": None,
}


@dataclass
class ModelInfo:
    """What is needed, besides weights, to rebuild and use a model."""

    config: ModelConfig
    class_names: list[str]
    category_ids: list[int]
    img_size: tuple[int, int] = (DEFAULT_IMG_SIZE, DEFAULT_IMG_SIZE)  # (height, width) pixels
    preprocessing: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PREPROCESSING))
    source_format: str = "dfine"  # dfine | official | official-ema | state-dict | transformers

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def variant(self) -> str:
        return self.config.variant

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_config": dataclasses.asdict(self.config),
            "class_names": list(self.class_names),
            "category_ids": [int(c) for c in self.category_ids],
            "img_size": [int(self.img_size[0]), int(self.img_size[1])],
            "preprocessing": dict(self.preprocessing),
        }

    @staticmethod
    def default_names(num_classes: int) -> tuple[list[str], list[int]]:
        """COCO names/ids for 80 classes, Objects365 for the official 366-row heads,
        ``class_<i>`` and ids ``0..K-1`` otherwise."""
        if num_classes == len(COCO_NAMES):
            return list(COCO_NAMES), list(COCO_CATEGORY_IDS)
        if num_classes == len(OBJ365_HEAD_NAMES):
            return list(OBJ365_HEAD_NAMES), list(OBJ365_HEAD_IDS)
        return [f"class_{i}" for i in range(num_classes)], list(range(num_classes))


@dataclass
class LoadedCheckpoint:
    """A checkpoint read from disk: its metadata, weights in the official layout, and the
    training state to resume from (our format only)."""

    info: ModelInfo
    state_dict: dict[str, Tensor]
    training: dict[str, Any] | None = None
