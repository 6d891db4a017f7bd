"""Training and evaluation pipelines of the D-FINE and DEIM recipes, and the batch collator.

Training pipeline (official ``train_dataloader.dataset.transforms``), per sample::

    [Mosaic] → RandomPhotometricDistort(p=0.5) → RandomZoomOut(fill=0) → RandomIoUCrop(p=0.8)
    → SanitizeBoundingBoxes(min_size=1) → RandomHorizontalFlip → Resize(img_size²)
    → SanitizeBoundingBoxes(min_size=1) → uint8 image, boxes cxcywh / [W, H, W, H]

Images stay ``uint8`` per sample; :func:`collate` converts the whole batch to ``float32`` in
``[0, 1]`` at once (the same numbers as converting each image, with a quarter of the bytes to
stack and to pass from DataLoader workers).

The recipe's *policy* switches the listed ops off by epoch (:class:`AugmentPolicy`):

- D-FINE (``policy.epoch: N``): the ops are on for epochs ``< N`` and off from ``N``.
- DEIM (``policy.epoch: [start, mid, stop]``): off before ``start``; in ``[start, mid)``
  Mosaic is applied with probability ``mosaic_prob`` and, when it is, ZoomOut and IoUCrop are
  skipped for that sample; in ``[mid, stop)`` no Mosaic, the other ops on; off from ``stop``.

Per batch, :class:`BatchCollator` applies DEIM's mixup (probability ``mixup_prob`` for epochs in
``[mixup_epochs[0], mixup_epochs[1])``) and then the multi-scale resize of the official
``BatchImageCollateFunction`` (a random size from :func:`generate_scales` for epochs
``< stop_epoch``).

Epochs are 0-based. The current epoch reaches the pipeline only through ``set_epoch`` on the
dataset (which forwards it to its transforms) and on the collator. DataLoader workers copy
both when an epoch's iterator is created, so call ``set_epoch`` before iterating and do not
use ``persistent_workers=True`` (the workers would keep the epoch they were started with).

Determinism: with ``seed`` set, every random decision for a sample depends only on
``(seed, epoch, dataset index)`` and for a batch on ``(seed, epoch, indices in the batch)``,
not on the worker count or the order in which workers run. Without a seed, torch's global
generator is used (seeded per worker by the DataLoader).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from dfine_cli.data.fast_augment import IoUCrop, PhotometricDistort
from dfine_cli.data.mosaic import Mosaic, MosaicConfig, SampleSource
from dfine_cli.errors import UsageError
from dfine_cli.image_size import DEFAULT_IMG_SIZE, IMG_SIZE_RULE, is_valid_side

Target = dict[str, Any]

MOSAIC = "Mosaic"
PHOTOMETRIC_DISTORT = "RandomPhotometricDistort"
ZOOM_OUT = "RandomZoomOut"
IOU_CROP = "RandomIoUCrop"
HORIZONTAL_FLIP = "RandomHorizontalFlip"
#: Ops a policy may switch off (the official transform class names).
POLICY_OPS: tuple[str, ...] = (MOSAIC, PHOTOMETRIC_DISTORT, ZOOM_OUT, IOU_CROP, HORIZONTAL_FLIP)



# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class AugmentConfig:
    """Data-augmentation settings of a training recipe (:mod:`dfine_cli.engine.recipes` builds them).

    Attributes:
        img_size: square training/evaluation input size in pixels.
        policy_epochs: ``(stop,)`` (D-FINE) or ``(start, mid, stop)`` (DEIM), see module doc.
        policy_ops: ops switched by the policy; other configured ops are always on.
        mosaic: Mosaic parameters, ``None`` for no Mosaic (D-FINE).
        mosaic_prob: probability that a sample gets a Mosaic while Mosaic is on (DEIM:
            ``[start, mid)``); such a sample skips ZoomOut and IoUCrop.
        mixup_prob, mixup_epochs: batch mixup probability and ``[first, end)`` epochs.
        base_size, base_size_repeat: multi-scale sizes (:func:`generate_scales`);
            ``base_size_repeat=None`` disables multi-scale (as the official N configs do).
        multiscale_stop_epoch: first epoch without multi-scale batches.
    """

    img_size: int = DEFAULT_IMG_SIZE
    policy_epochs: tuple[int, ...] = (72,)
    policy_ops: tuple[str, ...] = (PHOTOMETRIC_DISTORT, ZOOM_OUT, IOU_CROP)
    photometric_p: float = 0.5
    zoom_out_p: float = 0.5
    zoom_out_side_range: tuple[float, float] = (1.0, 4.0)
    zoom_out_fill: int = 0
    iou_crop_p: float = 0.8
    flip_p: float = 0.5
    min_box_size: float = 1.0
    mosaic: MosaicConfig | None = None
    mosaic_prob: float = 0.0
    mixup_prob: float = 0.0
    mixup_epochs: tuple[int, int] = (0, 0)
    base_size: int = DEFAULT_IMG_SIZE
    base_size_repeat: int | None = 3
    multiscale_stop_epoch: int = 72

    def __post_init__(self) -> None:
        if not is_valid_side(self.img_size):
            raise UsageError(f"img_size must be {IMG_SIZE_RULE}, got {self.img_size}")
        if len(self.policy_epochs) not in (1, 3) or list(self.policy_epochs) != sorted(
            self.policy_epochs
        ):
            raise UsageError(
                f"policy_epochs must be (stop,) or ascending (start, mid, stop), got {self.policy_epochs}"
            )
        unknown = sorted(set(self.policy_ops) - set(POLICY_OPS))
        if unknown:
            raise UsageError(f"unknown policy ops {unknown}; known: {list(POLICY_OPS)}")
        for name in (
            "photometric_p",
            "zoom_out_p",
            "iou_crop_p",
            "flip_p",
            "mosaic_prob",
            "mixup_prob",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UsageError(f"{name} must be in [0, 1], got {value}")
        if len(self.mixup_epochs) != 2 or self.mixup_epochs[0] > self.mixup_epochs[1]:
            raise UsageError(
                f"mixup_epochs must be (first, end) with first <= end, got {self.mixup_epochs}"
            )
        if self.base_size_repeat is not None and self.base_size_repeat < 0:
            raise UsageError(f"base_size_repeat must be >= 0 or None, got {self.base_size_repeat}")
        if self.mosaic_prob > 0 and self.mosaic is None:
            raise UsageError("mosaic_prob > 0 needs a mosaic configuration")


def generate_scales(base_size: int, base_size_repeat: int) -> list[int]:
    """Multi-scale sizes of the official collator: 0.75×..1.25× ``base_size`` in steps of 32.

    ``generate_scales(640, 3)`` → ``[480, 512, 544, 576, 608, 640, 640, 640, 800, 768, 736,
    704, 672]``: ``base_size`` is repeated ``base_size_repeat`` times so it is drawn more often.
    """
    low = int(base_size * 0.75 / 32) * 32
    high = int(base_size * 1.25 / 32) * 32
    steps = (base_size - low) // 32
    return (
        [low + 32 * i for i in range(steps)]
        + [base_size] * base_size_repeat
        + [high - 32 * i for i in range(steps)]
    )


# --------------------------------------------------------------------------- policies


class _EpochAware:
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)


class AugmentPolicy(_EpochAware):
    """Which per-sample ops run at the current epoch (the official ``stop_epoch`` policy).

    Args:
        epochs: ``(stop,)`` or ``(start, mid, stop)``, see the module docstring.
        controlled: ops the policy switches off; the others in ``available`` always run.
        available: ops the pipeline has (Mosaic only if configured).
        mosaic_prob: Mosaic probability in DEIM's ``[start, mid)`` stage.
    """

    def __init__(
        self,
        *,
        epochs: Sequence[int],
        controlled: Iterable[str],
        available: Iterable[str],
        mosaic_prob: float = 0.0,
    ) -> None:
        self.epochs = tuple(int(e) for e in epochs)
        self.controlled = frozenset(controlled)
        self.available = frozenset(available)
        self.mosaic_prob = mosaic_prob

    def sample(self, generator: torch.Generator) -> frozenset[str]:
        """The ops to apply to one sample; draws only the Mosaic decision.

        Mosaic runs with probability ``mosaic_prob`` while it is on (DEIM: ``[start, mid)``)
        and a sample that gets a Mosaic skips ZoomOut and IoUCrop, as in DEIM.
        """
        epoch = self.epoch
        if len(self.epochs) == 1:
            in_window = epoch < self.epochs[0]
            mosaic_window = in_window or MOSAIC not in self.controlled
        else:
            start, mid, stop = self.epochs
            in_window = start <= epoch < stop
            mosaic_window = start <= epoch < mid
        with_mosaic = False
        if MOSAIC in self.available and mosaic_window:
            with_mosaic = float(torch.rand((), generator=generator)) < self.mosaic_prob
        active = {op for op in self.available if in_window or op not in self.controlled}
        if with_mosaic:
            active -= {ZOOM_OUT, IOU_CROP}
        else:
            active.discard(MOSAIC)
        return frozenset(active)


class MixupPolicy(_EpochAware):
    """DEIM batch mixup: with probability ``prob`` in epochs ``[epochs[0], epochs[1])``."""

    def __init__(self, *, prob: float, epochs: tuple[int, int]) -> None:
        self.prob = prob
        self.epochs = (int(epochs[0]), int(epochs[1]))

    def sample(self, generator: torch.Generator) -> float | None:
        """The mixing weight ``beta ∈ [0.45, 0.55]`` of the batch, or ``None`` for no mixup."""
        draw, beta = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        if draw < self.prob and self.epochs[0] <= self.epoch < self.epochs[1]:
            return round(0.45 + 0.1 * beta, 6)
        return None


class MultiScalePolicy(_EpochAware):
    """Random square batch size from ``scales`` for epochs ``< stop_epoch``."""

    def __init__(self, *, scales: Sequence[int], stop_epoch: int) -> None:
        if not scales:
            raise ValueError("multi-scale needs at least one scale")
        self.scales = [int(s) for s in scales]
        self.stop_epoch = int(stop_epoch)

    def sample(self, generator: torch.Generator) -> int | None:
        """The batch's size in pixels, or ``None`` to keep the pipeline's size."""
        choice = int(torch.randint(len(self.scales), (), generator=generator))
        return self.scales[choice] if self.epoch < self.stop_epoch else None


# --------------------------------------------------------------------------- randomness


def derive_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from integers (``numpy.random.SeedSequence``); negative
    values are taken modulo 2**64."""
    entropy = [int(v) & 0xFFFF_FFFF_FFFF_FFFF for v in values]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


@contextlib.contextmanager
def _random_scope(seed: int | None) -> Iterator[torch.Generator]:
    """Yield a generator for policy decisions; with a seed, also seed torch's CPU default
    generator (used by the torchvision transforms) and restore it afterwards."""
    generator = torch.Generator()
    if seed is None:
        generator.manual_seed(int(torch.randint(2**62, ())))
        yield generator
        return
    generator.manual_seed(seed)
    state = torch.get_rng_state()
    try:
        # Only the CPU generator: torch.manual_seed would also reseed CUDA.
        torch.default_generator.manual_seed(derive_seed(seed, 1))
        yield generator
    finally:
        torch.set_rng_state(state)


# --------------------------------------------------------------------------- pipelines


class DetectionPipeline(ABC, _EpochAware):
    """A per-sample transform that may use other dataset samples (``source``) and the epoch.

    Input: ``tv_tensors.Image`` ``uint8 [3, H, W]`` and a target with ``boxes``
    (``BoundingBoxes`` in pixels), ``labels`` ``int64 [N]`` and optionally ``idx`` (the
    dataset index, used for seeding). Output: ``uint8 [3, S, S]`` (:func:`collate` makes a
    batch of them ``float32`` in ``[0, 1]``) and a target whose ``boxes`` are a
    ``float32 [N, 4]`` tensor, ``cxcywh`` normalised to ``[0, 1]``; other keys pass through.
    """

    @abstractmethod
    def __call__(
        self, image: tv_tensors.Image, target: Target, source: SampleSource | None = None
    ) -> tuple[torch.Tensor, Target]: ...


def _finalize(image: tv_tensors.Image, target: Target) -> tuple[torch.Tensor, Target]:
    """Image → plain ``uint8`` tensor; boxes → plain ``cxcywh`` tensor normalised by (W, H)."""
    height, width = int(image.shape[-2]), int(image.shape[-1])
    pixels = image.as_subclass(torch.Tensor)
    boxes = target["boxes"]
    xyxy = F.convert_bounding_box_format(boxes, new_format="XYXY").as_subclass(torch.Tensor).float()
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    xyxy = torch.minimum(xyxy.clamp(min=0), scale)
    out = dict(target)
    out["boxes"] = F.convert_bounding_box_format(
        xyxy / scale,
        old_format=tv_tensors.BoundingBoxFormat.XYXY,
        new_format=tv_tensors.BoundingBoxFormat.CXCYWH,
    )
    return pixels, out


class EvalTransforms(DetectionPipeline):
    """Evaluation: ``Resize(img_size²)`` and conversion, no augmentation."""

    def __init__(self, img_size: int = DEFAULT_IMG_SIZE) -> None:
        self.img_size = img_size
        self._resize = v2.Resize((img_size, img_size))

    def __call__(
        self, image: tv_tensors.Image, target: Target, source: SampleSource | None = None
    ) -> tuple[torch.Tensor, Target]:
        image, target = self._resize(image, target)
        return _finalize(image, target)


class TrainTransforms(DetectionPipeline):
    """The recipe's per-sample training pipeline (module docstring), policy-switched by epoch.

    Args:
        config: the recipe's augmentation, see :attr:`dfine_cli.engine.recipes.Recipe.augment`.
        seed: makes every sample's augmentation a function of ``(seed, epoch, idx)``.
    """

    def __init__(self, config: AugmentConfig, *, seed: int | None = None) -> None:
        self.config = config
        self.seed = seed
        self.mosaic = Mosaic(config.mosaic) if config.mosaic is not None else None
        self._photometric = PhotometricDistort(p=config.photometric_p)
        self._zoom_out = v2.RandomZoomOut(
            fill=config.zoom_out_fill, side_range=config.zoom_out_side_range, p=config.zoom_out_p
        )
        self._iou_crop = v2.RandomApply([IoUCrop()], p=config.iou_crop_p)
        self._sanitize = v2.SanitizeBoundingBoxes(min_size=config.min_box_size)
        self._flip = v2.RandomHorizontalFlip(p=config.flip_p)
        self._resize = v2.Resize((config.img_size, config.img_size))
        available = [PHOTOMETRIC_DISTORT, ZOOM_OUT, IOU_CROP, HORIZONTAL_FLIP]
        if self.mosaic is not None:
            available.append(MOSAIC)
        self.policy = AugmentPolicy(
            epochs=config.policy_epochs,
            controlled=config.policy_ops,
            available=available,
            mosaic_prob=config.mosaic_prob,
        )

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.policy.set_epoch(epoch)

    def __call__(
        self, image: tv_tensors.Image, target: Target, source: SampleSource | None = None
    ) -> tuple[torch.Tensor, Target]:
        seed = None
        if self.seed is not None:
            seed = derive_seed(self.seed, self.epoch, 0, int(target.get("idx", 0)))
        with _random_scope(seed) as generator:
            active = self.policy.sample(generator)
            if MOSAIC in active and self.mosaic is not None:
                if source is None:
                    raise ValueError(
                        "Mosaic needs the dataset as `source` (use CocoDetectionDataset)"
                    )
                image, target = self.mosaic(image, target, source, generator)
            if PHOTOMETRIC_DISTORT in active:
                image, target = self._photometric(image, target)
            if ZOOM_OUT in active:
                image, target = self._zoom_out(image, target)
            if IOU_CROP in active:
                image, target = self._iou_crop(image, target)
            image, target = self._sanitize(image, target)
            if HORIZONTAL_FLIP in active:
                image, target = self._flip(image, target)
            image, target = self._resize(image, target)
            image, target = self._sanitize(image, target)
        return _finalize(image, target)


# --------------------------------------------------------------------------- collation


def collate(items: Sequence[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """Stack ``[3, H, W]`` images into ``float32 [B, 3, H, W]``; targets stay a list of dicts.

    ``uint8`` images are stacked first and converted once (``x / 255``, torchvision's
    ``to_dtype`` rule), which gives the same numbers as converting each; float images are
    stacked as they are.
    """
    images = torch.stack([image.as_subclass(torch.Tensor) for image, _ in items])
    if images.dtype == torch.uint8:
        images = F.to_dtype(images, torch.float32, scale=True)
    return images, [target for _, target in items]


class BatchCollator(_EpochAware):
    """Training collator: :func:`collate`, then mixup and multi-scale by policy.

    Mixup (DEIM): image ``i`` becomes ``beta·x_i + (1-beta)·x_{i-1}`` (cyclic) and its target
    gains the boxes and labels of image ``i-1``; batches of one image are never mixed.
    Multi-scale: the batch is resized to a random square size with ``interpolation``
    (default ``"nearest"``, the official collator's ``F.interpolate`` default). Boxes are
    normalised, so resizing leaves them unchanged.

    Args:
        mixup: mixup policy or ``None``.
        multiscale: multi-scale policy or ``None``.
        seed: makes each batch's decisions a function of ``(seed, epoch, sample indices)``.
        interpolation: ``torch.nn.functional.interpolate`` mode of the multi-scale resize.
    """

    def __init__(
        self,
        *,
        mixup: MixupPolicy | None = None,
        multiscale: MultiScalePolicy | None = None,
        seed: int | None = None,
        interpolation: str = "nearest",
    ) -> None:
        self.mixup = mixup
        self.multiscale = multiscale
        self.seed = seed
        self.interpolation = interpolation

    @classmethod
    def from_config(cls, config: AugmentConfig, *, seed: int | None = None) -> BatchCollator:
        mixup = None
        if config.mixup_prob > 0:
            mixup = MixupPolicy(prob=config.mixup_prob, epochs=config.mixup_epochs)
        multiscale = None
        if config.base_size_repeat is not None:
            multiscale = MultiScalePolicy(
                scales=generate_scales(config.base_size, config.base_size_repeat),
                stop_epoch=config.multiscale_stop_epoch,
            )
        return cls(mixup=mixup, multiscale=multiscale, seed=seed)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        for policy in (self.mixup, self.multiscale):
            if policy is not None:
                policy.set_epoch(epoch)

    def __call__(
        self, items: Sequence[tuple[torch.Tensor, Target]]
    ) -> tuple[torch.Tensor, list[Target]]:
        images, targets = collate(items)
        seed = None
        if self.seed is not None:
            indices = [int(t.get("idx", -1)) for t in targets]
            seed = derive_seed(self.seed, self.epoch, 1, *indices)
        with _random_scope(seed) as generator:
            if self.mixup is not None and len(targets) > 1:
                beta = self.mixup.sample(generator)
                if beta is not None:
                    images, targets = _mixup(images, targets, beta)
            if self.multiscale is not None:
                size = self.multiscale.sample(generator)
                if size is not None and size != images.shape[-1]:
                    images = nnf.interpolate(images, size=(size, size), mode=self.interpolation)
        return images, targets


def _mixup(
    images: torch.Tensor, targets: list[Target], beta: float
) -> tuple[torch.Tensor, list[Target]]:
    # beta·x_i + (1-beta)·x_{i-1}, without materialising the rolled batch
    mixed = images * beta
    previous = torch.empty_like(images)
    torch.mul(images[:-1], 1.0 - beta, out=previous[1:])
    torch.mul(images[-1:], 1.0 - beta, out=previous[:1])
    mixed += previous
    out = []
    for i, target in enumerate(targets):
        other = targets[i - 1]
        merged = dict(target)
        merged["boxes"] = torch.cat([target["boxes"], other["boxes"]])
        merged["labels"] = torch.cat([target["labels"], other["labels"]])
        out.append(merged)
    return mixed, out
