"""The official D-FINE/DEIM ``.pth`` format and the official state-dict layout.

An official training checkpoint is a dict with ``model`` (and, from the trainer,
``ema.module``); a bare state dict is accepted too. The layout of its keys is the one every
reader converts to and :func:`load_weights` loads (``official_keys_{size}.tsv``).

Nothing here unpickles code: files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import errno
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dfine_cli.checkpoints.infer import infer_config
from dfine_cli.checkpoints.info import NOT_A_CHECKPOINT, LoadedCheckpoint, ModelInfo
from dfine_cli.errors import CheckpointError

log = logging.getLogger("dfine.checkpoint")

#: Official keys that depend only on the input size; our model recomputes them, and
#: transformers never stores them.
INPUT_SIZE_KEYS: tuple[str, ...] = ("decoder.anchors", "decoder.valid_mask")
#: Official keys that repeat another tensor under a second name (``decoder.up`` and
#: ``decoder.reg_scale`` are the FDR constants; the inner decoder exposes them again).
ALIAS_KEYS: tuple[str, ...] = ("decoder.decoder.up", "decoder.decoder.reg_scale")
#: Suffix of the per-level sampling-point scales, a constant of the number of points.
POINTS_SCALE_SUFFIX = ".num_points_scale"


def is_derived_key(key: str) -> bool:
    """Keys official checkpoints store that our model recomputes (input size, aliases, constants)."""
    return key in INPUT_SIZE_KEYS or key in ALIAS_KEYS or key.endswith(POINTS_SCALE_SUFFIX)


# -- reading -------------------------------------------------------------------------------
def torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` with one-line errors for unsafe or broken files."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        match = re.search(r"(?:unsupported|not an allowed) GLOBAL ([\w.]+)", text, re.IGNORECASE)
        if match or "global" in text.lower():
            what = f" ({match.group(1)})" if match else ""
            raise CheckpointError(
                f"refusing to load {path}: it contains pickled Python objects{what}, not only "
                "weights, and loading it could run code"
            ) from exc
        raise CheckpointError(
            f"{NOT_A_CHECKPOINT}: {path} is not a PyTorch file (no readable pickled tensor data)"
        ) from exc
    except OSError as exc:
        # torch's zip reader reports a malformed archive (a truncated file) as EINVAL
        if exc.errno is not None and exc.errno != errno.EINVAL:
            raise  # permission denied, a folder, I/O error: mapped by the caller's handler
        raise CheckpointError(
            f"{NOT_A_CHECKPOINT}: {path} is not a readable PyTorch file (truncated or corrupt?): "
            f"{_first_line(exc)}") from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError... on non-checkpoints
        what = "is empty" if path.is_file() and path.stat().st_size == 0 else (
            f"is not a readable PyTorch file (truncated or corrupt?): {_first_line(exc)}"
        )
        raise CheckpointError(f"{NOT_A_CHECKPOINT}: {path} {what}") from exc


def _first_line(exc: BaseException) -> str:
    """``Type: first sentence`` of an exception (torch appends long advice after it)."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    first = text.splitlines()[0].split(". ", 1)[0].rstrip(".")
    return f"{type(exc).__name__}: {first[:160]}"


def as_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    """``obj`` checked to be a non-empty ``{str: Tensor}`` dict."""
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} does not hold a model state dict")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: the model weights contain non-tensor entries, e.g. {bad[0]!r}")
    return obj


def read_official(obj: dict[str, Any], path: Path, variant: str | None) -> LoadedCheckpoint:
    """An official checkpoint (EMA weights preferred) or bare state dict, size detected.

    The decoder activation is visible in no tensor: ``variant`` ``None`` means D-FINE (ReLU).
    """
    if "ema" in obj and isinstance(obj["ema"], dict) and "module" in obj["ema"]:
        state, source = as_state_dict(obj["ema"]["module"], path), "official-ema"
    elif "model" in obj:
        state, source = as_state_dict(obj["model"], path), "official"
    elif all(isinstance(v, Tensor) for v in obj.values()):
        state, source = as_state_dict(obj, path), "state-dict"
    else:
        keys = ", ".join(sorted(map(str, obj))[:6])
        raise CheckpointError(
            f"{NOT_A_CHECKPOINT}: {path} has no 'model', 'ema' or 'format' entry "
            f"(top-level keys: {keys})"
        )
    cfg = infer_config(state, variant=variant or "dfine")
    names, ids = ModelInfo.default_names(cfg.num_classes)
    info = ModelInfo(config=cfg, class_names=names, category_ids=ids, source_format=source)
    return LoadedCheckpoint(info=info, state_dict=state)


# -- loading into a model ------------------------------------------------------------------
def state_dict_mismatch(own: dict[str, Tensor], state: dict[str, Tensor]) -> str | None:
    """Why ``state`` would not load strictly into a module whose state dict is ``own``.

    Returns one line counting the missing keys, unexpected keys and shape mismatches with a
    few examples of each, or ``None`` when the keys and shapes agree.
    """
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {', '.join(unexpected[:3])})")
    if mismatched:
        parts.append(f"{len(mismatched)} shape mismatch(es) (e.g. {'; '.join(mismatched[:2])})")
    return "; ".join(parts) or None


def load_weights(model: torch.nn.Module, state: dict[str, Tensor], *, source: str = "") -> None:
    """Strictly load ``state`` (official layout) into ``model``; one-line errors on mismatch."""
    own = model.state_dict()
    clean = {k: v for k, v in state.items() if not is_derived_key(k)}
    dn_key = "decoder.denoising_class_embed.weight"
    if dn_key in own and dn_key not in clean:
        # Checkpoints trained without denoising lack this training-only table: keep ours.
        log.info("%s has no denoising embedding (unused at inference); keeping a fresh one",
                 source or "checkpoint")
        clean[dn_key] = own[dn_key]
    problem = state_dict_mismatch(own, clean)
    if problem:
        where = f"{source}: " if source else ""
        raise CheckpointError(f"{where}weights do not fit the model: {problem}")
    model.load_state_dict(clean, strict=True)
