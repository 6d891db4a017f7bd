"""Training configuration: one dataclass mirrored by the CLI flags, a YAML file and ``--set``.

Unknown keys are errors. Values given on the command line override the file; ``--set
key=value`` overrides both.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dfine_cli.devices import DEVICE_HELP, is_device_name
from dfine_cli.engine.stages import STAGE2_MODES
from dfine_cli.errors import UsageError
from dfine_cli.image_size import DEFAULT_IMG_SIZE, IMG_SIZE_RULE, is_valid_side


@dataclass
class TrainConfig:
    """Everything a training run needs; ``dfine train --help`` documents each field."""

    data: str = ""
    model: str = "n"
    recipe: str = "dfine"
    epochs: int | None = None  # default: the recipe's
    batch_size: int = 4  # total across processes
    img_size: int = DEFAULT_IMG_SIZE
    lr_scale: float = 1.0
    workers: int = 2
    device: str = "auto"
    amp: bool = False
    amp_dtype: str = "auto"  # auto (bf16 on CPU, fp16 on CUDA), bf16, fp16
    ema: bool = True
    ema_decay: float = 0.9999
    ema_warmups: int = 1000
    pretrained: bool = True  # ImageNet HGNetv2 backbone (not with tune/resume)
    tune: str | None = None
    tune_variant: str | None = None
    class_map: dict[str, str] = field(default_factory=dict)  # dataset class -> checkpoint class
    resume: str | None = None
    patience: int | None = None
    output: str | None = None
    name: str | None = None
    exist_ok: bool = False  # start a new run in a folder that holds files (overwrites them)
    seed: int = 0
    eval_every: int = 1
    freeze_backbone: bool = False
    clip_max_norm: float = 0.1
    warmup_iters: int | None = None  # default: the recipe's (500 D-FINE, 2000 DEIM)
    max_nonfinite: int = 10
    save_every_steps: int | None = None
    num_denoising: int = 100
    metric: str = "AP"
    eval_backend: str = "faster"
    augment: dict[str, Any] = field(default_factory=dict)  # AugmentConfig overrides
    train_split: str = "train"
    val_split: str = "val"
    check_images: str = "decode"  # before training: decode every image, or read headers only
    stage2: str = "best"  # two-stage policy: reload the best stage-1 state (engine/stages.py)
    tensorboard: bool = False  # also log scalars to <run>/tensorboard (needs the tensorboard extra)
    compile: bool = False  # run the model through torch.compile (dfine_cli/torch_compile.py)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _coerce(key: str, value: Any) -> Any:
    """Convert ``value`` (from YAML or a ``--set`` string) to the field's type."""
    hint = _HINTS[key]
    base, optional = hint, False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = typing.get_args(hint)
        optional = type(None) in args
        base = next(a for a in args if a is not type(None))
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
        if optional:
            return None
        raise UsageError(f"{key} cannot be empty")
    try:
        if base is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if base is float:
            return float(value)
        if base is str:
            return str(value)
        if typing.get_origin(base) is dict or base is dict:
            parsed = yaml.safe_load(value) if isinstance(value, str) else value
            if not isinstance(parsed, dict):
                raise ValueError(value)
            return parsed
    except (TypeError, ValueError):
        raise UsageError(f"invalid value for {key}: {value!r}") from None
    return value


def merge(cfg: TrainConfig, values: dict[str, Any], source: str) -> TrainConfig:
    unknown = sorted(k for k in values if k not in _FIELDS)
    if unknown:
        raise UsageError(f"unknown {source} key(s): {', '.join(unknown)}; valid keys: "
                         f"{', '.join(sorted(_FIELDS))}")
    return dataclasses.replace(cfg, **{k: _coerce(k, v) for k, v in values.items()})


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"config file not found: {path}")
    from dfine_cli.errors import DataError
    from dfine_cli.fileio import read_yaml

    try:
        data = read_yaml(path) or {}
    except DataError as exc:  # a config file is an argument: its errors are usage errors
        raise UsageError(str(exc)) from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} must be a mapping of training settings")
    from dfine_cli.engine.official_config import is_official_config, official_config_hint

    if is_official_config(data, _FIELDS):
        raise UsageError(official_config_hint(data, path))
    return data


def parse_set(items: list[str]) -> dict[str, Any]:
    """``["epochs=3", "augment={mixup_prob: 0}"]`` → dict (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UsageError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            out[key] = raw
    return out


#: Allowed values of the settings that name a choice defined here (others: see ``_rules``).
CHOICES: dict[str, tuple[str, ...]] = {
    "amp_dtype": ("auto", "bf16", "fp16"),
    "check_images": ("decode", "header"),
    "stage2": STAGE2_MODES,
}


def _type_ok(value: Any, hint: Any) -> bool:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    origin = typing.get_origin(hint) or hint
    return isinstance(value, origin)


def _type_name(hint: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    args = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
    base = names.get(args[0], "a mapping" if (typing.get_origin(args[0]) or args[0]) is dict else str(args[0]))
    return base + (" or null" if union and type(None) in typing.get_args(hint) else "")


def _rules(cfg: TrainConfig) -> list[tuple[str, bool, str]]:
    """``(key, valid, what is allowed)`` for every setting with a range or choices."""
    from dfine_cli.engine.evaluator import BACKENDS, STAT_NAMES
    from dfine_cli.models.presets import SIZES, VARIANTS

    def optional_min(value: int | None, low: int) -> bool:
        return value is None or value >= low

    name_ok = cfg.name is None or (cfg.name not in ("", ".", "..") and not set(cfg.name) & set("/\\"))
    return [
        ("model", cfg.model in SIZES, f"one of {', '.join(SIZES)}"),
        ("recipe", cfg.recipe in VARIANTS, f"one of {', '.join(VARIANTS)}"),
        ("epochs", optional_min(cfg.epochs, 1), "an integer >= 1"),
        ("batch_size", cfg.batch_size >= 1, "an integer >= 1"),
        ("img_size", is_valid_side(cfg.img_size), IMG_SIZE_RULE),
        ("lr_scale", math.isfinite(cfg.lr_scale) and cfg.lr_scale > 0, "a finite number > 0"),
        ("workers", cfg.workers >= 0, "an integer >= 0"),
        ("device", is_device_name(cfg.device), DEVICE_HELP),
        ("ema_decay", math.isfinite(cfg.ema_decay) and 0 <= cfg.ema_decay < 1, "a number in [0, 1)"),
        ("ema_warmups", cfg.ema_warmups >= 0, "an integer >= 0"),
        ("tune_variant", cfg.tune_variant is None or cfg.tune_variant in VARIANTS,
         f"one of {', '.join(VARIANTS)}"),
        ("patience", optional_min(cfg.patience, 1), "an integer >= 1"),
        ("name", name_ok, "a folder name without / or \\"),
        ("output", cfg.output is None or cfg.output.strip() != "", "a folder path"),
        ("seed", 0 <= cfg.seed < 2**32, "an integer in [0, 2^32)"),
        ("eval_every", cfg.eval_every >= 1, "an integer >= 1"),
        ("clip_max_norm", math.isfinite(cfg.clip_max_norm) and cfg.clip_max_norm >= 0,
         "a finite number >= 0 (0 turns clipping off)"),
        ("warmup_iters", optional_min(cfg.warmup_iters, 0), "an integer >= 0"),
        ("max_nonfinite", cfg.max_nonfinite >= 1, "an integer >= 1"),
        ("save_every_steps", optional_min(cfg.save_every_steps, 1), "an integer >= 1"),
        ("num_denoising", cfg.num_denoising >= 0, "an integer >= 0"),
        ("metric", cfg.metric in STAT_NAMES, f"one of {', '.join(STAT_NAMES)}"),
        ("eval_backend", cfg.eval_backend in BACKENDS, f"one of {', '.join(BACKENDS)}"),
        ("train_split", cfg.train_split.strip() != "", "a split name"),
        ("val_split", cfg.val_split.strip() != "", "a split name"),
        *((key, getattr(cfg, key) in allowed, f"one of {', '.join(allowed)}") for key, allowed in CHOICES.items()),
    ]


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every setting's type, range or choices (NaN and infinity included).

    Raises:
        UsageError: naming the setting, its value and what is allowed.
    """
    from dfine_cli.engine.recipes import build_recipe

    for key, hint in _HINTS.items():
        value = getattr(cfg, key)
        if not _type_ok(value, hint):
            raise UsageError(f"invalid setting {key}={value!r}: must be {_type_name(hint)}")
    if not cfg.data and not cfg.resume:
        raise UsageError("--data is required")
    if cfg.tensorboard:  # before anything runs: exit 6 naming the extra when it is missing
        from dfine_cli.engine.tensorboard_log import require_tensorboard

        require_tensorboard()
    if cfg.compile and cfg.device in ("auto", "cpu"):  # exit 6 before anything runs
        from dfine_cli.torch_compile import check_compile_support

        check_compile_support()
    for key, valid, allowed in _rules(cfg):
        if not valid:
            raise UsageError(f"invalid setting {key}={getattr(cfg, key)!r}: must be {allowed}")
    try:  # unknown augmentation keys and values out of range
        recipe = build_recipe(cfg.recipe, cfg.model, cfg.epochs, cfg.img_size, cfg.augment)
    except (UsageError, TypeError, ValueError) as exc:
        raise UsageError(f"invalid setting augment={cfg.augment!r}: {exc}") from None
    smallest = min_img_size(cfg.model, cfg.recipe, multiscale=recipe.augment.base_size_repeat is not None)
    if cfg.img_size < smallest:
        raise UsageError(f"invalid setting img_size={cfg.img_size}: D-FINE-{cfg.model.upper()} needs at "
                         f"least {smallest} (its queries need as many feature-map positions)")
    return cfg


def min_img_size(model: str, recipe: str, multiscale: bool) -> int:
    """Smallest multiple of 32 whose feature maps hold at least ``num_queries`` positions.

    With multi-scale training the smallest batch size (0.75 × the size) must hold them too.
    """
    from dfine_cli.data.transforms import generate_scales
    from dfine_cli.models.presets import preset

    config = preset(model, variant=recipe)
    size = 32
    while True:
        low = min(generate_scales(size, 1)) if multiscale else size
        if sum((low // stride) ** 2 for stride in config.feat_strides) >= config.num_queries:
            return size
        size += 32
