"""Reading and writing checkpoints: official D-FINE/DEIM ``.pth``, transformers, and ours.

Nothing here unpickles code: ``.pth`` files are read with ``torch.load(weights_only=True)``
and safetensors with ``safetensors``. Size and number of classes are detected from tensor
shapes; the decoder activation (D-FINE ReLU vs DEIM SiLU) is not visible in any tensor, so
official files default to ``variant="dfine"`` unless told otherwise, and our own format
records it.

Our format (``format: "dfine"``) is a plain dict saved by ``torch.save``::

    {"format": "dfine", "format_version": 1,
     "model_config": {...ModelConfig fields...},
     "class_names": [...], "category_ids": [...], "img_size": [h, w],
     "preprocessing": {...}, "model": state_dict,
     "training": {...optional resume state...}}
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dfine_cli.coco_names import COCO_CATEGORY_IDS, COCO_NAMES
from dfine_cli.errors import CheckpointError
from dfine_cli.fileio import atomic_path
from dfine_cli.hub.resolve import resolve_weights
from dfine_cli.models.presets import VARIANTS, ModelConfig, preset
from dfine_cli.obj365_names import OBJ365_HEAD_IDS, OBJ365_HEAD_NAMES

log = logging.getLogger("dfine.checkpoint")

NOT_A_CHECKPOINT = "not a dfine/D-FINE checkpoint"
"""How every "this file is no model at all" message starts (``.pth`` and ``.onnx`` alike)."""

FORMAT_NAME = "dfine"
FORMAT_VERSION = 1
DEFAULT_PREPROCESSING: dict[str, Any] = {
    "color": "RGB",
    "resize": "bilinear-antialias",
    "scale": "0..1",
    "normalize": None,
}


def is_derived_key(key: str) -> bool:
    """Keys official checkpoints store that our model recomputes from the input size."""
    return (
        key in ("decoder.anchors", "decoder.valid_mask", "decoder.decoder.up",
                "decoder.decoder.reg_scale")
        or key.endswith(".num_points_scale")
    )


@dataclass
class ModelInfo:
    """What is needed, besides weights, to rebuild and use a model."""

    config: ModelConfig
    class_names: list[str]
    category_ids: list[int]
    img_size: tuple[int, int] = (640, 640)  # (height, width)
    preprocessing: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PREPROCESSING))
    source_format: str = FORMAT_NAME

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def variant(self) -> str:
        return self.config.variant

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_config": dataclasses.asdict(self.config),
            "class_names": list(self.class_names),
            "category_ids": [int(c) for c in self.category_ids],
            "img_size": [int(self.img_size[0]), int(self.img_size[1])],
            "preprocessing": dict(self.preprocessing),
        }

    @staticmethod
    def default_names(num_classes: int) -> tuple[list[str], list[int]]:
        """COCO names/ids for 80 classes, Objects365 for the official 366-row heads,
        ``class_<i>`` and ids ``0..K-1`` otherwise."""
        if num_classes == len(COCO_NAMES):
            return list(COCO_NAMES), list(COCO_CATEGORY_IDS)
        if num_classes == len(OBJ365_HEAD_NAMES):
            return list(OBJ365_HEAD_NAMES), list(OBJ365_HEAD_IDS)
        return [f"class_{i}" for i in range(num_classes)], list(range(num_classes))


@dataclass
class LoadedCheckpoint:
    info: ModelInfo
    state_dict: dict[str, Tensor]
    training: dict[str, Any] | None = None


# -- reading -------------------------------------------------------------------------------
def _torch_load(path: Path) -> Any:
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
            f"{NOT_A_CHECKPOINT}: {path} is not a PyTorch file (unreadable pickle data: {exc})"
        ) from exc
    except OSError as exc:
        if exc.errno is not None:
            raise  # permission denied, a folder, I/O error: mapped by the caller's handler
        raise CheckpointError(f"{NOT_A_CHECKPOINT}: {path}: {_first_line(exc)}") from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, KeyError... on non-checkpoints
        what = "is empty" if path.is_file() and path.stat().st_size == 0 else (
            f"is not a readable PyTorch file (truncated or corrupt?): {_first_line(exc)}"
        )
        raise CheckpointError(f"{NOT_A_CHECKPOINT}: {path} {what}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:160]}" if text else type(exc).__name__


def _as_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path} does not hold a model state dict")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: the model weights contain non-tensor entries, e.g. {bad[0]!r}")
    return obj


def read_checkpoint(path: str | Path, variant: str | None = None) -> LoadedCheckpoint:
    """Read any supported checkpoint; size/classes detected, ``variant`` as described above.

    Raises :class:`CheckpointError` with a one-line reason for anything unusable.
    """
    if variant is not None and variant not in VARIANTS:
        raise CheckpointError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    path = resolve_weights(path)  # a local path wins; else an official name or hf: id
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir() or path.suffix == ".safetensors":
        return _read_transformers(path, variant)
    if path.suffix == ".onnx":
        raise CheckpointError(f"{path} is an exported ONNX model, not a checkpoint")
    obj = _torch_load(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{NOT_A_CHECKPOINT}: {path} does not hold a dictionary")

    if obj.get("format") == FORMAT_NAME:
        return _read_ours(obj, path, variant)
    if "ema" in obj and isinstance(obj["ema"], dict) and "module" in obj["ema"]:
        state, source = _as_state_dict(obj["ema"]["module"], path), "official-ema"
    elif "model" in obj:
        state, source = _as_state_dict(obj["model"], path), "official"
    elif all(isinstance(v, Tensor) for v in obj.values()):
        state, source = _as_state_dict(obj, path), "state-dict"
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


def _read_ours(obj: dict[str, Any], path: Path, variant: str | None) -> LoadedCheckpoint:
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
        state = _as_state_dict(obj["model"], path)
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
        act = "silu" if variant == "deim" else "relu"
        cfg = cfg.replace(decoder_activation=act, mlp_activation=act)
    info = ModelInfo(cfg, names, ids, img_size, prep, source_format=FORMAT_NAME)
    training = obj.get("training")
    return LoadedCheckpoint(info=info, state_dict=state, training=training)


def _read_transformers(path: Path, variant: str | None) -> LoadedCheckpoint:
    from dfine_cli.models import hf_convert

    state, config = hf_convert.read_hf_checkpoint(path)
    if config is not None:
        spec = hf_convert.hf_config_to_spec(config)
    else:
        spec = hf_convert.spec_from_state_dict_shapes(state)
    official = hf_convert.hf_state_dict_to_official(state, spec)
    chosen = variant or spec.variant
    cfg = infer_config(official, variant=chosen)
    if variant is None and spec.variant == "deim":
        # transformers' SiLU option changes the decoder layers only; its heads stay ReLU.
        cfg = cfg.replace(mlp_activation="relu")
    for note in spec.notes:
        log.warning("%s: %s", path, note)
    names, ids = ModelInfo.default_names(cfg.num_classes)
    if spec.class_names and len(spec.class_names) == cfg.num_classes:
        names = list(spec.class_names)
        if cfg.num_classes != len(COCO_NAMES) or names != list(COCO_NAMES):
            ids = list(range(cfg.num_classes))
    info = ModelInfo(config=cfg, class_names=names, category_ids=ids, source_format="transformers")
    return LoadedCheckpoint(info=info, state_dict=official)


# -- size detection ------------------------------------------------------------------------
def _shape(state: dict[str, Tensor], key: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"{NOT_A_CHECKPOINT}: key '{key}' is missing")
    return tuple(state[key].shape)


def infer_config(state: dict[str, Tensor], variant: str = "dfine") -> ModelConfig:
    """Detect the official size and number of classes from tensor shapes."""
    stem1 = _shape(state, "backbone.stem.stem1.conv.weight")[0]
    stem4 = _shape(state, "backbone.stem.stem4.conv.weight")[0]
    levels = len({k.split(".")[2] for k in state if k.startswith("encoder.input_proj.")})
    by_stem = {(16, 16): "B0", (24, 32): "B2", (32, 48): "B4", (32, 64): "B5"}
    backbone = by_stem.get((stem1, stem4))
    if backbone is None:
        raise CheckpointError(
            f"unsupported backbone: stem widths {stem1}/{stem4} match no HGNetv2 B0/B2/B4/B5"
        )
    size = {"B2": "m", "B4": "l", "B5": "x"}.get(backbone) or ("n" if levels == 2 else "s")
    num_classes = _shape(state, "decoder.enc_score_head.weight")[0]
    num_layers = len({k.split(".")[2] for k in state if k.startswith("decoder.dec_score_head.")})
    cfg = preset(size, num_classes=num_classes, variant=variant)
    overrides: dict[str, Any] = {}
    # Frozen BatchNorm (official D-FINE L/X) has no `num_batches_tracked`; DEIM's L/X do.
    frozen = "backbone.stem.stem1.bn.num_batches_tracked" not in state
    if frozen != cfg.freeze_norm:
        overrides.update(freeze_norm=frozen, freeze_stem=frozen)
    if num_layers and num_layers != cfg.num_layers:
        overrides["num_layers"] = num_layers
    if "decoder.reg_scale" in state:
        overrides["reg_scale"] = float(state["decoder.reg_scale"].reshape(-1)[0])
    if "decoder.up" in state:
        up = float(state["decoder.up"].reshape(-1)[0])
        if abs(up - 0.5) > 1e-6:
            raise CheckpointError(f"unsupported checkpoint: decoder.up = {up} (expected 0.5)")
    return cfg.replace(**overrides) if overrides else cfg


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


# -- writing -------------------------------------------------------------------------------
def checkpoint_payload(
    model: torch.nn.Module, info: ModelInfo, training: dict[str, Any] | None = None
) -> dict[str, Any]:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
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
    path = Path(path)
    payload = checkpoint_payload(model, info, training)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def save_payload(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path
