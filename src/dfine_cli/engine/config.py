"""Training configuration: one dataclass mirrored by the CLI flags, a YAML file and ``--set``.

Unknown keys are errors. Values given on the command line override the file; ``--set
key=value`` overrides both.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dfine_cli.errors import UsageError


@dataclass
class TrainConfig:
    """Everything a training run needs; ``dfine train --help`` documents each field."""

    data: str = ""
    model: str = "n"
    recipe: str = "dfine"
    epochs: int | None = None  # default: the recipe's
    batch_size: int = 4  # total across processes
    img_size: int = 640
    lr_scale: float = 1.0
    workers: int = 2
    device: str = "auto"
    amp: bool = False
    amp_dtype: str = "auto"  # auto (bf16 on CPU, fp16 on CUDA), bf16, fp16
    ema: bool = True
    ema_decay: float = 0.9999
    ema_warmups: int = 1000
    tune: str | None = None
    tune_variant: str | None = None
    resume: str | None = None
    patience: int | None = None
    output: str | None = None
    name: str | None = None
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
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UsageError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path} must be a mapping of training settings")
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


def validate(cfg: TrainConfig) -> TrainConfig:
    from dfine_cli.models.presets import SIZES, VARIANTS

    if not cfg.data:
        raise UsageError("--data is required")
    if cfg.model not in SIZES:
        raise UsageError(f"--model must be one of {', '.join(SIZES)}")
    if cfg.recipe not in VARIANTS:
        raise UsageError(f"--recipe must be one of {', '.join(VARIANTS)}")
    if cfg.epochs is not None and cfg.epochs < 1:
        raise UsageError("--epochs must be >= 1")
    if cfg.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    if cfg.img_size < 32 or cfg.img_size % 32:
        raise UsageError("--img-size must be a positive multiple of 32")
    if cfg.amp_dtype not in ("auto", "bf16", "fp16"):
        raise UsageError("amp_dtype must be auto, bf16 or fp16")
    if cfg.eval_every < 1:
        raise UsageError("--eval-every must be >= 1")
    if cfg.patience is not None and cfg.patience < 1:
        raise UsageError("--patience must be >= 1")
    return cfg
