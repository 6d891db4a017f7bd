"""Rebuild official-layout state dicts from the key manifests (reference README, section 2)."""

from __future__ import annotations

import zlib
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "int64": torch.int64, "bool": torch.bool}


def read_manifest(path: Path) -> list[dict[str, str]]:
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def _shape(text: str) -> tuple[int, ...]:
    return () if text == "scalar" else tuple(int(s) for s in text.split("x"))


def keyed_state_dict(reference: Path, size: str, seed: int = 1234) -> dict[str, torch.Tensor]:
    """The deterministic "keyed" weights for ``size`` exactly as the reference describes."""
    rows = read_manifest(reference / f"official_keys_{size}.tsv")
    verbatim = torch.load(reference / f"official_verbatim_{size}.pt", weights_only=True)
    state: dict[str, torch.Tensor] = {}
    for row in rows:
        key, dtype, kind = row["key"], DTYPES[row["dtype"]], row["kind"]
        shape = _shape(row["shape"])
        if not dtype.is_floating_point:
            state[key] = verbatim[key]
            continue
        g = torch.Generator()
        g.manual_seed((seed << 32) | zlib.crc32(key.encode("utf-8")))
        if key.endswith(".running_mean"):
            value = torch.randn(shape, generator=g, dtype=torch.float64) * 0.1
        elif key.endswith(".running_var"):
            value = torch.rand(shape, generator=g, dtype=torch.float64) + 0.5
        elif kind == "param":
            std = float(row["init_std"])
            s = std if std > 1e-8 else 0.02
            value = torch.randn(shape, generator=g, dtype=torch.float64) * s + float(row["init_mean"])
        else:
            state[key] = verbatim[key]
            continue
        state[key] = value.to(torch.float32)
    return state
