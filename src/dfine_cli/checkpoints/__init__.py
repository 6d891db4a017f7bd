"""Checkpoints: reading every supported format, loading weights, writing ours.

One module per format, each the only place that knows it:

- :mod:`~dfine_cli.checkpoints.ours`: our ``.pth`` (weights, model config, classes, input
  size, optional training state); written atomically.
- :mod:`~dfine_cli.checkpoints.official`: official D-FINE/DEIM ``.pth`` files and the official
  state-dict layout every reader converts to; strict loading into a model.
- :mod:`~dfine_cli.checkpoints.transformers`: transformers ``save_pretrained`` folders and
  ``.safetensors``/``pytorch_model.bin`` files (key renaming in ``transformers_keys``).
- :mod:`~dfine_cli.checkpoints.infer`: which official preset a checkpoint holds.

Nothing here unpickles code: ``.pth`` files are read with ``torch.load(weights_only=True)``
and safetensors with ``safetensors``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dfine_cli.checkpoints.infer import infer_config
from dfine_cli.checkpoints.info import (
    DEFAULT_PREPROCESSING,
    NOT_A_CHECKPOINT,
    LoadedCheckpoint,
    ModelInfo,
)
from dfine_cli.checkpoints.official import (
    is_derived_key,
    load_weights,
    read_official,
    state_dict_mismatch,
    torch_load,
)
from dfine_cli.checkpoints.ours import (
    FORMAT_NAME,
    FORMAT_VERSION,
    checkpoint_payload,
    is_ours,
    portable_state_dict,
    read_ours,
    save_checkpoint,
    save_payload,
)
from dfine_cli.errors import CheckpointError
from dfine_cli.models.presets import VARIANTS

if TYPE_CHECKING:
    from dfine_cli.models.dfine import DFINE


def read_checkpoint(path: str | Path, variant: str | None = None) -> LoadedCheckpoint:
    """Read any supported checkpoint; size and classes detected from the weights.

    ``path`` is a local file or folder, or a weights name / ``hf:org/repo`` (a local path
    wins). ``variant`` (``dfine``/``deim``) sets the decoder activation, which no tensor
    shows: ``None`` keeps what the file records (ours, transformers) or means ``dfine``
    (official files). Raises :class:`CheckpointError` with a one-line reason for anything
    unusable.
    """
    from dfine_cli.hub.resolve import resolve_weights

    if variant is not None and variant not in VARIANTS:
        raise CheckpointError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    path = resolve_weights(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir() or path.suffix == ".safetensors":
        from dfine_cli.checkpoints.transformers import read_transformers

        return read_transformers(path, variant)
    if path.suffix == ".onnx":
        raise CheckpointError(f"{path} is an exported ONNX model, not a checkpoint")
    obj = torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{NOT_A_CHECKPOINT}: {path} does not hold a dictionary")
    if is_ours(obj):
        return read_ours(obj, path, variant)
    return read_official(obj, path, variant)


def load_model(path: str | Path, variant: str | None = None) -> tuple[DFINE, ModelInfo]:
    """The model a checkpoint holds, built and with its weights strictly loaded (CPU, train
    form), and its :class:`ModelInfo`. ``path`` and ``variant`` as in :func:`read_checkpoint`."""
    from dfine_cli.models.build import build_model_from_config

    ckpt = read_checkpoint(path, variant=variant)
    model = build_model_from_config(ckpt.info.config)
    load_weights(model, ckpt.state_dict, source=str(path))
    return model, ckpt.info


__all__ = [
    "DEFAULT_PREPROCESSING",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "NOT_A_CHECKPOINT",
    "LoadedCheckpoint",
    "ModelInfo",
    "checkpoint_payload",
    "infer_config",
    "is_derived_key",
    "load_model",
    "load_weights",
    "portable_state_dict",
    "read_checkpoint",
    "save_checkpoint",
    "save_payload",
    "state_dict_mismatch",
]
