"""DEIM's Mosaic augmentation: four images on a 2×2 grid, then one random affine.

Behaviour of the official ``Mosaic`` transform (DEIM, ``src/data/transforms/mosaic.py``) with
the settings of ``configs/base/deim.yml``:

1. The current image and three others drawn uniformly with replacement from the dataset (or,
   with ``use_cache``, from a cache of recently seen images) are each resized so that their
   shorter side is ``output_size`` (320), keeping the aspect ratio.
2. They are pasted at the top-left corners of the four cells of a canvas of
   ``2·max_h × 2·max_w`` pixels (the largest resized height/width), in the order current,
   top-right, bottom-left, bottom-right; the rest of the canvas is ``fill_value``.
3. One random affine (rotation in ``±rotation_range`` degrees, translation up to
   ``translation_range`` of the canvas, scale in ``scaling_range``) moves the whole canvas;
   boxes follow as the enclosing boxes of their transformed corners, clipped to the canvas.

The result keeps the current sample's ``image_id``, ``orig_size`` and ``idx``. Degenerate
boxes are left for the pipeline's ``SanitizeBoundingBoxes`` to remove.

Randomness: partners and the cache eviction are drawn from the ``torch.Generator`` passed in;
the affine parameters from torch's default generator (which the training pipeline seeds per
sample when it is given a seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from dfine_cli.data.fast_augment import NearestAffine
from dfine_cli.errors import UsageError

Target = dict[str, Any]


class SampleSource(Protocol):
    """What Mosaic needs from a dataset: its length and raw (untransformed) samples."""

    def __len__(self) -> int: ...

    def load_item(self, index: int) -> tuple[tv_tensors.Image, Target]:
        """Image ``uint8 [3, H, W]`` and target with ``boxes`` (``BoundingBoxes``) and ``labels``."""
        ...


@dataclass(frozen=True)
class MosaicConfig:
    """Parameters of :class:`Mosaic` (the official YAML keys, same names)."""

    output_size: int = 320
    max_size: int | None = None
    rotation_range: float = 10.0
    translation_range: tuple[float, float] = (0.1, 0.1)
    scaling_range: tuple[float, float] = (0.5, 1.5)
    probability: float = 1.0
    fill_value: int = 0
    use_cache: bool = False
    max_cached_images: int = 50
    random_pop: bool = True

    def __post_init__(self) -> None:
        if self.output_size < 1:
            raise UsageError(f"mosaic output_size must be positive, got {self.output_size}")
        if not 0.0 <= self.probability <= 1.0:
            raise UsageError(f"mosaic probability must be in [0, 1], got {self.probability}")
        lo, hi = self.scaling_range
        if not 0 < lo <= hi:
            raise UsageError(
                f"mosaic scaling_range must be 0 < low <= high, got {self.scaling_range}"
            )
        if any(not 0.0 <= t <= 1.0 for t in self.translation_range):
            raise UsageError(
                f"mosaic translation_range must be in [0, 1], got {self.translation_range}"
            )
        if self.rotation_range < 0:
            raise UsageError(f"mosaic rotation_range must be >= 0, got {self.rotation_range}")
        if not 0 <= self.fill_value <= 255:
            raise UsageError(f"mosaic fill_value must be in 0..255, got {self.fill_value}")
        if self.use_cache and self.max_cached_images < 4:
            raise UsageError("mosaic max_cached_images must be at least 4 with use_cache")


class Mosaic:
    """Four-image mosaic followed by a random affine (see the module docstring).

    The optional cache lives in the process that runs the transform (one per DataLoader
    worker) and holds resized samples; it is not shared between workers.
    """

    def __init__(self, config: MosaicConfig) -> None:
        self.config = config
        self._resize = v2.Resize(size=config.output_size, max_size=config.max_size)
        self._affine = NearestAffine(  # v2.RandomAffine, image warped by OpenCV
            degrees=config.rotation_range,
            translate=list(config.translation_range),
            scale=list(config.scaling_range),
            fill=config.fill_value,
        )
        self._cache: list[tuple[tv_tensors.Image, Target]] = []

    def __call__(
        self,
        image: tv_tensors.Image,
        target: Target,
        source: SampleSource,
        generator: torch.Generator,
    ) -> tuple[tv_tensors.Image, Target]:
        """Return the mosaic of ``image`` with three other samples.

        Args:
            image: ``uint8 [3, H, W]``.
            target: ``boxes`` (``BoundingBoxes``, any format), ``labels`` ``[N]``, other keys
                are copied from this sample.
            source: where the three partner samples come from (ignored with ``use_cache``).
            generator: draws the apply/skip decision and the partners.

        Returns:
            ``uint8 [3, H', W']`` image and target with ``xyxy`` boxes on the new canvas.
        """
        probability = self.config.probability
        if probability < 1.0 and float(torch.rand((), generator=generator)) >= probability:
            return image, target
        first = self._resized(image, target)
        if self.config.use_cache:
            partners = self._partners_from_cache(first, generator)
        else:
            if len(source) == 0:
                return image, target
            indices = torch.randint(len(source), (3,), generator=generator).tolist()
            partners = [self._resized(*source.load_item(i)) for i in indices]
        canvas, merged = _paste_grid([first, *partners], self.config.fill_value)
        return self._affine(canvas, merged)

    def _resized(self, image: tv_tensors.Image, target: Target) -> tuple[tv_tensors.Image, Target]:
        boxes = target["boxes"]
        if boxes.format != tv_tensors.BoundingBoxFormat.XYXY:
            target = {**target, "boxes": F.convert_bounding_box_format(boxes, new_format="XYXY")}
        return self._resize(image, target)

    def _partners_from_cache(
        self, first: tuple[tv_tensors.Image, Target], generator: torch.Generator
    ) -> list[tuple[tv_tensors.Image, Target]]:
        # As the official cache: add the current sample, evict one (never the newest) when
        # full, then draw three partners from the cache with replacement.
        self._cache.append(first)
        if len(self._cache) > self.config.max_cached_images:
            if self.config.random_pop:
                evict = int(torch.randint(len(self._cache) - 1, (), generator=generator))
            else:
                evict = 0
            self._cache.pop(evict)
        indices = torch.randint(len(self._cache), (3,), generator=generator).tolist()
        return [self._cache[i] for i in indices]


def _paste_grid(
    samples: list[tuple[tv_tensors.Image, Target]], fill_value: int
) -> tuple[tv_tensors.Image, Target]:
    """Paste four ``(image, target)`` pairs (``xyxy`` boxes) on a 2×2 grid.

    Cells are ``max_h × max_w`` (largest height/width); each image sits at its cell's top-left
    corner. Returns the ``uint8 [3, 2·max_h, 2·max_w]`` canvas and the merged target (keys of
    the first sample, ``boxes``/``labels`` concatenated in sample order).
    """
    max_h = max(int(img.shape[-2]) for img, _ in samples)
    max_w = max(int(img.shape[-1]) for img, _ in samples)
    first_image = samples[0][0]
    # channels-last memory ([H, W, C] seen as [C, H, W]): the affine warps it without a copy
    canvas = torch.full(
        (2 * max_h, 2 * max_w, first_image.shape[0]), fill_value, dtype=first_image.dtype
    ).permute(2, 0, 1)
    all_boxes, all_labels = [], []
    for (img, tgt), (off_x, off_y) in zip(
        samples, [(0, 0), (max_w, 0), (0, max_h), (max_w, max_h)], strict=True
    ):
        h, w = int(img.shape[-2]), int(img.shape[-1])
        canvas[:, off_y : off_y + h, off_x : off_x + w] = img
        offset = torch.tensor([off_x, off_y, off_x, off_y], dtype=torch.float32)
        all_boxes.append(tgt["boxes"].as_subclass(torch.Tensor).float().reshape(-1, 4) + offset)
        all_labels.append(tgt["labels"].reshape(-1))
    merged = dict(samples[0][1])
    merged["boxes"] = tv_tensors.BoundingBoxes(
        torch.cat(all_boxes), format="XYXY", canvas_size=(2 * max_h, 2 * max_w)
    )
    merged["labels"] = torch.cat(all_labels)
    return tv_tensors.Image(canvas), merged
