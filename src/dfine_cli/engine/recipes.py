"""Recipe schedules per size (official COCO values) and their scaling to other epoch counts."""

from __future__ import annotations

from dataclasses import dataclass

from dfine_cli.data.transforms import AugmentConfig, augment_preset
from dfine_cli.engine.optim import OPTIM_RECIPES, OptimRecipe, ScheduleConfig


@dataclass(frozen=True)
class EpochPlan:
    """Official epoch counts for one recipe and size."""

    epochs: int
    policy: tuple[int, ...]  # (stop,) D-FINE, (start, mid, stop) DEIM
    mixup: tuple[int, int] = (0, 0)
    flat_epoch: int = 0  # DEIM flat-cosine
    no_aug_epoch: int = 0  # DEIM flat-cosine
    warmup_iters: int = 500
    ema_restart_decay: float = 0.9999


EPOCH_PLANS: dict[tuple[str, str], EpochPlan] = {
    ("dfine", "n"): EpochPlan(160, (148,)),
    ("dfine", "s"): EpochPlan(132, (120,)),
    ("dfine", "m"): EpochPlan(132, (120,)),
    ("dfine", "l"): EpochPlan(80, (72,)),
    ("dfine", "x"): EpochPlan(80, (72,), ema_restart_decay=0.9998),
    ("deim", "n"): EpochPlan(160, (4, 78, 148), (4, 78), 7800, 12, 2000),
    ("deim", "s"): EpochPlan(132, (4, 64, 120), (4, 64), 64, 12, 2000),
    ("deim", "m"): EpochPlan(102, (4, 49, 90), (4, 49), 49, 12, 2000),
    ("deim", "l"): EpochPlan(58, (4, 29, 50), (4, 29), 29, 8, 2000),
    ("deim", "x"): EpochPlan(58, (4, 29, 50), (4, 29), 29, 8, 2000),
}


@dataclass(frozen=True)
class Recipe:
    name: str
    size: str
    epochs: int
    optim: OptimRecipe
    plan: EpochPlan
    augment: AugmentConfig

    @property
    def no_aug_start(self) -> int:
        """First epoch of the no-augmentation tail."""
        return self.augment.policy_epochs[-1]

    def schedule(self, iters_per_epoch: int, warmup_iters: int | None) -> ScheduleConfig:
        total = self.epochs * iters_per_epoch
        # Warm-up: the official iteration count, but never more than a tenth of a short run.
        warm = warmup_iters if warmup_iters is not None else min(self.plan.warmup_iters, max(1, total // 10))
        if self.name == "deim":
            flat = _scale(self.plan.flat_epoch, self.plan.epochs, self.epochs)
            tail = self.epochs - self.no_aug_start
            return ScheduleConfig("flatcosine", total, warm, flat_iters=flat * iters_per_epoch,
                                  no_aug_iters=tail * iters_per_epoch, min_lr_ratio=0.5)
        return ScheduleConfig("multistep", total, warm, milestones=(), gamma=0.1)


def _scale(epoch: int, official_total: int, total: int) -> int:
    return max(0, min(total, round(epoch * total / official_total)))


def build_recipe(name: str, size: str, epochs: int | None, img_size: int,
                 augment_overrides: dict[str, object] | None = None) -> Recipe:
    """The official recipe, with its epoch milestones scaled when ``epochs`` differs."""
    plan = EPOCH_PLANS[(name, size)]
    total = epochs or plan.epochs
    policy = tuple(_scale(e, plan.epochs, total) for e in plan.policy)
    overrides: dict[str, object] = {
        "policy_epochs": policy,
        "multiscale_stop_epoch": policy[-1],
    }
    if name == "deim":
        overrides["mixup_epochs"] = tuple(_scale(e, plan.epochs, total) for e in plan.mixup)
    overrides.update(augment_overrides or {})
    augment = augment_preset(name, size, img_size=img_size, **overrides)
    return Recipe(name, size, total, OPTIM_RECIPES[(name, size)], plan, augment)
