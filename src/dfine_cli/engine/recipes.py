"""Training recipes: one frozen :class:`Recipe` per (recipe, size), built by named functions.

The values are those of the official COCO configurations: D-FINE
``configs/dfine/dfine_hgnetv2_{size}_coco.yml`` (on top of ``include/dataloader.yml`` and
``include/optimizer.yml``) and DEIM ``configs/deim_dfine/deim_hgnetv2_{size}_coco.yml`` (on top
of the D-FINE file of the same size and ``base/deim.yml``). Every fact of a recipe is written
once, here: optimizer groups, epochs, the augmentation policy (whose last epoch also stops the
multi-scale batches and starts the no-augmentation tail), mixup, Mosaic and warm-up. The
pipelines read them through :class:`~dfine_cli.data.transforms.AugmentConfig` and
:class:`~dfine_cli.engine.optim.OptimRecipe`, which hold no table of their own. The official
files' ``ema_restart_decay`` has no counterpart: it never reaches the official EMA's updates
(see :mod:`dfine_cli.engine.stages`).

A run with another number of epochs uses :meth:`Recipe.scaled`: every epoch milestone is
scaled in proportion (``round(epoch * epochs / official_epochs)``).

Every number is the official one: DEIM-L/X backbone BatchNorm weights fall into the backbone
learning-rate group (the official regular expression puts them there), and DEIM-N keeps
``lr_gamma: 1.0``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from dfine_cli.data.mosaic import MosaicConfig
from dfine_cli.data.transforms import (
    IOU_CROP,
    MOSAIC,
    PHOTOMETRIC_DISTORT,
    ZOOM_OUT,
    AugmentConfig,
)
from dfine_cli.engine.optim import OptimRecipe, ScheduleConfig
from dfine_cli.errors import UsageError
from dfine_cli.image_size import DEFAULT_IMG_SIZE


@dataclass(frozen=True)
class Recipe:
    """Everything one training recipe fixes for one model size.

    Epochs are 0-based and counted from the start of training. ``policy_epochs`` is ``(stop,)``
    for D-FINE or ``(start, mid, stop)`` for DEIM (see :mod:`dfine_cli.data.transforms`); its
    last epoch also ends the multi-scale batches and starts the no-augmentation tail.
    ``img_size`` (pixels, square) and ``augment_overrides`` (``AugmentConfig`` fields) are the
    run's own choices, applied by :attr:`augment`.
    """

    name: str  # "dfine" | "deim"
    size: str  # "n" | "s" | "m" | "l" | "x"
    epochs: int
    optim: OptimRecipe
    policy_epochs: tuple[int, ...]
    base_size_repeat: int | None  # multi-scale: base size drawn this often; None: no multi-scale
    policy_ops: tuple[str, ...] = (PHOTOMETRIC_DISTORT, ZOOM_OUT, IOU_CROP)
    mosaic: MosaicConfig | None = None
    mosaic_prob: float = 0.0
    mixup_prob: float = 0.0
    mixup_epochs: tuple[int, int] = (0, 0)  # [first, end)
    schedule_kind: str = "multistep"  # "multistep" (D-FINE) | "flatcosine" (DEIM)
    flat_epoch: int = 0  # flatcosine: constant lr until this epoch
    min_lr_ratio: float = 0.5  # flatcosine: DEIM's lr_gamma
    warmup_iters: int = 500
    img_size: int = DEFAULT_IMG_SIZE
    augment_overrides: tuple[tuple[str, Any], ...] = ()

    @cached_property
    def augment(self) -> AugmentConfig:
        """The per-sample and per-batch augmentation of this recipe at :attr:`img_size`."""
        values: dict[str, Any] = {
            "img_size": self.img_size,
            "policy_epochs": self.policy_epochs,
            "policy_ops": self.policy_ops,
            "multiscale_stop_epoch": self.policy_epochs[-1],
            "base_size": self.img_size,
            "base_size_repeat": self.base_size_repeat,
            "mosaic": self.mosaic,
            "mosaic_prob": self.mosaic_prob,
            "mixup_prob": self.mixup_prob,
            "mixup_epochs": self.mixup_epochs,
        }
        overrides = dict(self.augment_overrides)
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(AugmentConfig)})
        if unknown:
            raise UsageError(f"unknown augmentation settings: {unknown}")
        values.update(overrides)
        return AugmentConfig(**values)

    @property
    def no_aug_start(self) -> int:
        """First epoch of the no-augmentation tail."""
        return self.augment.policy_epochs[-1]

    def scaled(self, epochs: int) -> Recipe:
        """This recipe over ``epochs`` epochs, every epoch milestone scaled in proportion and
        clamped to ``[0, epochs]``."""
        def scale(epoch: int) -> int:
            return max(0, min(epochs, round(epoch * epochs / self.epochs)))

        return dataclasses.replace(
            self,
            epochs=epochs,
            policy_epochs=tuple(scale(e) for e in self.policy_epochs),
            mixup_epochs=(scale(self.mixup_epochs[0]), scale(self.mixup_epochs[1])),
            flat_epoch=scale(self.flat_epoch),
        )

    def schedule(self, iters_per_epoch: int, warmup_iters: int | None) -> ScheduleConfig:
        """The learning-rate schedule for ``iters_per_epoch`` optimizer steps per epoch.

        ``warmup_iters`` (``None``: the recipe's) is the warm-up length in steps.
        """
        total = self.epochs * iters_per_epoch
        # Warm-up: the official iteration count, but never longer than one epoch, so that a
        # short run warms up the way the official recipe scaled to it does (BCCD: 25 steps).
        warm = warmup_iters if warmup_iters is not None else min(self.warmup_iters, max(1, iters_per_epoch))
        if self.schedule_kind == "flatcosine":
            flat = min(self.flat_epoch, self.epochs)
            tail = self.epochs - self.no_aug_start
            return ScheduleConfig("flatcosine", total, warm, flat_iters=flat * iters_per_epoch,
                                  no_aug_iters=tail * iters_per_epoch, min_lr_ratio=self.min_lr_ratio)
        return ScheduleConfig("multistep", total, warm, milestones=(), gamma=0.1)


# -- D-FINE: configs/dfine/dfine_hgnetv2_{size}_coco.yml ----------------------------------------
def dfine_n() -> Recipe:
    return Recipe(
        name="dfine", size="n", epochs=160,
        optim=OptimRecipe(lr=8e-4, backbone_lr=4e-4, weight_decay=1e-4, backbone_norm_lr="backbone",
                          backbone_norm_decay=False, head_no_decay=frozenset({"norm", "bias"})),
        policy_epochs=(148,), base_size_repeat=None,
    )


def dfine_s() -> Recipe:
    return Recipe(
        name="dfine", size="s", epochs=132,
        optim=OptimRecipe(lr=2e-4, backbone_lr=1e-4, weight_decay=1e-4, backbone_norm_lr="backbone",
                          backbone_norm_decay=False, head_no_decay=frozenset({"norm", "bias"})),
        policy_epochs=(120,), base_size_repeat=20,
    )


def dfine_m() -> Recipe:
    return Recipe(
        name="dfine", size="m", epochs=132,
        optim=OptimRecipe(lr=2e-4, backbone_lr=2e-5, weight_decay=1e-4, backbone_norm_lr="backbone",
                          backbone_norm_decay=False, head_no_decay=frozenset({"norm", "bias"})),
        policy_epochs=(120,), base_size_repeat=6,
    )


def dfine_l() -> Recipe:
    return Recipe(
        name="dfine", size="l", epochs=80,
        optim=OptimRecipe(lr=2.5e-4, backbone_lr=1.25e-5, weight_decay=1.25e-4, backbone_norm_lr="base",
                          backbone_norm_decay=True, head_no_decay=frozenset({"norm"})),
        policy_epochs=(72,), base_size_repeat=4,
    )


def dfine_x() -> Recipe:
    return Recipe(
        name="dfine", size="x", epochs=80,
        optim=OptimRecipe(lr=2.5e-4, backbone_lr=2.5e-6, weight_decay=1.25e-4, backbone_norm_lr="base",
                          backbone_norm_decay=True, head_no_decay=frozenset({"norm"})),
        policy_epochs=(72,), base_size_repeat=3,
    )


# -- DEIM: configs/deim_dfine/deim_hgnetv2_{size}_coco.yml over the D-FINE file and base/deim.yml --
#: DEIM's Mosaic (``base/deim.yml``).
DEIM_MOSAIC = MosaicConfig(
    output_size=320,
    rotation_range=10.0,
    translation_range=(0.1, 0.1),
    scaling_range=(0.5, 1.5),
    probability=1.0,
    fill_value=0,
    use_cache=False,
    max_cached_images=50,
    random_pop=True,
)


def _deim(
    dfine: Recipe,
    *,
    epochs: int,
    optim: OptimRecipe,
    policy_epochs: tuple[int, int, int],
    mixup_epochs: tuple[int, int],
    flat_epoch: int,
    min_lr_ratio: float = 0.5,
) -> Recipe:
    """A DEIM recipe: ``base/deim.yml`` (Mosaic, mixup, flat-cosine schedule) over the D-FINE
    recipe of the same size, whose multi-scale setting it inherits."""
    return Recipe(
        name="deim", size=dfine.size, epochs=epochs, optim=optim, policy_epochs=policy_epochs,
        base_size_repeat=dfine.base_size_repeat,
        policy_ops=(MOSAIC, PHOTOMETRIC_DISTORT, ZOOM_OUT, IOU_CROP),
        mosaic=DEIM_MOSAIC, mosaic_prob=0.5, mixup_prob=0.5, mixup_epochs=mixup_epochs,
        schedule_kind="flatcosine", flat_epoch=flat_epoch, min_lr_ratio=min_lr_ratio, warmup_iters=2000,
    )


def deim_n() -> Recipe:
    return _deim(
        dfine_n(), epochs=160,
        optim=OptimRecipe(lr=8e-4, backbone_lr=4e-4, weight_decay=1e-4, backbone_norm_lr="backbone",
                          backbone_norm_decay=False, head_no_decay=frozenset({"norm", "bias"})),
        policy_epochs=(4, 78, 148), mixup_epochs=(4, 78), flat_epoch=7800, min_lr_ratio=1.0,
    )


def deim_s() -> Recipe:
    return _deim(
        dfine_s(), epochs=132,
        optim=OptimRecipe(lr=4e-4, backbone_lr=2e-4, weight_decay=1e-4, backbone_norm_lr="base",
                          backbone_norm_decay=False, head_no_decay=frozenset({"norm"})),
        policy_epochs=(4, 64, 120), mixup_epochs=(4, 64), flat_epoch=64,
    )


def deim_m() -> Recipe:
    return _deim(
        dfine_m(), epochs=102,
        optim=OptimRecipe(lr=4e-4, backbone_lr=4e-5, weight_decay=1e-4, backbone_norm_lr="base",
                          backbone_norm_decay=False, head_no_decay=frozenset({"norm"})),
        policy_epochs=(4, 49, 90), mixup_epochs=(4, 49), flat_epoch=49,
    )


def deim_l() -> Recipe:
    return _deim(
        dfine_l(), epochs=58,
        optim=OptimRecipe(lr=5e-4, backbone_lr=2.5e-5, weight_decay=1.25e-4, backbone_norm_lr="backbone",
                          backbone_norm_decay=True, head_no_decay=frozenset({"norm"})),
        policy_epochs=(4, 29, 50), mixup_epochs=(4, 29), flat_epoch=29,
    )


def deim_x() -> Recipe:
    return _deim(
        dfine_x(), epochs=58,
        optim=OptimRecipe(lr=5e-4, backbone_lr=5e-6, weight_decay=1.25e-4, backbone_norm_lr="backbone",
                          backbone_norm_decay=True, head_no_decay=frozenset({"norm"})),
        policy_epochs=(4, 29, 50), mixup_epochs=(4, 29), flat_epoch=29,
    )


#: ``(recipe, size)`` → the function that builds it.
RECIPES: dict[tuple[str, str], Callable[[], Recipe]] = {
    ("dfine", "n"): dfine_n, ("dfine", "s"): dfine_s, ("dfine", "m"): dfine_m,
    ("dfine", "l"): dfine_l, ("dfine", "x"): dfine_x,
    ("deim", "n"): deim_n, ("deim", "s"): deim_s, ("deim", "m"): deim_m,
    ("deim", "l"): deim_l, ("deim", "x"): deim_x,
}


def official_recipe(name: str, size: str) -> Recipe:
    """The official COCO recipe ``name`` (``dfine``/``deim``) for model ``size`` (``n``..``x``)."""
    build = RECIPES.get((name, size))
    if build is None:
        names = sorted({n for n, _ in RECIPES})
        raise UsageError(f"no recipe {name!r} for size {size!r}; recipes: {', '.join(names)}")
    return build()


def build_recipe(name: str, size: str, epochs: int | None, img_size: int,
                 augment_overrides: dict[str, object] | None = None) -> Recipe:
    """The official recipe over ``epochs`` (``None``: the official count) at ``img_size``, with
    ``augment_overrides`` (:class:`AugmentConfig` fields) applied; checked at once."""
    recipe = official_recipe(name, size)
    recipe = dataclasses.replace(recipe.scaled(epochs or recipe.epochs), img_size=img_size,
                                 augment_overrides=tuple((augment_overrides or {}).items()))
    recipe.augment  # noqa: B018 - unknown or invalid augmentation settings fail here
    return recipe


def augment_preset(name: str, size: str, *, img_size: int = DEFAULT_IMG_SIZE, **overrides: Any) -> AugmentConfig:
    """The official augmentation of recipe ``name`` and model ``size`` at ``img_size`` (which
    also sets the multi-scale ``base_size``); any :class:`AugmentConfig` field can be
    overridden by keyword, e.g. ``augment_preset("deim", "s", mixup_prob=0.3)``."""
    recipe = dataclasses.replace(official_recipe(name, size), img_size=img_size,
                                 augment_overrides=tuple(overrides.items()))
    return recipe.augment
