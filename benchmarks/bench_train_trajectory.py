"""Training trajectories side by side: dfine's training step against the official one.

Both runs start from the same weights (the official model's random initialisation, loaded
into dfine's model) and see the same batches: the first ``--steps`` x ``--batch`` images of
the training split, resized to ``--img-size`` without augmentation, denoising off (its
random draws are not comparable between the two code bases). Each step is the recipe's
whole step: forward, criterion, backward, clipping at 0.1, AdamW with the recipe's
parameter groups and warm-up, EMA. After every step the script prints both losses and the
relative distance of the two weight sets.

Training is chaotic: a rounding difference grows step by step (a discrete Hungarian
assignment or top-k query choice flips, and the runs part). So the script also runs two
control pairs of the official step against itself: one run on another thread count (1, or
2 with ``--threads 1``: other reduction orders, so rounding differs at every step, as
between two implementations), and
one with the initial weights perturbed by ``--eps`` (relative). An implementation whose
distance to the official run grows like the controls' differs from it only by rounding; a
wrong recipe part (learning rate, weight decay, a loss term) shows as a jump at the first
steps.

``--official DIR`` is a checkout of the official D-FINE repository (used read-only, only by
this script); its custom-dataset N configuration (``configs/dfine/custom``) is the recipe.

    python benchmarks/bench_train_trajectory.py --official ~/src/D-FINE --data bccd.yaml --steps 25
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import types
from pathlib import Path
from typing import Any

import torch
import torchvision.transforms.v2.functional as F
from official_repo import official_package
from torchvision.ops import box_convert


class OfficialRun:
    """The official step: ``det_engine.train_one_epoch``'s body without AMP."""

    def __init__(self, repo: Path, size: str, num_classes: int, state: dict[str, torch.Tensor],
                 warmup: int) -> None:
        src = official_package(repo)
        cfg = src.core.YAMLConfig(str(repo / "configs" / "dfine" / "custom" / f"dfine_hgnetv2_{size}_custom.yml"),
                                  HGNetv2={"pretrained": False}, num_classes=num_classes,
                                  DFINETransformer={"num_denoising": 0})
        self.model = cfg.model
        self.model.load_state_dict(state, strict=False)  # the denoising table is absent here
        self.criterion = cfg.criterion.train()
        self.optimizer = cfg.optimizer
        holder = types.SimpleNamespace(optimizer=self.optimizer)
        self.warmup = src.optim.LinearWarmup(holder, warmup)
        self.ema = src.optim.ModelEMA(self.model, decay=0.9999, warmups=1000)
        self.model.train()

    def step(self, index: int, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> tuple[float, float]:
        outputs = self.model(images, targets=targets)
        losses = self.criterion(outputs, targets, epoch=0, step=index, global_step=index, epoch_step=0)
        loss = sum(losses.values())
        self.optimizer.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.1)
        self.optimizer.step()
        self.ema.update(self.model)
        self.warmup.step()
        return float(loss.detach()), float(norm)


class DfineRun:
    """dfine's step, as ``engine/trainer.py`` runs it (AMP off)."""

    def __init__(self, size: str, num_classes: int, state: dict[str, torch.Tensor], warmup: int,
                 epochs: int, img_size: int) -> None:
        from dfine_cli.checkpoints.official import load_weights
        from dfine_cli.engine.criterion import build_criterion
        from dfine_cli.engine.optim import ModelEMA, build_optimizer, build_param_groups
        from dfine_cli.engine.recipes import build_recipe
        from dfine_cli.models.build import build_model

        self.model = build_model(size, num_classes=num_classes, num_denoising=0)
        load_weights(self.model, state)
        self.model.to(memory_format=torch.channels_last)  # as `dfine train` on the CPU
        recipe = build_recipe("dfine", size, epochs, img_size)
        self.optimizer = build_optimizer(build_param_groups(self.model, recipe.optim), lr=recipe.optim.lr,
                                         betas=recipe.optim.betas, weight_decay=recipe.optim.weight_decay)
        self.schedule = recipe.schedule(warmup, warmup)
        self.criterion = build_criterion("dfine")
        self.ema = ModelEMA(self.model, 0.9999, 1000)
        self.model.train()

    def step(self, index: int, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> tuple[float, float]:
        from dfine_cli.engine.optim import apply_lr, lr_factor

        apply_lr(self.optimizer, lr_factor(self.schedule, index))
        images = images.contiguous(memory_format=torch.channels_last)
        loss = self.criterion(self.model(images, targets), targets).total
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.1)
        self.optimizer.step()
        self.ema.update(self.model)
        return float(loss.detach()), float(norm)


def _distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """Relative L2 distance of the trainable weights (and BatchNorm statistics) of two models."""
    sa, sb = a.state_dict(), b.state_dict()
    keys = [k for k in sb if k in sa and sa[k].dtype.is_floating_point]
    num = sum(float((sa[k] - sb[k]).double().pow(2).sum()) for k in keys)
    den = sum(float(sa[k].double().pow(2).sum()) for k in keys)
    return math.sqrt(num / den)


def _batches(data: str, steps: int, batch: int, img_size: int) -> tuple[list[Any], int]:
    from dfine_cli.data.cocofile import resolve_dataset
    from dfine_cli.data.dataset import CocoDetectionDataset

    split = resolve_dataset(data, "train")
    dataset = CocoDetectionDataset(split.images_dir, split.annotations)
    out = []
    for s in range(steps):
        images, targets = [], []
        for i in range(batch):
            image, target = dataset[(s * batch + i) % len(dataset)]
            h, w = image.shape[-2:]
            cxcywh = box_convert(target["boxes"].float(), "xyxy", "cxcywh") / torch.tensor([w, h, w, h])
            keep = (cxcywh[:, 2] > 0) & (cxcywh[:, 3] > 0)
            images.append(F.resize(image.float() / 255, [img_size, img_size], antialias=True))
            targets.append({"boxes": cxcywh[keep], "labels": target["labels"][keep]})
        out.append((torch.stack(images), targets))
    return out, dataset.num_classes


def _perturbed(state: dict[str, torch.Tensor], eps: float) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    out = {}
    for key, value in state.items():
        value = value.clone()
        if value.dtype.is_floating_point and "running" not in key and value.numel() > 1:
            value.add_(torch.randn(value.shape, generator=gen) * eps * value.abs())
        out[key] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--official", type=Path, required=True, help="checkout of the official D-FINE repository")
    parser.add_argument("--data", required=True, help="dataset folder or YAML (its train split is used)")
    parser.add_argument("--size", default="n", choices=["n", "s", "m"])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=320)
    parser.add_argument("--warmup", type=int, default=25, help="warm-up steps (both runs)")
    parser.add_argument("--eps", type=float, default=1e-6, help="relative weight noise of the control pair")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    batches, num_classes = _batches(args.data, args.steps, args.batch, args.img_size)
    torch.manual_seed(0)
    src = official_package(args.official)
    init_cfg = src.core.YAMLConfig(
        str(args.official / "configs" / "dfine" / "custom" / f"dfine_hgnetv2_{args.size}_custom.yml"),
        HGNetv2={"pretrained": False}, num_classes=num_classes, DFINETransformer={"num_denoising": 1})
    state = {k: v.clone() for k, v in init_cfg.model.state_dict().items()}

    def official(weights: dict[str, torch.Tensor]) -> OfficialRun:
        return OfficialRun(args.official, args.size, num_classes, weights, args.warmup)

    other_threads = 1 if args.threads > 1 else 2  # another reduction order: rounding differs
    # (A, threads of A, B, threads of B): A is always the official step on --threads
    pairs = {
        "dfine": (official(state), args.threads,
                  DfineRun(args.size, num_classes, state, args.warmup, 12, args.img_size), args.threads),
        f"control: official on {other_threads} thread(s)": (official(state), args.threads, official(state),
                                                             other_threads),
        f"control: official, weights +{args.eps:g} relative": (
            official(state), args.threads, official(_perturbed(state, args.eps)), args.threads),
    }
    print("pair\tstep\tloss official\tloss other\trel loss diff\tgrad norm official\tgrad norm other\tweight distance")
    final: dict[str, float] = {}
    for name, (a, threads_a, b, threads_b) in pairs.items():
        for index, (images, targets) in enumerate(batches):
            torch.set_num_threads(threads_a)
            torch.manual_seed(1000 + index)
            loss_a, norm_a = a.step(index, images, copy.deepcopy(targets))
            torch.set_num_threads(threads_b)
            torch.manual_seed(1000 + index)
            loss_b, norm_b = b.step(index, images, copy.deepcopy(targets))
            final[name] = _distance(a.model, b.model)
            print(f"{name}\t{index}\t{loss_a:.5f}\t{loss_b:.5f}\t{abs(loss_a - loss_b) / abs(loss_a):.1e}"
                  f"\t{norm_a:.4f}\t{norm_b:.4f}\t{final[name]:.2e}", flush=True)
    for name, value in final.items():
        print(f"# weight distance after {args.steps} steps, {name}: {value:.2e}", file=sys.stderr)


if __name__ == "__main__":
    main()
