"""Our checkpoint format (``format: "dfine"``): weights plus everything needed to use them.

A plain dict saved by ``torch.save`` and read back with ``torch.load(weights_only=True)``::

    {"format": "dfine", "format_version": 1,
     "model_config": {...ModelConfig fields...},
     "class_names": [...], "category_ids": [...], "img_size": [h, w],
     "preprocessing": {...}, "model": state_dict,
     "training": {...optional resume state...}}

Files are written atomically (temp file, fsync, rename): never a partial file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from dfine_cli.checkpoints.info import DEFAULT_PREPROCESSING, LoadedCheckpoint, ModelInfo
from dfine_cli.checkpoints.official import as_state_dict
from dfine_cli.errors import CheckpointError
from dfine_cli.fileio import atomic_path
from dfine_cli.models.presets import VARIANT_ACTIVATIONS, ModelConfig

FORMAT_NAME = "dfine"
FORMAT_VERSION = 1


def is_ours(obj: dict[str, Any]) -> bool:
    """Whether a loaded ``.pth`` dict is in our format."""
    return obj.get("format") == FORMAT_NAME


def read_ours(obj: dict[str, Any], path: Path, variant: str | None) -> LoadedCheckpoint:
    """Our format, checked; ``variant`` (if given) overrides the recorded decoder activation."""
    version = obj.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written by a newer dfine (format version {version}); upgrade dfine"
        )
    try:
        fields = {f.name for f in dataclasses.fields(ModelConfig)}
        raw = dict(obj["model_config"])
        unknown = sorted(set(raw) - fields)
        if unknown:
            raise CheckpointError(f"{path}: unknown model_config fields {unknown}")
        for key in ("return_idx", "feat_strides", "num_points", "use_encoder_idx"):
            raw[key] = tuple(raw[key])
        cfg = ModelConfig(**raw)
        state = as_state_dict(obj["model"], path)
        names = [str(n) for n in obj["class_names"]]
        ids = [int(i) for i in obj["category_ids"]]
        img_size = (int(obj["img_size"][0]), int(obj["img_size"][1]))
        prep = dict(obj.get("preprocessing") or DEFAULT_PREPROCESSING)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed dfine checkpoint ({exc!s})") from exc
    if len(names) != cfg.num_classes or len(ids) != cfg.num_classes:
        raise CheckpointError(
            f"{path}: {len(names)} class names / {len(ids)} ids for {cfg.num_classes} classes"
        )
    if variant is not None and variant != cfg.variant:
        act = VARIANT_ACTIVATIONS[variant]
        cfg = cfg.replace(decoder_activation=act, mlp_activation=act)
    info = ModelInfo(cfg, names, ids, img_size, prep, source_format=FORMAT_NAME)
    return LoadedCheckpoint(info=info, state_dict=state, training=obj.get("training"))


def portable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights as files hold them: on the CPU and contiguous, whatever device and
    memory format the model ran in."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def checkpoint_payload(
    model: torch.nn.Module, info: ModelInfo, training: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The dict :func:`save_payload` writes: :func:`portable_state_dict` weights, metadata,
    optional training state."""
    state = portable_state_dict(model)
    payload: dict[str, Any] = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    payload.update(info.to_dict())
    payload["model"] = state
    if training is not None:
        payload["training"] = training
    return payload


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    info: ModelInfo,
    training: dict[str, Any] | None = None,
) -> Path:
    """Write our format atomically (temp file, fsync, rename): never a partial file."""
    return save_payload(path, checkpoint_payload(model, info, training))


def save_payload(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write a :func:`checkpoint_payload` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path
