"""The backend protocol and the metadata every backend exposes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class BackendMeta:
    """What a backend knows about the model it runs."""

    img_size: tuple[int, int]  # (height, width) the model expects
    class_names: list[str]
    category_ids: list[int]
    dynamic_batch: bool = True
    description: str = ""


class Backend(Protocol):
    meta: BackendMeta

    def __call__(
        self, images: np.ndarray, orig_sizes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
