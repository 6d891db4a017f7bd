"""PyTorch backend: the deploy module (model + postprocessor) on CPU or CUDA."""

from __future__ import annotations

import numpy as np
import torch

from dfine_cli.backends.base import BackendMeta
from dfine_cli.models.dfine import DeployModel


class TorchBackend:
    def __init__(self, module: DeployModel, meta: BackendMeta, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> None:
        self.module = module.eval()
        self.meta = meta
        self.device = device
        self.dtype = dtype

    @torch.inference_mode()
    def __call__(
        self, images: np.ndarray, orig_sizes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = torch.from_numpy(images).to(self.device)
        sizes = torch.from_numpy(orig_sizes).to(self.device)
        if self.dtype != torch.float32:
            with torch.autocast(self.device.type, dtype=self.dtype):
                labels, boxes, scores = self.module(x, sizes)
        else:
            labels, boxes, scores = self.module(x, sizes)
        return (
            labels.cpu().numpy(),
            boxes.float().cpu().numpy(),
            scores.float().cpu().numpy(),
        )
