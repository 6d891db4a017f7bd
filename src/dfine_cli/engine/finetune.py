"""Fine-tuning that keeps what a checkpoint knows about the dataset's classes.

The classification rows of a D-FINE model are the only tensors whose shape depends on the
classes: every decoder layer's score head, the encoder's score head (query selection) and the
denoising label embedding. When a checkpoint is tuned on a dataset, each dataset class whose
name matches a checkpoint class starts from that class's rows; every other row keeps the fresh
initialisation of the new model. (The official code does this for Objects365 → COCO with a
hard-coded id list; here it is done by name.)

Matching, for each dataset class:

1. ``class_map`` (``{"car": "Car"}``, dataset name → checkpoint name), when it names the class;
2. otherwise the checkpoint class with the same name, ignoring case and surrounding spaces;
3. otherwise the checkpoint class one of whose ``/``-separated alternatives matches
   (Objects365's ``"Monitor/TV"`` matches ``tv``).

Checkpoints whose classes have no real names (``class_0``... from an official file of unknown
data) with as many classes as the dataset keep every row, row ``i`` for class ``i``.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dfine_cli.errors import UsageError

log = logging.getLogger("dfine.train")

DENOISING_KEY = "decoder.denoising_class_embed.weight"
_PLACEHOLDER = re.compile(r"class_\d+")
_SCORE_HEAD = re.compile(r"decoder\.(enc_score_head|dec_score_head\.\d+)\.(weight|bias)")


def parse_class_map(text: str) -> dict[str, str]:
    """``"car=Car, person=Person"`` → ``{"car": "Car", "person": "Person"}``.

    Raises:
        UsageError: for an item without ``=``, an empty side or a class given twice.
    """
    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        data_name, sep, ckpt_name = item.partition("=")
        if not sep or not data_name.strip() or not ckpt_name.strip():
            raise UsageError(f"--class-map expects dataset=checkpoint pairs, got {item!r}")
        key = data_name.strip()
        if key in mapping:
            raise UsageError(f"--class-map names {key!r} twice")
        mapping[key] = ckpt_name.strip()
    return mapping


def _norm(name: str) -> str:
    return " ".join(name.split()).casefold()


@dataclass(frozen=True)
class ClassMatch:
    """For each dataset class, the checkpoint row it starts from (``None``: fresh rows)."""

    rows: tuple[int | None, ...]
    data_names: tuple[str, ...]
    ckpt_names: tuple[str, ...]

    @property
    def carried(self) -> list[tuple[str, str]]:
        """``(dataset name, checkpoint name)`` of every carried-over class."""
        return [(self.data_names[j], self.ckpt_names[r]) for j, r in enumerate(self.rows) if r is not None]

    @property
    def fresh(self) -> list[str]:
        return [self.data_names[j] for j, r in enumerate(self.rows) if r is None]

    def describe(self) -> str:
        """One log line: what was carried over and what starts fresh."""
        carried = ", ".join(d if d == c else f"{d}<-{c}" for d, c in self.carried) or "none"
        fresh = ", ".join(self.fresh) or "none"
        return (f"classes carried over from the checkpoint ({len(self.carried)}/{len(self.rows)}): "
                f"{carried}; re-initialised: {fresh}")


def match_classes(data_names: Sequence[str], ckpt_names: Sequence[str],
                  class_map: Mapping[str, str] | None = None) -> ClassMatch:
    """Match dataset classes to checkpoint classes by name (see the module docstring).

    Raises:
        UsageError: ``class_map`` names a dataset class that does not exist or a checkpoint
            class that does not exist (with the closest names).
    """
    data_names, ckpt_names = tuple(data_names), tuple(ckpt_names)
    exact: dict[str, int] = {}
    alternative: dict[str, int] = {}
    for r, name in enumerate(ckpt_names):
        exact.setdefault(_norm(name), r)
        for part in name.split("/"):
            if part.strip():
                alternative.setdefault(_norm(part), r)
    data_index = {_norm(n): j for j, n in enumerate(data_names)}
    forced: dict[int, int] = {}
    row: int | None
    for data_key, ckpt_key in (class_map or {}).items():
        data_name, ckpt_name = str(data_key), str(ckpt_key)
        j = data_index.get(_norm(data_name))
        if j is None:
            raise UsageError(f"--class-map: the dataset has no class {data_name!r} "
                             f"(its classes: {', '.join(data_names)})")
        row = exact.get(_norm(ckpt_name))
        if row is None:
            close = difflib.get_close_matches(ckpt_name, ckpt_names, n=3)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise UsageError(f"--class-map: the checkpoint has no class {ckpt_name!r}{hint}")
        forced[j] = row
    placeholders = all(_PLACEHOLDER.fullmatch(n) for n in ckpt_names)
    rows: list[int | None] = []
    for j, name in enumerate(data_names):
        if j in forced:
            row = forced[j]
        elif placeholders and len(ckpt_names) == len(data_names):
            row = j
        else:
            row = exact.get(_norm(name), alternative.get(_norm(name)))
        rows.append(row)
    return ClassMatch(tuple(rows), data_names, ckpt_names)


def carry_class_rows(state: dict[str, Tensor], fresh: Mapping[str, Tensor],
                     match: ClassMatch) -> list[str]:
    """Rewrite the class-dependent tensors of ``state`` for the dataset's classes, in place.

    Args:
        state: checkpoint weights (official layout); rows indexed by checkpoint class.
        fresh: the new model's own state dict (the fresh initialisation).
        match: which checkpoint row each dataset class starts from.

    Returns:
        The keys that were rewritten. Score heads are ``[C, hidden]`` / ``[C]``; the denoising
        embedding is ``[C + 1, hidden]`` whose last row is the padding label (kept fresh).
    """
    rewritten = []
    index = [(j, r) for j, r in enumerate(match.rows) if r is not None]
    for key in sorted(state):
        is_head = bool(_SCORE_HEAD.fullmatch(key))
        if not (is_head or key == DENOISING_KEY) or key not in fresh:
            continue
        source, target = state[key], fresh[key].detach().clone()
        if source.shape[1:] != target.shape[1:]:
            continue  # another width: reported as a shape mismatch by the strict load
        limit = source.shape[0] - (0 if is_head else 1)  # the padding row is no class
        for j, r in index:
            if r < limit:
                target[j] = source[r].to(target.dtype)
        state[key] = target
        rewritten.append(key)
    return rewritten


@torch.no_grad()
def adapt_state_to_classes(state: dict[str, Tensor], fresh: Mapping[str, Tensor],
                           data_names: Sequence[str], ckpt_names: Sequence[str],
                           class_map: Mapping[str, str] | None = None) -> ClassMatch:
    """Match classes, rewrite the class rows of ``state`` and log what was carried over."""
    match = match_classes(data_names, ckpt_names, class_map)
    identical = len(data_names) == len(ckpt_names) and list(match.rows) == list(range(len(data_names)))
    if identical:
        return match  # same classes in the same order: the checkpoint's rows as they are
    keys = carry_class_rows(state, fresh, match)
    log.info("%s", match.describe())
    if keys and len(data_names) != len(ckpt_names):
        log.warning("class count differs (%d in checkpoint, %d in data): re-initialised the rows "
                    "of classes without a match in %s", len(ckpt_names), len(data_names), ", ".join(keys))
    return match
