"""The D-FINE detector (backbone → hybrid encoder → decoder) and its deploy form."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dfine_cli.image_size import DEFAULT_IMG_SIZE
from dfine_cli.models.backbone import HGNetv2
from dfine_cli.models.decoder import DFineDecoder
from dfine_cli.models.encoder import HybridEncoder
from dfine_cli.models.outputs import DetectorOutput, HeadOutput
from dfine_cli.models.postprocess import PostProcessor


class DFINE(nn.Module):
    """D-FINE: ``forward(images [B,3,H,W] in 0..1 RGB)``.

    In training mode (``targets`` given for denoising) returns a
    :class:`~dfine_cli.models.outputs.DetectorOutput`; in eval mode the final layer's
    :class:`~dfine_cli.models.outputs.HeadOutput` (logits ``[B, Q, C]``, boxes cxcywh).
    H and W must be multiples of 32; anchors are derived from the actual input size.
    """

    def __init__(self, *, backbone: HGNetv2, encoder: HybridEncoder, decoder: DFineDecoder) -> None:
        super().__init__()
        self.backbone = backbone
        self.encoder = encoder
        self.decoder = decoder

    def forward(
        self, images: Tensor, targets: list[dict[str, Tensor]] | None = None
    ) -> DetectorOutput | HeadOutput:
        feats = self.encoder(self.backbone(images))
        return self.decoder(feats, targets)

    @property
    def num_classes(self) -> int:
        return self.decoder.num_classes

    def fuse(self) -> DFINE:
        """Fold BatchNorms into convolutions and re-parameterise RepVGG blocks (inference).

        Irreversible; the module must be in eval mode and is left in eval mode.
        """
        self.eval()
        for module in list(self.modules()):
            fuse = getattr(module, "fuse", None)
            if callable(fuse) and module is not self:
                fuse()
        return self


class DeployModel(nn.Module):
    """Model + postprocessor with the official ONNX contract.

    ``forward(images float32 [N,3,H,W] in 0..1 RGB, orig_target_sizes int64 [N,2] as (w,h))
    -> (labels int64 [N,K], boxes float32 [N,K,4] xyxy in original pixels, scores float32 [N,K])``
    """

    def __init__(self, model: DFINE, top_k: int = 300) -> None:
        super().__init__()
        self.model = model.eval()
        self.postprocessor = PostProcessor(top_k)
        self.channels_last = False

    def use_channels_last(self) -> DeployModel:
        """NHWC weights and inputs: oneDNN convolutions run faster on CPUs (eager torch only)."""
        self.model.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    def forward(self, images: Tensor, orig_target_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        out = self.model(images)
        assert isinstance(out, HeadOutput)
        return self.postprocessor(out.logits, out.boxes, orig_target_sizes)

    @torch.no_grad()
    def warmup(self, batch: int = 1, size: tuple[int, int] = (DEFAULT_IMG_SIZE, DEFAULT_IMG_SIZE)) -> None:
        p = next(self.parameters())
        images = torch.zeros(batch, 3, *size, device=p.device, dtype=p.dtype)
        sizes = torch.tensor([[size[1], size[0]]] * batch, device=p.device)
        self(images, sizes)
