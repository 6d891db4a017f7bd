"""Recognise an official D-FINE/DEIM YAML given to ``dfine train --config``.

Those files configure the official solver (class names as types, ``__include__`` trees,
dataloader blocks); dfine does not read them. Instead of a list of unknown keys, the user gets
one line that names the dfine flags for the settings it recognises: ``num_classes``, the
dataset paths, ``epoches``/``epochs``, ``eval_spatial_size``, ``total_batch_size``,
``output_dir``, and the model size and recipe from the file name.

``__include__`` files are read too (relative to the including file, ``yaml.safe_load``, at most
a few levels), so that values set in the base files show up in the hint; a missing or
unreadable include is skipped, since the hint is only advice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

#: Top-level keys that only the official solver's configs use (none is a dfine setting).
OFFICIAL_KEYS = frozenset({
    "__include__", "task", "train_dataloader", "val_dataloader", "num_classes",
    "remap_mscoco_category", "epoches", "eval_spatial_size", "output_dir", "optimizer",
    "lr_scheduler", "lr_warmup_scheduler", "use_ema", "use_amp", "evaluator", "criterion",
    "postprocessor", "flat_epoch", "no_aug_epoch", "lr_gamma", "sync_bn", "find_unused_parameters",
    "print_freq", "checkpoint_freq", "summary_dir", "scaler", "DFINE", "DEIM", "HGNetv2",
    "HybridEncoder", "DFINETransformer", "DEIMTransformer", "RTDETRTransformerv2", "PResNet",
    "DFINECriterion", "DEIMCriterion", "HungarianMatcher", "PostProcessor",
})
_MAX_INCLUDE_DEPTH = 4
_NAME = re.compile(r"(dfine|deim)_hgnetv2_([nsmlx])_", re.IGNORECASE)


def is_official_config(data: dict[str, Any], own_keys: Iterable[str]) -> bool:
    """Whether ``data`` has a key that only official configs use (and dfine does not)."""
    own = set(own_keys)
    return any(str(key) in OFFICIAL_KEYS and str(key) not in own for key in data)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, mappings merged recursively (the official include rule)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _with_includes(data: dict[str, Any], folder: Path, depth: int = 0) -> dict[str, Any]:
    includes = data.get("__include__") or []
    if isinstance(includes, str):
        includes = [includes]
    merged: dict[str, Any] = {}
    if depth < _MAX_INCLUDE_DEPTH and isinstance(includes, list):
        for name in includes:
            path = folder / str(name)
            try:
                included = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue
            if isinstance(included, dict):
                merged = _merge(merged, _with_includes(included, path.parent, depth + 1))
    return _merge(merged, data)


def _get(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _size(value: Any) -> int | None:
    """``eval_spatial_size: [640, 640]`` → 640 (``None`` for anything not square)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, list | tuple) and len(value) == 2 and value[0] == value[1]:
        return _size(value[0])
    return None


def official_config_hint(data: dict[str, Any], path: Path) -> str:
    """One line: ``path`` is an official config; the dfine flags for what it sets.

    Args:
        data: the file's top-level mapping (already read with ``yaml.safe_load``).
        path: the file, for its name and to find ``__include__`` files.
    """
    full = _with_includes(data, path.parent)
    flags: list[str] = []
    match = _NAME.search(path.name)
    if match:
        flags.append(f"--model {match.group(2).lower()} --recipe {match.group(1).lower()} (file name)")
    paths = [str(v) for split in ("train_dataloader", "val_dataloader")
             for v in (_get(full, split, "dataset", "img_folder"), _get(full, split, "dataset", "ann_file"))
             if v is not None]
    if paths:
        flags.append(f"--data DATASET for img_folder/ann_file ({', '.join(paths[:2])}"
                     f"{', ...' if len(paths) > 2 else ''}): a folder with images/{{train,val}} and "
                     "annotations/instances_{train,val}.json, or a dataset YAML")
    for key in ("epoches", "epochs"):
        if isinstance(full.get(key), int):
            flags.append(f"--epochs {full[key]} ({key})")
            break
    size = _size(full.get("eval_spatial_size"))
    if size is not None:
        flags.append(f"--img-size {size} (eval_spatial_size)")
    batch = _get(full, "train_dataloader", "total_batch_size")
    if batch is None:
        batch = full.get("total_batch_size")
    if isinstance(batch, int):
        flags.append(f"--batch-size {batch} (total_batch_size)")
    if isinstance(full.get("output_dir"), str):
        flags.append(f"--output {full['output_dir']} (output_dir)")
    if "num_classes" in full:
        flags.append(f"no flag for num_classes ({full['num_classes']}): dfine counts the classes "
                     "of the --data annotations")
    where = "; ".join(flags) if flags else "see 'dfine train --help'"
    return (f"{path} is an official D-FINE/DEIM config, which dfine does not read; "
            f"give its settings as flags instead: {where}")
