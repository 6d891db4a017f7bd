"""The training loop: setup, then epochs of (train, evaluate, checkpoint).

Checkpoints are our format (``dfine_cli.checkpoints``) written atomically: ``model`` holds
the weights to use for inference (the EMA weights when EMA is on) and ``training`` holds
everything needed to resume exactly: raw weights, EMA, optimizer, scaler, epoch and step,
best metric, history, RNG state and the resolved configuration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from dfine_cli.allocator import keep_freed_memory
from dfine_cli.checkpoints import (
    ModelInfo,
    checkpoint_payload,
    load_weights,
    portable_state_dict,
    read_checkpoint,
    save_payload,
)
from dfine_cli.data.cocofile import resolve_dataset
from dfine_cli.data.dataset import CocoDetectionDataset, loader_worker_init
from dfine_cli.data.transforms import BatchCollator, TrainTransforms
from dfine_cli.data.validate import check_before_training
from dfine_cli.devices import resolve_device, slow_bf16_note
from dfine_cli.engine.config import TrainConfig, validate
from dfine_cli.engine.criterion import build_criterion
from dfine_cli.engine.dataset_fingerprint import check_same_dataset
from dfine_cli.engine.distributed import local_main_first
from dfine_cli.engine.evaluate import EvalSplit, eval_loader, make_eval_split, run_evaluation
from dfine_cli.engine.evaluator import EvalResult
from dfine_cli.engine.finetune import adapt_state_to_classes
from dfine_cli.engine.optim import (
    ModelEMA,
    apply_lr,
    build_optimizer,
    build_param_groups,
    group_param_names,
    load_optimizer_state,
    lr_factor,
    remap_optimizer_state,
)
from dfine_cli.engine.recipes import Recipe, build_recipe
from dfine_cli.engine.run_files import RunFiles, RunFolder, claim_new_run, claim_resumed_run
from dfine_cli.engine.run_lock import RunFolderInUse, live_owner
from dfine_cli.engine.stages import STAGE1_BEST, TwoStagePolicy
from dfine_cli.engine.tensorboard_log import ScalarLog, open_scalar_log
from dfine_cli.engine.throughput import ThroughputMeter
from dfine_cli.engine.train_status import RunningStatus, StatusIterable
from dfine_cli.errors import CheckpointError, DataError, TrainingError, UsageError
from dfine_cli.hub.pretrained import load_pretrained_backbone
from dfine_cli.models.build import build_model_from_config
from dfine_cli.models.dfine import DFINE, DeployModel
from dfine_cli.models.outputs import DetectorOutput
from dfine_cli.models.presets import preset
from dfine_cli.progress import Progress
from dfine_cli.torch_compile import compile_module

log = logging.getLogger("dfine.train")



@dataclass
class TrainResult:
    run_dir: Path
    epochs_run: int
    best_metric: float
    best_epoch: int
    last_checkpoint: Path
    best_checkpoint: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    skipped_steps: int = 0


class EpochSampler(Sampler[int]):
    """A random permutation that depends only on ``(seed, epoch)``; optionally sharded.

    Sharding pads with the first indices so every rank sees the same number of samples
    (training only; evaluation de-duplicates by image id).
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True) -> None:
        self.size, self.seed, self.rank, self.world, self.shuffle = size, seed, rank, world, shuffle
        self.epoch = 0
        self.skip = 0  # indices of this epoch already consumed (mid-epoch resume)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        per_rank = math.ceil(self.size / self.world)
        order += order[: per_rank * self.world - len(order)]
        return order[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices()[self.skip :])

    def __len__(self) -> int:
        return math.ceil(self.size / self.world) - self.skip


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _autocast(device: torch.device, cfg: TrainConfig) -> tuple[contextlib.AbstractContextManager[Any], torch.amp.GradScaler | None]:
    if not cfg.amp:
        return contextlib.nullcontext(), None
    dtype_name = cfg.amp_dtype
    if dtype_name == "auto":
        dtype_name = "fp16" if device.type == "cuda" else "bf16"
    if dtype_name == "fp16" and device.type != "cuda":
        raise UsageError("fp16 mixed precision needs CUDA; use --set amp_dtype=bf16 on CPU")
    dtype = torch.float16 if dtype_name == "fp16" else torch.bfloat16
    if dtype == torch.bfloat16 and (note := slow_bf16_note(device.type)):
        log.warning("--amp: %s; train without --amp for speed", note)
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return torch.autocast(device.type, dtype=dtype), scaler


def _targets_to(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, torch.Tensor]]:
    return [{"labels": t["labels"].to(device), "boxes": t["boxes"].to(device).float()} for t in targets]


def resolve_resume(resume: str, name: str | None = None) -> Path:
    """``auto`` → the newest ``runs/train/*/last.pth`` of a run that no live process trains
    in; a run folder → its ``last.pth``.

    Raises:
        CheckpointError: nothing to resume.
        UsageError: the run is being trained by another live process (for ``auto``: every
            run is), naming its pid and host (:mod:`dfine_cli.engine.run_lock`).
    """
    if resume == "auto":
        root = Path("runs") / "train"
        pattern = f"{name}*/last.pth" if name else "*/last.pth"
        candidates = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise CheckpointError(f"--resume auto: no {root}/{pattern} to resume from")
        live = {p: live_owner(p.parent) for p in candidates}
        idle = [p for p in candidates if live[p] is None]
        for path in candidates[candidates.index(idle[-1]) + 1 :] if idle else candidates:
            owner = live[path]
            log.info("--resume auto: skipping %s, %s trains in it", path.parent,
                     owner.describe() if owner else "a live process")
        if not idle:
            newest, owner = candidates[-1], live[candidates[-1]]
            raise UsageError(f"--resume auto: every run with a last.pth is training in another "
                             f"process (newest: {newest.parent}, "
                             f"{owner.describe() if owner else 'a live process'})")
        return idle[-1]
    path = Path(resume)
    if path.is_dir():
        path = path / "last.pth"
    if not path.is_file():
        raise CheckpointError(f"nothing to resume: {path} does not exist")
    owner = live_owner(path.parent)
    if owner is not None:
        raise RunFolderInUse(path.parent, owner)
    return path


class Trainer:
    """One training run. ``Trainer(cfg).fit()``; every collaborator is built in ``setup``."""

    def __init__(self, cfg: TrainConfig, *, dist: DistInfo | None = None,
                 progress: Progress | None = None, ddp_wrap: Callable[[nn.Module], nn.Module] | None = None) -> None:
        self.cfg = cfg
        self.dist = dist or DistInfo()
        self.progress = progress
        self.ddp_wrap = ddp_wrap
        self.resume_state: dict[str, Any] | None = None
        self.resume_path: Path | None = None
        self.run_folder: RunFolder | None = None  # rank 0: the claimed, locked run folder
        self.scalars: ScalarLog = ScalarLog()  # --tensorboard (engine/tensorboard_log.py)
        if cfg.resume:
            self.resume_path = resolve_resume(cfg.resume, cfg.name)
            ckpt = read_checkpoint(self.resume_path)
            if ckpt.training is None:
                raise CheckpointError(f"{self.resume_path} has no training state to resume (best.pth holds "
                                      f"only the inference weights; resume from {self.resume_path.parent / 'last.pth'})")
            self.resume_state = ckpt.training
            saved = dict(ckpt.training["config"])
            keep = {k: getattr(cfg, k) for k in ("epochs", "device", "workers", "patience", "check_images")
                    if getattr(cfg, k) is not None}
            self.cfg = dataclasses.replace(TrainConfig(**saved), **keep, resume=cfg.resume)
        validate(self.cfg)

    # -- setup -----------------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        self._claim_run_dir()
        self.device = resolve_device(cfg.device)
        keep_freed_memory()  # a step's freed activations are reused, not faulted in again
        if self.dist.world > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        torch.manual_seed(cfg.seed)
        # a YOLO data.yaml is converted to its COCO cache once per machine, not once per process
        train_split, val_split = local_main_first(
            lambda: (resolve_dataset(cfg.data, cfg.train_split),
                     resolve_dataset(cfg.data, cfg.val_split)),
            self.dist.local_rank, self.dist.world)
        if self.dist.world > 1:  # every node's --data must hold the same content
            check_same_dataset({"train": train_split, "val": val_split})
        if self.dist.is_main:
            self._check_data({cfg.train_split: train_split, cfg.val_split: val_split})
        self.recipe: Recipe = build_recipe(cfg.recipe, cfg.model, cfg.epochs, cfg.img_size, cfg.augment)
        self.train_transforms = TrainTransforms(self.recipe.augment, seed=cfg.seed)
        self.train_set = CocoDetectionDataset(train_split.images_dir, train_split.annotations,
                                              transforms=self.train_transforms)
        if len(self.train_set) == 0:
            raise DataError(f"the training split of {cfg.data} has no images")
        self.val: EvalSplit = make_eval_split(val_split.images_dir, val_split.annotations, cfg.img_size)
        if self.val.dataset.label_to_category != self.train_set.label_to_category:
            raise DataError("train and val annotation files define different categories")
        names = list(self.train_set.class_names)
        if train_split.names and len(train_split.names) == len(names):
            names = list(train_split.names)
        self.num_classes = self.train_set.num_classes
        self.class_names = names
        self.model = self._build_model()
        self.info = ModelInfo(
            config=self.model_config, class_names=names,
            category_ids=list(self.train_set.label_to_category), img_size=(cfg.img_size, cfg.img_size),
        )
        self.model.to(self.device)
        # Eager on the CPU: oneDNN's convolutions and their backward run 2-4x faster on
        # channels-last tensors (docs/bench.md); AccurateBatchNorm2d keeps the batch statistics
        # as exact as with contiguous ones. The optimizer state and EMA copy follow the
        # parameters' layout. --compile keeps the layout it was measured in (contiguous).
        cpu_eager = self.device.type == "cpu" and not cfg.compile
        self.memory_format = torch.channels_last if cpu_eager else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        if cfg.freeze_backbone:
            for p in self.model.backbone.parameters():
                p.requires_grad_(False)
        self.criterion = build_criterion(cfg.recipe)  # type: ignore[arg-type]
        self.per_rank_batch = max(1, cfg.batch_size // self.dist.world)
        if cfg.batch_size % self.dist.world:
            log.warning("batch size %d is not divisible by %d processes; using %d per process",
                        cfg.batch_size, self.dist.world, self.per_rank_batch)
        self.sampler = EpochSampler(len(self.train_set), cfg.seed, self.dist.rank, self.dist.world)
        self.collator = BatchCollator.from_config(self.recipe.augment, seed=cfg.seed)
        # The official loader drops the last partial batch; a split smaller than one batch keeps it.
        drop_last = len(self.sampler) >= self.per_rank_batch
        self.loader = DataLoader(self.train_set, batch_size=self.per_rank_batch, sampler=self.sampler,
                                 num_workers=cfg.workers, collate_fn=self.collator, drop_last=drop_last,
                                 persistent_workers=False, worker_init_fn=loader_worker_init)
        self.iters_per_epoch = len(self.loader)
        self.schedule = self.recipe.schedule(self.iters_per_epoch, cfg.warmup_iters)
        groups = build_param_groups(self.model, self.recipe.optim, cfg.lr_scale)
        self.optimizer = build_optimizer(groups, lr=self.recipe.optim.lr * cfg.lr_scale,
                                         betas=self.recipe.optim.betas,
                                         weight_decay=self.recipe.optim.weight_decay)
        self.ema = ModelEMA(self.model, cfg.ema_decay, cfg.ema_warmups) if cfg.ema else None
        self.autocast, self.scaler = _autocast(self.device, cfg)
        self.train_module: nn.Module = self.ddp_wrap(self.model) if self.ddp_wrap else self.model
        if cfg.compile:  # shares the parameters: checkpoints and EMA keep using self.model
            self.train_module = compile_module(self.train_module, self.device)
        self.start_epoch, self.global_step, self.skip_batches = 0, 0, 0
        self.best_metric, self.best_epoch = -1.0, -1
        self.history: list[dict[str, Any]] = []
        self.skipped_steps = 0
        self.epoch_sums: dict[str, float] = {}  # running loss sums of the epoch in progress
        self.epoch_count = 0  # optimizer steps they cover
        self.stages = TwoStagePolicy(cfg.stage2, self.recipe.no_aug_start, self.recipe.epochs)
        self.stage1_best: dict[str, Any] | None = None  # in memory on every rank (no shared disk needed)
        self.stage1_best_epoch = -1
        self.stage2_reloads = 0
        if self.resume_state is not None:
            self._restore(self.resume_state)
            self._restore_stage1_best()
        self.files = RunFiles(self.run_dir, enabled=self.dist.is_main)
        if self.dist.is_main:
            for stale in self.run_dir.glob(".*.pth.*.tmp*"):  # left by a job killed mid-write
                stale.unlink(missing_ok=True)
        if self.dist.is_main:
            self.files.write_config(self.cfg.to_dict() | {"resolved": self._resolved()})
        self.scalars = open_scalar_log(cfg.tensorboard and self.dist.is_main, self.run_dir,
                                       purge_step=self.global_step if self.resume_state is not None else None)

    def _claim_run_dir(self) -> None:
        """Set ``run_dir``; rank 0 creates and locks it (refusing a folder of another run)."""
        if not self.dist.is_main:
            self.run_dir = self.resume_path.parent if self.resume_path else Path(self.cfg.output or ".")
            return
        if self.resume_path is not None:
            self.run_folder = claim_resumed_run(self.resume_path.parent)
        else:
            self.run_folder = claim_new_run(self.cfg.output, self.cfg.name, self.cfg.exist_ok)
        self.run_dir = self.run_folder.path

    def _check_data(self, splits: dict[str, Any]) -> None:
        """Every image of every split decodes (or, ``check_images=header``, opens)."""
        decode = self.cfg.check_images == "decode"
        images = 0

        def track(items: Iterable[Any], description: str, total: int | None = None) -> Iterable[Any]:
            nonlocal images
            images += total or 0
            return self.progress(items, description, total) if self.progress else items

        t0 = time.perf_counter()
        warnings = check_before_training(splits, decode=decode, workers=self.cfg.workers, track=track)
        for line in warnings:
            log.warning("%s", line)
        log.info("checked %d images of %d split(s) in %.1f s (%s)", images, len(splits),
                 time.perf_counter() - t0, "full decode" if decode else "headers only")

    def _resolved(self) -> dict[str, Any]:
        r = self.recipe
        return {"epochs": r.epochs, "policy_epochs": list(r.augment.policy_epochs),
                "mixup_epochs": list(r.augment.mixup_epochs), "lr": r.optim.lr * self.cfg.lr_scale,
                "backbone_lr": r.optim.backbone_lr * self.cfg.lr_scale,
                "weight_decay": r.optim.weight_decay, "schedule": dataclasses.asdict(self.schedule),
                "per_process_batch": self.per_rank_batch, "processes": self.dist.world,
                "num_classes": self.num_classes, "device": str(self.device),
                "weights": self.weights_source}

    def _build_model(self) -> DFINE:
        cfg = self.cfg
        config = preset(cfg.model, num_classes=self.num_classes, variant=cfg.recipe,
                        num_denoising=cfg.num_denoising)
        if cfg.class_map and not cfg.tune:
            raise UsageError("--class-map applies to --tune runs (it maps dataset classes to checkpoint classes)")
        if cfg.tune:
            ckpt = read_checkpoint(cfg.tune, variant=cfg.tune_variant)
            if ckpt.info.config.name != cfg.model:
                raise UsageError(f"--tune checkpoint is size {ckpt.info.config.name!r} but --model is {cfg.model!r}")
            config = ckpt.info.config.replace(num_classes=self.num_classes, num_denoising=cfg.num_denoising,
                                              decoder_activation=config.decoder_activation,
                                              mlp_activation=config.mlp_activation)
            model = build_model_from_config(config)
            state = dict(ckpt.state_dict)
            adapt_state_to_classes(state, model.state_dict(), self.class_names,
                                   ckpt.info.class_names, cfg.class_map)
            load_weights(model, state, source=str(cfg.tune))
            self.weights_source = f"all weights from {cfg.tune}"
        else:
            model = build_model_from_config(config)
            if self.resume_state is not None:
                self.weights_source = f"all weights from {self.resume_path} (resumed)"
            elif cfg.pretrained:
                self.weights_source = load_pretrained_backbone(model, config) + \
                    "; encoder and decoder: random initialisation"
            else:
                self.weights_source = "random initialisation (no pretrained backbone)"
        self.model_config = config
        return model

    # -- checkpoints -----------------------------------------------------------------------
    def _training_state(self, epoch: int, step_in_epoch: int) -> dict[str, Any]:
        return {
            "model": portable_state_dict(self.model),
            "ema": self.ema.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "optimizer_param_names": group_param_names(self.model, self.optimizer.param_groups),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": self.global_step,
            "best_metric": self.best_metric, "best_epoch": self.best_epoch,
            "history": self.history, "skipped_steps": self.skipped_steps,
            "epoch_sums": dict(self.epoch_sums) if step_in_epoch else {},
            "epoch_count": self.epoch_count if step_in_epoch else 0,
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "stage1_best_epoch": self.stage1_best_epoch, "stage2_reloads": self.stage2_reloads,
            "config": self.cfg.to_dict(),
            "weights": self.weights_source,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        load_optimizer_state(self.optimizer, self._optimizer_state(state))
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = int(state["epoch"])
        self.skip_batches = int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self.best_metric = float(state["best_metric"])
        self.best_epoch = int(state["best_epoch"])
        self.history = list(state["history"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.epoch_sums = {k: float(v) for k, v in state.get("epoch_sums", {}).items()}
        self.epoch_count = int(state.get("epoch_count", 0))
        self._resume_rng = state["rng_torch"]
        self._resume_rng_cuda = state.get("rng_cuda")
        self.stage1_best_epoch = int(state.get("stage1_best_epoch", -1))
        self.stage2_reloads = int(state.get("stage2_reloads", 0))
        log.info("resuming at epoch %d, step %d", self.start_epoch + 1, self.skip_batches)

    def _optimizer_state(self, state: dict[str, Any]) -> dict[str, Any]:
        """The saved optimizer state of a training ``state``, in this optimizer's group layout.

        The layout changes when a dfine version regroups parameters (a state saved without
        names has the layout before ``in_proj_bias`` lost its weight decay); every
        parameter's moments are matched by name, so such a run resumes.
        """
        current = group_param_names(self.model, self.optimizer.param_groups)
        saved = state.get("optimizer_param_names")
        if saved is None:
            legacy = build_param_groups(self.model, self.recipe.optim, self.cfg.lr_scale, suffix_bias=False)
            saved = group_param_names(self.model, legacy)
        try:
            return remap_optimizer_state(state["optimizer"], saved, self.optimizer, current)
        except ValueError as exc:
            raise CheckpointError(f"cannot resume the optimizer: {exc}") from exc

    # -- two-stage policy (engine/stages.py) -------------------------------------------------
    def _snapshot(self) -> dict[str, Any]:
        """CPU copies of what a stage-2 reload restores: weights, EMA, optimizer, scaler."""
        return _cpu_copy({"model": self.model.state_dict(),
                          "ema": self.ema.state_dict() if self.ema else None,
                          "optimizer": self.optimizer.state_dict(),
                          "scaler": self.scaler.state_dict() if self.scaler else None})

    def _keep_stage1_best(self, epoch: int) -> None:
        """Remember the state after 0-based ``epoch`` (an improving stage-1 epoch)."""
        self.stage1_best = self._snapshot()
        self.stage1_best_epoch = epoch + 1
        self.save(STAGE1_BEST, epoch + 1, 0)  # rank 0: lets a resumed run reload it too

    def _restore_stage1_best(self) -> None:
        """On resume, read the remembered stage-1 state back from ``best_stg1.pth``."""
        if not self.stages.enabled or self.stage1_best_epoch < 1:
            return
        path = self.run_dir / STAGE1_BEST
        have = path.is_file()
        if self.dist.world > 1:  # every rank must agree, or a reload would desynchronise them
            flag = torch.tensor([1.0 if have else 0.0])
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            have = bool(flag.item() > 0)
        if not have:
            log.warning("%s is not readable on every node: stage 2 continues without reloads", path)
            return
        state = read_checkpoint(path).training or {}
        self.stage1_best = {k: state.get(k) for k in ("model", "ema", "scaler")}
        self.stage1_best["optimizer"] = self._optimizer_state(state)

    def _reload_stage1_best(self, reason: str) -> None:
        snap = self.stage1_best
        assert snap is not None
        self.model.load_state_dict(snap["model"])
        if self.ema is not None and snap.get("ema"):
            self.ema.load_state_dict(snap["ema"])
        load_optimizer_state(self.optimizer, snap["optimizer"])
        if self.scaler is not None and snap.get("scaler"):
            self.scaler.load_state_dict(snap["scaler"])
        self.stage2_reloads += 1
        log.info("%s: back to the best stage-1 state (epoch %d)", reason, self.stage1_best_epoch)

    def save(self, name: str, epoch: int, step_in_epoch: int) -> Path:
        """Write ``name`` atomically (rank 0 only); returns its path.

        ``best.pth`` is the file users ship: it holds the inference weights (EMA when on),
        the model info and a small ``trained`` summary, never the training state (that is
        ``last.pth`` and ``best_stg1.pth``, which resume and stage 2 read).
        """
        path = self.run_dir / name
        if not self.dist.is_main:
            return path
        inference = self.ema.module if self.ema else self.model
        if name == "best.pth":
            payload = checkpoint_payload(inference, self.info)
            payload["trained"] = {"epoch": epoch, "metric": self.cfg.metric, "value": self.best_metric,
                                  "weights": "ema" if self.ema else "model"}
        else:
            payload = checkpoint_payload(inference, self.info, self._training_state(epoch, step_in_epoch))
        save_payload(path, payload)
        return path

    # -- loop ------------------------------------------------------------------------------
    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        self.model.train()
        self.train_set.set_epoch(epoch)
        self.collator.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        first = self.skip_batches
        self.sampler.skip = first * self.per_rank_batch
        resuming = first > 0 and hasattr(self, "_resume_rng")
        if not resuming:
            torch.manual_seed(cfg.seed * 7919 + epoch)
        iterator = iter(self.loader)  # draws the loader's base seed from the global RNG
        if resuming:
            torch.set_rng_state(self._resume_rng)
            if self._resume_rng_cuda is not None and self.device.type == "cuda":
                torch.cuda.set_rng_state(self._resume_rng_cuda, self.device)
        # A mid-epoch resume continues the sums of the steps before it: same epoch mean.
        sums: dict[str, float] = dict(self.epoch_sums) if resuming else {}
        count = self.epoch_count if resuming else 0
        consecutive_bad = 0
        meter = ThroughputMeter()
        batches: Iterable[Any] = meter.timed(iterator)
        status = RunningStatus()  # running loss and lr beside the bar (engine/train_status.py)
        if self.progress is not None and self.dist.is_main:
            batches = self.progress(StatusIterable(batches, status.text), f"epoch {epoch + 1}/{self.recipe.epochs}",
                                    len(self.loader))
        for step, (images, targets) in enumerate(batches, start=first):
            images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            tgts = _targets_to(targets, self.device)
            apply_lr(self.optimizer, lr_factor(self.schedule, self.global_step))
            with self.autocast:
                out = self.train_module(images, tgts)
                assert isinstance(out, DetectorOutput)
                losses = self.criterion(out, tgts)
            loss = losses.total
            finite = torch.isfinite(loss.detach()).float()
            if self.dist.world > 1:  # every rank must skip together, or DDP would hang
                torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
            if not bool(finite > 0):
                self.optimizer.zero_grad(set_to_none=True)
                self.skipped_steps += 1
                consecutive_bad += 1
                log.warning("non-finite loss at epoch %d step %d: step skipped (%d in a row)",
                            epoch + 1, step, consecutive_bad)
                if consecutive_bad >= cfg.max_nonfinite:
                    last = self.run_dir / "last.pth"
                    raise TrainingError(
                        f"{consecutive_bad} non-finite losses in a row; stopping. Last good "
                        f"checkpoint: {last if last.exists() else 'none yet'} (try a lower --lr-scale)"
                    )
                continue
            consecutive_bad = 0
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                loss.backward()
            if cfg.clip_max_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_max_norm)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model)
            self.global_step += 1
            count += 1
            terms = {**losses.as_floats(), "loss": float(loss.detach())}
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
            lr = self.optimizer.param_groups[0]["lr"]
            status.update(sums["loss"] / count, lr)
            self.scalars.step(self.global_step, terms, lr)
            if cfg.save_every_steps and (step + 1) % cfg.save_every_steps == 0 and step + 1 < self.iters_per_epoch:
                self.epoch_sums, self.epoch_count = self._mean_over_ranks(sums), count
                self.save("last.pth", epoch, step + 1)
        self.epoch_sums, self.epoch_count = {}, 0
        self.skip_batches = 0
        self.sampler.skip = 0
        avg = {k: v / max(count, 1) for k, v in sums.items()}
        if self.dist.world > 1 and avg:  # report the mean over all processes, not rank 0's share
            keys = sorted(avg)
            values = torch.tensor([avg[k] for k in keys], dtype=torch.float64)
            torch.distributed.all_reduce(values)
            avg = {k: float(v) / self.dist.world for k, v in zip(keys, values)}
        avg["lr"] = self.optimizer.param_groups[0]["lr"]
        avg.update(meter.summary(self.dist.world))  # this process's timing; images/s of all
        return avg

    def _mean_over_ranks(self, sums: dict[str, float]) -> dict[str, float]:
        """Loss sums averaged over processes (every rank resumes from rank 0's checkpoint)."""
        if self.dist.world == 1 or not sums:
            return dict(sums)
        keys = sorted(sums)
        values = torch.tensor([sums[k] for k in keys], dtype=torch.float64)
        torch.distributed.all_reduce(values)
        return {k: float(v) / self.dist.world for k, v in zip(keys, values, strict=True)}

    def evaluate(self) -> EvalResult:
        module = self.ema.module if self.ema else self.model
        assert isinstance(module, DFINE)
        module.eval()
        deploy = DeployModel(module)
        loader = eval_loader(self.val.dataset, self.per_rank_batch, self.cfg.workers,
                             sampler=EpochSampler(len(self.val.dataset), 0, self.dist.rank, self.dist.world, shuffle=False))

        @torch.inference_mode()
        def predict(images: torch.Tensor, sizes: torch.Tensor) -> tuple[Any, Any, Any]:
            return deploy(images.to(self.device), sizes.to(self.device))

        result = run_evaluation(predict, self.val, loader, backend=self.cfg.eval_backend,
                                progress=self.progress if self.dist.is_main else None, total=len(loader))
        self.model.train()
        return result

    def fit(self) -> TrainResult:
        """Set up and train; the run folder's lock is released however this ends."""
        try:
            return self._fit()
        finally:
            self.scalars.close()
            if self.run_folder is not None:
                self.run_folder.close()
                self.run_folder = None

    def _fit(self) -> TrainResult:
        self.setup()
        cfg = self.cfg
        stopped_early = False
        epoch = self.start_epoch
        log.info("%s", self.weights_source)
        log.info("training D-FINE-%s (%s recipe) on %d images, %d classes, %d epochs, %d iterations/epoch, "
                 "batch %d (%d per process), device %s -> %s", cfg.model.upper(), cfg.recipe,
                 len(self.train_set), self.num_classes, self.recipe.epochs, self.iters_per_epoch,
                 cfg.batch_size, self.per_rank_batch, self.device, self.run_dir)
        for epoch in range(self.start_epoch, self.recipe.epochs):
            t0 = time.perf_counter()
            reloaded = self.skip_batches == 0 and self.stages.reload_before(epoch, self.stage1_best is not None)
            if reloaded:
                self._reload_stage1_best(f"stage 2 starts at epoch {epoch + 1}")
            stats = self.train_one_epoch(epoch)
            record: dict[str, Any] = {"epoch": epoch + 1, "time_s": round(time.perf_counter() - t0, 2),
                                      "stage": 2 if self.stages.in_stage2(epoch) else 1, **stats}
            if reloaded:
                record["started_from_epoch"] = self.stage1_best_epoch
            is_last = epoch + 1 == self.recipe.epochs
            if (epoch + 1) % cfg.eval_every == 0 or is_last:
                result = self.evaluate()
                record.update({f"val_{k}": v for k, v in result.stats.items()})
                metric = float(result.stats.get(cfg.metric, float("nan")))
                improved = metric > self.best_metric
                if improved:
                    self.best_metric, self.best_epoch = metric, epoch + 1
                    self.history.append(record)
                    self.save("best.pth", epoch + 1, 0)
                    if self.dist.is_main:
                        result.write_json(self.run_dir / "best_eval.json")
                    if self.stages.keeps_stage1_best(epoch):
                        self._keep_stage1_best(epoch)
                else:
                    self.history.append(record)
                log.info("epoch %d: loss %.4f, val %s %.4f (best %.4f @ %d); %s", epoch + 1,
                         stats.get("loss", float("nan")), cfg.metric, metric, self.best_metric, self.best_epoch,
                         _speed_text(stats))
                if self.stages.reload_after(epoch, evaluated=True, improved=improved,
                                            have_stage1_best=self.stage1_best is not None):
                    self._reload_stage1_best(f"epoch {epoch + 1} did not improve {cfg.metric}")
            else:
                self.history.append(record)
                log.info("epoch %d: loss %.4f; %s", epoch + 1, stats.get("loss", float("nan")),
                         _speed_text(stats))
            self.save("last.pth", epoch + 1, 0)
            self.files.write_history(self.history)
            self.scalars.epoch(self.history[-1])
            if cfg.patience and self.best_epoch > 0 and epoch + 1 - self.best_epoch >= cfg.patience:
                log.info("no improvement for %d epochs: stopping early", cfg.patience)
                stopped_early = True
                break
        best = self.run_dir / "best.pth"
        return TrainResult(self.run_dir, epoch + 1 if self.recipe.epochs else 0, self.best_metric,
                           self.best_epoch, self.run_dir / "last.pth", best if best.exists() else None,
                           self.history, stopped_early, self.skipped_steps)


def _speed_text(stats: dict[str, Any]) -> str:
    """``"12.3 images/s, step 0.512 s, data wait 4%"`` from an epoch's throughput stats."""
    return (f"{stats.get('images_per_s', 0.0):.1f} images/s, step {stats.get('step_time_s', 0.0):.3f} s, "
            f"data wait {100 * stats.get('data_wait_frac', 0.0):.0f}%")


def _cpu_copy(obj: Any) -> Any:
    """Deep copy of nested dicts/lists of tensors, with every tensor cloned to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v) for v in obj)
    return obj


def train(cfg: TrainConfig, progress: Progress | None = None) -> TrainResult:
    """Run a single-process training described by ``cfg``."""
    return Trainer(cfg, progress=progress).fit()


def launch_training(cfg: TrainConfig, options: Any, verbose: bool = False) -> dict[str, Any]:
    """Multi-process training started from this process (``distributed.launch``).

    On node 0 this process claims the run folder (refusing one of another run, see
    :func:`~dfine_cli.engine.run_files.claim_new_run`) and holds its lock for the workers,
    which see it as theirs; it is released, and an empty new folder removed, when they end.
    ``options`` is a :class:`~dfine_cli.engine.distributed.LaunchOptions`.
    """
    from dfine_cli.engine import distributed

    main_node = options.node_rank == 0
    folder: RunFolder | None = None
    if cfg.resume:
        resumed = resolve_resume(cfg.resume, cfg.name)
        cfg = dataclasses.replace(cfg, output=str(resumed.parent), resume=str(resumed))
        if main_node:
            folder = claim_resumed_run(resumed.parent)
    elif main_node:
        folder = claim_new_run(cfg.output, cfg.name, cfg.exist_ok)
        cfg = dataclasses.replace(cfg, output=str(folder.path))
    try:
        with folder.lock.shared_with_children() if folder else contextlib.nullcontext():
            return distributed.launch(cfg, options, verbose=verbose)
    finally:
        if folder is not None:
            folder.close()
